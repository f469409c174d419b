"""Outbox, sender and worker in-process (fast): atomic sets, retry/backoff, refusals."""

from __future__ import annotations

import logging
import re
import socket
import time
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from hippo_scp.assembly.series_store import SeriesStore, StoreSettings
from hippo_scp.config import Destination
from hippo_scp.imaging.errors import TooFewSlicesError
from hippo_scp.logging_setup import AUDIT_LOGGER_NAME
from hippo_scp.network import sender as sender_module
from hippo_scp.network.outbox import EncodedObjects, Outbox, destination_folder_name
from hippo_scp.network.sender import ResultSender, SenderSettings
from hippo_scp.pipeline.worker import AnalysisWorker, decode_instance
from tests.dicom_factory import data_set_bytes
from tests.network.conftest import Sink, free_port, wait_until


def sc_dataset(study: str = "1.2.3") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    return ds


def test_outbox_put_is_atomic_and_prepare_removes_half_written_sets(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, ["A@h_1", "B@h_2"])
    assert outbox.prepare() == 0
    (tmp_path / "A@h_1" / ".123-x.tmp").mkdir()  # a crash mid-write
    item_id = outbox.put("s-1", [sc_dataset(), sc_dataset(), sc_dataset()], {"series": "s-1"})
    for destination in ("A@h_1", "B@h_2"):
        (item,) = outbox.pending(destination)
        assert item.item_id == item_id
        assert [p.name for p in item.files()] == ["00-seg.dcm", "01-sr.dcm", "02-report.dcm"]
        assert item.summary() == {"series": "s-1"}
    assert Outbox(tmp_path, ["A@h_1", "B@h_2"]).prepare() == 2
    assert not (tmp_path / "A@h_1" / ".123-x.tmp").exists()


def test_outbox_records_how_long_writing_the_objects_took(tmp_path: Path) -> None:
    """Serialising the SR is ~0.45 s of the release -> sent latency: it must show in the
    delivery log instead of vanishing between "encode" and "send"."""
    outbox = Outbox(tmp_path, ["A@h_1"])
    summary = {"series": "s-1", "timings_ms": {"encode": 3.0}}
    outbox.put("s-1", [sc_dataset(), sc_dataset()], summary)
    (item,) = outbox.pending("A@h_1")
    timings = item.summary()["timings_ms"]
    assert timings["encode"] == 3.0 and timings["write"] >= 0.0
    assert summary == {"series": "s-1", "timings_ms": {"encode": 3.0}}  # caller's dict intact


def test_sender_connects_with_nagle_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Results are small objects: with Nagle on, each C-STORE's data set would wait ~40 ms for
    the peer's delayed ACK of the command (measured 48 vs 5 ms per C-STORE)."""
    seen: list[int] = []
    original = sender_module.disable_nagle

    def recording(event) -> None:
        original(event)
        sock = event.assoc.dul.socket.socket
        seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(sender_module, "disable_nagle", recording)
    sink = Sink(ae_title="PACS", port=free_port()).start()
    destination = Destination(ae_title="PACS", host="127.0.0.1", port=sink.port)
    folder = destination_folder_name("PACS", "127.0.0.1", sink.port)
    outbox = Outbox(tmp_path, [folder])
    outbox.prepare()
    outbox.put("s-1", [sc_dataset()], {"series": "s-1", "volumes": {}, "timings_ms": {}})
    sender = ResultSender(outbox, [destination], SenderSettings(calling_ae_title="HIPPOAI"))
    try:
        assert sender.flush_once() is True
        assert len(sink.wait_for(1, timeout=10)) == 1
    finally:
        sink.stop()
    assert seen and all(value != 0 for value in seen)


def test_sender_retries_until_the_destination_is_up(tmp_path: Path, caplog) -> None:
    sink = Sink(ae_title="PACS", port=free_port())
    destination = Destination(ae_title="PACS", host="127.0.0.1", port=sink.port)
    folder = destination_folder_name("PACS", "127.0.0.1", sink.port)
    outbox = Outbox(tmp_path, [folder])
    outbox.prepare()
    outbox.put(
        "s-1",
        [sc_dataset(), sc_dataset()],
        {"series": "s-1", "volumes": {}, "timings_ms": {"infer": 2.0, "encode": 3.0}},
    )
    sender = ResultSender(
        outbox,
        [destination],
        SenderSettings(calling_ae_title="HIPPOAI", retry_initial_s=0.2, retry_max_s=0.4),
    )
    assert sender.flush_once() is False  # down
    assert outbox.count() == 1
    sink.start()
    try:
        with caplog.at_level(logging.INFO, logger="hippo_scp.network.sender"):
            sender.start()
            received = sink.wait_for(2, timeout=10)
            assert len(received) == 2
            wait_until(lambda: sender.delivered_sets >= 1, timeout=10, step=0.05)
        assert sender.delivered_sets == 1
        assert outbox.count() == 0
        (line,) = [r.getMessage() for r in caplog.records if "results delivered" in r.getMessage()]
        assert re.search(r"infer 2 ms, encode 3 ms, write \d+ ms, send \d+ ms", line), line
    finally:
        sender.stop()
        sender.join(5)
        sink.stop()


class FakeOutbox:
    def __init__(self) -> None:
        self.sets: list[tuple[str, EncodedObjects, dict]] = []

    def put(self, label: str, objects: EncodedObjects, summary: dict) -> str:
        self.sets.append((label, objects, summary))
        return str(len(self.sets))


def implicit_le(ds: Dataset) -> bytes:
    """The data set as a sender's C-STORE carries it (Implicit VR Little Endian, no meta)."""
    return data_set_bytes(ds, implicit_vr=True)


def _fake_result(datasets) -> SimpleNamespace:
    return SimpleNamespace(
        seg=sc_dataset(), sr=sc_dataset(), report=sc_dataset(),
        timings_ms={"load": 1.0, "infer": 2.0, "encode": 3.0}, model_version="m",
        volumes=SimpleNamespace(anterior_mm3=1.0, posterior_mm3=2.0, total_mm3=3.0),
    )  # fmt: skip


def _store_with_series(count: int) -> tuple[SeriesStore, object]:
    clock = SimpleNamespace(now=0.0)
    store = SeriesStore(
        StoreSettings(settle_seconds=1, release_grace_seconds=0), lambda ds: True,
        clock=lambda: clock.now,
    )  # fmt: skip
    for k in range(count):
        ds = sc_dataset()
        ds.SeriesInstanceUID = "9.9"
        ds.SOPInstanceUID = f"9.9.{k}"
        ds.PatientName = "DOE^JANE"
        data = implicit_le(ds)
        store.offer(1, ds, lambda d=data: d, len(data), "1.2.840.10008.1.2")
    store.association_released(1)
    return store, clock


def test_worker_files_results_and_skips_unchanged_content() -> None:
    store, _ = _store_with_series(3)
    seen: list[int] = []

    def analyze(datasets):
        seen.append(len(datasets))
        assert all(ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2" for ds in datasets)
        return _fake_result(datasets)

    outbox = FakeOutbox()
    worker = AnalysisWorker(store, analyze, outbox)
    (job,) = store.collect_ready()
    assert worker.process(job) == "1"
    assert seen == [3]
    label, objects, summary = outbox.sets[0]
    assert len(objects) == 3 and summary["volumes"]["total_mm3"] == 3.0
    assert [dcmread(BytesIO(blob)).Modality for blob in objects.blobs] == ["OT"] * 3
    assert "DOE" not in str(summary)
    assert worker.process(job) is None  # same content again: skipped
    assert worker.stats.skipped_unchanged == 1


def test_worker_refusal_sends_nothing() -> None:
    store, _ = _store_with_series(2)

    def analyze(datasets):
        raise TooFewSlicesError("2 slices < 8")

    outbox = FakeOutbox()
    worker = AnalysisWorker(store, analyze, outbox)
    (job,) = store.collect_ready()
    assert worker.process(job) is None
    assert outbox.sets == [] and worker.stats.refused == 1


def test_decode_instance_keeps_transfer_syntax_and_uids() -> None:
    store, clock = _store_with_series(1)
    clock.now += 1  # a lone instance waits for the settle window
    (job,) = store.collect_ready()
    ds = decode_instance(job.instances[0])
    assert ds.SOPInstanceUID == "9.9.0"
    assert ds.file_meta.MediaStorageSOPInstanceUID == "9.9.0"


def test_stop_with_drain_analyses_released_series_still_in_grace() -> None:
    clock = SimpleNamespace(now=0.0)
    store = SeriesStore(
        StoreSettings(settle_seconds=30, release_grace_seconds=10), lambda ds: True,
        clock=lambda: clock.now,
    )  # fmt: skip
    ds = sc_dataset()
    data = implicit_le(ds)
    store.offer(1, ds, lambda: data, len(data), "1.2.840.10008.1.2")
    ds.SOPInstanceUID = generate_uid()
    store.offer(1, ds, lambda: data, len(data), "1.2.840.10008.1.2")
    store.association_released(1)  # due only in 10 s
    calls: list[int] = []
    outbox = FakeOutbox()

    def analyze(datasets):
        calls.append(len(datasets))
        raise TooFewSlicesError("one slice")

    worker = AnalysisWorker(store, analyze, outbox, poll_s=0.05)
    worker.start()
    worker.stop(drain=True)
    worker.join(5)
    assert not worker.is_alive()
    assert calls == [2]


def _encoded(series: str, sop: str) -> tuple[Dataset, bytes]:
    ds = sc_dataset()
    ds.SeriesInstanceUID, ds.SOPInstanceUID = series, sop
    return ds, implicit_le(ds)


def _grace_store(grace_s: float) -> SeriesStore:
    return SeriesStore(
        StoreSettings(settle_seconds=2, release_grace_seconds=grace_s), lambda ds: True
    )


def test_worker_analyses_during_the_release_grace_and_files_when_it_ends() -> None:
    """The analysis starts at the release; the results are filed once the grace is over,
    and the log's "grace" stage says how much of it was left after the analysis."""
    store = _grace_store(0.6)
    for k in range(3):
        ds, data = _encoded("9.40", f"9.40.{k}")
        store.offer(1, ds, lambda d=data: d, len(data), "1.2.840.10008.1.2")
    analysed_at: list[float] = []

    def analyze(datasets):
        analysed_at.append(time.monotonic())
        return _fake_result(datasets)

    outbox = FakeOutbox()
    worker = AnalysisWorker(store, analyze, outbox, poll_s=0.05)
    worker.start()
    try:
        released_at = time.monotonic()
        store.association_released(1)
        wait_until(lambda: len(outbox.sets) == 1, timeout=10, step=0.02)
        filed_at = time.monotonic()
    finally:
        worker.stop(drain=False)
        worker.join(5)
    assert analysed_at[0] - released_at < 0.4  # not after the grace
    assert filed_at - released_at >= 0.6  # but the results waited for it
    timings = outbox.sets[0][2]["timings_ms"]
    assert 300 <= timings["grace"] <= 600
    assert outbox.sets[0][2]["trigger"] == "release"


def test_worker_drops_the_provisional_analysis_when_more_arrives_during_the_grace() -> None:
    store = _grace_store(1.0)
    for k in range(3):
        ds, data = _encoded("9.41", f"9.41.{k}")
        store.offer(1, ds, lambda d=data: d, len(data), "1.2.840.10008.1.2")
    analysed: list[int] = []
    outbox = FakeOutbox()
    worker = AnalysisWorker(store, lambda dss: (analysed.append(len(dss)), _fake_result(dss))[1],
                            outbox, poll_s=0.05)  # fmt: skip
    worker.start()
    try:
        store.association_released(1)
        wait_until(lambda: analysed == [3], timeout=10, step=0.02)
        ds, data = _encoded("9.41", "9.41.3")  # a later association adds a slice
        store.offer(2, ds, lambda: data, len(data), "1.2.840.10008.1.2")
        store.association_released(2)
        wait_until(lambda: len(outbox.sets) == 1, timeout=10, step=0.05)  # after settle
    finally:
        worker.stop(drain=False)
        worker.join(5)
    assert analysed == [3, 4]
    assert [s[2]["instances"] for s in outbox.sets] == [4]  # only the complete series
    assert outbox.sets[0][2]["trigger"] == "settle"
    assert worker.stats.superseded == 1 and worker.stats.analysed == 1


def test_the_comparison_with_the_prior_is_in_the_summary_and_the_log(caplog) -> None:
    store, _ = _store_with_series(2)
    comparison = {
        "status": "compared",
        "interval_days": 365,
        "changes": {"total": {"prior_mm3": 3400.0, "current_mm3": 3250.0, "change_pct": -4.41}},
    }

    def analyze(datasets):
        result = _fake_result(datasets)
        result.prior_summary = lambda: comparison
        return result

    outbox = FakeOutbox()
    (job,) = store.collect_ready()
    with caplog.at_level(logging.INFO):
        AnalysisWorker(store, analyze, outbox).process(job)
    assert outbox.sets[0][2]["prior_comparison"] == comparison
    (audit,) = [r.fields for r in caplog.records if r.name == AUDIT_LOGGER_NAME]
    assert audit["event"] == "series_analysis" and audit["prior"] == "compared"
    assert "prior examination 365 days earlier: total 3400 -> 3250 mm3 (-4.4 %)" in caplog.text
    assert "DOE" not in caplog.text
