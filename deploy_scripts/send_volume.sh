#!/usr/bin/env bash
# Send a study folder (every DICOM file under it, all series) to Orthanc with dcmtk's storescu,
# as a scanner would: one association, calling AE $SCANNER_AET (registered in Orthanc's
# DicomModalities, since our Orthanc refuses C-STORE from unknown AEs).
#
# Usage: send_volume.sh STUDY_FOLDER [STUDY_FOLDER...]
#   e.g. deploy_scripts/send_volume.sh ../shared/data/TestVolumes/Study1
# Environment: ORTHANC_HOST, ORTHANC_DICOM_PORT, ORTHANC_AET, SCANNER_AET (see common.sh).
set -euo pipefail
# shellcheck source=deploy_scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

(($# >= 1)) || die "usage: $0 STUDY_FOLDER [STUDY_FOLDER...]"
need_cmd storescu

for folder in "$@"; do
  [[ -d "$folder" ]] || die "$folder is not a folder"
  count="$(find "$folder" -type f -name '*.dcm' | wc -l)"
  ((count > 0)) || die "no .dcm file under $folder"
  log "sending $count files from $folder to $ORTHANC_AET@$ORTHANC_HOST:$ORTHANC_DICOM_PORT as $SCANNER_AET"
  start=$SECONDS
  # +sd scan the folder, +r recursively, +sp only *.dcm; -R propose only the SOP classes
  # present; TCP_NODELAY=1: dcmtk otherwise waits on Nagle's algorithm for every PDU.
  TCP_NODELAY=1 storescu --aetitle "$SCANNER_AET" --call "$ORTHANC_AET" \
    --scan-directories --recurse --scan-pattern '*.dcm' --required \
    "$ORTHANC_HOST" "$ORTHANC_DICOM_PORT" "$folder"
  log "sent $count files from $folder in $((SECONDS - start)) s"
done
