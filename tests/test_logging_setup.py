"""Logging: patient identifiers never reach INFO logs; JSON lines; pynetdicom floods capped."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from hippo_scp.logging_setup import (
    PATIENT_GUARD,
    audit_event,
    configure_logging,
)


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    yield stream
    configure_logging("WARNING", "text", stream=io.StringIO(), audit_log=None)


def patient(name: str, patient_id: str, birth: str) -> Dataset:
    ds = Dataset()
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth
    return ds


def test_remembered_identifiers_are_masked_at_info_but_not_debug(log_stream) -> None:
    configure_logging("DEBUG", "text", stream=log_stream)
    PATIENT_GUARD.remember(patient("Zaphod^Beeblebrox", "PID-424242", "19421231"))
    log = logging.getLogger("hippo_scp.test")
    log.info("careless message about %s (%s), born %s", "Zaphod^Beeblebrox", "PID-424242",
             "19421231")  # fmt: skip
    log.warning("surname only: Beeblebrox")
    log.debug("debug may show PID-424242")
    text = log_stream.getvalue()
    assert "PID-424242" in text.splitlines()[-1]  # DEBUG is for the developer's eyes
    info_and_warning = "\n".join(text.splitlines()[:-1])
    for secret in ("Zaphod", "Beeblebrox", "PID-424242", "19421231"):
        assert secret not in info_and_warning
    assert info_and_warning.count("***") >= 4


def _as_received(ds: Dataset) -> Dataset:
    """The dataset as the receiver parses it: raw, undecoded elements."""
    from pydicom.filereader import read_dataset

    from tests.dicom_factory import data_set_bytes

    return read_dataset(io.BytesIO(data_set_bytes(ds)), False, True)


def test_identifiers_of_a_repeated_series_stay_masked_beyond_the_lru() -> None:
    """Instances of a series repeat the same raw identifiers (decoded once, then only
    refreshed): they must stay masked however many other patients pass meanwhile."""
    from hippo_scp.logging_setup import PatientIdentifierGuard

    guard = PatientIdentifierGuard(capacity=8)
    streaming = patient("Arthur^Dent", "PID-000042", "19520311")
    guard.remember(_as_received(streaming))
    for index in range(20):  # other patients interleaved with the series' instances
        guard.remember(patient(f"Other^Person{index:02d}", f"PID-{index:06d}", "19800101"))
        guard.remember(_as_received(streaming))
    masked = guard.mask("Arthur^Dent PID-000042 19520311 Dent")
    assert "Arthur" not in masked and "PID-000042" not in masked and "Dent" not in masked
    assert "PID-000001" in guard.mask("PID-000001")  # evicted: the LRU still bounds it


def test_json_lines_and_audit_log(log_stream, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    configure_logging("INFO", "json", stream=log_stream, audit_log=audit)
    logging.getLogger("hippo_scp.test").info("listening on %s:%d", "127.0.0.1", 11112)
    audit_event("association_accepted", calling_ae_title="ORTHANC", peer_address="127.0.0.1")
    record = json.loads(log_stream.getvalue().splitlines()[0])
    assert record["level"] == "INFO"
    assert record["message"] == "listening on 127.0.0.1:11112"
    (audit_record,) = [json.loads(line) for line in audit.read_text().splitlines()]
    assert audit_record["event"] == "association_accepted"
    assert audit_record["calling_ae_title"] == "ORTHANC"


def test_audit_log_follows_logrotate(log_stream, tmp_path: Path) -> None:
    """logrotate's default moves the file and expects the writer to create a new one."""
    audit = tmp_path / "audit.jsonl"
    configure_logging("INFO", "json", stream=log_stream, audit_log=audit)
    audit_event("node_started", ae_title="HIPPOAI")
    audit.rename(tmp_path / "audit.jsonl.1")
    audit_event("node_stopped", ae_title="HIPPOAI")
    assert [json.loads(line)["event"] for line in audit.read_text().splitlines()] == [
        "node_stopped"
    ]
    rotated = (tmp_path / "audit.jsonl.1").read_text().splitlines()
    assert [json.loads(line)["event"] for line in rotated] == ["node_started"]


def test_pynetdicom_error_flood_is_capped(log_stream) -> None:
    configure_logging("INFO", "text", stream=log_stream)
    dul = logging.getLogger("pynetdicom.dul")
    for _ in range(500):
        dul.error("Unknown PDU type received '0x%02X'", 0x47)
    logging.getLogger("hippo_scp.test").warning("our own warnings are never capped")
    lines = log_stream.getvalue().splitlines()
    assert 1 <= sum("Unknown PDU type" in line for line in lines) <= 20
    assert lines[-1].endswith("our own warnings are never capped")


@pytest.mark.parametrize(("level", "bound"), [("INFO", False), ("DEBUG", True)])
def test_pynetdicom_message_dumps_are_built_only_at_debug(log_stream, level, bound) -> None:
    """pynetdicom's standard handlers format every PDU and DIMSE message (and copy each
    C-STORE data set); below DEBUG nobody reads that text, so they must not be bound."""
    from pynetdicom import evt
    from pynetdicom._handlers import standard_pdu_recv_handler

    from tests.network.conftest import verification_association

    configure_logging(level, "text", stream=log_stream, audit_log=None)
    with verification_association() as assoc:
        handlers = [h for h, _ in assoc.get_handlers(evt.EVT_PDU_RECV)]
        assert (standard_pdu_recv_handler in handlers) is bound
        assert assoc.send_c_echo().Status == 0x0000
