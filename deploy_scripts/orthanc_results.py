#!/usr/bin/env python3
"""List hippo-scp's results stored in Orthanc, optionally waiting for them; print the volumes.

Reads Orthanc's REST API only (standard library; pydicom is used when importable to read the
volumes from the SR, else the SR's JSON tags from Orthanc are walked):

    orthanc_results.py [--url http://127.0.0.1:8042] [--wait 300] [--studies N] [--json]

For every study it reports the node's result series (Manufacturer "hippo-scp"): SR, SEG and
Secondary Capture (OT), and the volumes of the SR (anterior, posterior, whole hippocampus,
in mm³). With --wait, it polls until every study that holds a HippoCrop series (or at least
--studies studies) has its SR + SEG + SC, and exits 1 on timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

OWN_MANUFACTURER = "hippo-scp"
RESULT_KINDS = {"SR": "sr", "SEG": "seg", "OT": "sc"}


class Orthanc:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as answer:
            return json.load(answer)

    def post(self, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)


def _walk_sr(items: list[dict[str, Any]], found: dict[str, float], group: str | None) -> None:
    """Collect NUM "Volume" values per tracking identifier from Orthanc's /tags JSON."""
    tracking = group
    for item in items:
        if item.get("ValueType") == "TEXT":
            name = _concept(item)
            if name.lower() == "tracking identifier":
                tracking = str(item.get("TextValue"))
    for item in items:
        value_type = item.get("ValueType")
        if value_type == "NUM" and tracking:
            measured = item.get("MeasuredValueSequence") or []
            if measured and "NumericValue" in measured[0]:
                name = _concept(item)
                if name.lower() == "volume":
                    found[tracking] = float(measured[0]["NumericValue"])
        children = item.get("ContentSequence")
        if children:
            _walk_sr(children, found, tracking if value_type != "CONTAINER" else None)


def _concept(item: dict[str, Any]) -> str:
    codes = item.get("ConceptNameCodeSequence") or []
    return str(codes[0].get("CodeMeaning", "")) if codes else ""


def sr_volumes(orthanc: Orthanc, instance_id: str) -> dict[str, float]:
    """Volumes (mm³) by tracking identifier, e.g. {"Anterior hippocampus": 1712.0, ...}."""
    tags = orthanc.get(f"/instances/{instance_id}/tags?simplify")
    found: dict[str, float] = {}
    _walk_sr(tags.get("ContentSequence") or [], found, None)
    return found


def collect(orthanc: Orthanc) -> list[dict[str, Any]]:
    studies = []
    for study_id in orthanc.get("/studies"):
        study = orthanc.get(f"/studies/{study_id}")
        entry: dict[str, Any] = {
            "orthanc_id": study_id,
            "study_instance_uid": study["MainDicomTags"].get("StudyInstanceUID"),
            "patient_id": study.get("PatientMainDicomTags", {}).get("PatientID"),
            "has_hippocrop": False,
            "results": {"sr": [], "seg": [], "sc": []},
            "volumes_mm3": {},
        }
        for series_id in study["Series"]:
            series = orthanc.get(f"/series/{series_id}")
            tags = series["MainDicomTags"]
            if tags.get("SeriesDescription", "").lower() == "hippocrop":
                entry["has_hippocrop"] = True
            instances = series["Instances"]
            manufacturer = tags.get("Manufacturer")
            if manufacturer is None and instances:
                manufacturer = orthanc.get(f"/instances/{instances[0]}/simplified-tags").get(
                    "Manufacturer"
                )
            kind = RESULT_KINDS.get(tags.get("Modality", ""))
            if manufacturer != OWN_MANUFACTURER or kind is None:
                continue
            entry["results"][kind].extend(instances)
            if kind == "sr":
                for instance_id in instances:
                    entry["volumes_mm3"].update(sr_volumes(orthanc, instance_id))
        studies.append(entry)
    return studies


def complete(study: dict[str, Any]) -> bool:
    return all(len(study["results"][kind]) >= 1 for kind in ("sr", "seg", "sc"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8042", help="Orthanc base URL")
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for results")
    parser.add_argument("--studies", type=int, default=0, help="studies expected (at least)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    orthanc = Orthanc(args.url)

    deadline = time.monotonic() + args.wait
    while True:
        try:
            studies = collect(orthanc)
        except (urllib.error.URLError, OSError) as error:
            print(f"error: cannot read {args.url}: {error}", file=sys.stderr)
            return 2
        targets = [s for s in studies if s["has_hippocrop"]]
        ready = len(targets) >= max(args.studies, 1) and all(complete(s) for s in targets)
        if ready or time.monotonic() >= deadline:
            break
        time.sleep(1.0)

    if args.json:
        print(json.dumps(studies, indent=2))
    else:
        for study in studies:
            counts = ", ".join(f"{k.upper()} x{len(v)}" for k, v in study["results"].items())
            print(f"study {study['study_instance_uid']} (patient {study['patient_id']}): {counts}")
            for name, value in study["volumes_mm3"].items():
                print(f"    {name:<24} {value:8.0f} mm³")
    if args.wait and not ready:
        print(
            f"error: results incomplete after {args.wait:.0f} s "
            f"(need SR + SEG + SC in every study with a HippoCrop series)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
