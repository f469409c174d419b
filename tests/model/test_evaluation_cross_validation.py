"""Pooling a cross-validation: each fold's weights scored on the cases it held out."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hippo_scp.cli import evaluate as evaluate_cli
from hippo_scp.model.dataset import Split, list_case_ids
from hippo_scp.model.evaluation import find_cross_validation_runs, run_cross_validation
from hippo_scp.model.inference import WEIGHTS_FILENAME

SHIPPED = Path(__file__).resolve().parents[2] / "model_weights"


def _fold_run(root: Path, name: str, split: Split) -> Path:
    """A run folder as `hippo-scp train --fold K` leaves it (the shipped weights stand in)."""
    run = root / name
    run.mkdir(parents=True)
    shutil.copy(SHIPPED / WEIGHTS_FILENAME, run / WEIGHTS_FILENAME)
    shutil.copy(SHIPPED / "hippo_unet.json", run / "hippo_unet.json")
    split.save(run / "split.json")
    return run


def _split(ids: list[str], held_out: list[str], fold: int, seed: int = 20240404) -> Split:
    return Split(seed, 0.1, [c for c in ids if c not in held_out], held_out, fold)


def test_pooled_over_folds_with_each_case_scored_once(tmp_path: Path, data_dir: Path) -> None:
    ids = list_case_ids(data_dir)
    _fold_run(tmp_path, "fold0", _split(ids, ids[:2], 0))
    _fold_run(tmp_path, "fold1", _split(ids, ids[2:5], 1))
    (tmp_path / "notes").mkdir()  # a folder without weights is not a run
    lines: list[str] = []
    rows, summary = run_cross_validation(tmp_path, data_dir, threads=2, echo=lines.append)
    assert [r.case_id for r in rows] == ids[:5]
    assert summary.n_cases == 5
    assert summary.mean["dice_anterior"] > 0.8  # the shipped model on (training) cases
    text = "\n".join(lines)
    assert "fold0" in text and "fold  1" in text and "mean (n=5)" in text
    assert f"hold out 5 of the {len(ids)} cases" in text
    with open(tmp_path / "cross_validation.csv") as f:
        table = list(csv.DictReader(f))
    assert [(r["run"], r["case_id"]) for r in table][:3] == [
        ("fold0", ids[0]),
        ("fold0", ids[1]),
        ("fold1", ids[2]),
    ]


def test_a_case_held_out_by_two_runs_is_refused(tmp_path: Path, data_dir: Path) -> None:
    ids = list_case_ids(data_dir)
    _fold_run(tmp_path, "fold0", _split(ids, ids[:3], 0))
    _fold_run(tmp_path, "fold0_seed1", _split(ids, ids[2:4], 0))
    with pytest.raises(ValueError, match=f"{ids[2]} is held out by both fold0 and fold0_seed1"):
        find_cross_validation_runs(tmp_path)


def test_runs_of_different_splits_are_refused(tmp_path: Path, data_dir: Path) -> None:
    ids = list_case_ids(data_dir)
    _fold_run(tmp_path, "a", _split(ids, ids[:2], 0))
    _fold_run(tmp_path, "b", _split(ids, ids[2:4], 1, seed=7))
    with pytest.raises(ValueError, match="different splits"):
        find_cross_validation_runs(tmp_path)


def _message(output: str) -> str:
    """The error text without the box typer draws around it, re-flowed to one line."""
    return " ".join(output.replace("│", " ").split())


def test_cli_explains_an_empty_folder_and_conflicting_flags(tmp_path: Path) -> None:
    app = typer.Typer()
    evaluate_cli.register(app)
    app.command("noop")(lambda: None)  # keep 'evaluate' a sub-command
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "--cross-validation", str(tmp_path)])
    assert result.exit_code == 2
    assert "no training runs in" in _message(result.output)
    result = runner.invoke(
        app, ["evaluate", "--cross-validation", str(tmp_path), "--weights", "x.safetensors"]
    )
    assert result.exit_code == 2
    assert "leave out --weights" in _message(result.output)


def test_two_cross_validations_are_compared_case_by_case(tmp_path: Path, data_dir: Path) -> None:
    ids = list_case_ids(data_dir)
    for recipe in ("new", "old"):
        _fold_run(tmp_path / recipe, "fold0", _split(ids, ids[:2], 0))
        _fold_run(tmp_path / recipe, "fold1", _split(ids, ids[2:4], 1))
    lines: list[str] = []
    run_cross_validation(
        tmp_path / "new", data_dir, threads=2, echo=lines.append, baseline_dir=tmp_path / "old"
    )
    text = "\n".join(lines)
    assert f"{tmp_path / 'new'} minus {tmp_path / 'old'}" in text
    # the same weights on the same cases: no difference, no case better or worse
    assert "dice_posterior              +0.0000 [+0.0000, +0.0000]  better in 0, worse in 0" in text
    _fold_run(tmp_path / "other", "fold0", _split(ids, ids[:3], 0))
    scored: list[str] = []
    with pytest.raises(ValueError, match="hold out different cases"):
        run_cross_validation(
            tmp_path / "new",
            data_dir,
            threads=2,
            echo=scored.append,
            baseline_dir=tmp_path / "other",
        )
    assert scored == []  # refused before any case was segmented


def test_an_unreadable_split_file_is_named(tmp_path: Path, data_dir: Path) -> None:
    ids = list_case_ids(data_dir)
    run = _fold_run(tmp_path, "fold0", _split(ids, ids[:2], 0))
    (run / "split.json").write_text('{"seed": 1}')
    with pytest.raises(ValueError, match="split.json is not a split file"):
        find_cross_validation_runs(tmp_path)
