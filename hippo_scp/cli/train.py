"""``hippo-scp train``: train the hippocampus U-Net on the MSD Task04 pairs.

Also runnable on its own as ``python -m hippo_scp.cli.train`` (same options, same code path).
"""

from __future__ import annotations

from pathlib import Path

import typer

from hippo_scp.model.dataset import SPLIT_SEED, default_data_dir, list_case_ids, make_split


def train_command(
    data: Path = typer.Option(
        None,
        "--data",
        help="Folder with imagesTr/ and labelsTr/ (default: $HIPPO_DATA_DIR or "
        "../shared/data/hippocampus next to the repository).",
    ),
    out: Path = typer.Option(
        Path("training_runs/latest"),
        "--out",
        help="Output folder: weights + JSON sidecar, split.json, metrics.json, training_curve.png.",
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed for initialisation, sampling and augmentation."
    ),
    split_seed: int = typer.Option(
        SPLIT_SEED, "--split-seed", help="Seed of the train/validation split (keep the default)."
    ),
    fold: int = typer.Option(
        0,
        "--fold",
        help="Hold out block K of the split's shuffled order instead of the first (0, the "
        "documented split); folds 0-9 of the default split are a 10-fold cross-validation.",
        metavar="K",
    ),
    epochs: int = typer.Option(400, "--epochs", help="Maximum number of epochs."),
    max_minutes: float = typer.Option(
        None,
        "--max-minutes",
        help="Wall-clock budget; the learning-rate schedule anneals to end exactly at it and the "
        "best checkpoint is kept.",
    ),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    val_fraction: float = typer.Option(
        0.1, "--val-fraction", help="Fraction of cases held out for validation."
    ),
    limit_cases: int = typer.Option(
        None, "--limit-cases", help="Use only N cases in total (smoke tests)."
    ),
    max_iterations: int = typer.Option(
        None, "--max-iterations", help="Stop after N optimisation steps (smoke tests)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    batch_size: int = typer.Option(4, "--batch-size", help="Volumes per optimisation step."),
    lr: float = typer.Option(1e-2, "--lr", help="Peak AdamW learning rate."),
    no_augment: bool = typer.Option(
        False, "--no-augment", help="Disable augmentation (for ablations only)."
    ),
    no_deep_supervision: bool = typer.Option(
        False, "--no-deep-supervision", help="Disable deep supervision (for ablations only)."
    ),
    boundary_loss: float = typer.Option(
        0.0,
        "--boundary-loss",
        help="Weight of the anterior/posterior boundary profile loss (0: off, as shipped).",
        metavar="<float>",
    ),
    rotation_axes: str = typer.Option(
        "0,1,2",
        "--rotation-axes",
        help="Array axes the augmentation rotates about, comma-separated (1 = anterior/posterior).",
        metavar="<axes>",
    ),
    snap_boundary: bool = typer.Option(
        False,
        "--snap-boundary",
        help="Re-split labels rotated off the A/P axis at a plane across it, like the references.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train the U-Net; writes the best checkpoint (safetensors + SHA-256 sidecar) to --out."""
    from hippo_scp.model.training import TrainConfig, train

    if device not in ("cpu", "cuda"):
        raise typer.BadParameter("--device must be cpu or cuda")
    axes_error = "--rotation-axes takes array axes 0, 1 and 2, e.g. 0,1,2 or 1"
    try:
        axes = tuple(sorted({int(a) for a in rotation_axes.split(",") if a.strip()}))
    except ValueError:
        raise typer.BadParameter(axes_error) from None
    if not set(axes) <= {0, 1, 2}:
        raise typer.BadParameter(axes_error)
    data_dir = Path(data) if data else default_data_dir()
    if fold != 0:  # the split's own range check, as a usage error before any data loads
        try:
            make_split(list_case_ids(data_dir), split_seed, val_fraction, fold)
        except ValueError as exc:
            raise typer.BadParameter(f"--fold: {exc}") from exc
    cfg = TrainConfig(
        data_dir=data_dir,
        out_dir=Path(out),
        seed=seed,
        split_seed=split_seed,
        val_fraction=val_fraction,
        fold=fold,
        epochs=epochs,
        max_minutes=max_minutes,
        threads=threads,
        limit_cases=limit_cases,
        max_iterations=max_iterations,
        device=device,
        batch_size=batch_size,
        lr=lr,
        augment=not no_augment,
        deep_supervision=not no_deep_supervision,
        boundary_loss_weight=boundary_loss,
        rotation_axes=axes,
        snap_boundary=snap_boundary,
        progress=progress,
    )
    result = train(cfg, log=typer.echo)
    typer.echo(f"weights: {result.weights_path} (sha256 {result.weights_sha256})")


def register(app: typer.Typer) -> None:
    """Add ``train`` to the hippo-scp app."""
    app.command("train")(train_command)


if __name__ == "__main__":
    _app = typer.Typer(add_completion=False)
    register(_app)
    _app()
