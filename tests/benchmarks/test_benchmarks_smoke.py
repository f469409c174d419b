"""CI smoke tests of the benchmarks: quick ingest, the send probe and end to end still run.

One repetition of a tiny study (Study1's HippoCrop series, 32 instances) into dcmtk storescp
and into the node, as installed and with TCP_NODELAY=1, no Orthanc; it checks the JSON has the
fields the report reads. It asserts nothing about timings (benchmarks never do). < 60 s.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.network


def _needs(data_dir: Path) -> None:
    for tool in ("storescp", "storescu", "echoscu"):
        if not Path("/usr/bin", tool).exists() and not shutil.which(tool):
            pytest.skip(f"dcmtk {tool} not installed")
    if not (data_dir / "TestVolumes" / "Study1").is_dir():
        pytest.skip("TestVolumes/Study1 not available")


def test_ingest_quick_smoke(tmp_path: Path, data_dir: Path) -> None:
    _needs(data_dir)
    out = tmp_path / "ingest.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["HIPPO_BENCH_STOP_TIMEOUT"] = "3"  # no need for the node's graceful stop here
    # The node part is skipped only while the node does not exist at all.
    node_exists = (REPO / "hippo_scp" / "node.py").exists()
    receivers = "storescp,node" if node_exists else "storescp"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "bench_ingest.py"),
            "--quick",
            "--reps",
            "1",
            "--sizes",
            "tiny",
            "--receivers",
            receivers,
            "--orthanc",
            "no",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,  # ~25 s on an idle 2-core machine; generous for a loaded CI runner
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())

    assert data["benchmark"] == "ingest"
    assert data["quick"] is True and data["reps"] == 1
    for key in ("cpu", "cpus", "pynetdicom", "dcmtk", "git_commit", "loadavg_at_start"):
        assert key in data["machine"]
    assert not data["start_errors"], data["start_errors"]
    tiny = data["sizes"]["tiny"]
    assert tiny["instances"] == 32 and tiny["bytes"] > 0
    for mode in ("installed", "tuned"):
        cell = tiny["modes"][mode]
        assert cell["reps"] == 1
        for name in receivers.split(","):
            wall = cell["receivers"][name]["wall_s"]
            assert wall["n"] == 1 and wall["median"] > 0
            assert cell["receivers"][name]["receiver_cpu_s"]["n"] == 1
        if node_exists:
            assert cell["ratios_vs_storescp"]["node"] > 0
    if not node_exists:
        pytest.skip("hippo_scp/node.py does not exist yet: storescp part only")


def test_send_probe_smoke(data_dir: Path) -> None:
    """benchmarks/send_probe.py (part ``send`` of bench_node_tuning.py) still runs and reports
    the three timings the report reads."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    if not (data_dir / "TestVolumes" / "Study1").is_dir():
        pytest.skip("TestVolumes/Study1 not available")
    ae = AE(ae_title="BARESCP")
    ae.supported_contexts = AllStoragePresentationContexts
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)]
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.send_probe", "--port",
             str(server.server_address[1]), "--reps", "2", "--event-reactor", "--nodelay"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(row) == {"associate_ms", "c_store_ms", "release_ms"}
    assert all(value > 0 for value in row.values())


def test_end_to_end_per_instance_quick_smoke(tmp_path: Path, data_dir: Path) -> None:
    """bench_end_to_end.py with per-instance routing (one cold + one measured study through a
    real Orthanc) still runs, routes HippoCrop in one association, and reports the fields the
    report reads. Nothing about timings. ~15 s idle."""
    _needs(data_dir)
    if not Path("/usr/sbin/Orthanc").exists():
        pytest.skip("Orthanc not installed")
    out = tmp_path / "e2e.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    argv = [sys.executable, str(REPO / "benchmarks" / "bench_end_to_end.py"), "--quick",
            "--routing", "instance", "--route-series", "HippoCrop", "--out", str(out),
            "--work", str(tmp_path / "work"), "--timeout", "90"]  # fmt: skip
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())

    assert data["routing"] == "instance" and data["route_series"] == ["HippoCrop"]
    assert data["whole_series_senders"] == []  # per-instance routing may split a series
    assert data["configured_wait_s"] == 2.0  # close delay 1 s + the node's release grace 1 s
    run = next(r for r in data["runs"] if r["rep"] == 0)
    assert run["sr_s"] > 0 and "beyond_configured_wait_s" in run, run
    assert run["orthanc_associations"] == 1, run  # the 32 HippoCrop instances, one association
    assert run["node_trigger"] == "release", run
    assert data["sr_s"]["n"] == 1 and data["beyond_configured_wait_s"]["n"] == 1
