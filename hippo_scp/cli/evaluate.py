"""``hippo-scp evaluate``: Dice, HD95 and volume error of a weights file on labelled cases."""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate_command(
    data: Path = typer.Option(
        None,
        "--data",
        help="Folder with imagesTr/ and labelsTr/ (default: $HIPPO_DATA_DIR or "
        "../shared/data/hippocampus next to the repository).",
    ),
    weights: Path = typer.Option(
        None,
        "--weights",
        help="Weights file (.safetensors with its .json sidecar); default: the shipped model.",
    ),
    cases: str = typer.Option(
        "split",
        "--cases",
        help="'split' = the validation cases of the split.json next to the weights (or the "
        "shipped split), 'all' = every case, or a FILE (split.json, or one case id per line).",
    ),
    csv: Path = typer.Option(
        None, "--csv", help="Per-case CSV output (default: evaluation.csv next to the weights)."
    ),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads (default: torch's)."),
    baseline: Path = typer.Option(
        None,
        "--baseline",
        help="Another weights file to score on the same cases (with --cross-validation: "
        "another folder of fold runs): prints the paired difference (this model minus the "
        "baseline) with its 95 % bootstrap interval.",
    ),
    cross_validation: Path = typer.Option(
        None,
        "--cross-validation",
        help="A folder of fold runs (hippo-scp train --fold K --out DIR/foldK): score each "
        "fold's weights on the cases it held out and pool them (replaces --weights/--cases).",
        metavar="DIR",
    ),
) -> None:
    """Segment labelled cases and report per-case and mean metrics (table + CSV)."""
    from hippo_scp.model.evaluation import run_cross_validation, run_evaluation

    if cross_validation is not None:
        if weights is not None:
            raise typer.BadParameter(
                "--cross-validation scores each fold's own weights: leave out --weights "
                "(--baseline then names another folder of fold runs)"
            )
        try:
            run_cross_validation(
                cross_validation, data, csv, threads, echo=typer.echo, baseline_dir=baseline
            )
        except (FileNotFoundError, ValueError) as exc:
            raise typer.BadParameter(str(exc)) from exc
        return
    run_evaluation(
        data_dir=data,
        weights=weights,
        cases=cases,
        csv_path=csv,
        threads=threads,
        echo=typer.echo,
        baseline=baseline,
    )


def register(app: typer.Typer) -> None:
    """Add ``evaluate`` to the hippo-scp app."""
    app.command("evaluate")(evaluate_command)


if __name__ == "__main__":
    _app = typer.Typer(add_completion=False)
    register(_app)
    _app()
