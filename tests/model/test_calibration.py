"""Volume calibration: the background-logit offset, its sweep on out-of-fold cases, and the
calibrated weights file (new SHA-256, provenance in the sidecar)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from hippo_scp.cli import calibrate as calibrate_cli
from hippo_scp.model.calibration import (
    OffsetScore,
    choose_offset,
    sweep_background_offset,
    write_calibrated,
)
from hippo_scp.model.dataset import Split, list_case_ids, load_case
from hippo_scp.model.evaluation import case_metrics, find_cross_validation_runs
from hippo_scp.model.inference import WEIGHTS_FILENAME, Segmenter

SHIPPED = Path(__file__).resolve().parents[2] / "model_weights"


def _fold_run(root: Path, name: str, ids: list[str], held_out: list[str], fold: int) -> None:
    run = root / name
    run.mkdir(parents=True)
    for f in (WEIGHTS_FILENAME, "hippo_unet.json"):
        shutil.copy(SHIPPED / f, run / f)
    Split(20240404, 0.1, [c for c in ids if c not in held_out], held_out, fold).save(
        run / "split.json"
    )


def test_positive_offset_shrinks_the_outline_and_gets_a_new_version(
    tmp_path: Path, data_dir: Path
) -> None:
    case = load_case(data_dir, list_case_ids(data_dir)[0])
    shipped = Segmenter(SHIPPED / WEIGHTS_FILENAME, num_threads=2)
    base = shipped.segment(case.image, case.spacing)
    volumes = {}
    for offset in (-1.0, 1.0):
        target, digest = write_calibrated(
            SHIPPED / WEIGHTS_FILENAME, offset, tmp_path / f"o{offset}", {"chosen_on": "test"}
        )
        calibrated = Segmenter(target, num_threads=2)  # loads: the sidecar hash matches
        assert calibrated.weights_sha256 == digest != shipped.weights_sha256
        assert calibrated.model_version != shipped.model_version
        labels = calibrated.segment(case.image, case.spacing)
        volumes[offset] = int((labels > 0).sum())
        # a pure background decision: where both call it hippocampus, the part is unchanged
        both = (labels > 0) & (base > 0)
        assert (labels[both] == base[both]).mean() > 0.99
    assert volumes[1.0] < int((base > 0).sum()) < volumes[-1.0]
    assert (tmp_path / "o1.0" / "split.json").read_text() == (SHIPPED / "split.json").read_text()
    assert (tmp_path / "o1.0" / WEIGHTS_FILENAME).stat().st_mode & 0o044 == 0o044  # world-readable


def test_the_offset_is_a_total_so_calibrating_twice_changes_nothing(tmp_path: Path) -> None:
    shipped_record = json.loads((SHIPPED / "hippo_unet.json").read_text())
    shipped_offset = shipped_record.get("calibration", {}).get("background_logit_offset", 0.0)
    first, first_sha = write_calibrated(
        SHIPPED / WEIGHTS_FILENAME, 0.65, tmp_path / "a", {"chosen_on": "given (--offset)"}
    )
    calibration = json.loads((tmp_path / "a" / "hippo_unet.json").read_text())["calibration"]
    assert calibration["background_logit_offset"] == pytest.approx(0.65)
    assert calibration["previous_offset"] == pytest.approx(shipped_offset)
    assert calibration["applied_offset"] == pytest.approx(0.65 - shipped_offset)
    assert calibration["chosen_on"] == "given (--offset)"
    record = json.loads((tmp_path / "a" / "hippo_unet.json").read_text())
    assert record["architecture"] == shipped_record["architecture"]
    assert record["training"] == shipped_record["training"]
    # the recipe's command run a second time: same total, nothing added, same bytes
    second, second_sha = write_calibrated(first, 0.65, tmp_path / "b", {"chosen_on": "again"})
    assert second_sha == first_sha
    assert second.read_bytes() == first.read_bytes()
    again = json.loads((tmp_path / "b" / "hippo_unet.json").read_text())["calibration"]
    assert again["applied_offset"] == 0 and again["source_sha256"] == first_sha
    with pytest.raises(ValueError, match="write the calibrated copy elsewhere"):
        write_calibrated(second, 0.1, tmp_path / "b", {})


def test_sweep_scores_out_of_fold_cases_and_skips_the_models_own_validation(
    tmp_path: Path, data_dir: Path
) -> None:
    ids = list_case_ids(data_dir)
    _fold_run(tmp_path, "fold0", ids, ids[:2], 0)
    _fold_run(tmp_path, "fold1", ids, ids[2:4], 1)
    runs = find_cross_validation_runs(tmp_path)
    sweep = sweep_background_offset(
        runs, data_dir, exclude_cases={ids[1]}, offsets=(-0.5, 0.0, 0.5), threads=2, echo=str
    )
    assert sweep.used_runs == ["fold1"]
    shipped_record = json.loads((SHIPPED / "hippo_unet.json").read_text())
    assert sweep.runs_offset == shipped_record["calibration"]["background_logit_offset"]
    assert "fold0" in sweep.skipped
    at_zero = next(s for s in sweep.scores if s.offset == 0.0)
    # offset 0 is the uncalibrated model: the same numbers the evaluation reports
    segmenter = Segmenter(SHIPPED / WEIGHTS_FILENAME, num_threads=2)
    rows = []
    for case_id in ids[2:4]:
        case = load_case(data_dir, case_id)
        rows.append(
            case_metrics(
                case_id, segmenter.segment(case.image, case.spacing), case.label, case.spacing
            )
        )
    assert at_zero.n_cases == 2
    assert at_zero.dice_anterior == pytest.approx(np.mean([r.dice_anterior for r in rows]))
    assert at_zero.mean_abs_volume_error_total_pct == pytest.approx(
        np.mean([abs(r.volume_error_total_pct) for r in rows])
    )
    stats = sweep.volume_errors(0.0)
    assert stats.n_cases == 2
    assert stats.median_abs_pct["total"] == pytest.approx(
        np.median([abs(r.volume_error_total_pct) for r in rows])
    )
    assert stats.median_abs_pct["posterior"] == pytest.approx(
        np.median([abs(r.volume_error_posterior_pct) for r in rows])
    )
    assert stats.to_dict()["anterior"]["p90_abs"] == pytest.approx(
        np.percentile([abs(r.volume_error_anterior_pct) for r in rows], 90), abs=0.01
    )
    errors = [s.mean_volume_error_total_pct for s in sweep.scores]
    assert errors[0] > errors[1] > errors[2]  # a larger offset, a smaller outline
    with pytest.raises(ValueError, match="no run is left"):
        sweep_background_offset(runs, data_dir, exclude_cases={ids[0], ids[2]}, echo=str)


def test_runs_of_differently_calibrated_models_are_refused(tmp_path: Path, data_dir: Path) -> None:
    ids = list_case_ids(data_dir)
    _fold_run(tmp_path / "cv", "fold0", ids, ids[:1], 0)
    write_calibrated(SHIPPED / WEIGHTS_FILENAME, 0.0, tmp_path / "cv" / "fold1", {})
    Split(20240404, 0.1, ids[1:], ids[1:2], 1).save(tmp_path / "cv" / "fold1" / "split.json")
    runs = find_cross_validation_runs(tmp_path / "cv")
    with pytest.raises(ValueError, match="different calibration offsets"):
        sweep_background_offset(runs, data_dir, offsets=(0.0,), threads=2, echo=str)


def test_ties_go_to_the_offset_closest_to_zero() -> None:
    def score(offset: float, error: float) -> OffsetScore:
        return OffsetScore(offset, 10, 0.9, 0.88, error, 0.0)

    assert choose_offset([score(-0.3, 3.0), score(0.2, 3.0), score(0.5, 3.5)]).offset == 0.2
    with pytest.raises(ValueError):
        choose_offset([])


@pytest.mark.parametrize("args", [[], ["--offset", "0.4", "--cross-validation", "x"]])
def test_cli_wants_exactly_one_source_of_the_offset(args: list[str]) -> None:
    app = typer.Typer()
    calibrate_cli.register(app)
    app.command("noop")(lambda: None)
    result = CliRunner().invoke(app, ["calibrate", *args])
    assert result.exit_code == 2
    assert "exactly one of" in " ".join(result.output.replace("│", " ").split())
