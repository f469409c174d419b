"""A Storage SCP that records every association it receives (a stand-in for the node).

Used by the deploy tests to check Orthanc's routing on its own: which series arrive, in how
many associations, from which calling AE. Run as a process:

    python tests/deploy/dicom_sink.py --aet HIPPOAI --port 11112 --record run/sink.jsonl

Each released association appends one JSON line: {"calling_aet", "instances": [[series_uid,
sop_uid, modality, manufacturer], ...]}. Nothing is written to disk but the record.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--aet", default="HIPPOAI")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--record", type=Path, required=True)
    args = parser.parse_args(argv)

    lock = threading.Lock()
    received: dict[int, list[list[str]]] = {}

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        row = [
            str(ds.get("SeriesInstanceUID", "")),
            str(ds.get("SOPInstanceUID", "")),
            str(ds.get("Modality", "")),
            str(ds.get("Manufacturer", "")),
        ]
        with lock:
            received.setdefault(id(event.assoc), []).append(row)
        return 0x0000

    def on_released(event: evt.Event) -> None:
        with lock:
            rows = received.pop(id(event.assoc), [])
        if not rows:
            return
        line = {"calling_aet": event.assoc.requestor.ae_title, "instances": rows}
        with lock, args.record.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(line) + "\n")

    ae = AE(ae_title=args.aet)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.touch()
    handlers = [
        (evt.EVT_C_STORE, on_store),
        (evt.EVT_RELEASED, on_released),
        (evt.EVT_ABORTED, on_released),
    ]
    server = ae.start_server(("127.0.0.1", args.port), block=False, evt_handlers=handlers)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"sink {args.aet} listening on 127.0.0.1:{args.port}", flush=True)
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
