#!/usr/bin/env bash
# C-ECHO every link of the stack and say which one is broken:
#   1. this machine -> Orthanc   (echoscu, calling AE $SCANNER_AET)
#   2. this machine -> hippo-scp (echoscu)
#   3. Orthanc -> hippo-scp      (Orthanc's REST /modalities/hippoai/echo: proves the
#                                 DicomModalities entry the Lua router sends to)
# Exit status: number of failed checks (0 = all good).
set -euo pipefail
# shellcheck source=deploy_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need_cmd echoscu curl

failed=0
check() {
  local what="$1"
  shift
  if "$@" >/dev/null 2>&1; then
    log "OK    $what"
  else
    log "FAIL  $what"
    failed=$((failed + 1))
  fi
}
check "C-ECHO $SCANNER_AET -> $ORTHANC_AET@127.0.0.1:$ORTHANC_DICOM_PORT" \
  echoscu -to 5 -aet "$SCANNER_AET" -aec "$ORTHANC_AET" 127.0.0.1 "$ORTHANC_DICOM_PORT"
check "C-ECHO ECHOCHECK -> $HIPPO_AET@127.0.0.1:$HIPPO_PORT" \
  echoscu -to 5 -aet ECHOCHECK -aec "$HIPPO_AET" 127.0.0.1 "$HIPPO_PORT"
check "C-ECHO Orthanc -> modality hippoai ($HIPPO_AET@$HIPPO_HOST:$HIPPO_PORT)" \
  curl -fsS --max-time 15 -X POST -d '{}' "$ORTHANC_URL/modalities/hippoai/echo"
exit "$failed"
