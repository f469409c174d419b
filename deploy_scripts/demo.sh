#!/usr/bin/env bash
# The whole network demo, end to end, on this machine:
#   1. install what is missing (deploy_scripts/install.sh),
#   2. start Orthanc (+ Lua auto-routing), the hippo-scp node and OHIF (start_stack.sh) from a
#      clean slate: a stack left running in the same run folder is stopped and its Orthanc
#      storage and node outbox are deleted (stop_stack.sh --purge), so that the results shown
#      are this run's,
#   3. send Study1 (all its series) to Orthanc like a scanner would (send_volume.sh),
#   4. wait until Orthanc holds the node's SR, SEG and Secondary Capture report,
#   5. print the hippocampal volumes (read from the SR through Orthanc's REST API) and the
#      URLs to open.
# Stop everything with: bash deploy_scripts/stop_stack.sh
#
# Options: --study DIR   study folder to send (default ../shared/data/TestVolumes/Study1)
#          --no-install  skip install.sh
#          --timeout S   seconds to wait for the results (default 600)
set -euo pipefail
# shellcheck source=deploy_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

study="${HIPPO_DATA_DIR:-$REPO_ROOT/../shared/data}/TestVolumes/Study1"
do_install=true
timeout=600
while (($#)); do
  case "$1" in
    --study)
      study="$2"
      shift
      ;;
    --no-install) do_install=false ;;
    --timeout)
      timeout="$2"
      shift
      ;;
    -h | --help)
      sed -n '2,16p' "$0"
      exit 0
      ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
[[ -d "$study" ]] || die "study folder $study not found (shared data expected at ../shared/data)"

if $do_install; then
  "$DEPLOY_DIR/install.sh"
fi
"$DEPLOY_DIR/stop_stack.sh" --purge
"$DEPLOY_DIR/start_stack.sh"
"$DEPLOY_DIR/send_volume.sh" "$study"

log "waiting (up to ${timeout}s) for Orthanc to route the series to $HIPPO_AET and for the SR, SEG and report to come back..."
start=$SECONDS
if ! python3 "$DEPLOY_DIR/orthanc_results.py" --url "$ORTHANC_URL" --wait "$timeout" --studies 1 \
  >"$HIPPO_RUN_DIR/demo_results.txt"; then
  cat "$HIPPO_RUN_DIR/demo_results.txt" >&2
  log "last lines of the node's log ($(log_file hippo-scp)):"
  tail -n 20 "$(log_file hippo-scp)" >&2 || true
  die "the results did not arrive in ${timeout}s; the stack is still running (stop: deploy_scripts/stop_stack.sh)"
fi
log "results in Orthanc after $((SECONDS - start)) s"

study_uid="$(python3 "$DEPLOY_DIR/orthanc_results.py" --url "$ORTHANC_URL" --json \
  | python3 -c 'import json,sys; s=[x for x in json.load(sys.stdin) if x["has_hippocrop"]]; print(s[0]["study_instance_uid"] if s else "")')"
cat <<MSG

================================ hippo-scp demo ================================
$(cat "$HIPPO_RUN_DIR/demo_results.txt")

Open:
  OHIF study list   $OHIF_URL/
  OHIF viewer       $OHIF_URL/viewer?StudyInstanceUIDs=$study_uid
  Orthanc Explorer  $ORTHANC_URL/app/explorer.html
  DICOMweb          $ORTHANC_URL/dicom-web/studies
Logs and PID files: $HIPPO_RUN_DIR
Stop everything:    bash deploy_scripts/stop_stack.sh
================================================================================
MSG
