"""Cost of sending small objects the way the node sends its results (one association, 3 C-STOREs).

Run by ``bench_node_tuning.py`` (part ``send``) as a subprocess, one per variant, because the
event-driven loops are installed once per process:

    python -m benchmarks.send_probe --port P --called BARESCP [--event-reactor] [--nodelay]

Sends the first three HippoCrop slices of Study1 (3.5 KB each, about the size of the node's SR
and report objects) ``--reps`` times, each time in a new association, and prints one JSON line:
median milliseconds to associate, per C-STORE, and to release.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--called", default="BARESCP")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--event-reactor", action="store_true", help="the node's event loops")
    parser.add_argument("--nodelay", action="store_true", help="the node's TCP_NODELAY handler")
    args = parser.parse_args(argv)

    import pydicom
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import MRImageStorage

    from benchmarks.study_factory import source_study
    from hippo_scp.network.event_reactor import install_event_driven_reactors
    from hippo_scp.network.socket_tuning import disable_nagle

    if args.event_reactor and not install_event_driven_reactors():
        print(json.dumps({"error": "event-driven loops unavailable"}))
        return 1
    folder = source_study("Study1") / "13_HCropVolume"
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())[:3]]
    ae = AE(ae_title="HIPPOAI")
    ae.add_requested_context(MRImageStorage)
    handlers = [(evt.EVT_CONN_OPEN, disable_nagle)] if args.nodelay else []
    timings: dict[str, list[float]] = {"associate_ms": [], "c_store_ms": [], "release_ms": []}
    for _ in range(args.reps):
        t0 = time.perf_counter()
        assoc = ae.associate("127.0.0.1", args.port, ae_title=args.called, evt_handlers=handlers)
        if not assoc.is_established:
            print(json.dumps({"error": "association not established"}))
            return 1
        t1 = time.perf_counter()
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if int(getattr(status, "Status", -1)) != 0:
                assoc.abort()  # an open association would keep this process alive
                print(json.dumps({"error": f"C-STORE answered {status}"}))
                return 1
        t2 = time.perf_counter()
        assoc.release()
        t3 = time.perf_counter()
        timings["associate_ms"].append((t1 - t0) * 1000)
        timings["c_store_ms"].append((t2 - t1) * 1000 / len(datasets))
        timings["release_ms"].append((t3 - t2) * 1000)
    print(json.dumps({k: round(statistics.median(v), 2) for k, v in timings.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
