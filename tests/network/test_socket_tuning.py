"""Socket options: every PDU read re-arms TCP_QUICKACK (Linux); requested associations get
TCP_NODELAY."""

from __future__ import annotations

import socket
import sys
import threading
import time

import pytest
from pynetdicom import evt, transport

from hippo_scp.network import socket_tuning
from hippo_scp.network.socket_tuning import disable_nagle, install_pdu_read_tuning, read_exactly
from tests.network.conftest import verification_association

linux_only = pytest.mark.skipif(
    not hasattr(socket, "TCP_QUICKACK") or not sys.platform.startswith("linux"),
    reason="TCP_QUICKACK is Linux-only",
)


class _Holder:
    """Just enough of an AssociationSocket for its ``recv``."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


@linux_only
def test_every_pdu_read_rearms_quick_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HIPPO_TCP_QUICKACK", raising=False)
    assert install_pdu_read_tuning()
    assert install_pdu_read_tuning()  # idempotent: wrapped once
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        client.sendall(b"\x04\x00\x00\x00\x00\x02ok")
        accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
        data = transport.AssociationSocket.recv(_Holder(accepted), 8)
        assert bytes(data) == b"\x04\x00\x00\x00\x00\x02ok"
        # the wrapper set quick-ACK mode right before reading
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
    finally:
        for sock in (client, accepted, server):
            sock.close()


def _nodelay_of_requested_association(handlers: list) -> int:
    """TCP_NODELAY of the socket pynetdicom connects for an association we request."""
    with verification_association(evt_handlers=handlers) as assoc:
        return assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@linux_only
def test_requested_associations_get_tcp_nodelay() -> None:
    """pynetdicom connects with Nagle on (why the handler exists); the handler turns it off."""
    assert _nodelay_of_requested_association([]) == 0
    assert _nodelay_of_requested_association([(evt.EVT_CONN_OPEN, disable_nagle)]) != 0


def test_whole_pdu_read_reassembles_what_arrives_in_pieces() -> None:
    """A PDU's bytes arrive in segments of any size; the read returns exactly the PDU and
    leaves the next one's bytes in the socket."""
    pdu = bytes(range(256)) * 700  # 179,200 bytes
    reader, writer = socket.socketpair()

    def trickle() -> None:
        for start in range(0, len(pdu), 50_000):
            writer.sendall(pdu[start : start + 50_000])
            time.sleep(0.01)
        writer.sendall(b"NEXT")

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        assert read_exactly(reader, len(pdu)) == pdu
        assert reader.recv(4) == b"NEXT"
    finally:
        sender.join()
        reader.close()
        writer.close()


def test_whole_pdu_read_returns_what_came_before_the_peer_closed() -> None:
    """As pynetdicom's recv: a short result, which its PDU reader turns into Evt17."""
    reader, writer = socket.socketpair()
    writer.sendall(b"\x04\x00\x00\x00")
    writer.close()
    try:
        received = read_exactly(reader, 6)
        assert received == bytearray(b"\x04\x00\x00\x00") and isinstance(received, bytearray)
    finally:
        reader.close()


def test_announced_giant_pdu_is_not_preallocated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The length comes from the peer: above the bound the read falls back to pynetdicom's
    way, whose buffer grows only with the data actually received."""
    install_pdu_read_tuning()
    calls: list[int] = []
    monkeypatch.setattr(socket_tuning, "read_exactly", lambda sock, n: calls.append(n) or b"")
    reader, writer = socket.socketpair()
    writer.sendall(b"abc")
    writer.close()
    try:
        holder = _Holder(reader)
        data = transport.AssociationSocket.recv(holder, 2**31)  # a 2 GiB PDU "announced"
        assert bytes(data) == b"abc" and calls == []
        transport.AssociationSocket.recv(holder, 16)
        assert calls == [16]
    finally:
        reader.close()
