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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from scipy import ndimage

from hippo_scp.model.dataset import (
    AP_AXIS,
    Split,
    default_data_dir,
    list_case_ids,
    load_case,
)
from hippo_scp.model.inference import WEIGHTS_FILENAME, Segmenter, default_weights_path

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


def percent_error(predicted: float, reference: float) -> float:
    """Signed error in % of the reference (NaN when the reference is empty)."""
    return 100.0 * (predicted - reference) / reference if reference else float("nan")


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
        values[f"volume_error_{name}_pct"] = percent_error(vp, vt)
    offset = ap_boundary_index(pred) - ap_boundary_index(truth)
    values["ap_boundary_offset_mm"] = offset * float(spacing[AP_AXIS])
    resplit = split_at_reference_boundary(pred, truth)
    values["dice_anterior_reference_boundary"] = dice(resplit == 1, truth == 1)
    values["dice_posterior_reference_boundary"] = dice(resplit == 2, truth == 2)
    return CaseMetrics(**values)  # type: ignore[arg-type]


#: Per-case values whose mean gets a bootstrap confidence interval: the issue's targets.
HEADLINE_METRICS: dict[str, Callable[[CaseMetrics], float]] = {
    "dice_anterior": lambda r: r.dice_anterior,
    "dice_posterior": lambda r: r.dice_posterior,
    "abs_volume_error_total_pct": lambda r: abs(r.volume_error_total_pct),
}
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def bootstrap_ci(
    values: np.ndarray, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over cases (resampling cases, fixed seed).

    Why: a validation split of ~20 cases moves the mean Dice by about a hundredth from case
    to case, so a difference between two models, or to a target, needs its uncertainty next
    to it. Deterministic (seeded) so that the same CSV always prints the same interval.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = v[rng.integers(0, v.size, size=(resamples, v.size))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return (float(lo), float(hi))


@dataclass
class EvaluationSummary:
    """Means over cases; volume errors also as mean absolute values (the target metric)."""

    n_cases: int
    model_version: str
    mean: dict[str, float]
    mean_abs_volume_error_pct: dict[str, float]
    median_inference_ms: float
    #: 95 % bootstrap interval of the mean, for each of :data:`HEADLINE_METRICS`
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)


def summarise(rows: list[CaseMetrics], version: str) -> EvaluationSummary:
    numeric = [f.name for f in fields(CaseMetrics) if f.name != "case_id"]
    arr = {k: np.array([getattr(r, k) for r in rows], dtype=float) for k in numeric}
    mean = {
        k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in arr.items()
    }
    mae = {name: float(np.nanmean(np.abs(arr[f"volume_error_{name}_pct"]))) for name in STRUCTURES}
    ci95 = {
        name: bootstrap_ci(np.array([get(r) for r in rows], dtype=float))
        for name, get in HEADLINE_METRICS.items()
    }
    ms = arr["inference_ms"]
    median_ms = float(np.nanmedian(ms)) if np.isfinite(ms).any() else float("nan")
    return EvaluationSummary(len(rows), version, mean, mae, median_ms, ci95)


@dataclass
class PairedDifference:
    """Mean per-case difference (candidate minus baseline) of one headline metric."""

    metric: str
    mean: float
    ci95: tuple[float, float]
    better_cases: int  # cases where the candidate is better (higher Dice, lower error)
    worse_cases: int


def compare_paired(
    candidate: list[CaseMetrics], baseline: list[CaseMetrics]
) -> list[PairedDifference]:
    """Paired comparison of two models on the same cases (bootstrap over cases).

    Why paired: most of the spread of a mean Dice over ~20 cases is which cases are hard,
    and that is shared by both models; the per-case difference removes it, so a small
    real gain is visible and a seed-level wobble is not mistaken for one.
    """
    by_id = {r.case_id: r for r in baseline}
    missing = [r.case_id for r in candidate if r.case_id not in by_id]
    if missing or len(candidate) != len(baseline):
        raise ValueError(f"the two evaluations cover different cases (e.g. {missing[:3]})")
    out = []
    for name, get in HEADLINE_METRICS.items():
        diff = np.array([get(r) - get(by_id[r.case_id]) for r in candidate], dtype=float)
        sign = -1.0 if name.startswith("abs_volume_error") else 1.0
        out.append(
            PairedDifference(
                name,
                float(np.nanmean(diff)),
                bootstrap_ci(diff),
                int((sign * diff > 0).sum()),
                int((sign * diff < 0).sum()),
            )
        )
    return out


def format_comparison(diffs: list[PairedDifference], candidate: str, baseline: str) -> str:
    lines = [f"paired difference, {candidate} minus {baseline} (95 % bootstrap interval):"]
    for d in diffs:
        lines.append(
            f"  {d.metric:<28}{d.mean:+.4f} [{d.ci95[0]:+.4f}, {d.ci95[1]:+.4f}]  "
            f"better in {d.better_cases}, worse in {d.worse_cases} cases"
        )
    return "\n".join(lines)


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


def format_table(rows: list[CaseMetrics], summary: EvaluationSummary, per_case: bool = True) -> str:
    """Per-case lines (unless ``per_case`` is false), then the means and intervals."""
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

    if per_case:
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
    if summary.ci95:
        ci = summary.ci95
        lines.append(
            "95 % bootstrap interval of the mean: Dice anterior "
            f"[{ci['dice_anterior'][0]:.4f}, {ci['dice_anterior'][1]:.4f}], posterior "
            f"[{ci['dice_posterior'][0]:.4f}, {ci['dice_posterior'][1]:.4f}]; "
            "|total volume error| % "
            f"[{ci['abs_volume_error_total_pct'][0]:.2f}, "
            f"{ci['abs_volume_error_total_pct'][1]:.2f}]"
        )
    lines.append(
        f"model {summary.model_version}; median inference {summary.median_inference_ms:.0f} ms"
    )
    return "\n".join(lines)


def write_csv(rows: list[CaseMetrics], path: Path, runs: list[str] | None = None) -> None:
    """One line per case; ``runs`` (one name per row) adds a leading ``run`` column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [fl.name for fl in fields(CaseMetrics)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=(["run"] if runs is not None else []) + names)
        w.writeheader()
        for i, r in enumerate(rows):
            values = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(r).items()}
            w.writerow({"run": runs[i], **values} if runs is not None else values)


def evaluate_cases(segmenter: Segmenter, data_dir: Path, ids: list[str]) -> list[CaseMetrics]:
    """Segment each case through ``segmenter`` (the node's path) and score it."""
    rows: list[CaseMetrics] = []
    for cid in ids:
        c = load_case(data_dir, cid)
        t0 = time.perf_counter()
        pred = segmenter.segment(c.image, c.spacing)
        ms = (time.perf_counter() - t0) * 1000.0
        rows.append(case_metrics(cid, pred, c.label, c.spacing, ms))
    return rows


def run_evaluation(
    data_dir: Path | None = None,
    weights: Path | None = None,
    cases: str = "split",
    csv_path: Path | None = None,
    threads: int | None = None,
    echo: Callable[[str], None] = print,
    baseline: Path | None = None,
) -> tuple[list[CaseMetrics], EvaluationSummary]:
    """Segment the chosen cases with ``weights`` and print/write per-case and mean metrics;
    with ``baseline``, also score that weights file on the same cases and print the paired
    difference (see :func:`compare_paired`)."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    weights = Path(weights) if weights else default_weights_path()
    segmenter = Segmenter(weights, num_threads=threads)
    ids = resolve_cases(cases, data_dir, weights)
    rows = evaluate_cases(segmenter, data_dir, ids)
    summary = summarise(rows, segmenter.model_version)
    echo(format_table(rows, summary))
    csv_path = Path(csv_path) if csv_path else weights.parent / "evaluation.csv"
    write_csv(rows, csv_path)
    echo(f"per-case CSV: {csv_path}")
    if any(math.isnan(r.hd95_total_mm) for r in rows):
        echo("note: HD95 is NaN where a structure is missing from prediction or reference")
    if baseline is not None:
        reference = Segmenter(Path(baseline), num_threads=threads)
        base_rows = evaluate_cases(reference, data_dir, ids)
        echo(
            format_comparison(
                compare_paired(rows, base_rows),
                segmenter.model_version,
                reference.model_version,
            )
        )
    return rows, summary


@dataclass(frozen=True)
class CrossValidationRun:
    """One fold of a cross-validation: its weights and the cases its training never saw."""

    name: str
    weights: Path
    split: Split


def find_cross_validation_runs(runs_dir: Path) -> list[CrossValidationRun]:
    """The training runs under ``runs_dir`` (each sub-folder with weights and ``split.json``,
    as ``hippo-scp train --fold K`` writes them).

    Why the checks: a pooled estimate is only honest if every case is scored once, by a model
    that did not train on it, and if all folds cut the same shuffled order. So the runs must
    share the split seed and fraction and their held-out sets must be disjoint; a repeat of
    a fold (another seed, say) belongs in another folder.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir} is not a folder of training runs")
    runs = []
    for d in sorted(runs_dir.iterdir()):
        if not ((d / WEIGHTS_FILENAME).is_file() and (d / "split.json").is_file()):
            continue
        try:
            split = Split.load(d / "split.json")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{d / 'split.json'} is not a split file: {exc!r}") from exc
        runs.append(CrossValidationRun(d.name, d / WEIGHTS_FILENAME, split))
    if not runs:
        raise FileNotFoundError(
            f"no training runs in {runs_dir}: expected sub-folders holding "
            f"{WEIGHTS_FILENAME} and split.json (hippo-scp train --fold K --out {runs_dir}/foldK)"
        )
    schemes = {(r.split.seed, r.split.val_fraction) for r in runs}
    if len(schemes) > 1:
        raise ValueError(f"the runs in {runs_dir} use different splits (seed, fraction): {schemes}")
    owner: dict[str, str] = {}
    for r in runs:
        for cid in r.split.validation:
            if cid in owner:
                raise ValueError(
                    f"{cid} is held out by both {owner[cid]} and {r.name}: each case must be "
                    "scored by one fold only (move repeated folds to another folder)"
                )
            owner[cid] = r.name
    return runs


def score_cross_validation(
    runs: list[CrossValidationRun],
    data_dir: Path,
    threads: int | None = None,
    echo: Callable[[str], None] = print,
) -> tuple[list[CaseMetrics], list[str], set[str]]:
    """Rows of every run's held-out cases, the run of each row, the model versions seen."""
    rows: list[CaseMetrics] = []
    run_of_row: list[str] = []
    versions: set[str] = set()
    for run in runs:
        segmenter = Segmenter(run.weights, num_threads=threads)
        fold_rows = evaluate_cases(segmenter, data_dir, run.split.validation)
        rows += fold_rows
        run_of_row += [run.name] * len(fold_rows)
        versions.add(segmenter.model_version)
        echo(
            f"{run.name:<14}fold {run.split.fold:>2}  {len(fold_rows):>3} cases  Dice "
            f"{np.mean([r.dice_anterior for r in fold_rows]):.4f} / "
            f"{np.mean([r.dice_posterior for r in fold_rows]):.4f}  {segmenter.model_version}"
        )
    return rows, run_of_row, versions


def run_cross_validation(
    runs_dir: Path,
    data_dir: Path | None = None,
    csv_path: Path | None = None,
    threads: int | None = None,
    echo: Callable[[str], None] = print,
    baseline_dir: Path | None = None,
) -> tuple[list[CaseMetrics], EvaluationSummary]:
    """Score every fold's weights on the cases it held out and pool them: a recipe's accuracy
    over the whole data set instead of one ~20-case split (whose mean moves by +-0.015).

    With ``baseline_dir`` (another recipe's fold runs over the same cases) also print the
    paired difference over all pooled cases: ten times the cases of one split, so a recipe
    change of a few thousandths of Dice becomes measurable.
    """
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    runs = find_cross_validation_runs(runs_dir)
    base_runs = find_cross_validation_runs(baseline_dir) if baseline_dir is not None else None
    if base_runs is not None:
        held_out = {c for r in runs for c in r.split.validation}
        base_held_out = {c for r in base_runs for c in r.split.validation}
        if held_out != base_held_out:  # checked before hours of inference, not after
            raise ValueError(
                f"{runs_dir} and {baseline_dir} hold out different cases "
                f"({len(held_out ^ base_held_out)} differ): a paired comparison needs the same"
            )
    rows, run_of_row, versions = score_cross_validation(runs, data_dir, threads, echo)
    n_data = len(list_case_ids(data_dir))
    summary = summarise(rows, f"cross-validation of {len(runs)} runs ({len(versions)} weights)")
    echo(format_table(rows, summary, per_case=False))
    if len(rows) < n_data:
        echo(f"note: the runs hold out {len(rows)} of the {n_data} cases in {data_dir}")
    csv_path = Path(csv_path) if csv_path else Path(runs_dir) / "cross_validation.csv"
    write_csv(rows, csv_path, runs=run_of_row)
    echo(f"per-case CSV: {csv_path}")
    if base_runs is not None:
        echo(f"baseline: {baseline_dir}")
        base_rows, _, _ = score_cross_validation(base_runs, data_dir, threads, echo)
        echo(format_comparison(compare_paired(rows, base_rows), str(runs_dir), str(baseline_dir)))
    return rows, summary
