"""C-STORE-RSP without pynetdicom's generic message encoder (receive path, per instance).

Why: for every received instance pynetdicom turns the response primitive into a
``C_STORE_RSP`` message (a pydicom ``Dataset`` with all nine possible command elements, the
unused ones deleted again), encodes that command set once to measure it for
``CommandGroupLength`` and once more to send it. That costs ~0.57 ms per instance on the 2-core
box, about an eighth of the node's CPU per received instance, for a command set whose layout
never changes: seven elements, Implicit VR Little Endian (PS3.7 6.3.1, Annex E.1 Table E.1-1).

:func:`encode_store_response` writes those bytes directly; :func:`use_fast_store_responses`
(an ``EVT_CONN_OPEN`` handler) makes an association send its plain C-STORE responses that way.
Anything else goes through pynetdicom unchanged: requests, other services, responses that
carry an Error Comment or Offending Element, a command set larger than the peer's maximum PDU,
and any association with an ``EVT_DIMSE_SENT`` handler bound (pynetdicom's DEBUG log handlers
among them), which expects the ``C_STORE_RSP`` message object. The tests compare the bytes with
pynetdicom's own encoder. ``HIPPO_FAST_STORE_RSP=0`` switches the fast path off.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

#: CommandField of a C-STORE-RSP (PS3.7 Table 9.3-2)
C_STORE_RSP_COMMAND = 0x8001
#: CommandDataSetType: no data set follows
NO_DATA_SET = 0x0101
#: Message Control Header of a PDV that holds a whole command set (command, last fragment)
_LAST_COMMAND_FRAGMENT = b"\x03"

# (0000,xxxx) tag element numbers, in the order they must appear
_GROUP_LENGTH, _SOP_CLASS, _COMMAND_FIELD, _RESPONDED_TO, _DATA_SET_TYPE, _STATUS, _SOP_INSTANCE = (
    0x0000,
    0x0002,
    0x0100,
    0x0120,
    0x0800,
    0x0900,
    0x1000,
)
_US = struct.Struct("<HHIH")  # group, element, length 2, value
_HEADER = struct.Struct("<HHI")  # group, element, length


def _ui(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\x00"  # UI values are padded to even length with NUL (PS3.5 6.2)
    return _HEADER.pack(0x0000, element, len(value)) + value


def encode_store_response(
    message_id_responded_to: int, sop_class_uid: str, sop_instance_uid: str, status: int
) -> bytes:
    """The command set of a C-STORE-RSP without a data set, Implicit VR Little Endian.

    Raises ``ValueError`` for values a US element cannot hold or non-ASCII UIDs.
    """
    for name, value in (("message id", message_id_responded_to), ("status", status)):
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"{name} {value} does not fit an unsigned short")
    body = b"".join(
        (
            _ui(_SOP_CLASS, sop_class_uid),
            _US.pack(0x0000, _COMMAND_FIELD, 2, C_STORE_RSP_COMMAND),
            _US.pack(0x0000, _RESPONDED_TO, 2, message_id_responded_to),
            _US.pack(0x0000, _DATA_SET_TYPE, 2, NO_DATA_SET),
            _US.pack(0x0000, _STATUS, 2, status),
            _ui(_SOP_INSTANCE, sop_instance_uid),
        )
    )
    return _HEADER.pack(0x0000, _GROUP_LENGTH, 4) + struct.pack("<I", len(body)) + body


def _plain_store_response(primitive: Any) -> bytes | None:
    """The encoded command set when ``primitive`` is a C-STORE response with nothing but the
    four standard values; None for anything the fast path does not cover."""
    if type(primitive) is not C_STORE or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.ErrorComment is not None or primitive.OffendingElement is not None:
        return None
    status = primitive.Status
    class_uid, instance_uid = primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID
    if status is None or not class_uid or not instance_uid:
        return None
    try:
        return encode_store_response(
            int(primitive.MessageIDBeingRespondedTo), class_uid, instance_uid, int(status)
        )
    except (ValueError, UnicodeEncodeError):
        return None


def fast_store_responses_enabled() -> bool:
    """Whether the fast path applies (``HIPPO_FAST_STORE_RSP=0`` switches it off)."""
    return os.environ.get("HIPPO_FAST_STORE_RSP", "1") != "0"


def use_fast_store_responses(event: evt.Event) -> None:
    """``EVT_CONN_OPEN`` handler: the association sends plain C-STORE-RSPs pre-encoded."""
    if not fast_store_responses_enabled():
        return
    assoc = event.assoc
    dimse = getattr(assoc, "dimse", None)
    if dimse is None or getattr(dimse, "_hippo_fast_store_rsp", False):
        return
    dimse.send_msg = _fast_send_msg(assoc, dimse, dimse.send_msg)
    dimse._hippo_fast_store_rsp = True


def _fast_send_msg(
    assoc: Any, dimse: Any, original: Callable[[Any, int], None]
) -> Callable[[Any, int], None]:
    def send_msg(primitive: Any, context_id: int) -> None:
        encoded = None
        if not assoc.get_handlers(evt.EVT_DIMSE_SENT):
            encoded = _plain_store_response(primitive)
        if encoded is not None:
            max_pdu = dimse.maximum_pdu_size
            if not max_pdu or len(encoded) + 6 <= max_pdu:  # PDV header: length 4, id, flags
                pdata = P_DATA()
                pdata.presentation_data_value_list.append(
                    (context_id, _LAST_COMMAND_FRAGMENT + encoded)
                )
                dimse.dul.send_pdu(pdata)
                return
        original(primitive, context_id)

    return send_msg
