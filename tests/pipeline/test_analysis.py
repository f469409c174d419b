"""SeriesAnalyzer end to end with a stand-in segmenter (ground-truth labels of a training
case), so the pipeline is tested without model weights."""

from __future__ import annotations

import datetime
import io
import json
import threading
import time
from dataclasses import replace

import highdicom as hd
import numpy as np
import pytest
from PIL import Image

from hippo_scp.imaging.errors import VolumeError
from hippo_scp.outputs.sr import read_volumes
from hippo_scp.pipeline.analysis import AnalysisError, SeriesAnalyzer
from hippo_scp.pipeline.prior_comparison import PriorLookup, PriorMeasurement
from tests.dicom_factory import (
    INTEGER_CASE,
    enhanced_from_series,
    load_nifti_case,
    require_data,
    series_from_volume,
)

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-778899"


class LabelSegmenter:
    """Returns fixed labels; records whether two calls ever overlapped."""

    weights_sha256 = "f" * 64
    model_version = "stand-in-1"

    def __init__(self, labels: np.ndarray, confidence: float | None = None):
        self.labels = labels
        self.confidence = confidence
        self.active = 0
        self.overlapped = False
        self.calls = 0

    def segment(self, voxels, spacing_mm):
        self.active += 1
        self.overlapped |= self.active > 1
        time.sleep(0.01)
        self.calls += 1
        self.active -= 1
        return self.labels


class ConfidentSegmenter(LabelSegmenter):
    def segment_with_confidence(self, voxels, spacing_mm):
        return self.segment(voxels, spacing_mm), self.confidence


@pytest.fixture(scope="module")
def case():
    require_data()
    image, label = load_nifti_case(INTEGER_CASE)
    sources = series_from_volume(image, patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
    return image, label, sources


@pytest.fixture(scope="module")
def result(case):
    _, label, sources = case
    return SeriesAnalyzer(LabelSegmenter(label)).analyze(list(reversed(sources)))


def test_result_holds_labels_volumes_and_three_objects(case, result):
    _, label, sources = case
    np.testing.assert_array_equal(result.labels, label)
    assert result.volumes.anterior_voxels == int((label == 1).sum())
    assert result.volumes.posterior_voxels == int((label == 2).sum())
    assert result.volumes.voxel_volume_mm3 == pytest.approx(1.0)
    assert result.study_instance_uid == sources[0].StudyInstanceUID
    assert result.series_instance_uid == sources[0].SeriesInstanceUID
    assert [ds.Modality for ds in result.datasets] == ["SEG", "SR", "OT"]
    assert len({ds.SeriesInstanceUID for ds in result.datasets}) == 3
    assert result.report_png.startswith(b"\x89PNG")
    # the PNG that `hippo-scp analyze` writes shows the page the PACS receives
    png_page = np.asarray(Image.open(io.BytesIO(result.report_png)).convert("RGB"))
    np.testing.assert_array_equal(png_page, result.report.pixel_array)
    assert set(result.timings_ms) >= {"load", "infer", "encode", "total"}
    assert result.model_version == "stand-in-1"
    assert result.slice_count == label.shape[2]


def test_json_dict_has_no_patient_identifiers(result):
    text = json.dumps(result.to_json_dict())
    assert PATIENT_ID not in text
    assert "Doe" not in text and "Jane" not in text
    data = json.loads(text)
    assert data["volumes"]["total_voxels"] == result.volumes.total_voxels
    assert data["outputs"]["seg"]["sop_instance_uid"] == result.seg.SOPInstanceUID


def test_sequential_calls_from_threads_are_serialised(case):
    image, label, sources = case
    small = series_from_volume(image[:, :, 10:20])
    segmenter = LabelSegmenter(label[:, :, 10:20])
    analyzer = SeriesAnalyzer(segmenter)
    errors: list[BaseException] = []

    def work():
        try:
            analyzer.analyze(small)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and segmenter.calls == 2 and not segmenter.overlapped


def test_confidence_flag_when_segmenter_reports_it(case):
    image, label, _ = case
    small = series_from_volume(image[:, :, 10:20])
    result = SeriesAnalyzer(ConfidentSegmenter(label[:, :, 10:20], 0.4)).analyze(small)
    assert result.confidence == pytest.approx(0.4)
    assert any("confidence" in flag for flag in result.qc_flags)


def test_refusals(case):
    image, label, sources = case
    with pytest.raises(VolumeError):
        SeriesAnalyzer(LabelSegmenter(label)).analyze(sources[:5] + sources[6:])  # gap
    with pytest.raises(AnalysisError, match="shape"):
        SeriesAnalyzer(LabelSegmenter(label[:-1])).analyze(sources)
    with pytest.raises(AnalysisError, match="labels"):
        SeriesAnalyzer(LabelSegmenter(label * 3)).analyze(sources)


def test_enhanced_multiframe_source(case):
    image, label, _ = case
    window = slice(8, 20)
    classic = series_from_volume(image[:, :, window])
    enhanced = enhanced_from_series(list(reversed(classic)))
    result = SeriesAnalyzer(LabelSegmenter(label[:, :, window])).analyze([enhanced])
    seg = hd.seg.Segmentation.from_dataset(result.seg)
    decoded = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=enhanced.SOPInstanceUID,
        source_frame_numbers=list(range(1, int(enhanced.NumberOfFrames) + 1)),
        combine_segments=True,
    )
    volume_frames = np.stack([np.flip(label[:, :, window][:, :, k].T) for k in range(12)])
    # Frame order of the enhanced instance may differ from slice order: match by content.
    assert sorted(map(bytes, decoded)) == sorted(map(bytes, volume_frames))


class StandInPriors:
    """Plays the PACS query (tested against a real Orthanc in tests/network): a fixed answer,
    and what it was asked."""

    def __init__(self, answer: PriorLookup):
        self.answer = answer
        self.asked: list[str] = []

    def lookup(self, current):
        self.asked.append(str(current.StudyInstanceUID))
        return self.answer


def _prior_from(result, study_uid: str, date: datetime.date) -> PriorMeasurement:
    """An earlier examination whose SR is ``result.sr`` (read back the way the query does)."""
    volumes = read_volumes(result.sr)
    return PriorMeasurement(
        study_uid,
        date,
        volumes["Anterior hippocampus"],
        volumes["Posterior hippocampus"],
        volumes["Hippocampus"],
        model_version=result.model_version,
    )


def test_the_report_compares_with_the_prior_the_source_returns(case, result):
    _, label, sources = case
    # the same images a year earlier, with 5 % more total volume
    earlier = _prior_from(result, "1.2.826.0.1.3680043.8.498.1", datetime.date(2023, 1, 1))
    earlier = replace(earlier, total_mm3=earlier.total_mm3 * 1.05)
    priors = StandInPriors(PriorLookup("found", (earlier,)))
    compared = SeriesAnalyzer(LabelSegmenter(label)).analyze(sources, prior_source=priors)
    assert priors.asked == [sources[0].StudyInstanceUID]
    comparison = compared.prior_comparison
    assert comparison is not None and comparison.interval_days == 365
    assert comparison.total.change_pct == pytest.approx(100 / 1.05 - 100)
    assert comparison.changes[0].change_pct == pytest.approx(0.0)
    assert comparison.same_model
    assert "priors" in compared.timings_ms
    data = compared.to_json_dict()["prior_comparison"]
    assert data["status"] == "compared" and data["interval_days"] == 365
    assert not compared.qc_flags  # -4.8 % is a plausible change
    # the report page differs from the one without comparison only in the bottom panel
    changed = np.argwhere((compared.report_rgb != result.report_rgb).any(axis=2))
    assert changed[:, 0].min() >= 780, "only the QC / prior panel (and the footer time) change"


def test_failed_or_empty_lookups_are_reported_not_raised(case):
    image, label, _ = case
    small = series_from_volume(image[:, :, 10:20])
    analyzer = SeriesAnalyzer(LabelSegmenter(label[:, :, 10:20]))
    for status, reason in (("failed", "ORTHANC@h:1: no answer"), ("none", "nothing earlier")):
        out = analyzer.analyze(small, prior_source=StandInPriors(PriorLookup(status, (), reason)))
        assert out.prior_comparison is None
        assert out.to_json_dict()["prior_comparison"] == {"status": status, "reason": reason}
    plain = analyzer.analyze(small)
    assert plain.prior_lookup is None and plain.to_json_dict()["prior_comparison"] is None


def test_a_refused_series_asks_the_pacs_nothing(case):
    _, label, sources = case
    priors = StandInPriors(PriorLookup("none", reason="x"))
    with pytest.raises(VolumeError):
        SeriesAnalyzer(LabelSegmenter(label)).analyze(
            sources[:5] + sources[6:], prior_source=priors
        )
    assert priors.asked == []


def test_an_implausible_change_is_a_qc_flag(case):
    image, label, _ = case
    small = series_from_volume(image[:, :, 10:20])
    first = SeriesAnalyzer(LabelSegmenter(label[:, :, 10:20])).analyze(small)
    earlier = _prior_from(first, "1.2.826.0.1.3680043.8.498.2", datetime.date(2023, 6, 1))
    earlier = replace(earlier, total_mm3=earlier.total_mm3 * 2)
    out = SeriesAnalyzer(LabelSegmenter(label[:, :, 10:20])).analyze(
        small, prior_source=StandInPriors(PriorLookup("found", (earlier,)))
    )
    assert any("-50 %" in flag and "same hippocampus" in flag for flag in out.qc_flags)


def test_results_of_no_earlier_examination_are_said_so(case):
    image, label, _ = case
    small = series_from_volume(image[:, :, 10:20])
    analyzer = SeriesAnalyzer(LabelSegmenter(label[:, :, 10:20]))
    first = analyzer.analyze(small)
    later = _prior_from(first, "1.2.826.0.1.3680043.8.498.3", datetime.date(2030, 1, 1))
    source = StandInPriors(PriorLookup("found", (later,)))
    out = analyzer.analyze(small, prior_source=source)
    assert out.prior_comparison is None
    assert out.to_json_dict()["prior_comparison"] == {
        "status": "none",
        "reason": "no result of a dated earlier examination",
    }
    undated = [ds.copy() for ds in small]
    for ds in undated:
        del ds.StudyDate
    out = analyzer.analyze(undated, prior_source=source)
    assert out.prior_comparison is None
    assert out.to_json_dict()["prior_comparison"]["status"] == "unavailable"
    assert "no StudyDate" in out.to_json_dict()["prior_comparison"]["reason"]
