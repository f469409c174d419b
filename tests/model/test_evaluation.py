"""Evaluation metrics on real reference labels: the anterior/posterior boundary diagnostic,
the bootstrap interval of the means and the paired comparison of two models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from hippo_scp.model.dataset import list_case_ids, load_case
from hippo_scp.model.evaluation import (
    AP_AXIS,
    ap_boundary_index,
    bootstrap_ci,
    case_metrics,
    compare_paired,
    format_comparison,
    format_table,
    split_at_plane,
    split_at_reference_boundary,
    summarise,
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


def _rows_with_boundary_shift(data_dir: Path, slices: int) -> list:
    """Metrics of 'predictions' that are five references with the head starting later."""
    rows = []
    for case_id in list_case_ids(data_dir)[:5]:
        case = load_case(data_dir, case_id)
        first_anterior = int(np.indices(case.label.shape)[AP_AXIS][case.label == 1].min())
        pred = split_at_plane(case.label, first_anterior + slices)
        rows.append(case_metrics(case_id, pred, case.label, case.spacing))
    return rows


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible() -> None:
    values = np.array([0.86, 0.88, 0.90, 0.91, 0.87, 0.93, 0.89])
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi
    assert (lo, hi) == bootstrap_ci(values)  # seeded: the same CSV prints the same interval
    assert bootstrap_ci(np.full(7, 0.9)) == pytest.approx((0.9, 0.9))
    wide = bootstrap_ci(np.array([0.7, 0.8, 0.9, 1.0, 0.75, 0.95, 0.85]))
    assert wide[1] - wide[0] > hi - lo
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([math.nan])))


def test_paired_comparison_sees_a_better_boundary_on_every_case(data_dir: Path) -> None:
    baseline = _rows_with_boundary_shift(data_dir, 3)
    candidate = _rows_with_boundary_shift(data_dir, 1)
    diffs = {d.metric: d for d in compare_paired(candidate, baseline)}
    posterior = diffs["dice_posterior"]
    assert posterior.mean > 0 and posterior.ci95[0] > 0
    assert posterior.better_cases == 5 and posterior.worse_cases == 0
    assert diffs["dice_anterior"].better_cases == 5
    reverse = {d.metric: d for d in compare_paired(baseline, candidate)}
    assert reverse["dice_posterior"].mean == -posterior.mean
    text = format_comparison(list(diffs.values()), "new", "old")
    assert "new minus old" in text and "dice_posterior" in text


def test_paired_comparison_refuses_different_cases(data_dir: Path) -> None:
    rows = _rows_with_boundary_shift(data_dir, 1)
    with pytest.raises(ValueError, match="different cases"):
        compare_paired(rows[:4], rows[1:])


def test_summary_table_prints_the_interval(data_dir: Path) -> None:
    rows = _rows_with_boundary_shift(data_dir, 2)
    summary = summarise(rows, "test-model")
    lo, hi = summary.ci95["dice_posterior"]
    assert lo <= summary.mean["dice_posterior"] <= hi
    assert "95 % bootstrap interval of the mean" in format_table(rows, summary)
