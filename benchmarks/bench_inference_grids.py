#!/usr/bin/env python3
"""Memory of a long-running inference process meeting many volume sizes (asserts nothing).

    .venv/bin/python benchmarks/bench_inference_grids.py [--quick] [--reps 3] [--out FILE]

A node runs for months and receives HippoCrop volumes of many sizes; each padded network grid
makes oneDNN compile its own kernels (~32 primitives per grid), which it caches. The Segmenter
bounds that cache (``hippo_scp.model.memory_limits``); this script measures what the bound buys
against oneDNN's own default (1024 entries) in the same run, each condition in a fresh process:

* peak RSS after segmenting volumes of ``--grids`` different padded sizes (real content: one
  training volume centre-cropped / edge-padded to each size), and its ratio bounded/default;
* the median time of a call when the four benchmark sizes are cycled (what the bound costs
  when a node alternates between up to four grids: nothing, they stay cached) and when the
  distinct sizes are cycled again (every call then recompiles under the bound).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    add_common_args,
    machine,
    ratio,
    reps,
    result_path,
    summary,
    write_result,
)

#: Distinct sizes: every padded grid from 32 to 56 (x), 48 to 72 (y), 32 to 56 (z), step 8.
ALL_GRIDS: tuple[tuple[int, int, int], ...] = tuple(
    (x, y, z) for x in (32, 40, 48, 56) for y in (48, 56, 64, 72) for z in (32, 40, 48, 56)
)
CONDITIONS: dict[str, dict[str, str]] = {
    "bounded (shipped)": {},
    "oneDNN default (1024)": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"},
}


def worker(grid_count: int, threads: int) -> dict:
    """One condition in this (fresh) process; returns its measurements."""
    import numpy as np

    from benchmarks.bench_inference import SHAPES, fit_to_shape
    from hippo_scp.model.dataset import default_data_dir, load_case
    from hippo_scp.model.inference import Segmenter

    seg = Segmenter(num_threads=threads)
    base = load_case(default_data_dir(), "hippocampus_001").image.astype(np.float64)
    # Sizes just under each grid, so the padding lands on that grid; made on the fly, so the
    # process holds one input at a time, as the node does.
    sizes = [(x - 3, y - 3, z - 3) for x, y, z in ALL_GRIDS[:grid_count]]

    def timed(shapes: list[tuple[int, int, int]], rounds: int) -> float:
        times = []
        for _ in range(rounds):
            for shape in shapes:
                vol = fit_to_shape(base, shape)
                t = time.perf_counter()
                seg.segment(vol, (1.0, 1.0, 1.0))
                times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times)

    first_pass_ms = timed(sizes, 1)
    peak_after_grids = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    repeat_distinct_ms = timed(sizes, 1)
    four = list(SHAPES)
    timed(four, 1)
    four_cycle_ms = timed(four, 5)
    return {
        "grids": grid_count,
        "cache_capacity": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"),
        "peak_rss_mb_after_grids": round(peak_after_grids, 1),
        "first_pass_median_ms": round(first_pass_ms, 1),
        "repeat_distinct_median_ms": round(repeat_distinct_ms, 1),
        "four_sizes_cycled_median_ms": round(four_cycle_ms, 1),
        "peak_rss_mb_final": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_condition(extra_env: dict[str, str], grid_count: int, threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    env.update(extra_env)
    repo = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--worker", "--grids", str(grid_count)]
    cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, default_reps=3)
    parser.add_argument("--grids", type=int, default=None, help="distinct sizes (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    grid_count = min(args.grids or (12 if args.quick else len(ALL_GRIDS)), len(ALL_GRIDS))
    if args.worker:
        print(json.dumps(worker(grid_count, args.threads)))
        return 0

    started = machine()  # load average at the start, next to the one write_result adds
    runs: dict[str, list[dict]] = {name: [] for name in CONDITIONS}
    for rep in range(reps(args, 3)):
        for name, extra_env in CONDITIONS.items():  # alternate: drift hits both alike
            result = run_condition(extra_env, grid_count, args.threads)
            runs[name].append(result)
            print(
                f"rep {rep + 1} {name:>22}: peak {result['peak_rss_mb_after_grids']:.0f} MB "
                f"after {grid_count} grids, four sizes cycled "
                f"{result['four_sizes_cycled_median_ms']:.0f} ms, distinct sizes again "
                f"{result['repeat_distinct_median_ms']:.0f} ms",
                flush=True,
            )
    per_condition = {
        name: {
            key: summary([r[key] for r in results])
            for key in (
                "peak_rss_mb_after_grids",
                "four_sizes_cycled_median_ms",
                "repeat_distinct_median_ms",
            )
        }
        for name, results in runs.items()
    }
    bounded, default = (per_condition[name] for name in CONDITIONS)
    payload = {
        "machine": started,
        "benchmark": "inference_grids",
        "quick": args.quick,
        "grids": grid_count,
        "threads": args.threads,
        "conditions": per_condition,
        "runs": runs,
        "ratio_peak_rss_bounded_vs_default": ratio(
            bounded["peak_rss_mb_after_grids"]["median"],
            default["peak_rss_mb_after_grids"]["median"],
        ),
        "ratio_four_sizes_ms_bounded_vs_default": ratio(
            bounded["four_sizes_cycled_median_ms"]["median"],
            default["four_sizes_cycled_median_ms"]["median"],
        ),
    }
    path = write_result(result_path(args, "inference_grids"), payload)
    print(
        f"peak RSS after {grid_count} grids, bounded / default: "
        f"{payload['ratio_peak_rss_bounded_vs_default']:.2f}; four sizes cycled: "
        f"{payload['ratio_four_sizes_ms_bounded_vs_default']:.2f} -> {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
