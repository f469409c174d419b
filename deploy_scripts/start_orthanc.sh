#!/usr/bin/env bash
# Start Orthanc as a plain process with our own configuration (never the system service):
# renders orthanc.json.template into $HIPPO_RUN_DIR/orthanc.json, loads the routing Lua script
# ($ORTHANC_ROUTING: instance | series | none; $HIPPO_ROUTE_SERIES: which series, by default
# those the node's selection rules analyse) and waits until REST and DICOM answer.
# Ports and AE titles come from the environment (see common.sh).
set -euo pipefail
# shellcheck source=deploy_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ -x "$ORTHANC_BIN" ]] || die "$ORTHANC_BIN not found; run deploy_scripts/install.sh (apt package orthanc)"
[[ -f "$ORTHANC_PLUGIN_DIR/libOrthancDicomWeb.so" ]] \
  || die "$ORTHANC_PLUGIN_DIR/libOrthancDicomWeb.so not found; run deploy_scripts/install.sh (apt package orthanc-dicomweb)"
need_cmd curl

if pid="$(service_pid orthanc)"; then
  log "Orthanc already runs from $HIPPO_RUN_DIR (PID $pid)"
  exit 0
fi
fail_if_port_busy "$ORTHANC_HTTP_PORT" "Orthanc HTTP"
fail_if_port_busy "$ORTHANC_DICOM_PORT" "Orthanc DICOM"

config="$HIPPO_RUN_DIR/orthanc.json"
render_orthanc_config "$config"

# Orthanc's DICOM networking is dcmtk's: TCP_NODELAY=1 makes its C-STORE several times faster.
start_service orthanc env TCP_NODELAY=1 "$ORTHANC_BIN" "$config"

orthanc_ready() {
  ensure_running orthanc
  http_ok "$ORTHANC_URL/system" && port_open "$ORTHANC_DICOM_PORT"
}
if ! wait_until "$READY_TIMEOUT" "Orthanc on HTTP $ORTHANC_HTTP_PORT / DICOM $ORTHANC_DICOM_PORT" orthanc_ready; then
  ensure_running orthanc
  tail -n 30 "$(log_file orthanc)" >&2
  die "Orthanc did not become ready"
fi
version="$(curl -fsS "$ORTHANC_URL/system" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Version"])')"
log "Orthanc $version ready: AE $ORTHANC_AET, DICOM port $ORTHANC_DICOM_PORT, $ORTHANC_URL (DICOMweb $ORTHANC_URL/dicom-web), routing: $ORTHANC_ROUTING (series filter: ${HIPPO_ROUTE_SERIES:-none, every image series})"
