"""Shipped weights: integrity check, version string, determinism and quality on real volumes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from hippo_scp.model.dataset import load_case
from hippo_scp.model.evaluation import dice
from hippo_scp.model.inference import Segmenter, WeightsIntegrityError, default_weights_path

# Training (not validation) cases: the shipped model has seen them, so this checks that the
# right weights are wired to the right preprocessing, not generalisation.
QUALITY_CASES = ["hippocampus_001", "hippocampus_003", "hippocampus_004"]


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(num_threads=2)


def test_version_is_sha_of_file(segmenter):
    meta = json.loads(default_weights_path().with_suffix(".json").read_text())
    assert segmenter.weights_sha256 == meta["sha256"]
    assert len(segmenter.weights_sha256) == 64
    assert segmenter.model_version == f"hippo-unet-1.0+sha256:{meta['sha256'][:12]}"
    assert default_weights_path().stat().st_size <= 20 * 1024 * 1024


def test_shipped_calibration_traces_back_to_the_training_run():
    """The shipped file is the training output plus a recorded offset: the sidecar names the
    training output's SHA-256 (the one training_metrics.json recorded) and the offset."""
    weights = default_weights_path()
    calibration = json.loads(weights.with_suffix(".json").read_text())["calibration"]
    training = json.loads((weights.parent / "training_metrics.json").read_text())
    assert calibration["source_sha256"] == training["weights_sha256"]
    assert calibration["background_logit_offset"] == pytest.approx(0.45)
    assert "out-of-fold" in calibration["chosen_on"]


def test_corrupt_weights_are_refused(tmp_path):
    src = default_weights_path()
    dst = tmp_path / src.name
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    data = bytearray(dst.read_bytes())
    data[-10] ^= 0xFF
    dst.write_bytes(bytes(data))
    with pytest.raises(WeightsIntegrityError, match="SHA-256 mismatch"):
        Segmenter(dst)


def test_missing_weights_or_sidecar_are_refused(tmp_path):
    with pytest.raises(WeightsIntegrityError, match="not found"):
        Segmenter(tmp_path / "nope.safetensors")
    lone = tmp_path / "lone.safetensors"
    shutil.copy(default_weights_path(), lone)
    with pytest.raises(WeightsIntegrityError, match="expected SHA-256 is unknown"):
        Segmenter(lone)


def test_env_var_selects_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HIPPO_WEIGHTS", str(tmp_path / "elsewhere.safetensors"))
    with pytest.raises(WeightsIntegrityError):
        Segmenter()


def test_shipped_weights_segment_training_volumes(data_dir, segmenter):
    scores = []
    for cid in QUALITY_CASES:
        case = load_case(data_dir, cid)
        pred = segmenter.segment(case.image, case.spacing)
        assert pred.dtype == np.uint8 and pred.shape == case.image.shape
        assert set(np.unique(pred)) <= {0, 1, 2}
        scores.append([dice(pred == k, case.label == k) for k in (1, 2)])
    mean = np.mean(scores, axis=0)
    assert mean[0] >= 0.85 and mean[1] >= 0.85, f"mean Dice anterior/posterior {mean}"


def test_segmentation_is_deterministic_and_scale_invariant(data_dir, segmenter):
    case = load_case(data_dir, QUALITY_CASES[0])
    a = segmenter.segment(case.image, case.spacing)
    b = segmenter.segment(case.image.copy(), case.spacing)
    assert np.array_equal(a, b)
    # int16 storage with a RescaleSlope, as DICOM delivers it
    c = segmenter.segment((case.image * 4.0 - 100.0).astype(np.int16), case.spacing)
    assert (a == c).mean() > 0.999


def test_non_isotropic_input_comes_back_on_its_own_grid(data_dir, segmenter):
    case = load_case(data_dir, QUALITY_CASES[1])
    coarse = case.image[:, :, ::2]
    pred = segmenter.segment(coarse, (1.0, 1.0, 2.0))
    assert pred.shape == coarse.shape
    ref = case.label[:, :, ::2]
    assert dice(pred > 0, ref > 0) > 0.75


def test_torchscript_backend_matches_eager(data_dir, segmenter, monkeypatch):
    """The frozen TorchScript graph is only a speed-up: labels equal the eager model's."""
    monkeypatch.setenv("HIPPO_TORCH_JIT", "0")
    eager = Segmenter(num_threads=2)
    assert eager.backend == "eager"
    assert segmenter.backend == "torchscript"
    for cid in QUALITY_CASES:
        case = load_case(data_dir, cid)
        assert np.array_equal(
            segmenter.segment(case.image, case.spacing), eager.segment(case.image, case.spacing)
        )
