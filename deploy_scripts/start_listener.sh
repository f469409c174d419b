#!/usr/bin/env bash
# Start the hippo-scp node (the DICOM Storage SCP) as a background process and wait until it
# answers C-ECHO. Equivalent to:
#   hippo-scp serve --config ae_config.yaml --ae-title HIPPOAI --port 11112 \
#       --destination ORTHANC@127.0.0.1:4242 --settle 3 --priors [--whole-series-sender ORTHANC]
# with AE titles / ports from the environment (see common.sh), its log in $HIPPO_RUN_DIR.
set -euo pipefail
# shellcheck source=deploy_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

HIPPO_SCP="${HIPPO_SCP:-$VENV/bin/hippo-scp}"
[[ -x "$HIPPO_SCP" ]] || die "$HIPPO_SCP not found; run deploy_scripts/install.sh (creates .venv)"
need_cmd echoscu
: "${NODE_READY_TIMEOUT:=180}" # loading the model takes a while on a small CPU
# Same as the Docker image: fewer glibc malloc arenas, ~40 MB less peak RSS with torch threads.
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-1}"

if pid="$(service_pid hippo-scp)"; then
  log "hippo-scp already runs from $HIPPO_RUN_DIR (PID $pid)"
  exit 0
fi
fail_if_port_busy "$HIPPO_PORT" "hippo-scp DICOM"

config_args=()
if [[ -f "$HIPPO_CONFIG" ]]; then
  config_args=(--config "$HIPPO_CONFIG")
else
  log "no $HIPPO_CONFIG: the node starts with its defaults"
fi
# HIPPO_WEIGHTS: other model weights than the configured ones (e.g. a candidate model).
if [[ -n "${HIPPO_WEIGHTS:-}" ]]; then
  config_args+=(--weights "$HIPPO_WEIGHTS")
fi
# Orthanc routing stable series (route_dicoms.lua) sends each series whole, in one association:
# the node may then file the results at the release, without waiting out its release grace.
# Per-instance routing may split a series over associations: it keeps the grace.
if [[ "$ORTHANC_ROUTING" == series ]]; then
  config_args+=(--whole-series-sender "$ORTHANC_AET")
fi
# The demo's Orthanc grants the node C-FIND / C-GET (orthanc.json.template), so the report
# compares with the patient's earlier results; HIPPO_PRIORS=off leaves the config's setting.
if [[ "$HIPPO_PRIORS" == on ]]; then
  config_args+=(--priors)
fi
# The outbox and the audit log follow the run folder so that stacks in different run folders
# stay apart (`hippo-scp status --outbox ... --audit-log ...` reads them).
start_service hippo-scp "$HIPPO_SCP" serve "${config_args[@]}" \
  --ae-title "$HIPPO_AET" --port "$HIPPO_PORT" \
  --destination "$ORTHANC_AET@$ORTHANC_HOST:$ORTHANC_DICOM_PORT" \
  --settle "$HIPPO_SETTLE" --outbox "$HIPPO_RUN_DIR/outbox" \
  --audit-log "$HIPPO_RUN_DIR/audit.jsonl"

node_ready() {
  ensure_running hippo-scp
  echoscu -to 5 -aet ECHOCHECK -aec "$HIPPO_AET" 127.0.0.1 "$HIPPO_PORT"
}
if ! wait_until "$NODE_READY_TIMEOUT" "hippo-scp C-ECHO on port $HIPPO_PORT" node_ready; then
  tail -n 30 "$(log_file hippo-scp)" >&2
  die "hippo-scp did not answer C-ECHO"
fi
log "hippo-scp ready: AE $HIPPO_AET on port $HIPPO_PORT, results to $ORTHANC_AET@$ORTHANC_HOST:$ORTHANC_DICOM_PORT"
