"""``hippo-scp analyze`` on the real test studies and on edge-case folders.

The Study1..3 run uses the shipped model when its weights are present and otherwise a
deterministic stand-in segmenter; either way every segmenter output is recorded, so the SEG
can be checked against exactly what the model produced.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

import hippo_scp.cli.analyze as analyze_cli
from hippo_scp import MANUFACTURER, SOFTWARE_NAME
from hippo_scp.config import load_config
from hippo_scp.pipeline.analysis import SeriesAnalyzer
from tests.dicom_factory import (
    TEST_VOLUMES_DIR,
    require_data,
    series_from_volume,
    write_series,
)


class StandInSegmenter:
    """Deterministic labels from intensity (used when no weights are shipped yet)."""

    weights_sha256 = "5" * 64
    model_version = "stand-in"

    def segment(self, voxels, spacing_mm):
        labels = np.zeros(voxels.shape, np.uint8)
        x, y, z = (s // 2 for s in voxels.shape)
        box = (slice(x - 6, x + 6), slice(y - 10, y + 10), slice(z - 6, z + 6))
        core = voxels[box] > np.median(voxels)
        part = np.where(np.arange(20)[None, :, None] < 10, 1, 2).astype(np.uint8)
        labels[box] = np.where(core, np.broadcast_to(part, core.shape), 0)
        return labels


@dataclass
class Recorder:
    """Wraps a segmenter; keeps each output keyed by the first voxel block's bytes."""

    inner: object
    outputs: list[np.ndarray] = field(default_factory=list)

    @property
    def weights_sha256(self) -> str:
        return self.inner.weights_sha256

    @property
    def model_version(self) -> str:
        return self.inner.model_version

    def segment(self, voxels, spacing_mm):
        labels = self.inner.segment(voxels, spacing_mm)
        self.outputs.append(np.array(labels, copy=True))
        return labels


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    log: str
    out: Path
    recorder: Recorder
    loads: int


def _run(path: Path, out: Path, *, as_json: bool, segmenter: object | None = None) -> Run:
    """Call the command body with a recording segmenter; capture stdout/stderr and logs."""
    loads = 0
    recorder_box: list[Recorder] = []

    def load(weights_path, threads, min_slices):
        nonlocal loads
        loads += 1
        inner = segmenter
        if inner is None:
            weights = load_config(None).model.weights
            if Path(weights).is_file():
                from hippo_scp.model.inference import Segmenter

                inner = Segmenter(weights_path=Path(weights), num_threads=2)
            else:
                inner = StandInSegmenter()
        recorder_box.append(Recorder(inner))
        return SeriesAnalyzer(recorder_box[-1])

    log_stream = io.StringIO()
    handler = logging.StreamHandler(log_stream)
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(analyze_cli, "_load_analyzer", load)
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                code = analyze_cli.run_analyze(path, out, as_json=as_json)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    return Run(
        code,
        stdout.getvalue(),
        stderr.getvalue(),
        log_stream.getvalue(),
        out,
        recorder_box[0] if recorder_box else Recorder(None),
        loads,
    )


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Run:
    require_data()
    return _run(TEST_VOLUMES_DIR, tmp_path_factory.mktemp("analyze") / "out", as_json=True)


def _source_series(series_uid: str) -> list[pydicom.Dataset]:
    for folder in TEST_VOLUMES_DIR.glob("Study*/*"):
        first = next(folder.glob("*.dcm"))
        if pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID == series_uid:
            return [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")]
    raise AssertionError(f"source series {series_uid} not found")


def test_all_three_studies_analysed_with_one_model_load(studies):
    assert studies.code == 0, studies.stderr
    assert studies.loads == 1
    document = json.loads(studies.stdout)
    assert [s["status"] for s in document["series"]] == ["ok"] * 3
    assert document["series_found"] == 15
    assert len(document["not_selected"]) == 12
    assert len(studies.recorder.outputs) == 3
    for entry in document["series"]:
        folder = Path(entry["folder"])
        for name in ("sr.dcm", "seg.dcm", "report.dcm", "report.png", "result.json"):
            assert (folder / name).is_file(), name
        result = json.loads((folder / "result.json").read_text())
        assert result["series_description"] == "HippoCrop"
        assert result["volumes"]["total_mm3"] == entry["result"]["volumes"]["total_mm3"]
        assert set(result["timings_ms"]) >= {"load", "infer", "encode"}
        assert result["model_version"] == studies.recorder.model_version


def test_outputs_reread_and_agree_with_the_model(studies):
    document = json.loads(studies.stdout)
    for entry, labels in zip(document["series"], studies.recorder.outputs, strict=True):
        folder = Path(entry["folder"])
        sources = _source_series(entry["series_instance_uid"])
        sources.sort(key=lambda d: float(d.ImagePositionPatient[2]))
        src = sources[0]
        seg = hd.seg.segread(folder / "seg.dcm")
        sr = hd.sr.srread(folder / "sr.dcm")
        sc = pydicom.dcmread(folder / "report.dcm")
        for ds in (seg, sr, sc):
            assert ds.StudyInstanceUID == src.StudyInstanceUID
            assert ds.PatientName == src.PatientName and ds.PatientID == src.PatientID
            assert ds.Manufacturer == MANUFACTURER
            assert str(ds.SoftwareVersions[0]).startswith(SOFTWARE_NAME)
        assert len({ds.SeriesInstanceUID for ds in (seg, sr, sc)}) == 3
        assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID

        # SEG decodes to exactly the label array the model produced.
        decoded = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[d.SOPInstanceUID for d in sources],
            combine_segments=True,
        )
        np.testing.assert_array_equal(np.stack([np.flip(f).T for f in decoded], -1), labels)

        # SR volumes == SEG voxel counts x voxel volume (1 mm isotropic crops).
        spacing = [float(v) for v in src.PixelSpacing] + [float(src.SliceThickness)]
        voxel = float(np.prod(spacing))
        counts = {n: int((decoded == n).sum()) for n in (1, 2)}
        expected = {
            "Anterior hippocampus": counts[1] * voxel,
            "Posterior hippocampus": counts[2] * voxel,
            "Hippocampus": (counts[1] + counts[2]) * voxel,
        }
        groups = sr.content.get_volumetric_roi_measurement_groups()
        got = {
            g.tracking_identifier: g.get_measurements(name=codes.SCT.Volume)[0].value
            for g in groups
        }
        assert got == pytest.approx(expected)
        assert entry["result"]["volumes"]["total_mm3"] == pytest.approx(expected["Hippocampus"])

        assert (sc.Rows, sc.Columns, sc.SamplesPerPixel) == (1024, 1024, 3)
        assert sc.pixel_array.std() > 20


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk dsrdump not installed")
def test_dsrdump_accepts_every_sr(studies):
    for sr_path in sorted(studies.out.glob("*/sr.dcm")):
        run = subprocess.run(["dsrdump", "-v", str(sr_path)], capture_output=True, text=True)
        output = (run.stdout + run.stderr).lower()
        assert run.returncode == 0 and "warning" not in output and "error" not in output


def test_no_patient_identifiers_in_stdout_or_info_logs(studies):
    names = set()
    for path in TEST_VOLUMES_DIR.glob("Study*/*HCrop*/1.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        names |= {str(ds.PatientID), *str(ds.PatientName).split("^")}
    names.discard("")
    assert names
    for text in (studies.stdout, studies.log, studies.stderr):
        for value in names:
            assert value not in text


def _small_series(description: str, **kwargs) -> list[pydicom.Dataset]:
    rng = np.random.default_rng(0)
    volume = rng.integers(0, 200, size=(30, 36, 10)).astype(np.float32)
    return series_from_volume(volume, series_description=description, **kwargs)


def test_nothing_matched_exits_1_with_message(tmp_path):
    write_series(_small_series("T2_reg"), tmp_path / "in" / "t2")
    (tmp_path / "in" / "notes.txt").write_text("hello")
    run = _run(tmp_path / "in", tmp_path / "out", as_json=True, segmenter=StandInSegmenter())
    assert run.code == analyze_cli.EXIT_NOTHING_MATCHED
    assert "no series matched" in run.stderr
    assert json.loads(run.stdout)["error"] == "no series matched the selection rules"
    assert run.loads == 0  # nothing to analyse: the model is not even loaded


def test_refused_series_exits_3_and_others_are_written(tmp_path):
    good = _small_series("HippoCrop")
    gappy = _small_series("HippoCrop", seed=1)
    write_series(good, tmp_path / "in" / "good")
    write_series(gappy[:4] + gappy[5:], tmp_path / "in" / "nested" / "gap")
    run = _run(tmp_path / "in", tmp_path / "out", as_json=False, segmenter=StandInSegmenter())
    assert run.code == analyze_cli.EXIT_REFUSED
    assert "1 of 2 selected series refused or failed" in run.stderr
    # The summary table: one analysed row with volumes, one refused row with the reason.
    assert "HippoCrop" in run.stdout and "mm³" in run.stdout
    assert "REFUSED: SliceGapError" in run.stdout
    assert "Test" not in run.stdout and "TEST-0001" not in run.stdout + run.log
    ok = json.loads((run.out / good[0].SeriesInstanceUID / "result.json").read_text())
    assert ok["volumes"]["total_voxels"] > 0
    assert (run.out / good[0].SeriesInstanceUID / "seg.dcm").is_file()
    refused = json.loads((run.out / gappy[0].SeriesInstanceUID / "result.json").read_text())
    assert refused["status"] == "refused" and "SliceGapError" in refused["reason"]
    assert not (run.out / gappy[0].SeriesInstanceUID / "seg.dcm").exists()


def test_missing_weights_is_a_clear_usage_error(tmp_path):
    write_series(_small_series("HippoCrop"), tmp_path / "in")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = analyze_cli.run_analyze(
            tmp_path / "in", tmp_path / "out", weights=tmp_path / "absent.safetensors"
        )
    assert code == analyze_cli.EXIT_USAGE
    assert "model weights not found" in err.getvalue()


def test_help_documents_every_option():
    from typer.testing import CliRunner

    from hippo_scp.cli import app

    result = CliRunner().invoke(app, ["analyze", "--help"])
    assert result.exit_code == 0
    for option in ("PATH", "--out", "--json", "--config", "--weights", "--threads"):
        assert option in result.output


class BrokenSegmenter(StandInSegmenter):
    def segment(self, voxels, spacing_mm):
        raise ZeroDivisionError("boom")


def test_unexpected_failure_is_reported_and_does_not_abort(tmp_path):
    series = _small_series("HippoCrop")
    write_series(series, tmp_path / "in")
    run = _run(tmp_path / "in", tmp_path / "out", as_json=True, segmenter=BrokenSegmenter())
    assert run.code == analyze_cli.EXIT_REFUSED
    (entry,) = json.loads(run.stdout)["series"]
    assert entry["status"] == "failed" and "ZeroDivisionError" in entry["reason"]
