"""Socket options that pynetdicom does not set itself (receive path and result sending).

Why: most senders in a hospital are dcmtk-based (storescu, Orthanc, many PACS) and leave
Nagle's algorithm on. A C-STORE's last segment then waits for our ACK, and Linux delays ACKs
by up to 40 ms — per instance. Re-arming ``TCP_QUICKACK`` before every PDU read makes the
kernel acknowledge at once, so a sender with Nagle on is no longer throttled by us. Measured
with a bare pynetdicom SCP and an as-installed storescu (Study1, 120 instances): 2.08 s -> 0.68 s
(``benchmarks/bench_node_tuning.py``, ``bare_installed`` rows).

``TCP_QUICKACK`` is Linux-only and not sticky (the kernel leaves quick-ACK mode on its own),
hence the re-arm on every read. Set ``HIPPO_TCP_QUICKACK=0`` to disable (for comparisons).

Both directions: every association's socket gets ``TCP_NODELAY`` (:func:`disable_nagle`), the
accepted ones (``network/receiver.py``) and the ones the node opens to send its results.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from pynetdicom import evt, transport

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
_lock = threading.Lock()
_installed = False


def quick_ack_enabled() -> bool:
    """Whether quick ACKs apply on this platform and are not switched off."""
    return _QUICKACK is not None and os.environ.get("HIPPO_TCP_QUICKACK", "1") != "0"


def install_quick_ack() -> bool:
    """Wrap ``AssociationSocket.recv`` so every PDU read re-arms ``TCP_QUICKACK`` (once per
    process; returns whether it is active)."""
    global _installed
    if not quick_ack_enabled():
        return False
    with _lock:
        if _installed:
            return True
        original = transport.AssociationSocket.recv

        def recv(self: transport.AssociationSocket, nr_bytes: int) -> bytearray:
            sock = self.socket
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            return original(self, nr_bytes)

        transport.AssociationSocket.recv = recv  # type: ignore[method-assign]
        _installed = True
    return True


def disable_nagle(event: evt.Event) -> None:
    """``EVT_CONN_OPEN`` handler: ``TCP_NODELAY`` on the association's socket.

    Used for accepted associations (DIMSE responses are small and latency-bound) and for the
    ones the node requests. Why the latter: pynetdicom leaves Nagle's algorithm on for the
    sockets it connects. A C-STORE is a
    command PDU followed by the data set; when the data set is small (an SR, a report image),
    its segment waits for the ACK of the command's, which the peer delays by ~40 ms. Measured
    with a pynetdicom SCU sending three 3.5 KB instances to a pynetdicom SCP on loopback:
    48 ms per C-STORE with Nagle on. The node's results are exactly such small objects.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
