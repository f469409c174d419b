"""Pre-encoded C-STORE responses: the same bytes as pynetdicom's encoder, used on real
associations for plain responses, and pynetdicom's own path for everything else."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from hippo_scp.network import store_response
from hippo_scp.network.store_response import encode_store_response, use_fast_store_responses
from tests.network.conftest import require_dcmtk

pytestmark = pytest.mark.network

MR = "1.2.840.10008.5.1.4.1.1.4"


def _pynetdicom_bytes(message_id: int, class_uid: str, instance_uid: str, status: int) -> bytes:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = class_uid
    primitive.AffectedSOPInstanceUID = instance_uid
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    (pdata,) = list(message.encode_msg(1, 16384))
    ((_, pdv),) = pdata.presentation_data_value_list
    assert pdv[:1] == b"\x03"
    return pdv[1:]


@pytest.mark.parametrize(
    ("message_id", "class_uid", "instance_uid", "status"),
    [
        (1, MR, "1.2.3.4", 0x0000),  # even-length instance UID
        (65535, MR, "1.2.3.45", 0x0000),  # odd: NUL padded
        (7, "1.2.840.10008.5.1.4.1.1.7", "1.2.826.0.1.3680043.8.498.12345678901234567", 0xB000),
        (300, MR, "2.25." + "9" * 59, 0xA700),  # 64 characters, the longest UID
        (0, MR, "1", 0xC211),
    ],
)
def test_bytes_equal_pynetdicoms_encoder(
    message_id: int, class_uid: str, instance_uid: str, status: int
) -> None:
    ours = encode_store_response(message_id, class_uid, instance_uid, status)
    assert ours == _pynetdicom_bytes(message_id, class_uid, instance_uid, status)


def test_values_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="unsigned short"):
        encode_store_response(70000, MR, "1.2", 0)
    with pytest.raises(ValueError, match="unsigned short"):
        encode_store_response(1, MR, "1.2", -1)


def test_only_plain_responses_take_the_fast_path() -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 3
    rsp.AffectedSOPClassUID = MR
    rsp.AffectedSOPInstanceUID = "1.2.3"
    rsp.Status = 0xA700
    assert store_response._plain_store_response(rsp) is not None
    rsp.ErrorComment = "out of memory for this series"
    assert store_response._plain_store_response(rsp) is None  # carries more than we encode
    request = C_STORE()
    request.MessageID = 3
    request.AffectedSOPClassUID = MR
    request.AffectedSOPInstanceUID = "1.2.3"
    assert store_response._plain_store_response(request) is None  # a request, not a response


class _Scp:
    """A Storage SCP with the fast responses; statuses chosen per SOP Instance UID."""

    def __init__(self, failing: dict[str, int | Dataset] | None = None, extra=()) -> None:
        self.failing = failing or {}
        self.fast_sends = 0
        self.ae = AE(ae_title="STORESCP")
        self.ae.add_supported_context(MR)
        handlers = [
            (evt.EVT_CONN_OPEN, use_fast_store_responses),
            (evt.EVT_C_STORE, self._on_store),
            *extra,
        ]
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def _on_store(self, event: evt.Event) -> int | Dataset:
        return self.failing.get(str(event.request.AffectedSOPInstanceUID), 0x0000)

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def hippocrop(test_volumes: Path) -> list[Path]:
    return sorted((test_volumes / "Study1" / "13_HCropVolume").glob("*"))[:6]


@pytest.fixture
def count_fast(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The command sets sent through the fast path. pynetdicom's standard (DEBUG) handlers
    are unbound as in the node at INFO (``logging_setup``), else no association qualifies."""
    monkeypatch.setattr(pynetdicom._config, "LOG_HANDLER_LEVEL", "none")
    sent: list[bytes] = []
    original = store_response.encode_store_response

    def spy(*args: object) -> bytes:
        sent.append(original(*args))  # type: ignore[arg-type]
        return sent[-1]

    monkeypatch.setattr(store_response, "encode_store_response", spy)
    return sent


def _send(port: int, paths: list[Path], received: list[Dataset] | None = None) -> list[Dataset]:
    """C-STORE ``paths``; returns the statuses, and the responses' command sets (as the SCU
    decoded them) in ``received``."""
    scu = AE(ae_title="STORESCU")
    scu.requested_contexts = [build_context(MR)]

    def on_recv(event: evt.Event) -> None:
        if received is not None and isinstance(event.message, C_STORE_RSP):
            received.append(event.message.command_set)

    handlers = [(evt.EVT_DIMSE_RECV, on_recv)]
    assoc = scu.associate("127.0.0.1", port, ae_title="STORESCP", evt_handlers=handlers)
    assert assoc.is_established
    try:
        return [
            assoc.send_c_store(pydicom.dcmread(path), msg_id=number)
            for number, path in enumerate(paths, start=1)
        ]
    finally:
        assoc.release()


def test_real_association_gets_correct_responses(hippocrop: list[Path], count_fast) -> None:
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in hippocrop]
    failure = Dataset()
    failure.Status = 0xA700
    failure.ErrorComment = "series over its memory limit"
    scp = _Scp(failing={uids[1]: 0xB000, uids[2]: failure})
    commands: list[Dataset] = []
    try:
        responses = _send(scp.port, hippocrop, commands)
    finally:
        scp.stop()
    assert [r.Status for r in responses] == [0, 0xB000, 0xA700, 0, 0, 0]
    assert [str(c.AffectedSOPInstanceUID) for c in commands] == uids
    assert [c.MessageIDBeingRespondedTo for c in commands] == [1, 2, 3, 4, 5, 6]
    assert all(str(c.AffectedSOPClassUID) == MR for c in commands)
    assert responses[2].ErrorComment == "series over its memory limit"  # pynetdicom's path
    assert len(count_fast) == 5  # every other response was pre-encoded


def test_dcmtk_storescu_accepts_the_responses(hippocrop: list[Path], count_fast) -> None:
    require_dcmtk()
    scp = _Scp()
    try:
        done = subprocess.run(
            ["storescu", "-aec", "STORESCP", "127.0.0.1", str(scp.port), *map(str, hippocrop)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        scp.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(count_fast) == len(hippocrop)


def test_dimse_sent_handlers_keep_pynetdicoms_path(hippocrop: list[Path], count_fast) -> None:
    """pynetdicom's DEBUG log handlers (and any EVT_DIMSE_SENT handler) expect the message
    object: such associations are left alone."""
    seen: list[str] = []
    scp = _Scp(extra=[(evt.EVT_DIMSE_SENT, lambda e: seen.append(type(e.message).__name__))])
    try:
        responses = _send(scp.port, hippocrop[:2])
    finally:
        scp.stop()
    assert [r.Status for r in responses] == [0, 0]
    assert seen == ["C_STORE_RSP", "C_STORE_RSP"] and count_fast == []


def test_switched_off_by_environment(
    hippocrop: list[Path], count_fast, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIPPO_FAST_STORE_RSP", "0")
    scp = _Scp()
    try:
        assert [r.Status for r in _send(scp.port, hippocrop[:2])] == [0, 0]
    finally:
        scp.stop()
    assert count_fast == []
