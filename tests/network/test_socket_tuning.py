"""Socket options: every PDU read re-arms TCP_QUICKACK (Linux); requested associations get
TCP_NODELAY."""

from __future__ import annotations

import socket
import sys

import pytest
from pynetdicom import AE, evt, transport
from pynetdicom.sop_class import Verification

from hippo_scp.network.socket_tuning import disable_nagle, install_quick_ack

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


def _nodelay_of_requested_association(handlers: list) -> int:
    """TCP_NODELAY of the socket pynetdicom connects for an association we request."""
    scp = AE(ae_title="ECHOSCP")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False)
    try:
        scu = AE(ae_title="HIPPOAI")
        scu.add_requested_context(Verification)
        assoc = scu.associate(
            "127.0.0.1", server.server_address[1], ae_title="ECHOSCP", evt_handlers=handlers
        )
        assert assoc.is_established
        try:
            return assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            assoc.release()
    finally:
        server.shutdown()


def test_requested_associations_get_tcp_nodelay() -> None:
    """pynetdicom connects with Nagle on (why the handler exists); the handler turns it off."""
    assert _nodelay_of_requested_association([]) == 0
    assert _nodelay_of_requested_association([(evt.EVT_CONN_OPEN, disable_nagle)]) != 0
