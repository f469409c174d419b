#!/usr/bin/env bash
# Start the whole stack on this machine: Orthanc (+ Lua routing) -> hippo-scp node -> OHIF,
# each with a readiness wait, then C-ECHO every link. PID files and logs go to $HIPPO_RUN_DIR
# (run/ under the repository). Stop it with deploy_scripts/stop_stack.sh.
#
# Options: --no-ohif      do not start the viewer
#          --no-node      do not start hippo-scp (e.g. a test sink plays the node)
# Environment: see deploy_scripts/common.sh (ports, AE titles, ORTHANC_ROUTING, ...).
set -euo pipefail
# shellcheck source=deploy_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

with_ohif=true
with_node=true
for arg in "$@"; do
  case "$arg" in
    --no-ohif) with_ohif=false ;;
    --no-node) with_node=false ;;
    -h | --help)
      sed -n '2,9p' "$0"
      exit 0
      ;;
    *) die "unknown option $arg (see --help)" ;;
  esac
done

on_error() {
  log "start-up failed; stopping what was started (logs stay in $HIPPO_RUN_DIR)"
  "$DEPLOY_DIR/stop_stack.sh" || true
}
trap on_error ERR

"$DEPLOY_DIR/start_orthanc.sh"
if $with_node; then
  "$DEPLOY_DIR/start_listener.sh"
fi
if $with_ohif; then
  "$DEPLOY_DIR/start_ohif.sh"
fi
if $with_node; then
  "$DEPLOY_DIR/echo_check.sh"
fi
trap - ERR
log "stack up (run folder $HIPPO_RUN_DIR)"
log "  Orthanc: $ORTHANC_URL/app/explorer.html  (DICOM $ORTHANC_AET@127.0.0.1:$ORTHANC_DICOM_PORT)"
if $with_node; then
  log "  hippo-scp: $HIPPO_AET@127.0.0.1:$HIPPO_PORT  (log $(log_file hippo-scp))"
fi
if $with_ohif; then
  log "  OHIF: $OHIF_URL/"
fi
