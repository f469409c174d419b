"""CI smoke test of benchmarks/bench_prior_lookup.py: one interleaved round of the four
conditions against a real Orthanc, writing the JSON the report renders. Asserts what the
lookups answered (the conditions are what they claim to be), never a timing. ~35 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import report
from tests.deploy.conftest import require_orthanc

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.network


def test_quick_run_finds_the_prior_and_writes_what_the_report_reads(
    tmp_path: Path, data_dir: Path
) -> None:
    require_orthanc()
    if not (data_dir / "TestVolumes" / "Study1" / "13_HCropVolume").is_dir():
        pytest.skip("TestVolumes/Study1/13_HCropVolume not available")
    out = tmp_path / "prior_lookup.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    script = REPO / "benchmarks" / "bench_prior_lookup.py"
    cmd = [sys.executable, str(script), "--quick", "--out", str(out)]
    cmd += ["--work", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())

    assert data["benchmark"] == "prior_lookup"
    assert data["quick"] is True and data["reps"] == 1
    for key in ("cpu", "cpus", "git_commit", "orthanc", "loadavg_at_start"):
        assert key in data["machine"]
    conditions = data["conditions"]
    assert list(conditions) == ["baseline", "none", "found", "found_3_series"]
    for cond in conditions.values():
        assert cond["analyze_ms"]["n"] == 1 and cond["analyze_ms"]["median"] > 0
    assert conditions["baseline"]["status"] == ["not asked"]
    assert conditions["baseline"]["priors_ms"]["n"] == 0  # no "priors" stage without a source
    assert conditions["none"]["status"] == ["none"] and not conditions["none"]["compared"]
    assert conditions["none"]["priors_ms"]["n"] == 1
    found = conditions["found"]
    assert found["status"] == ["found"] and found["compared"] is True
    assert found["interval_days"] == 365 and found["srs_read"] == [1]
    # the earlier study analysed three times: still one SR series retrieved and read
    assert conditions["found_3_series"]["compared"] is True
    assert conditions["found_3_series"]["srs_read"] == [1]
    for key in ("ratio_none_vs_baseline", "ratio_found_vs_baseline"):
        assert data[key] > 0
    rendered = "\n".join(report.prior_lookup(data))
    assert "one earlier SR of the patient" in rendered and "| found | 1 |" in rendered
    # Orthanc was stopped: no process runs from the scratch folder any more
    import psutil

    leftovers = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(tmp_path) in part for part in process.info["cmdline"] or ()):
            leftovers.append(process.info["cmdline"])
    assert not leftovers
