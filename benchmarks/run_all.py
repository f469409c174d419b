#!/usr/bin/env python3
"""Run every benchmark, save the JSON results, draw the figures, update docs/benchmarks.md.

    .venv/bin/python benchmarks/run_all.py            # full: >= 7 repetitions (~35 min)
    .venv/bin/python benchmarks/run_all.py --quick    # smoke: 1 repetition, small studies

Full runs write ``benchmarks/results/*.json``, ``docs/img/bench_*.png`` and the results block
of ``docs/benchmarks.md``; quick runs write only under ``benchmarks/results/quick/`` (git-ignored),
so a smoke run never replaces measured numbers. Each benchmark runs as its own process with a
time limit; one that fails is recorded in ``run_all.json`` and the others still run. Nothing
here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import QUICK_RESULTS, RESULTS, loadavg, machine

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable

#: name -> (script, extra args full, extra args quick, time limit full s, time limit quick s)
STEPS: dict[str, tuple[str, list[str], list[str], int, int]] = {
    "ingest": ("bench_ingest.py", [], [], 3600, 600),
    "end_to_end": ("bench_end_to_end.py", [], [], 1200, 300),
    # the same with Orthanc routing only the series the node analyses (HIPPO_ROUTE_SERIES)
    "end_to_end_routed": (
        "bench_end_to_end.py",
        ["--route-series", "HippoCrop"],
        ["--route-series", "HippoCrop"],
        1200,
        300,
    ),
    # ... and routing each HippoCrop instance as Orthanc stores it (route_dicoms_per_instance.lua)
    "end_to_end_routed_per_instance": (
        "bench_end_to_end.py",
        ["--route-series", "HippoCrop", "--routing", "instance"],
        ["--route-series", "HippoCrop", "--routing", "instance"],
        1200,
        300,
    ),
    "inference": ("bench_inference.py", [], [], 1200, 300),
    "memory": ("bench_memory.py", [], [], 900, 400),
    "inference_grids": ("bench_inference_grids.py", [], [], 1800, 300),
    "prior_lookup": ("bench_prior_lookup.py", [], [], 900, 300),
    "throughput": ("bench_throughput.py", [], [], 2400, 600),
    "node_tuning": ("bench_node_tuning.py", [], [], 1800, 400),
    "inference_backends": ("bench_inference_backends.py", [], [], 2400, 900),
}


def run_inference(out_dir: Path, quick: bool, limit: int, log) -> dict:
    """Call the model engineer's bench_inference.py and keep its JSON as inference.json.

    Its interface is its own: pass ``--quick`` and an output option if its --help lists one,
    else take the last JSON object it prints.
    """
    script = BENCH / "bench_inference.py"
    target = out_dir / "inference.json"
    if not script.exists():
        payload = {"error": "benchmarks/bench_inference.py does not exist yet"}
        target.write_text(json.dumps(payload, indent=1) + "\n")
        return {"rc": None, "skipped": payload["error"]}
    help_text = subprocess.run(
        [PY, str(script), "--help"], capture_output=True, text=True, cwd=REPO, timeout=120
    ).stdout
    argv = [PY, str(script)]
    if quick and "--quick" in help_text:
        argv.append("--quick")
    for option in ("--out", "--output", "--json"):
        if option in help_text:
            argv += [option, str(target)]
            break
    if target.exists():
        target.unlink()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=limit, env=_env())
    log.write(proc.stdout + proc.stderr)
    if not target.exists():
        payload = None
        for line in reversed(proc.stdout.strip().splitlines()):
            try:
                payload = json.loads(line)
                break
            except ValueError:
                continue
        if payload is None:
            try:
                start = proc.stdout.index("{")
                payload = json.loads(proc.stdout[start:])
            except ValueError:
                payload = {"error": f"no JSON from bench_inference.py (rc {proc.returncode})"}
        target.write_text(json.dumps(payload, indent=1) + "\n")
    return {"rc": proc.returncode, "argv": argv[1:]}


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _save_summary(path: Path, summary: dict, partial: bool) -> None:
    """Write ``run_all.json``. A partial run (``--only``/``--skip``) updates the steps it ran
    in the existing record instead of replacing it, so re-measuring one benchmark does not
    erase how and when the others were measured; its machine line goes to ``partial_runs``."""
    if partial and path.is_file():
        try:
            record = json.loads(path.read_text())
        except ValueError:
            record = None
        if isinstance(record, dict) and record.get("quick") == summary["quick"]:
            record.setdefault("steps", {}).update(summary["steps"])
            record.setdefault("partial_runs", []).append(
                {
                    "steps": list(summary["steps"]),
                    "machine": summary["machine"],
                    "loadavg_at_end": summary["loadavg_at_end"],
                }
            )
            summary = record
    path.write_text(json.dumps(summary, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repetition, small studies")
    parser.add_argument("--only", default=None, help=f"comma list of {','.join(STEPS)}")
    parser.add_argument("--skip", default="", help="comma list of steps to leave out")
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/")
    args = parser.parse_args(argv)
    out_dir = QUICK_RESULTS if args.quick else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = args.only.split(",") if args.only else list(STEPS)
    skip = set(filter(None, args.skip.split(",")))
    summary: dict = {"quick": args.quick, "machine": machine(), "steps": {}}
    for name in wanted:
        if name in skip or name not in STEPS:
            continue
        script, full_args, quick_args, limit_full, limit_quick = STEPS[name]
        limit = limit_quick if args.quick else limit_full
        log_path = out_dir / f"{name}.log"
        start = time.monotonic()
        print(f"==> {name} (limit {limit} s, load {loadavg()})", flush=True)
        with open(log_path, "w") as log:
            try:
                if name == "inference":
                    status = run_inference(out_dir, args.quick, limit, log)
                else:
                    cmd = [PY, str(BENCH / script), "--out", str(out_dir / f"{name}.json")]
                    cmd += ["--quick"] if args.quick else []
                    cmd += quick_args if args.quick else full_args
                    proc = subprocess.Popen(
                        cmd,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                        cwd=REPO,
                        env=_env(),
                    )
                    deadline = time.monotonic() + limit
                    assert proc.stdout is not None
                    for line in proc.stdout:
                        sys.stdout.write("   " + line)
                        log.write(line)
                        if time.monotonic() > deadline:
                            proc.kill()
                            break
                    try:
                        rc = proc.wait(max(1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        rc = proc.wait(10)
                    status = {"rc": rc}
            except subprocess.TimeoutExpired:
                status = {"rc": None, "error": f"time limit {limit} s"}
        status["seconds"] = round(time.monotonic() - start, 1)
        summary["steps"][name] = status
        print(f"<== {name}: {status}", flush=True)
    summary["loadavg_at_end"] = loadavg()
    _save_summary(out_dir / "run_all.json", summary, partial=bool(args.only or skip))

    from benchmarks import plots, report

    img = out_dir / "img" if args.quick or args.no_doc else REPO / "docs" / "img"
    plots.plot_all(out_dir, img)
    body = report.render(out_dir)
    if args.quick or args.no_doc:
        (out_dir / "benchmarks.md").write_text(body + "\n")
        print(f"report {out_dir / 'benchmarks.md'}")
    elif report.update_doc(REPO / "docs" / "benchmarks.md", body):
        print("updated docs/benchmarks.md")
    else:
        (out_dir / "benchmarks.md").write_text(body + "\n")
        print(f"docs/benchmarks.md has no results markers; report in {out_dir / 'benchmarks.md'}")
    failed = [k for k, v in summary["steps"].items() if v.get("rc") not in (0, None)]
    if failed:
        print(f"failed: {failed} (see {out_dir}/*.log)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
