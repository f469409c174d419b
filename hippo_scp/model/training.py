"""Training the hippocampus U-Net (used by ``hippo-scp train``).

Recipe, and why:

* **Whole volumes, not patches.** Every crop fits a 48 x 64 x 48 canvas, so each sample is the
  whole crop placed at a random offset (a translation augmentation for free); the network always
  sees the full context it will see at inference.
* **Loss** = cross-entropy + soft Dice over the two hippocampus classes (batch Dice). CE gives
  well-calibrated gradients early; Dice optimises what is measured and is insensitive to the
  large background.
* **Deep supervision**: the same loss on 1/2 and 1/4 resolution outputs, weights 1 : 0.5 : 0.25.
* **Augmentation**: small rotations (+-15 deg per axis) and isotropic scaling (0.85-1.15),
  intensity contrast / brightness / gamma and noise. **No left-right flips**: the labels are
  side-consistent (a flipped input was measured to drop Dice to 0.62).
* **Schedule**: AdamW with linear warm-up and cosine decay. The schedule's clock is
  ``max(iteration / total_iterations, elapsed / time_budget)``, so a run capped by
  ``--max-minutes`` still anneals fully and ends cleanly at the budget instead of being cut off
  mid-schedule at a high learning rate.
* **Selection**: the validation split is segmented with the *inference* pipeline
  (:func:`hippo_scp.model.inference.predict_labels`) after each epoch; the best mean Dice is kept.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hippo_scp.model.dataset import (
    AP_AXIS,
    Case,
    Split,
    list_case_ids,
    load_cases,
    make_split,
)
from hippo_scp.model.evaluation import ap_boundary_index, split_at_plane
from hippo_scp.model.inference import WEIGHTS_FILENAME, predict_labels
from hippo_scp.model.network import UNet3D, UNetConfig, count_parameters, fuse_batchnorm
from hippo_scp.model.preprocessing import (
    CLIP_PERCENTILES,
    TRAINING_SPACING_MM,
    normalize_intensity,
)
from hippo_scp.model.weights import MODEL_SERIES, model_version, save_weights

CLASS_NAMES = ("anterior", "posterior")


@dataclass
class TrainConfig:
    """Everything that defines a training run (written into metrics.json and the sidecar)."""

    data_dir: Path
    out_dir: Path
    seed: int = 0
    split_seed: int = 20240404
    val_fraction: float = 0.1
    #: validation block of the split (0: the documented split; see dataset.Split)
    fold: int = 0
    epochs: int = 400
    max_minutes: float | None = None
    threads: int | None = None
    limit_cases: int | None = None
    max_iterations: int | None = None
    device: str = "cpu"
    batch_size: int = 4
    lr: float = 1e-2
    weight_decay: float = 3e-5
    warmup_fraction: float = 0.03
    channels: tuple[int, ...] = (12, 24, 48, 96)
    deep_supervision: bool = True
    #: weight of :func:`boundary_profile_loss` (0: off, the shipped 1.0 recipe)
    boundary_loss_weight: float = 0.0
    augment: bool = True
    #: array axes the spatial augmentation rotates about (AP_AXIS alone keeps the reference's
    #: head/body plane across AP_AXIS, as the annotators drew it)
    rotation_axes: tuple[int, ...] = (0, 1, 2)
    #: re-split rotated labels at the best plane across AP_AXIS (see snap_ap_boundary)
    snap_boundary: bool = False
    canvas: tuple[int, int, int] = (40, 56, 40)
    val_every_epochs: int = 1
    patience_validations: int = 0  # 0 disables early stopping (the cosine schedule ends runs)
    progress: bool = True
    write_outputs: bool = True


@dataclass
class EpochRecord:
    epoch: int
    iteration: int
    elapsed_s: float
    lr: float
    train_loss: float
    val_dice_anterior: float
    val_dice_posterior: float

    @property
    def val_dice_mean(self) -> float:
        return 0.5 * (self.val_dice_anterior + self.val_dice_posterior)


@dataclass
class TrainResult:
    best_epoch: int
    best_dice_anterior: float
    best_dice_posterior: float
    iterations: int
    wall_time_s: float
    stopped_by: str
    history: list[EpochRecord] = field(default_factory=list)
    weights_path: Path | None = None
    weights_sha256: str | None = None


# --------------------------------------------------------------------------------------------
# data on the training grid


@dataclass(frozen=True)
class TrainingSample:
    case_id: str
    image: torch.Tensor  # (X, Y, Z) float32, normalised exactly as at inference
    label: torch.Tensor  # (X, Y, Z) int64


def to_training_samples(cases: list[Case]) -> list[TrainingSample]:
    """Normalise once up front (every Task04 volume already lies on the 1 mm training grid)."""
    out = []
    for c in cases:
        if any(abs(s - t) > 1e-3 for s, t in zip(c.spacing, TRAINING_SPACING_MM, strict=True)):
            raise ValueError(f"{c.case_id}: spacing {c.spacing} is not the 1 mm training grid")
        out.append(
            TrainingSample(
                c.case_id,
                torch.from_numpy(normalize_intensity(c.image)),
                torch.from_numpy(c.label.astype(np.int64)),
            )
        )
    return out


def _intensity_augment(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Contrast, brightness, gamma and noise on a normalised volume (each with some prob.)."""

    def u(a: float, b: float) -> float:
        return a + (b - a) * float(torch.rand((), generator=gen))

    if u(0, 1) < 0.5:  # contrast around the mean
        img = img * u(0.75, 1.25)
    if u(0, 1) < 0.3:  # brightness
        img = img + u(-0.2, 0.2)
    if u(0, 1) < 0.3:  # gamma on the [0, 1]-rescaled volume, then back to the original range
        lo, hi = img.min(), img.max()
        rng = (hi - lo).clamp_min(1e-6)
        img = ((img - lo) / rng) ** u(0.7, 1.5) * rng + lo
    if u(0, 1) < 0.15:  # Gaussian noise
        img = img + torch.randn(img.shape, generator=gen) * u(0.0, 0.1)
    return img


def make_batch(
    samples: list[TrainingSample],
    canvas: tuple[int, int, int],
    augment: bool,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place each volume in a zero canvas (random offset when augmenting, else centred)."""
    x = torch.zeros(len(samples), 1, *canvas)
    y = torch.zeros(len(samples), *canvas, dtype=torch.int64)
    for i, s in enumerate(samples):
        img, lab = s.image, s.label
        # Crop (randomly when augmenting) if a volume is larger than the canvas.
        offs_src = []
        for d in range(3):
            excess = img.shape[d] - canvas[d]
            if excess > 0:
                o = int(torch.randint(0, excess + 1, (), generator=gen)) if augment else excess // 2
            else:
                o = 0
            offs_src.append(o)
        sl = tuple(
            slice(o, o + min(n, c)) for o, n, c in zip(offs_src, img.shape, canvas, strict=True)
        )
        img, lab = img[sl], lab[sl]
        if augment:
            img = _intensity_augment(img, gen)
        offs = []
        for d in range(3):
            room = canvas[d] - img.shape[d]
            offs.append(
                int(torch.randint(0, room + 1, (), generator=gen)) if augment else room // 2
            )
        dst = tuple(slice(o, o + n) for o, n in zip(offs, img.shape, strict=True))
        x[(i, 0, *dst)] = img
        y[(i, *dst)] = lab
    return x, y


def _rotation_matrix(angles: torch.Tensor) -> torch.Tensor:
    ax, ay, az = angles
    cx, sx, cy, sy, cz, sz = ax.cos(), ax.sin(), ay.cos(), ay.sin(), az.cos(), az.sin()
    one, zero = torch.ones(()), torch.zeros(())
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx]).reshape(3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy]).reshape(3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one]).reshape(3, 3)
    return rz @ ry @ rx


def spatial_augment(
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    prob: float = 0.5,
    max_angle_deg: float = 15.0,
    scale_range: tuple[float, float] = (0.85, 1.15),
    rotation_axes: tuple[int, ...] = (0, 1, 2),
    snap_boundary: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation + isotropic scale about the canvas centre (linear image, nearest label).

    The canvas is not cubic, so the affine is built in millimetres (normalised coordinates are
    rescaled by the axis lengths) to keep rotations rigid. Rotations are drawn about
    ``rotation_axes`` only. With ``snap_boundary``, samples rotated about an axis other than
    :data:`AP_AXIS` are re-split at a plane across it (:func:`snap_ap_boundary`): a tilted
    head/body plane never occurs in the references.
    """
    n = x.shape[0]
    thetas = []
    apply = False
    tilted: list[int] = []
    size = torch.tensor(x.shape[2:], dtype=torch.float32)
    axis_mask = torch.zeros(3)
    axis_mask[list(rotation_axes)] = 1.0
    tilts_boundary = any(a != AP_AXIS for a in rotation_axes)
    for i in range(n):
        if float(torch.rand((), generator=gen)) < prob:
            apply = True
            angles = (torch.rand(3, generator=gen) * 2 - 1) * math.radians(max_angle_deg)
            angles = angles * axis_mask
            if tilts_boundary:
                tilted.append(i)
            s = scale_range[0] + (scale_range[1] - scale_range[0]) * float(
                torch.rand((), generator=gen)
            )
            r = _rotation_matrix(angles) / s
        else:
            r = torch.eye(3)
        # grid_sample's normalised coords are (z, y, x) ordered for a (D, H, W) = (X, Y, Z) tensor
        # with the last axis first; work in voxel units then map back.
        flip = torch.flip(torch.eye(3), dims=[0])  # (x,y,z) <-> (W,H,D) axis order
        sz = flip @ size
        m = torch.diag(1 / sz) @ (flip @ r @ flip) @ torch.diag(sz)
        thetas.append(torch.cat([m, torch.zeros(3, 1)], dim=1))
    if not apply:
        return x, y
    theta = torch.stack(thetas).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = (
        F.grid_sample(
            y[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False
        )[:, 0]
        .round()
        .long()
    )
    if snap_boundary and tilted:
        y = y.clone()
        for i in tilted:
            y[i] = snap_ap_boundary(y[i])
    return x, y


def snap_ap_boundary(labels: torch.Tensor) -> torch.Tensor:
    """Re-split one (X, Y, Z) label volume's hippocampus at the plane across :data:`AP_AXIS`
    that misplaces the fewest anterior/posterior voxels (anterior at the higher indices):
    the evaluation's :func:`~hippo_scp.model.evaluation.ap_boundary_index` and
    :func:`~hippo_scp.model.evaluation.split_at_plane`, so training and the boundary
    diagnostic share one definition of the plane.

    Why: in every reference the head/body boundary is such a plane (the annotators chose a
    slice). Rotating the labels about another axis tilts it, which teaches the network a
    boundary convention the references never follow; snapping keeps the rotated anatomy and
    restores the convention. Volumes without both parts are returned unchanged.
    """
    array = labels.cpu().numpy()
    first_anterior = ap_boundary_index(array)
    if math.isnan(first_anterior):
        return labels
    return torch.from_numpy(split_at_plane(array, first_anterior)).to(labels.device)


# --------------------------------------------------------------------------------------------
# loss


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + (1 - soft batch Dice over the foreground classes)."""
    ce = F.cross_entropy(logits, target)
    probs = torch.softmax(logits, dim=1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 4, 1, 2, 3).to(probs.dtype)
    dims = (0, 2, 3, 4)
    inter = (probs * onehot).sum(dims)[1:]
    denom = probs.sum(dims)[1:] + onehot.sum(dims)[1:]
    dice = (2 * inter + 1e-5) / (denom + 1e-5)
    return ce + (1 - dice.mean())


def boundary_profile_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the anterior share of the hippocampus in each slice across
    :data:`~hippo_scp.model.dataset.AP_AXIS`, predicted (soft) vs reference.

    Why: the remaining per-part error of the voxel loss is where the head/body boundary plane
    lies (about one slice, see the model card), and a misplaced plane costs few voxels
    against the whole volume. This term weighs every slice that holds hippocampus equally,
    whatever its size, so a slice on the wrong side of the boundary costs as much as any.
    Computed from the (augmented) reference, it assumes no plane itself.
    """
    probs = torch.softmax(logits, dim=1)
    # Sum over the spatial axes other than AP_AXIS of (N, X, Y, Z) tensors.
    across = [1 + a for a in range(3) if a != AP_AXIS]
    anterior_ref = (target == 1).sum(dim=across).to(probs.dtype)
    hippocampus_ref = (target > 0).sum(dim=across).to(probs.dtype)
    anterior = probs[:, 1].sum(dim=across)
    hippocampus = anterior + probs[:, 2].sum(dim=across)
    present = hippocampus_ref > 0
    if not present.any():
        return probs.sum() * 0.0
    share_ref = anterior_ref[present] / hippocampus_ref[present]
    share = (anterior[present] / (hippocampus[present] + 1e-3)).clamp(1e-4, 1 - 1e-4)
    return F.binary_cross_entropy(share, share_ref)


def deep_supervision_loss(
    outputs: torch.Tensor | list[torch.Tensor],
    target: torch.Tensor,
    boundary_weight: float = 0.0,
) -> torch.Tensor:
    """Dice + CE on every output (weights 1 : 0.5 : 0.25 ...), plus the boundary profile
    term on the full-resolution output when ``boundary_weight`` > 0."""
    full = outputs if isinstance(outputs, torch.Tensor) else outputs[0]
    extra = boundary_weight * boundary_profile_loss(full, target) if boundary_weight else 0.0
    if isinstance(outputs, torch.Tensor):
        return dice_ce_loss(outputs, target) + extra
    weights = [0.5**k for k in range(len(outputs))]
    total = 0.0
    for k, (w, out) in enumerate(zip(weights, outputs, strict=True)):
        step = 2**k
        t = target[:, ::step, ::step, ::step] if step > 1 else target
        total = total + w * dice_ce_loss(out, t)
    return total / sum(weights) + extra  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# validation


def dice_score(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    """Dice of one label; 1.0 when both are empty (nothing to find, nothing found)."""
    p, t = pred == label, truth == label
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & t).sum()) / denom


def validate(model: UNet3D, cases: list[Case]) -> tuple[float, float]:
    """Mean Dice (anterior, posterior) over cases, through the inference pipeline."""
    was_training = model.training
    model.eval()
    scores = np.zeros((len(cases), 2))
    for i, c in enumerate(cases):
        pred = predict_labels(model, c.image, c.spacing, model.config.multiple)
        scores[i] = [dice_score(pred, c.label, 1), dice_score(pred, c.label, 2)]
    model.train(was_training)
    m = scores.mean(axis=0) if len(cases) else np.array([float("nan")] * 2)
    return float(m[0]), float(m[1])


# --------------------------------------------------------------------------------------------
# export


def export_state_dict(model: UNet3D) -> dict[str, torch.Tensor]:
    """Inference weights: BatchNorm folded into the convolutions, deep-supervision heads dropped."""
    cfg = model.config
    plain = UNet3D(UNetConfig(cfg.in_channels, cfg.num_classes, cfg.channels, False))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("aux_heads.")}
    plain.load_state_dict(state)
    fused = fuse_batchnorm(plain.cpu().float())
    return {k: v.detach().clone() for k, v in fused.state_dict().items()}


def describe_augmentation(cfg: TrainConfig) -> str:
    """The augmentation recipe as written into the weights' sidecar: the model's provenance
    must say when a run departed from the shipped recipe."""
    if not cfg.augment:
        return "none"
    axes = tuple(sorted(cfg.rotation_axes))
    rotation = "rotation +-15 deg"
    if axes != (0, 1, 2):
        rotation += f" about array axes {list(axes)} only" if axes else " off"
    if cfg.snap_boundary:
        rotation += " (rotated labels re-split at a plane across the A/P axis)"
    return (
        f"random placement, {rotation}, scale 0.85-1.15, contrast/brightness/gamma/noise; no flips"
    )


def _sidecar_metadata(
    cfg: TrainConfig, model: UNet3D, record: EpochRecord | None
) -> dict[str, Any]:
    return {
        "model_series": MODEL_SERIES,
        "architecture": {**model.config.to_dict(), "deep_supervision": False},
        "fused_batchnorm": True,
        "parameters": count_parameters(model),
        "preprocessing": {
            "training_spacing_mm": list(TRAINING_SPACING_MM),
            "intensity": f"clip to percentiles {list(CLIP_PERCENTILES)}, then z-score",
            "pad_multiple": model.config.multiple,
            "pad_value": 0.0,
        },
        "training": {
            "seed": cfg.seed,
            "split_seed": cfg.split_seed,
            "val_fraction": cfg.val_fraction,
            **({"fold": cfg.fold} if cfg.fold else {}),
            "epochs_max": cfg.epochs,
            "max_minutes": cfg.max_minutes,
            "batch_size": cfg.batch_size,
            "optimizer": f"AdamW lr={cfg.lr} wd={cfg.weight_decay}, warm-up + cosine",
            "loss": "cross-entropy + soft Dice (classes 1, 2)"
            + (", deep supervision 1:0.5:0.25" if cfg.deep_supervision else "")
            + (
                f", boundary profile x{cfg.boundary_loss_weight}"
                if cfg.boundary_loss_weight
                else ""
            ),
            "augmentation": describe_augmentation(cfg),
            "canvas": list(cfg.canvas),
        },
        "validation": None
        if record is None
        else {
            "epoch": record.epoch,
            "dice_anterior": round(record.val_dice_anterior, 4),
            "dice_posterior": round(record.val_dice_posterior, 4),
        },
    }


def _save_curve(history: list[EpochRecord], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h.epoch for h in history]
    fig, ax1 = plt.subplots(figsize=(8, 4.5))
    ax1.plot(ep, [h.train_loss for h in history], color="tab:red", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss (CE + Dice)", color="tab:red")
    ax2 = ax1.twinx()
    ax2.plot(ep, [h.val_dice_anterior for h in history], color="tab:blue", label="val Dice ant.")
    ax2.plot(ep, [h.val_dice_posterior for h in history], color="tab:green", label="val Dice post.")
    ax2.set_ylabel("validation Dice")
    ax2.set_ylim(max(0.0, min([h.val_dice_posterior for h in history] + [0.8]) - 0.02), 1.0)
    fig.legend(loc="lower center", ncol=3)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Run one training; writes weights, sidecar, split, metrics JSON and curve to ``out_dir``."""
    t_start = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    out_dir = Path(cfg.out_dir)
    if cfg.write_outputs:
        out_dir.mkdir(parents=True, exist_ok=True)

    ids = list_case_ids(cfg.data_dir)
    split = make_split(ids, cfg.split_seed, cfg.val_fraction, cfg.fold)
    train_ids, val_ids = split.train, split.validation
    if cfg.limit_cases:
        n_val = max(1, min(len(val_ids), cfg.limit_cases // 4))
        train_ids = train_ids[: max(1, cfg.limit_cases - n_val)]
        val_ids = val_ids[:n_val]
        split = Split(split.seed, split.val_fraction, train_ids, val_ids, split.fold)
    if cfg.write_outputs:
        split.save(out_dir / "split.json")
    log(
        f"split seed {split.seed}, fold {split.fold}: "
        f"{len(train_ids)} train / {len(val_ids)} validation cases"
    )
    train_cases = load_cases(cfg.data_dir, train_ids)
    val_cases = load_cases(cfg.data_dir, val_ids)
    samples = to_training_samples(train_cases)
    del train_cases

    model = UNet3D(UNetConfig(channels=tuple(cfg.channels), deep_supervision=cfg.deep_supervision))
    model.to(device).train()
    log(f"model: channels {cfg.channels}, {count_parameters(model):,} parameters, device {device}")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    iters_per_epoch = max(1, math.ceil(len(samples) / cfg.batch_size))
    total_iters = cfg.epochs * iters_per_epoch
    if cfg.max_iterations is not None:
        total_iters = min(total_iters, cfg.max_iterations)
    budget_s = cfg.max_minutes * 60.0 if cfg.max_minutes else None

    def progress(it: int) -> float:
        p = it / total_iters
        if budget_s:
            p = max(p, (time.perf_counter() - t_start) / budget_s)
        return min(1.0, p)

    def lr_at(p: float) -> float:
        if p < cfg.warmup_fraction:
            return cfg.lr * (0.05 + 0.95 * p / cfg.warmup_fraction)
        q = (p - cfg.warmup_fraction) / (1 - cfg.warmup_fraction)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * q))

    history: list[EpochRecord] = []
    best: EpochRecord | None = None
    best_state: dict[str, torch.Tensor] | None = None
    weights_path = out_dir / WEIGHTS_FILENAME
    sha: str | None = None
    it = 0
    epoch = 0
    stopped_by = "epochs"
    since_best = 0
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total_iters, unit="it", dynamic_ncols=True, mininterval=2.0)
    done = False
    while not done:
        epoch += 1
        order = torch.randperm(len(samples), generator=gen).tolist()
        losses: list[float] = []
        for b in range(iters_per_epoch):
            p = progress(it)
            if it >= total_iters or p >= 1.0:
                stopped_by = (
                    "max_iterations"
                    if it >= total_iters and cfg.max_iterations
                    else ("epochs" if it >= total_iters else "time budget")
                )
                done = True
                break
            lr = lr_at(p)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if len(idx) < cfg.batch_size:  # keep BatchNorm statistics on full batches
                idx = idx + order[: cfg.batch_size - len(idx)]
            x, y = make_batch([samples[i] for i in idx], cfg.canvas, cfg.augment, gen)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.augment:
                x, y = spatial_augment(
                    x,
                    y,
                    gen,
                    rotation_axes=tuple(cfg.rotation_axes),
                    snap_boundary=cfg.snap_boundary,
                )
            out = model(x)
            loss = deep_supervision_loss(out, y, cfg.boundary_loss_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 12.0)
            opt.step()
            losses.append(float(loss.detach()))
            it += 1
            if bar is not None:
                bar.update(1)
                postfix = {"ep": epoch, "loss": f"{np.mean(losses[-20:]):.3f}", "lr": f"{lr:.1e}"}
                if best is not None:
                    postfix["val"] = (
                        f"{history[-1].val_dice_anterior:.3f}/{history[-1].val_dice_posterior:.3f}"
                    )
                bar.set_postfix(postfix, refresh=False)
        if not losses:
            break
        if epoch % cfg.val_every_epochs == 0 or done:
            ant, post = validate(model, val_cases)
            rec = EpochRecord(
                epoch,
                it,
                round(time.perf_counter() - t_start, 1),
                lr,
                float(np.mean(losses)),
                ant,
                post,
            )
            history.append(rec)
            improved = best is None or rec.val_dice_mean > best.val_dice_mean
            if improved:
                best = rec
                since_best = 0
                best_state = export_state_dict(model)
                if cfg.write_outputs:
                    sha = save_weights(
                        best_state, weights_path, _sidecar_metadata(cfg, model, best)
                    )
            else:
                since_best += 1
            msg = (
                f"epoch {epoch} it {it} {rec.elapsed_s:.0f}s lr {lr:.2e} loss {rec.train_loss:.4f} "
                f"val dice ant {ant:.4f} post {post:.4f}" + (" *" if improved else "")
            )
            if bar is not None:
                bar.write(msg)
            else:
                log(msg)
            if cfg.patience_validations and since_best >= cfg.patience_validations:
                stopped_by = "early stopping"
                done = True
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t_start
    assert best is not None
    result = TrainResult(
        best.epoch,
        best.val_dice_anterior,
        best.val_dice_posterior,
        it,
        round(wall, 1),
        stopped_by,
        history,
        weights_path if cfg.write_outputs else None,
        sha,
    )
    if cfg.write_outputs:
        metrics = {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "platform": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "device": str(device),
            },
            "train_cases": len(samples),
            "validation_cases": len(val_cases),
            "iterations": it,
            "epochs_run": epoch if losses else epoch - 1,
            "wall_time_s": result.wall_time_s,
            "stopped_by": stopped_by,
            "best": {
                "epoch": best.epoch,
                "dice_anterior": best.val_dice_anterior,
                "dice_posterior": best.val_dice_posterior,
            },
            "weights_sha256": sha,
            "model_version": model_version(sha) if sha else None,
            "history": [{**asdict(h), "val_dice_mean": h.val_dice_mean} for h in history],
        }
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        _save_curve(history, out_dir / "training_curve.png")
    log(
        f"done in {wall / 60:.1f} min ({stopped_by}); best epoch {best.epoch}: "
        f"val Dice anterior {best.val_dice_anterior:.4f}, posterior {best.val_dice_posterior:.4f}"
    )
    del best_state
    return result


def clone_config(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    c = copy.deepcopy(cfg)
    for k, v in changes.items():
        setattr(c, k, v)
    return c
