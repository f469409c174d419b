#!/usr/bin/env bash
# Serve the prebuilt OHIF viewer (@ohif/app dist/, installed by install.sh) on $OHIF_PORT with
# our app-config.js, proxying /dicom-web and /wado to Orthanc (same origin: no CORS).
set -euo pipefail
# shellcheck source=deploy_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

[[ -f "$OHIF_DIST/index.html" ]] \
  || die "OHIF not installed ($OHIF_DIST/index.html missing); run deploy_scripts/install.sh"
need_cmd python3 curl

if pid="$(service_pid ohif)"; then
  log "OHIF server already runs from $HIPPO_RUN_DIR (PID $pid)"
  exit 0
fi
fail_if_port_busy "$OHIF_PORT" "OHIF viewer"

start_service ohif "$PYTHON" "$DEPLOY_DIR/ohif_server.py" \
  --dist "$OHIF_DIST" --app-config "$DEPLOY_DIR/ohif/app-config.js" \
  --orthanc "$ORTHANC_URL" --bind "$OHIF_BIND" --port "$OHIF_PORT"

ohif_ready() {
  ensure_running ohif
  http_ok "$OHIF_URL/app-config.js"
}
wait_until "$READY_TIMEOUT" "OHIF server on port $OHIF_PORT" ohif_ready || die "OHIF server did not start"
if ! http_ok "$OHIF_URL/dicom-web/studies?limit=1"; then
  log "warning: OHIF is up but $OHIF_URL/dicom-web does not reach Orthanc at $ORTHANC_URL (yet)"
fi
log "OHIF ready: $OHIF_URL/ (DICOMweb proxied to $ORTHANC_URL/dicom-web)"
