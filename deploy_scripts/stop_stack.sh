#!/usr/bin/env bash
# Stop what start_stack.sh (or the single start_*.sh scripts) started from this run folder:
# OHIF server, hippo-scp node, Orthanc -- by the PIDs in $HIPPO_RUN_DIR/*.pid, never by name.
# Orthanc's storage ($HIPPO_RUN_DIR/orthanc-storage) and the node's outbox ($HIPPO_RUN_DIR/outbox)
# stay; pass --purge to delete them too.
set -euo pipefail
# shellcheck source=deploy_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

purge=false
for arg in "$@"; do
  case "$arg" in
    --purge) purge=true ;;
    -h | --help)
      sed -n '2,5p' "$0"
      exit 0
      ;;
    *) die "unknown option $arg" ;;
  esac
done

for name in ohif hippo-scp orthanc; do
  stop_service "$name"
done
if $purge; then
  rm -rf "$ORTHANC_STORAGE_DIR" "$HIPPO_RUN_DIR/outbox"
  log "deleted Orthanc storage $ORTHANC_STORAGE_DIR and the node outbox $HIPPO_RUN_DIR/outbox"
fi
log "stack in $HIPPO_RUN_DIR stopped"
