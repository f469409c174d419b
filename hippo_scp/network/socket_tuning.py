"""Socket options for the receive path that pynetdicom does not set itself.

Why: most senders in a hospital are dcmtk-based (storescu, Orthanc, many PACS) and leave
Nagle's algorithm on. A C-STORE's last segment then waits for our ACK, and Linux delays ACKs
by up to 40 ms — per instance. Re-arming ``TCP_QUICKACK`` before every PDU read makes the
kernel acknowledge at once, so a sender with Nagle on is no longer throttled by us. Measured
with a bare pynetdicom SCP and an as-installed storescu (Study1, 120 instances): 2.08 s -> 0.68 s
(``benchmarks/bench_node_tuning.py``, ``bare_installed`` rows).

``TCP_QUICKACK`` is Linux-only and not sticky (the kernel leaves quick-ACK mode on its own),
hence the re-arm on every read. Set ``HIPPO_TCP_QUICKACK=0`` to disable (for comparisons).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

from pynetdicom import transport

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
