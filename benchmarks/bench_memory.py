"""Memory: peak RSS of the node idle with the model loaded, and with 4 studies in flight.

The node runs as a user runs it (``hippo-scp serve``, results to a sink). Peak = the kernel's
high-water mark ``VmHWM`` of the node process (plus any children), read from ``/proc``; RSS is
also sampled every 100 ms for the plot. "4 studies in flight": four storescu send four fresh
copies of Study1 (new UIDs) at the same time; the run ends when the four SRs have arrived.
Target in issue #10: <= 600 MB. Printed and saved, never asserted.

    python benchmarks/bench_memory.py [--quick] [--studies 4]
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
from benchmarks.common import add_common_args, machine, result_path, work_dir, write_result
from benchmarks.study_factory import fresh_study

MB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(parser)
    parser.add_argument("--studies", type=int, default=4, help="studies in flight")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    work = work_dir(args, "memory")
    studies = args.studies
    result: dict = {
        "machine": machine(),
        "benchmark": "memory",
        "quick": args.quick,
        "studies_in_flight": studies,
    }
    sink = P.ResultSink()
    node = P.start_node(work / "node", sink.destination, nodelay=True)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    t_start = time.perf_counter()

    def sampler() -> None:
        while not stop.is_set():
            mem = P.memory_kib(node.pid)
            samples.append((time.perf_counter() - t_start, mem["rss_kib"] / 1024))
            stop.wait(0.1)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        result["node_weights"] = node.extra.get("weights")
        P.wait_idle(node.pid, timeout=30, cpu_fraction=0.05, window=1.0)
        time.sleep(1)
        idle = P.memory_kib(node.pid)
        result["idle"] = {
            "rss_mib": idle["rss_kib"] / 1024,
            "peak_rss_mib": idle["hwm_kib"] / 1024,
            "note": "model loaded, no association; peak includes start-up",
        }
        t_idle = time.perf_counter() - t_start
        folders, uids = [], []
        for i in range(studies):
            folder = work / f"study-{i}"
            manifest = fresh_study(folder, tag=f"mem-{i}-{time.time_ns()}")
            folders.append(folder)
            uids.append(manifest["study_instance_uid"])
        t_send = time.perf_counter() - t_start
        errors: list[str] = []

        def send(folder: Path) -> None:
            try:
                P.storescu(node.port, node.aet, folder, nodelay=True)
            except Exception as error:  # noqa: BLE001
                errors.append(str(error))

        senders = [threading.Thread(target=send, args=(f,)) for f in folders]
        for t in senders:
            t.start()
        for t in senders:
            t.join(args.timeout)
        t_received = time.perf_counter() - t_start
        done = sink.wait_for(
            lambda items: all(
                any(r.study_uid == u and r.modality == "SR" for r in items) for u in uids
            ),
            args.timeout,
        )
        t_done = time.perf_counter() - t_start
        busy = P.memory_kib(node.pid)
        result["in_flight"] = {
            "studies": studies,
            "all_results_received": done,
            "send_errors": errors,
            "peak_rss_mib": busy["hwm_kib"] / 1024,
            "rss_after_mib": busy["rss_kib"] / 1024,
            "sampled_peak_rss_mib": max(v for t, v in samples if t >= t_send),
            "seconds_to_all_results": t_done - t_send,
        }
        result["timeline"] = {
            "idle_at_s": t_idle,
            "send_at_s": t_send,
            "received_at_s": t_received,
            "done_at_s": t_done,
            "rss_mib": [(round(t, 2), round(v, 1)) for t, v in samples],
        }
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        stop.set()
        thread.join(2)
        node.stop()
        sink.close()
    result["target_mib"] = 600
    print(
        f"\n== memory ==\nidle (model loaded): RSS {result['idle']['rss_mib']:.0f} MiB, "
        f"peak {result['idle']['peak_rss_mib']:.0f} MiB\n"
        f"{studies} studies in flight: peak RSS {result['in_flight']['peak_rss_mib']:.0f} MiB "
        f"(all results: {result['in_flight']['all_results_received']}, "
        f"{result['in_flight']['seconds_to_all_results']:.1f} s)"
    )
    path = write_result(result_path(args, "memory"), result)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
