"""Start-up warm-up: the synthetic series is a valid series, analysed end to end by the shipped
model, and a failing warm-up never stops the node."""

from __future__ import annotations

import logging

import pytest

from hippo_scp.config import DEFAULT_WEIGHTS_PATH
from hippo_scp.imaging.series_volume import series_to_volume
from hippo_scp.network.outbox import EncodedObjects
from hippo_scp.pipeline.warmup import WARM_UP_SHAPE, synthetic_series, warm_up


def test_synthetic_series_is_a_series_the_node_would_analyse() -> None:
    datasets = synthetic_series()
    volume = series_to_volume(list(reversed(datasets)), min_slices=8)
    slices, rows, columns = WARM_UP_SHAPE
    assert volume.voxels.shape == (columns, rows, slices)
    assert tuple(float(s) for s in volume.spacing_mm) == (1.0, 1.0, 1.0)
    assert volume.voxels.max() > volume.voxels.min()  # an image, not a constant
    assert len({ds.SeriesInstanceUID for ds in datasets}) == 1
    assert all(ds.PatientID == "WARM-UP" for ds in datasets)  # no patient data


def test_warm_up_runs_the_whole_analysis_with_the_shipped_model(caplog) -> None:
    if not DEFAULT_WEIGHTS_PATH.is_file():
        pytest.skip("shipped weights absent")
    from hippo_scp.model.inference import Segmenter
    from hippo_scp.pipeline.analysis import SeriesAnalyzer

    analyzer = SeriesAnalyzer(Segmenter(num_threads=2))
    # the shipped model's measured volume error reaches the report
    assert analyzer.identity.model_error_lines[0].startswith("Volume error in cross-validation")
    serialised: list[EncodedObjects] = []
    with caplog.at_level(logging.INFO, logger="hippo_scp.pipeline.warmup"):
        elapsed = warm_up(
            analyzer.analyze, lambda objects: serialised.append(EncodedObjects.of(objects))
        )
    assert elapsed > 0
    (objects,) = serialised
    assert len(objects) == 3 and all(len(blob) > 1000 for blob in objects.blobs)
    assert "warm-up analysis of a synthetic series" in caplog.text


def test_a_failing_warm_up_is_logged_and_does_not_raise(caplog) -> None:
    def broken(datasets):
        raise RuntimeError("model exploded")

    with caplog.at_level(logging.WARNING, logger="hippo_scp.pipeline.warmup"):
        warm_up(broken)
    assert "warm-up analysis failed" in caplog.text and "model exploded" in caplog.text
