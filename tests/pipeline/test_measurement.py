"""Volumes are voxel counts x voxel volume; QC flags describe, never block."""

from __future__ import annotations

import numpy as np
import pytest

from hippo_scp.pipeline.measurement import QCThresholds, measure_volumes, qc_flags


def test_volumes_are_counts_times_voxel_volume():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:2] = 1  # 200 voxels
    labels[5:8] = 2  # 300 voxels
    v = measure_volumes(labels, 0.5 * 0.5 * 2.0)
    assert (v.anterior_voxels, v.posterior_voxels, v.total_voxels) == (200, 300, 500)
    assert v.anterior_mm3 == pytest.approx(100.0)
    assert v.posterior_mm3 == pytest.approx(150.0)
    assert v.total_mm3 == pytest.approx(250.0)
    assert v.anterior_share + v.posterior_share == pytest.approx(1.0)
    assert v.to_json_dict()["total_voxels"] == 500


def test_unexpected_labels_and_bad_voxel_volume_are_rejected():
    with pytest.raises(ValueError, match="unexpected label"):
        measure_volumes(np.full((2, 2, 2), 3, np.uint8), 1.0)
    with pytest.raises(ValueError, match="positive"):
        measure_volumes(np.zeros((2, 2, 2), np.uint8), 0.0)


def _volumes(anterior: int, posterior: int):
    labels = np.zeros(anterior + posterior + 1, np.uint8)
    labels[:anterior] = 1
    labels[anterior : anterior + posterior] = 2
    return measure_volumes(labels.reshape(-1, 1, 1), 1.0)


def test_qc_flags():
    assert qc_flags(_volumes(1600, 1700)) == []
    assert qc_flags(_volumes(0, 0)) == ["No hippocampus segmented (both labels empty)"]
    flags = qc_flags(_volumes(0, 3000))
    assert flags == ["Anterior hippocampus label empty"]
    (flag,) = qc_flags(_volumes(3000, 3000))
    assert "outside training range" in flag and "6,000" in flag
    (flag,) = qc_flags(_volumes(500, 500))
    assert "outside training range" in flag
    assert qc_flags(_volumes(1600, 1700), QCThresholds(total_min_mm3=4000)) != []
    (flag,) = qc_flags(_volumes(1600, 1700), confidence=0.5)
    assert "confidence" in flag
    assert qc_flags(_volumes(1600, 1700), confidence=0.95) == []
