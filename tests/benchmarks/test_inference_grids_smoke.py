"""CI smoke test of benchmarks/bench_inference_grids.py: it runs both conditions in fresh
processes and writes the JSON the report renders. Asserts no timing or memory figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report
from hippo_scp.model.dataset import default_data_dir
from hippo_scp.model.memory_limits import DEFAULT_PRIMITIVE_CACHE_CAPACITY

REPO = Path(__file__).resolve().parents[2]


def test_quick_run_writes_what_the_report_reads(tmp_path: Path) -> None:
    if not (default_data_dir() / "imagesTr").is_dir():
        pytest.skip("hippocampus training data not available")
    out = tmp_path / "inference_grids.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    script = REPO / "benchmarks" / "bench_inference_grids.py"
    cmd = [sys.executable, str(script), "--quick", "--grids", "2", "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=600, capture_output=True)
    data = json.loads(out.read_text())
    assert data["grids"] == 2
    capacities = [runs[0]["cache_capacity"] for runs in data["runs"].values()]
    # the Segmenter's own bound vs oneDNN's default
    assert capacities == [str(DEFAULT_PRIMITIVE_CACHE_CAPACITY), "1024"]
    assert data["ratio_peak_rss_bounded_vs_default"] > 0
    rendered = "\n".join(report.inference_grids(data))
    assert "bounded (shipped)" in rendered and "oneDNN default (1024)" in rendered
