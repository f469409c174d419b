"""A 2-iteration training run on 4 volumes through the CLI, and evaluation of its output."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from hippo_scp.cli import evaluate as evaluate_cli
from hippo_scp.cli import train as train_cli
from hippo_scp.model.inference import Segmenter


def _app() -> typer.Typer:
    app = typer.Typer()
    train_cli.register(app)
    evaluate_cli.register(app)
    return app


def test_train_smoke_then_evaluate(data_dir, tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    args = ["train", "--data", str(data_dir), "--out", str(out), "--limit-cases", "4"]
    args += ["--max-iterations", "2", "--batch-size", "2", "--threads", "2", "--no-progress"]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    for name in ("hippo_unet.safetensors", "hippo_unet.json", "split.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "training_curve.png").stat().st_size > 1000
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["iterations"] == 2
    assert metrics["stopped_by"] == "max_iterations"
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) + len(split["validation"]) == 4
    assert not set(split["train"]) & set(split["validation"])

    seg = Segmenter(out / "hippo_unet.safetensors")
    assert seg.weights_sha256 == metrics["weights_sha256"]

    csv = tmp_path / "eval.csv"
    result = runner.invoke(
        _app(),
        [
            "evaluate",
            "--data",
            str(data_dir),
            "--weights",
            str(out / "hippo_unet.safetensors"),
            "--cases",
            "split",
            "--csv",
            str(csv),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "mean (n=1)" in result.output
    assert len(csv.read_text().splitlines()) == 2
