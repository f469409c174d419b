"""Quick ACKs on the receive path: every PDU read re-arms TCP_QUICKACK (Linux)."""

from __future__ import annotations

import socket
import sys

import pytest
from pynetdicom import transport

from hippo_scp.network.socket_tuning import install_quick_ack

pytestmark = pytest.mark.skipif(
    not hasattr(socket, "TCP_QUICKACK") or not sys.platform.startswith("linux"),
    reason="TCP_QUICKACK is Linux-only",
)


class _Holder:
    """Just enough of an AssociationSocket for its ``recv``."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


def test_every_pdu_read_rearms_quick_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HIPPO_TCP_QUICKACK", raising=False)
    assert install_quick_ack()
    assert install_quick_ack()  # idempotent: wrapped once
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
