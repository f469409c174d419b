"""Throughput: studies per minute with 1, 2, 4, 8 concurrent senders.

Each sender is a storescu sending its own fresh copy of Study1 (new UIDs, all five series) to
the node in one association, all started together; the round ends when the SR of every study
has arrived at the node's destination (a pynetdicom sink). studies/min = senders / round time.
Also recorded: each study's ingest time (storescu wall) and its SR latency from round start.
Printed and saved, never asserted.

    python benchmarks/bench_throughput.py [--quick] [--concurrency 1,2,4,8] [--reps 3]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import processes as P
from benchmarks.common import (
    add_common_args,
    machine,
    reps,
    result_path,
    summary,
    work_dir,
    write_result,
)
from benchmarks.study_factory import fresh_study


def one_round(node: P.Proc, sink: P.ResultSink, work: Path, c: int, timeout: float) -> dict:
    folders, uids = [], []
    for i in range(c):
        folder = work / f"c{c}-s{i}"
        manifest = fresh_study(folder, tag=f"tp-{c}-{i}-{time.time_ns()}")
        folders.append(folder)
        uids.append(manifest["study_instance_uid"])
    P.wait_idle(node.pid, timeout=60, cpu_fraction=0.1)
    ingest: dict[int, float] = {}
    errors: list[str] = []

    def send(i: int) -> None:
        try:
            ingest[i] = P.storescu(node.port, node.aet, folders[i], nodelay=True)
        except Exception as error:  # noqa: BLE001
            errors.append(str(error)[:500])

    t0 = time.perf_counter()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    done = sink.wait_for(
        lambda items: all(
            any(r.study_uid == u and r.modality == "SR" for r in items) for u in uids
        ),
        timeout,
    )
    wall = time.perf_counter() - t0
    latencies = []
    for uid in uids:
        hits = [r.t - t0 for r in sink.snapshot() if r.study_uid == uid and r.modality == "SR"]
        if hits:
            latencies.append(min(hits))
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "senders": c,
        "complete": done,
        "errors": errors,
        "wall_s": wall,
        "studies_per_min": 60 * c / wall if done else None,
        "ingest_s": [ingest[i] for i in sorted(ingest)],
        "sr_latency_s": latencies,
    }


def warm_up(node: P.Proc, sink: P.ResultSink, work: Path, timeout: float) -> float:
    """One small study first (untimed in the rounds): the first analysis after start-up pays
    for lazy imports and first-call set-up. Returns its SR latency."""
    folder = work / "warm-up"
    manifest = fresh_study(folder, tag=f"warm-{time.time_ns()}", series_filter=["HippoCrop"])
    uid = manifest["study_instance_uid"]
    t0 = time.perf_counter()
    P.storescu(node.port, node.aet, folder, nodelay=True)
    sink.wait_for(
        lambda items: any(r.study_uid == uid and r.modality == "SR" for r in items), timeout
    )
    shutil.rmtree(folder, ignore_errors=True)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser, default_reps=3)
    parser.add_argument("--concurrency", default=None, help="comma list (default 1,2,4,8)")
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args(argv)
    n = reps(args, 3)
    levels = [int(x) for x in (args.concurrency or ("1,2" if args.quick else "1,2,4,8")).split(",")]
    work = work_dir(args, "throughput")
    result: dict = {
        "machine": machine(),
        "benchmark": "throughput",
        "quick": args.quick,
        "reps": n,
        "study": "Study1 (5 series, 120 instances, 45 MB), fresh UIDs per sender",
        "levels": {},
    }
    sink = P.ResultSink()
    node = P.start_node(work / "node", sink.destination, nodelay=True)
    result["node_weights"] = node.extra.get("weights")
    try:
        result["warm_up_s"] = warm_up(node, sink, work, args.timeout)
        rounds: dict[int, list[dict]] = {c: [] for c in levels}
        for rep in range(n):
            order = levels if rep % 2 == 0 else list(reversed(levels))
            for c in order:
                row = one_round(node, sink, work, c, args.timeout)
                row["rep"] = rep
                rounds[c].append(row)
                spm = row["studies_per_min"]
                print(
                    f"throughput {c} senders rep {rep}: {row['wall_s']:.1f} s, "
                    f"{spm:.2f} studies/min"
                    if spm
                    else f"throughput {c}: incomplete {row}",
                    flush=True,
                )
                if not node.alive():
                    raise RuntimeError(f"node died:\n{node.log_tail()}")
        for c, rows in rounds.items():
            result["levels"][str(c)] = {
                "studies_per_min": summary(
                    [r["studies_per_min"] for r in rows if r["studies_per_min"]]
                ),
                "round_s": summary([r["wall_s"] for r in rows]),
                "ingest_s": summary([x for r in rows for x in r["ingest_s"]]),
                "sr_latency_s": summary([x for r in rows for x in r["sr_latency_s"]]),
                "runs": rows,
            }
    finally:
        node.stop()
        sink.close()
    print("\n== throughput (median) ==")
    for c, data in result["levels"].items():
        spm = data["studies_per_min"]["median"]
        print(
            f"{c} senders: {spm:.2f} studies/min, round {data['round_s']['median']:.1f} s, "
            f"ingest {data['ingest_s']['median']:.2f} s"
            if spm
            else f"{c} senders: incomplete"
        )
    path = write_result(result_path(args, "throughput"), result)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
