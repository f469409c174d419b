"""benchmarks/run_all.py's record: re-measuring one benchmark keeps the record of the others."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.run_all import _save_summary


def _summary(steps: dict, quick: bool = False, commit: str = "aaa") -> dict:
    return {"quick": quick, "machine": {"git_commit": commit}, "steps": steps, "loadavg_at_end": 1}


def test_a_partial_run_updates_only_its_steps(tmp_path: Path) -> None:
    path = tmp_path / "run_all.json"
    _save_summary(
        path, _summary({"ingest": {"rc": 0}, "inference": {"rc": 0, "seconds": 9}}), False
    )
    _save_summary(path, _summary({"inference": {"rc": 1, "seconds": 3}}, commit="bbb"), True)
    record = json.loads(path.read_text())
    assert record["steps"] == {"ingest": {"rc": 0}, "inference": {"rc": 1, "seconds": 3}}
    assert record["machine"] == {"git_commit": "aaa"}  # the full run's machine line
    assert record["partial_runs"][0]["steps"] == ["inference"]
    assert record["partial_runs"][0]["machine"] == {"git_commit": "bbb"}


def test_a_full_run_or_another_mode_replaces_the_record(tmp_path: Path) -> None:
    path = tmp_path / "run_all.json"
    _save_summary(path, _summary({"ingest": {"rc": 0}}), False)
    _save_summary(path, _summary({"inference": {"rc": 0}}, quick=True), True)
    assert json.loads(path.read_text())["steps"] == {"inference": {"rc": 0}}
    _save_summary(path, _summary({"memory": {"rc": 0}}), False)
    assert "partial_runs" not in json.loads(path.read_text())
