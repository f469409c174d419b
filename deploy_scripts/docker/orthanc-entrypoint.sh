#!/usr/bin/env bash
# Entrypoint of the Orthanc container (docker-compose.yml): render the same orthanc.json
# template with the container's environment and run Orthanc in the foreground as PID 1.
set -euo pipefail
export HIPPO_RUN_DIR="${HIPPO_RUN_DIR:-/var/lib/orthanc/run}"
export ORTHANC_STORAGE_DIR="${ORTHANC_STORAGE_DIR:-/var/lib/orthanc/db}"
export ORTHANC_REMOTE_ACCESS="${ORTHANC_REMOTE_ACCESS:-true}"
# shellcheck source=deploy_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
render_orthanc_config "$HIPPO_RUN_DIR/orthanc.json"
log "Orthanc: AE $ORTHANC_AET, DICOM $ORTHANC_DICOM_PORT, HTTP $ORTHANC_HTTP_PORT, node $HIPPO_AET@$HIPPO_HOST:$HIPPO_PORT, routing $ORTHANC_ROUTING"
# dcmtk (Orthanc's DICOM stack) honours TCP_NODELAY: several times faster C-STORE.
exec env TCP_NODELAY=1 "$ORTHANC_BIN" "$HIPPO_RUN_DIR/orthanc.json"
