"""A bare pynetdicom Storage SCP with the receive-path knobs the node could turn.

It is the node's receive path without the node (no selection, no analysis): what pynetdicom
itself costs, and what each knob buys. Used by ``bench_node_tuning.py`` as a subprocess:

    python -m benchmarks.bare_scp --port 11113 [--pdu 0] [--nodelay] [--fast-recv]
        [--reactor-sleep 0.0001] [--keep raw|decode] [--event-reactor]

Knobs (all off = pynetdicom 3.0 as shipped):

- ``--pdu``: maximum PDU size we announce (pynetdicom default 16382; the node's config 131072).
- ``--nodelay``: ``TCP_NODELAY`` on accepted sockets (Python leaves Nagle on).
- ``--fast-recv``: ``AssociationSocket.recv`` reads with ``recv_into`` in one buffer instead of
  4096-byte ``recv`` calls appended to a bytearray.
- ``--reactor-sleep``: the sleep of the association reactor loop (pynetdicom: 1 ms per loop,
  one DIMSE message per loop, so up to ~1 ms of latency per received instance).
- ``--keep``: ``raw`` keeps the encoded dataset bytes; ``decode`` decodes it (``event.dataset``).
- ``--no-validation``: pydicom reading/writing validation off (``config.settings``); pynetdicom
  encodes every C-STORE-RSP with pydicom, which validates each UID/value with a regex.
- ``--quickack``: ``TCP_QUICKACK`` re-armed before every ``recv`` (Linux): ACK at once instead
  of the ~40 ms delayed ACK that a sender with Nagle on (dcmtk without ``TCP_NODELAY=1``)
  waits for before its last small segment of each message.
- ``--fast-contexts``: the acceptor's presentation contexts as the node's
  ``CheaplyCopiedContext`` (:mod:`hippo_scp.network.presentation`, adopted by the node on
  2026-11-28), whose ``__deepcopy__`` copies only the lists (UIDs are immutable strings),
  passed to ``start_server(contexts=...)``: pynetdicom deep-copies the server's contexts for
  every association (``RequestHandler._create_association``).
- ``--event-reactor``: the node's event-driven reactor loops
  (:mod:`hippo_scp.network.event_reactor`, adopted 2026-11-28): the DUL and association
  threads wait for socket data / queued work instead of polling every 1 ms.
- ``--contexts``: ``all`` = every storage SOP class x 13 transfer syntaxes; ``lean`` = every
  storage SOP class x the 3 uncompressed ones. pynetdicom deep-copies the supported contexts
  for every association.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading


def apply_fast_recv() -> None:
    from pynetdicom import transport

    def recv(self, nr_bytes: int) -> bytearray:
        buf = bytearray(nr_bytes)
        view = memoryview(buf)
        got = 0
        while got < nr_bytes:
            n = self.socket.recv_into(view[got:], nr_bytes - got)
            if not n:
                del view
                return buf[:got]
            got += n
        del view
        return buf

    transport.AssociationSocket.recv = recv


def apply_quickack() -> None:
    from pynetdicom import transport

    original = transport.AssociationSocket.recv
    quickack = getattr(socket, "TCP_QUICKACK", None)

    def recv(self, nr_bytes: int) -> bytearray:
        if quickack is not None and self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        return original(self, nr_bytes)

    transport.AssociationSocket.recv = recv


def apply_nodelay() -> None:
    from pynetdicom import transport

    original = transport.AssociationServer.get_request

    def get_request(self):
        sock, address = original(self)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

    transport.AssociationServer.get_request = get_request


def apply_reactor_sleep(seconds: float) -> None:
    """Shorten the 1 ms ``time.sleep`` at the top of ``Association._run_reactor``."""
    import time as _time

    from pynetdicom import association

    class _Time:
        def __getattr__(self, name):
            return getattr(_time, name)

        @staticmethod
        def sleep(value: float) -> None:
            _time.sleep(seconds if value == 0.001 else value)

    association.time = _Time()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bare pynetdicom Storage SCP for benchmarks")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ae-title", default="BARESCP")
    parser.add_argument("--pdu", type=int, default=None, help="max PDU (default pynetdicom's)")
    parser.add_argument("--nodelay", action="store_true")
    parser.add_argument("--fast-recv", action="store_true")
    parser.add_argument("--reactor-sleep", type=float, default=None)
    parser.add_argument("--keep", choices=["raw", "decode"], default="decode")
    parser.add_argument("--no-validation", action="store_true")
    parser.add_argument("--contexts", choices=["all", "lean"], default="all")
    parser.add_argument("--fast-contexts", action="store_true")
    parser.add_argument("--quickack", action="store_true")
    parser.add_argument("--event-reactor", action="store_true")
    args = parser.parse_args(argv)

    import logging

    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification

    from hippo_scp.network.presentation import per_association_contexts

    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if args.fast_recv:
        apply_fast_recv()
    if args.nodelay:
        apply_nodelay()
    if args.quickack:
        apply_quickack()
    if args.event_reactor:
        from hippo_scp.network.event_reactor import install_event_driven_reactors

        install_event_driven_reactors()
    if args.reactor_sleep is not None:
        apply_reactor_sleep(args.reactor_sleep)
    if args.no_validation:
        from pydicom import config

        config.settings.reading_validation_mode = config.IGNORE
        config.settings.writing_validation_mode = config.IGNORE

    ae = AE(ae_title=args.ae_title)
    ae.require_called_aet = False
    if args.pdu is not None:
        ae.maximum_pdu_size = args.pdu
    ae.maximum_associations = 32
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(
            context.abstract_syntax, ALL_TS if args.contexts == "all" else ALL_TS[:3]
        )
    ae.add_supported_context(Verification)
    held: list[object] = []
    lock = threading.Lock()

    def on_store(event):
        item = event.dataset if args.keep == "decode" else event.request.DataSet.getvalue()
        with lock:
            held.append(item)
            if len(held) > 4096:
                held.clear()
        return 0x0000

    def on_release(event):
        with lock:
            held.clear()

    # The node's own per-association copy (hippo_scp.network.presentation), here on top of
    # plain pynetdicom to show what it buys.
    contexts = per_association_contexts(ae.supported_contexts) if args.fast_contexts else None
    server = ae.start_server(
        ("127.0.0.1", args.port),
        block=False,
        contexts=contexts,
        evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_RELEASED, on_release)],
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"bare_scp listening on {args.port}", flush=True)
    stop.wait()
    server.shutdown()
    return 0


ALL_TS = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
]

if __name__ == "__main__":
    sys.exit(main())
