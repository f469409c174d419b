"""``hippo-scp calibrate``: shift a model's background logit so that its volumes are unbiased.

See :mod:`hippo_scp.model.calibration` for why and how the offset is chosen.
"""

from __future__ import annotations

from pathlib import Path

import typer


def calibrate_command(
    weights: Path = typer.Option(
        None,
        "--weights",
        help="The model to calibrate (default: the shipped model). Its split.json names the "
        "validation cases the offset must not be chosen on.",
    ),
    cross_validation: Path = typer.Option(
        None,
        "--cross-validation",
        help="Folder of fold runs (hippo-scp train --fold K): choose the offset on their "
        "out-of-fold predictions.",
        metavar="DIR",
    ),
    offset: float = typer.Option(
        None,
        "--offset",
        help="The background-logit offset the output carries in total (logit units; the "
        "shipped recipe's is 0.45), instead of choosing one. Calibrating a calibrated file "
        "to the same value changes nothing.",
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Write the calibrated weights, sidecar and split.json into this folder "
        "(without it, only the sweep is printed).",
    ),
    data: Path = typer.Option(
        None, "--data", help="Folder with imagesTr/ and labelsTr/ (default as for evaluate)."
    ),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
) -> None:
    """Choose (on cross-validation) or apply a background-logit offset; write the new model."""
    from hippo_scp.model.calibration import format_sweep, sweep_background_offset, write_calibrated
    from hippo_scp.model.dataset import Split, default_data_dir
    from hippo_scp.model.evaluation import find_cross_validation_runs
    from hippo_scp.model.inference import default_weights_path

    if (cross_validation is None) == (offset is None):
        raise typer.BadParameter("give exactly one of --cross-validation DIR and --offset X")
    weights = Path(weights) if weights else default_weights_path()
    if not weights.is_file():
        raise typer.BadParameter(f"weights not found: {weights}")
    provenance: dict[str, object]
    if cross_validation is not None:
        split_file = weights.parent / "split.json"
        excluded = set(Split.load(split_file).validation) if split_file.is_file() else set()
        if not excluded:
            typer.echo(f"warning: no split.json beside {weights}: no cases are excluded")
        try:
            runs = find_cross_validation_runs(cross_validation)
            sweep = sweep_background_offset(
                runs,
                Path(data) if data else default_data_dir(),
                excluded,
                threads=threads,
                echo=typer.echo,
            )
        except (FileNotFoundError, ValueError) as exc:
            raise typer.BadParameter(str(exc)) from exc
        typer.echo(format_sweep(sweep))
        best = sweep.best
        # the swept offsets are on top of what the runs carry; the output carries both
        offset = round(sweep.runs_offset + best.offset, 4)
        provenance = {
            "chosen_on": f"{best.n_cases} out-of-fold cases of {len(sweep.used_runs)} "
            f"cross-validation runs ({', '.join(sweep.used_runs)}); the model's own validation "
            "cases excluded",
            "criterion": "smallest mean |total volume error|",
            "out_of_fold_mean_abs_volume_error_total_pct": round(
                best.mean_abs_volume_error_total_pct, 3
            ),
            # what one reported volume is worth; the report prints it next to the volumes
            "out_of_fold_volume_error_pct": sweep.volume_errors(best.offset).to_dict(),
        }
    else:
        provenance = {"chosen_on": "given (--offset)"}
    typer.echo(f"offset: {offset:+.2f} in total")
    if out is None:
        return
    try:
        target, digest = write_calibrated(weights, float(offset), out, provenance)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"calibrated weights: {target} (sha256 {digest})")


def register(app: typer.Typer) -> None:
    """Add ``calibrate`` to the hippo-scp app."""
    app.command("calibrate")(calibrate_command)


if __name__ == "__main__":
    _app = typer.Typer(add_completion=False)
    register(_app)
    _app()
