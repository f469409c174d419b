"""Labelled cases sent to a running node as DICOM come back as the model's labels and volumes.

This is how the released model is scored on hidden cases: through the DICOM path, not on NIfTI
arrays. ``docs/validate_dicom_path.py`` does it for the 21 validation cases (and its JSON feeds
the validation plan); here three of them go through a real ``hippo-scp serve`` process: an
integer-valued case, a fractional one, and one whose range needs a RescaleSlope.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import validate_dicom_path as dicom_path

from tests.dicom_factory import require_data

#: Validation cases: integer intensities (max 252), fractional (max 3108), beyond int16 (730529).
CASES = ("hippocampus_173", "hippocampus_008", "hippocampus_155")
REGENERATE = "run .venv/bin/python docs/validate_dicom_path.py and commit its JSON"


def _shipped_version() -> str:
    from hippo_scp.model.inference import default_weights_path
    from hippo_scp.model.weights import model_version, sidecar_path

    path = default_weights_path()
    if not path.is_file():
        pytest.skip(f"no model weights at {path}")
    return model_version(json.loads(sidecar_path(path).read_text())["sha256"])


@pytest.mark.network
@pytest.mark.timeout(300)
def test_cases_sent_through_the_node_score_like_the_model_in_process(tmp_path: Path) -> None:
    _shipped_version()
    require_data()
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk storescu not installed")
    out = tmp_path / "dicom_path.json"
    assert dicom_path.main(["--cases", *CASES, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {row["case_id"]: row for row in result["cases"]}
    assert set(rows) == set(CASES) and all("error" not in row for row in rows.values())
    assert [rows[c]["rescaled"] for c in CASES] == [False, False, True]
    # Integer intensities reach the model unchanged: the SEG is the in-process labelling.
    assert rows["hippocampus_173"]["voxels_differing_from_in_process"] == 0
    for row in rows.values():
        # Rounding fractional intensities to DICOM integers may flip a tie voxel, no more.
        assert row["voxels_differing_from_in_process"] <= 5, row
        for part in ("anterior", "posterior", "total"):
            assert row[f"dice_{part}"] == pytest.approx(row[f"dice_{part}_in_process"], abs=2e-3)
            # The SR reports exactly the SEG's volume (1 mm voxels: integer mm³).
            assert row[f"sr_volume_{part}_mm3"] == row[f"seg_volume_{part}_mm3"], (part, row)
        assert row["dice_total"] > 0.85, row  # and it is a hippocampus, not noise


def test_committed_dicom_path_numbers_are_from_the_shipped_weights() -> None:
    expected = _shipped_version()
    committed = json.loads(dicom_path.OUT_JSON.read_text())
    assert committed["model_version"] == expected, REGENERATE
    summary = committed["summary"]
    assert summary["cases_with_results"] == summary["cases"] == 21, REGENERATE
