"""Shared helpers: result files, statistics, the machine description."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
QUICK_RESULTS = RESULTS / "quick"


def add_common_args(parser: argparse.ArgumentParser, default_reps: int = 7) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: one repetition, small studies"
    )
    parser.add_argument(
        "--reps", type=int, default=None, help=f"repetitions (default {default_reps})"
    )
    parser.add_argument("--out", type=Path, default=None, help="result JSON file")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: tmp)")


def reps(args: argparse.Namespace, default: int) -> int:
    if args.reps:
        return args.reps
    return 1 if args.quick else default


def result_path(args: argparse.Namespace, name: str) -> Path:
    if args.out:
        return args.out
    return (QUICK_RESULTS if args.quick else RESULTS) / f"{name}.json"


def work_dir(args: argparse.Namespace, name: str) -> Path:
    if args.work:
        path = args.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=f"hippo-bench-{name}-"))


def summary(values: list[float]) -> dict:
    """median / min / max / n (seconds or whatever unit ``values`` are in)."""
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None}
    return {
        "n": len(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "values": [round(v, 4) for v in values],
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b:
        return None
    return a / b


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict:
    """What the numbers were measured on (they are only comparable within one run)."""
    import numpy
    import pydicom
    import pynetdicom

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "numpy": numpy.__version__,
        "dcmtk": _cmd(["/usr/bin/storescp", "--version"]),
        "orthanc": _cmd(["/usr/sbin/Orthanc", "--version"]),
        "git_commit": _cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "loadavg_at_start": loadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_provenance(result: dict) -> dict:
    """Which run a result comes from, for a part merged into an earlier file (``--merge-into``)."""
    return {
        "git_commit": result["machine"].get("git_commit"),
        "started": result["machine"].get("started"),
        "loadavg_at_start": result["machine"].get("loadavg_at_start"),
        "loadavg_at_end": result.get("loadavg_at_end"),
    }


def write_result(path: Path, payload: dict) -> Path:
    payload.setdefault("machine", machine())
    payload["loadavg_at_end"] = loadavg()
    payload["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return path


def fmt_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
