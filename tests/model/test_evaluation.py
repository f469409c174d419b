"""Evaluation metrics on real reference labels: the anterior/posterior boundary diagnostic."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hippo_scp.model.dataset import list_case_ids, load_case
from hippo_scp.model.evaluation import (
    AP_AXIS,
    ap_boundary_index,
    case_metrics,
    split_at_plane,
    split_at_reference_boundary,
)


def _reference_with_a_plane_boundary(data_dir: Path) -> tuple[np.ndarray, tuple]:
    """The first training label whose anterior/posterior split is an exact plane."""
    for case_id in list_case_ids(data_dir)[:20]:
        case = load_case(data_dir, case_id)
        index = np.indices(case.label.shape)[AP_AXIS]
        anterior, posterior = index[case.label == 1], index[case.label == 2]
        if anterior.min() > posterior.max():
            return case.label, case.spacing
    raise AssertionError("no plane-split case among the first 20: the convention changed?")


def test_boundary_of_a_reference_is_where_its_head_starts(data_dir: Path) -> None:
    truth, _ = _reference_with_a_plane_boundary(data_dir)
    k = ap_boundary_index(truth)
    index = np.indices(truth.shape)[AP_AXIS]
    assert index[truth == 1].min() >= k > index[truth == 2].max()
    # splitting the reference's own hippocampus at its own boundary gives it back
    assert np.array_equal(split_at_reference_boundary(truth, truth), truth)


def test_shifted_boundary_is_measured_in_mm_and_blamed_on_the_boundary(data_dir: Path) -> None:
    truth, spacing = _reference_with_a_plane_boundary(data_dir)
    k = ap_boundary_index(truth)
    index = np.indices(truth.shape)[AP_AXIS]
    first_anterior = int(index[truth == 1].min())
    pred = split_at_plane(truth, first_anterior + 2)  # head starts 2 slices later: posterior longer
    metrics = case_metrics("shifted", pred, truth, spacing)
    assert metrics.ap_boundary_offset_mm == (ap_boundary_index(pred) - k) * spacing[AP_AXIS]
    assert metrics.ap_boundary_offset_mm > 0
    assert metrics.dice_anterior < 1.0 and metrics.dice_posterior < 1.0
    # the outline is perfect, so correcting only the boundary recovers everything
    assert metrics.dice_anterior_reference_boundary == 1.0
    assert metrics.dice_posterior_reference_boundary == 1.0
    assert metrics.dice_total == 1.0


def test_boundary_is_undefined_when_a_part_is_missing(data_dir: Path) -> None:
    truth, spacing = _reference_with_a_plane_boundary(data_dir)
    only_posterior = np.where(truth > 0, 2, 0).astype(np.uint8)
    assert math.isnan(ap_boundary_index(only_posterior))
    metrics = case_metrics("no head", only_posterior, truth, spacing)
    assert math.isnan(metrics.ap_boundary_offset_mm)
    assert metrics.dice_anterior == 0.0
