"""Evaluation of a weights file: Dice, 95 % Hausdorff distance and volume error per case.

The volumes are segmented through :class:`~hippo_scp.model.inference.Segmenter`, i.e. the exact
path the node uses (preprocessing included), so the numbers describe the shipped behaviour.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from scipy import ndimage

from hippo_scp.model.dataset import AP_AXIS, default_data_dir, list_case_ids, load_case
from hippo_scp.model.inference import Segmenter, default_weights_path

#: Structures reported: name -> label values that make it up.
STRUCTURES: dict[str, tuple[int, ...]] = {
    "anterior": (1,),
    "posterior": (2,),
    "total": (1, 2),
}


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    denom = int(pred.sum()) + int(truth.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & truth).sum()) / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(3, 1))


def hausdorff95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Symmetric 95th-percentile surface distance in mm (max of the two directed values).

    NaN if either mask is empty (the distance is undefined there).
    """
    if not pred.any() or not truth.any():
        return float("nan")
    sp, st = _surface(pred), _surface(truth)
    dt_truth = ndimage.distance_transform_edt(~st, sampling=spacing)
    dt_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(max(np.percentile(dt_truth[sp], 95), np.percentile(dt_pred[st], 95)))


def ap_boundary_index(labels: np.ndarray) -> float:
    """Position of the plane across :data:`AP_AXIS` that best splits 1 (anterior, higher
    indices) from 2 (posterior): the index of the first anterior slice, the middle of the
    range when several planes misplace equally few voxels. NaN if either part is missing."""
    other = tuple(a for a in range(labels.ndim) if a != AP_AXIS)
    anterior = (labels == 1).sum(axis=other)
    posterior = (labels == 2).sum(axis=other)
    if not anterior.any() or not posterior.any():
        return float("nan")
    # misplaced(k) = anterior voxels below k + posterior voxels at or above k, k = 0..n
    below = np.concatenate([[0], np.cumsum(anterior)])
    above = np.concatenate([np.cumsum(posterior[::-1])[::-1], [0]])
    misplaced = below + above
    best = np.flatnonzero(misplaced == misplaced.min())
    return float(best[0] + best[-1]) / 2.0


def split_at_plane(labels: np.ndarray, first_anterior: float) -> np.ndarray:
    """``labels``' hippocampus (any label > 0) relabelled 1 (anterior) from index
    ``first_anterior`` across :data:`AP_AXIS` on and 2 (posterior) below it; background stays 0."""
    shape = [-1 if a == AP_AXIS else 1 for a in range(labels.ndim)]
    index = np.arange(labels.shape[AP_AXIS]).reshape(shape)
    parts = np.where(index >= first_anterior, 1, 2)
    return np.where(labels > 0, parts, 0).astype(labels.dtype)


def split_at_reference_boundary(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``pred``'s hippocampus split into anterior/posterior at the reference's boundary plane:
    the per-class Dice of this shows what is left when only the boundary is corrected."""
    k = ap_boundary_index(truth)
    return np.zeros_like(pred) if np.isnan(k) else split_at_plane(pred, k)


@dataclass
class CaseMetrics:
    case_id: str
    dice_anterior: float
    dice_posterior: float
    dice_total: float
    hd95_anterior_mm: float
    hd95_posterior_mm: float
    hd95_total_mm: float
    volume_true_anterior_mm3: float
    volume_pred_anterior_mm3: float
    volume_error_anterior_mm3: float
    volume_error_anterior_pct: float
    volume_true_posterior_mm3: float
    volume_pred_posterior_mm3: float
    volume_error_posterior_mm3: float
    volume_error_posterior_pct: float
    volume_true_total_mm3: float
    volume_pred_total_mm3: float
    volume_error_total_mm3: float
    volume_error_total_pct: float
    #: predicted minus reference A/P boundary plane, mm along AP_AXIS (+: the predicted
    #: boundary lies toward the head, so the posterior part is too long)
    ap_boundary_offset_mm: float
    #: Dice if the predicted hippocampus were split at the reference boundary plane
    dice_anterior_reference_boundary: float
    dice_posterior_reference_boundary: float
    inference_ms: float


def case_metrics(
    case_id: str,
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, float, float],
    inference_ms: float = float("nan"),
) -> CaseMetrics:
    voxel_mm3 = float(np.prod(spacing))
    values: dict[str, float | str] = {"case_id": case_id, "inference_ms": inference_ms}
    for name, labels in STRUCTURES.items():
        p, t = np.isin(pred, labels), np.isin(truth, labels)
        values[f"dice_{name}"] = dice(p, t)
        values[f"hd95_{name}_mm"] = hausdorff95(p, t, spacing)
        vt, vp = float(t.sum()) * voxel_mm3, float(p.sum()) * voxel_mm3
        values[f"volume_true_{name}_mm3"] = vt
        values[f"volume_pred_{name}_mm3"] = vp
        values[f"volume_error_{name}_mm3"] = vp - vt
        values[f"volume_error_{name}_pct"] = 100.0 * (vp - vt) / vt if vt else float("nan")
    offset = ap_boundary_index(pred) - ap_boundary_index(truth)
    values["ap_boundary_offset_mm"] = offset * float(spacing[AP_AXIS])
    resplit = split_at_reference_boundary(pred, truth)
    values["dice_anterior_reference_boundary"] = dice(resplit == 1, truth == 1)
    values["dice_posterior_reference_boundary"] = dice(resplit == 2, truth == 2)
    return CaseMetrics(**values)  # type: ignore[arg-type]


@dataclass
class EvaluationSummary:
    """Means over cases; volume errors also as mean absolute values (the target metric)."""

    n_cases: int
    model_version: str
    mean: dict[str, float]
    mean_abs_volume_error_pct: dict[str, float]
    median_inference_ms: float


def summarise(rows: list[CaseMetrics], version: str) -> EvaluationSummary:
    numeric = [f.name for f in fields(CaseMetrics) if f.name != "case_id"]
    arr = {k: np.array([getattr(r, k) for r in rows], dtype=float) for k in numeric}
    mean = {
        k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in arr.items()
    }
    mae = {name: float(np.nanmean(np.abs(arr[f"volume_error_{name}_pct"]))) for name in STRUCTURES}
    return EvaluationSummary(
        len(rows), version, mean, mae, float(np.nanmedian(arr["inference_ms"]))
    )


def resolve_cases(cases: str, data_dir: Path, weights: Path) -> list[str]:
    """'all', 'split' (validation ids of the split.json beside the weights) or a file."""
    if cases == "all":
        return list_case_ids(data_dir)
    if cases == "split":
        for candidate in (
            weights.parent / "split.json",
            default_weights_path().parent / "split.json",
        ):
            if candidate.is_file():
                return list(json.loads(candidate.read_text())["validation"])
        raise FileNotFoundError(f"no split.json beside {weights} or in model_weights/")
    path = Path(cases)
    text = path.read_text()
    if path.suffix == ".json":
        d = json.loads(text)
        return list(d["validation"] if isinstance(d, dict) else d)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def format_table(rows: list[CaseMetrics], summary: EvaluationSummary) -> str:
    head = (
        f"{'case':<18}{'Dice ant':>9}{'Dice post':>10}{'Dice tot':>9}{'HD95 a':>8}{'HD95 p':>8}"
        f"{'HD95 t':>8}{'Vol% a':>8}{'Vol% p':>8}{'Vol% t':>8}{'ms':>7}"
    )
    lines = [head, "-" * len(head)]

    def line(label: str, g: Callable[[str], float]) -> str:
        return (
            f"{label:<18}{g('dice_anterior'):>9.4f}{g('dice_posterior'):>10.4f}"
            f"{g('dice_total'):>9.4f}{g('hd95_anterior_mm'):>8.2f}{g('hd95_posterior_mm'):>8.2f}"
            f"{g('hd95_total_mm'):>8.2f}{g('volume_error_anterior_pct'):>8.1f}"
            f"{g('volume_error_posterior_pct'):>8.1f}{g('volume_error_total_pct'):>8.1f}"
            f"{g('inference_ms'):>7.0f}"
        )

    for r in rows:
        lines.append(line(r.case_id, lambda k, r=r: getattr(r, k)))
    lines.append("-" * len(head))
    lines.append(line(f"mean (n={summary.n_cases})", lambda k: summary.mean[k]))
    m = summary.mean_abs_volume_error_pct
    lines.append(
        f"mean |volume error| %: anterior {m['anterior']:.2f}, posterior {m['posterior']:.2f}, "
        f"total {m['total']:.2f};  mean volume error mm3: anterior "
        f"{summary.mean['volume_error_anterior_mm3']:+.0f}, posterior "
        f"{summary.mean['volume_error_posterior_mm3']:+.0f}, total "
        f"{summary.mean['volume_error_total_mm3']:+.0f}"
    )
    offsets = np.array([r.ap_boundary_offset_mm for r in rows], dtype=float)
    if np.isfinite(offsets).any():
        lines.append(
            f"anterior/posterior boundary vs reference (mm): mean {np.nanmean(offsets):+.2f}, "
            f"mean |offset| {np.nanmean(np.abs(offsets)):.2f}; Dice with the reference "
            f"boundary: anterior {summary.mean['dice_anterior_reference_boundary']:.4f}, "
            f"posterior {summary.mean['dice_posterior_reference_boundary']:.4f}"
        )
    lines.append(
        f"model {summary.model_version}; median inference {summary.median_inference_ms:.0f} ms"
    )
    return "\n".join(lines)


def write_csv(rows: list[CaseMetrics], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(CaseMetrics)])
        w.writeheader()
        for r in rows:
            w.writerow(
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(r).items()}
            )


def run_evaluation(
    data_dir: Path | None = None,
    weights: Path | None = None,
    cases: str = "split",
    csv_path: Path | None = None,
    threads: int | None = None,
    echo: Callable[[str], None] = print,
) -> tuple[list[CaseMetrics], EvaluationSummary]:
    """Segment the chosen cases with ``weights`` and print/write per-case and mean metrics."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    weights = Path(weights) if weights else default_weights_path()
    segmenter = Segmenter(weights, num_threads=threads)
    ids = resolve_cases(cases, data_dir, weights)
    rows: list[CaseMetrics] = []
    for cid in ids:
        c = load_case(data_dir, cid)
        t0 = time.perf_counter()
        pred = segmenter.segment(c.image, c.spacing)
        ms = (time.perf_counter() - t0) * 1000.0
        rows.append(case_metrics(cid, pred, c.label, c.spacing, ms))
    summary = summarise(rows, segmenter.model_version)
    echo(format_table(rows, summary))
    csv_path = Path(csv_path) if csv_path else weights.parent / "evaluation.csv"
    write_csv(rows, csv_path)
    echo(f"per-case CSV: {csv_path}")
    if any(math.isnan(r.hd95_total_mm) for r in rows):
        echo("note: HD95 is NaN where a structure is missing from prediction or reference")
    return rows, summary
