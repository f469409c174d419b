"""Volume calibration: one background-logit offset, chosen on cross-validation predictions.

Why: the node reports volumes, and a network trained with a Dice loss tends to draw a
structure a little too large. Pooled over a 10-fold cross-validation of the shipped recipe
(``hippo-scp evaluate --cross-validation``) the predicted hippocampus was +1.9 % too large on
average, a systematic error the mean |volume error| carries on every case. Adding a constant
to the background logit before the arg-max shrinks every outline by the same decision margin
without touching the anterior/posterior split; the offset is chosen where the mean |total
volume error| of *out-of-fold* predictions is smallest, never on the cases a model is
validated on.

The offset is baked into the bias of the network's background output channel, so every path
(1 mm and resampled inputs, TorchScript and eager) applies it, and the calibrated file has a
new SHA-256, hence a new model version: calibrated and uncalibrated results can never be
mistaken for each other.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hippo_scp.model.dataset import Split, load_case
from hippo_scp.model.evaluation import CrossValidationRun, dice, percent_error
from hippo_scp.model.inference import Segmenter, network_scores
from hippo_scp.model.preprocessing import crop_padding, needs_resampling, prepare_volume
from hippo_scp.model.weights import load_weights, save_weights

#: Offsets tried by :func:`sweep_background_offset` (logit units; 0 = uncalibrated).
OFFSET_GRID: tuple[float, ...] = tuple(round(x, 2) for x in np.arange(-1.0, 1.0001, 0.05))
#: Name of the output layer whose bias channel 0 (background) carries the offset.
HEAD_BIAS = "head.bias"
BACKGROUND = 0


@dataclass(frozen=True)
class OffsetScore:
    """Out-of-fold accuracy of one background-logit offset, averaged over cases."""

    offset: float
    n_cases: int
    dice_anterior: float
    dice_posterior: float
    mean_abs_volume_error_total_pct: float
    mean_volume_error_total_pct: float


#: Structures whose out-of-fold volume error is summarised, in the order of the sweep's table.
ERROR_STRUCTURES: tuple[str, ...] = ("total", "anterior", "posterior")


@dataclass(frozen=True)
class VolumeErrorStats:
    """Out-of-fold |volume error| in % of the reference, per structure: what one reported
    volume is worth (the report prints it next to the volumes)."""

    n_cases: int
    median_abs_pct: dict[str, float]
    p90_abs_pct: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_cases": self.n_cases,
            **{
                name: {
                    "median_abs": round(self.median_abs_pct[name], 2),
                    "p90_abs": round(self.p90_abs_pct[name], 2),
                }
                for name in ERROR_STRUCTURES
            },
        }


@dataclass(frozen=True)
class CalibrationSweep:
    """What a sweep used and found; ``skipped`` names runs left out (and why).

    ``per_case`` is (cases, offsets, 5): Dice anterior, Dice posterior, then the signed
    volume error in % of the total, anterior and posterior structure.
    """

    scores: list[OffsetScore]
    used_runs: list[str]
    skipped: dict[str, str]
    per_case: np.ndarray
    #: offset the runs' weights already carry (swept offsets are on top of it)
    runs_offset: float = 0.0

    @property
    def best(self) -> OffsetScore:
        return choose_offset(self.scores)

    def volume_errors(self, offset: float) -> VolumeErrorStats:
        """Distribution of the out-of-fold |volume error| at one of the swept offsets."""
        index = [s.offset for s in self.scores].index(offset)
        errors = np.abs(self.per_case[:, index, 2:])
        return VolumeErrorStats(
            n_cases=int(errors.shape[0]),
            median_abs_pct={
                n: float(np.median(errors[:, i])) for i, n in enumerate(ERROR_STRUCTURES)
            },
            p90_abs_pct={
                n: float(np.percentile(errors[:, i], 90)) for i, n in enumerate(ERROR_STRUCTURES)
            },
        )


def calibration_offset(metadata: dict[str, Any] | None) -> float:
    """The background-logit offset a weights file already carries (0: never calibrated)."""
    record = (metadata or {}).get("calibration") or {}
    return float(record.get("background_logit_offset", 0.0))


def choose_offset(scores: Sequence[OffsetScore]) -> OffsetScore:
    """Smallest mean |total volume error|; among equals the offset closest to 0."""
    if not scores:
        raise ValueError("no offsets were scored")
    return min(scores, key=lambda s: (round(s.mean_abs_volume_error_total_pct, 6), abs(s.offset)))


def case_logits(segmenter: Segmenter, image: np.ndarray) -> np.ndarray:
    """(C, X, Y, Z) network logits of a 1 mm volume on its own grid (padding removed), through
    the same forward path as :meth:`Segmenter.segment`."""
    prepared = prepare_volume(image, (1.0, 1.0, 1.0), segmenter.config.multiple)
    scores = network_scores(segmenter.network, prepared, torch.device("cpu"))
    return crop_padding(scores, prepared.pad)


def _error_pct(pred: np.ndarray, truth: np.ndarray) -> float:
    return percent_error(float(pred.sum()), float(truth.sum()))


def _score_offsets(
    logits: np.ndarray, truth: np.ndarray, offsets: Sequence[float]
) -> list[tuple[float, float, float, float, float]]:
    """For each offset: Dice anterior, Dice posterior, volume error % total/anterior/posterior."""
    out = []
    for b in offsets:
        shifted = logits.copy()
        shifted[BACKGROUND] += b
        pred = shifted.argmax(axis=0)
        out.append(
            (
                dice(pred == 1, truth == 1),
                dice(pred == 2, truth == 2),
                _error_pct(pred > 0, truth > 0),
                _error_pct(pred == 1, truth == 1),
                _error_pct(pred == 2, truth == 2),
            )
        )
    return out


def sweep_background_offset(
    runs: Sequence[CrossValidationRun],
    data_dir: Path,
    exclude_cases: set[str] | frozenset[str] = frozenset(),
    offsets: Sequence[float] = OFFSET_GRID,
    threads: int | None = None,
    echo: Callable[[str], None] = print,
) -> CalibrationSweep:
    """Score each offset on every run's held-out cases (each scored by the model that did not
    train on it). A run holding out any of ``exclude_cases`` (the validation cases of the model
    being calibrated) is skipped whole, so the model's own validation never chooses its offset.
    """
    per_case: list[list[tuple[float, float, float, float, float]]] = []
    runs_offsets: set[float] = set()
    used: list[str] = []
    skipped: dict[str, str] = {}
    for run in runs:
        overlap = exclude_cases.intersection(run.split.validation)
        if overlap:
            skipped[run.name] = (
                f"holds out {len(overlap)} validation case(s) of the model being calibrated"
            )
            continue
        segmenter = Segmenter(run.weights, num_threads=threads)
        runs_offsets.add(calibration_offset(segmenter.metadata))
        if len(runs_offsets) > 1:  # before scoring this run's cases, not after all runs
            raise ValueError(
                f"the runs carry different calibration offsets {sorted(runs_offsets)}: "
                "calibrate on runs of one recipe"
            )
        for case_id in run.split.validation:
            case = load_case(data_dir, case_id)
            if needs_resampling(case.spacing):
                raise ValueError(f"{case_id}: calibration expects 1 mm cases, got {case.spacing}")
            per_case.append(_score_offsets(case_logits(segmenter, case.image), case.label, offsets))
        used.append(run.name)
        echo(f"{run.name}: {len(run.split.validation)} held-out cases scored")
    if not per_case:
        raise ValueError(
            "no run is left to calibrate on: every run holds out validation cases of the model "
            f"being calibrated ({', '.join(skipped) or 'no runs given'})"
        )
    table = np.array(per_case, dtype=float)  # cases x offsets x (Dice a/p, errors t/a/p)
    scores = [
        OffsetScore(
            offset=float(b),
            n_cases=table.shape[0],
            dice_anterior=float(table[:, i, 0].mean()),
            dice_posterior=float(table[:, i, 1].mean()),
            mean_abs_volume_error_total_pct=float(np.abs(table[:, i, 2]).mean()),
            mean_volume_error_total_pct=float(table[:, i, 2].mean()),
        )
        for i, b in enumerate(offsets)
    ]
    return CalibrationSweep(scores, used, skipped, table, runs_offsets.pop())


def format_sweep(sweep: CalibrationSweep) -> str:
    best = sweep.best
    lines = [
        f"out-of-fold cases: {best.n_cases} (runs: {', '.join(sweep.used_runs)})",
        *(f"skipped {name}: {why}" for name, why in sweep.skipped.items()),
        f"{'offset':>7}{'Dice ant':>10}{'Dice post':>10}{'|vol err| %':>13}{'vol err %':>11}",
    ]
    for s in sweep.scores:
        mark = "  <- chosen" if s is best else ("  (uncalibrated)" if s.offset == 0 else "")
        lines.append(
            f"{s.offset:>+7.2f}{s.dice_anterior:>10.4f}{s.dice_posterior:>10.4f}"
            f"{s.mean_abs_volume_error_total_pct:>13.2f}{s.mean_volume_error_total_pct:>+11.2f}"
            + mark
        )
    return "\n".join(lines)


def with_background_offset(
    state_dict: dict[str, torch.Tensor], offset: float
) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` whose background logit is raised by ``offset``."""
    if HEAD_BIAS not in state_dict:
        raise KeyError(f"the weights have no {HEAD_BIAS!r}: not a hippo-scp U-Net")
    out = dict(state_dict)
    bias = state_dict[HEAD_BIAS].clone()
    bias[BACKGROUND] += offset
    out[HEAD_BIAS] = bias
    return out


def write_calibrated(
    weights: Path, total_offset: float, out_dir: Path, provenance: dict[str, Any]
) -> tuple[Path, str]:
    """Write ``weights`` so that they carry ``total_offset`` (and the split beside them) into
    ``out_dir``.

    ``total_offset`` is what the output carries in all, not an increment: calibrating a
    calibrated file again to the same value changes nothing (byte-identical weights), so the
    recipe's command cannot be applied twice by mistake. The sidecar keeps the training record
    and adds ``calibration``: the total, the part added here, and where it came from.
    """
    loaded = load_weights(weights)
    meta = {k: v for k, v in loaded.metadata.items() if k not in ("name", "file", "sha256")}
    previous = calibration_offset(meta)
    applied = round(total_offset - previous, 6)
    meta["calibration"] = {
        "background_logit_offset": round(total_offset, 4),
        "applied_offset": applied,
        "previous_offset": previous,
        "source_sha256": loaded.sha256,
        **provenance,
    }
    out_dir = Path(out_dir)
    target = out_dir / Path(weights).name
    if target.resolve() == Path(weights).resolve():
        raise ValueError(f"{out_dir} holds the input weights: write the calibrated copy elsewhere")
    digest = save_weights(with_background_offset(loaded.state_dict, applied), target, meta)
    split = Path(weights).parent / "split.json"
    if split.is_file():
        Split.load(split)  # a readable split, or the calibrated model loses its provenance
        shutil.copy(split, out_dir / "split.json")
    return target, digest
