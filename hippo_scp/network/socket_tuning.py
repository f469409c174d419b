"""Socket options that pynetdicom does not set itself (receive path and result sending).

Why: most senders in a hospital are dcmtk-based (storescu, Orthanc, many PACS) and leave
Nagle's algorithm on. A C-STORE's last segment then waits for our ACK, and Linux delays ACKs
by up to 40 ms — per instance. Re-arming ``TCP_QUICKACK`` before every PDU read makes the
kernel acknowledge at once, so a sender with Nagle on is no longer throttled by us. Measured
with a bare pynetdicom SCP and an as-installed storescu (Study1, 120 instances): 2.08 s -> 0.68 s
(``benchmarks/bench_node_tuning.py``, ``bare_installed`` rows).

``TCP_QUICKACK`` is Linux-only and not sticky (the kernel leaves quick-ACK mode on its own),
hence the re-arm on every read. Set ``HIPPO_TCP_QUICKACK=0`` to disable (for comparisons).
The same wrapper reads each PDU with ``recv_into`` into one buffer (:func:`read_exactly`)
instead of pynetdicom's 4 KiB ``recv`` calls (``HIPPO_WHOLE_PDU_READS=0`` to disable).

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
#: Largest read done into one preallocated buffer. The length comes from the peer's PDU
#: header, so it is bounded: a longer announced PDU is read pynetdicom's way (the buffer grows
#: only as data arrives), never allocated up front.
WHOLE_READ_MAX_BYTES = 4 * 1024 * 1024
_lock = threading.Lock()
_installed: tuple[bool, bool] | None = None


def quick_ack_enabled() -> bool:
    """Whether quick ACKs apply on this platform and are not switched off."""
    return _QUICKACK is not None and os.environ.get("HIPPO_TCP_QUICKACK", "1") != "0"


def whole_reads_enabled() -> bool:
    """Whether PDUs are read with ``recv_into`` (``HIPPO_WHOLE_PDU_READS=0`` switches it off)."""
    return os.environ.get("HIPPO_WHOLE_PDU_READS", "1") != "0"


def read_exactly(sock: socket.socket, nr_bytes: int) -> bytearray:
    """Read ``nr_bytes`` into one buffer with as few ``recv_into`` calls as the kernel allows.

    Same contract as pynetdicom's ``AssociationSocket.recv``: blocks until all bytes are there,
    returns what arrived when the peer closes, lets socket errors and timeouts propagate.
    pynetdicom reads in 4 KiB ``recv`` calls and appends each to a bytearray: 32 calls for a
    128 KiB PDU, ~100 us against ~25 us this way (socket pair, 400 PDUs).
    """
    buffer = bytearray(nr_bytes)
    nr_read = 0
    with memoryview(buffer) as view:
        while nr_read < nr_bytes:
            got = sock.recv_into(view[nr_read:], nr_bytes - nr_read)
            if not got:
                break
            nr_read += got
    if nr_read < nr_bytes:
        del buffer[nr_read:]
    return buffer


def install_pdu_read_tuning() -> bool:
    """Wrap ``AssociationSocket.recv`` (once per process) so every PDU read re-arms
    ``TCP_QUICKACK`` and reads with :func:`read_exactly`; returns whether quick ACKs are on.

    Each part has its switch (``HIPPO_TCP_QUICKACK``, ``HIPPO_WHOLE_PDU_READS``), read at the
    first call.
    """
    global _installed
    with _lock:
        if _installed is not None:
            return _installed[0]
        quick_ack, whole_reads = quick_ack_enabled(), whole_reads_enabled()
        _installed = (quick_ack, whole_reads)
        if not (quick_ack or whole_reads):
            return False
        original = transport.AssociationSocket.recv

        def recv(self: transport.AssociationSocket, nr_bytes: int) -> bytearray:
            sock = self.socket
            if sock is None:
                return original(self, nr_bytes)
            if quick_ack:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            if whole_reads and nr_bytes <= WHOLE_READ_MAX_BYTES:
                return read_exactly(sock, nr_bytes)
            return original(self, nr_bytes)

        transport.AssociationSocket.recv = recv  # type: ignore[method-assign]
    return quick_ack


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
