"""Durable spool with the series store and the receiver's handlers (no network, no threads).

The receiver's C-STORE / release / abort handlers are called with stand-in events, so the
exact code the node runs decides what is written, committed, refused and retired.
"""

from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from hippo_scp.assembly.series_store import SeriesStore
from hippo_scp.assembly.spool import Spool, read_spooled, series_folder_name
from hippo_scp.config import load_config
from hippo_scp.network.receiver import (
    STATUS_OUT_OF_RESOURCES,
    STATUS_SUCCESS,
    StorageReceiver,
)
from hippo_scp.pipeline.worker import fingerprint
from tests.assembly.test_series_store import FakeClock, make_store
from tests.dicom_factory import data_set_bytes

STUDY = "1.2.3"


def encoded(series: str, sop: str, description: str = "HippoCrop", fill: int = 0) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = series
    ds.SeriesDescription = description
    ds.BitsAllocated = 8
    ds.PixelData = bytes([fill]) * 64
    return data_set_bytes(ds)


class Harness:
    """Store + spool + the receiver's handlers, driven by hand."""

    def __init__(self, folder: Path, store: SeriesStore | None = None) -> None:
        self.clock = FakeClock()
        self.store = store or make_store(
            self.clock, max_series_bytes=100_000, max_total_bytes=200_000
        )
        self.spool = Spool(folder)
        self.spool.prepare()
        config = load_config(None, {"node": {"port": 11112}})
        self.receiver = StorageReceiver(config, self.store, spool=self.spool)
        self._assocs: dict[int, SimpleNamespace] = {}

    def assoc(self, ident: int) -> SimpleNamespace:
        return self._assocs.setdefault(ident, SimpleNamespace(_hippo_id=ident))

    def send(self, ident: int, series: str, sop: str, **kw) -> int:
        event = SimpleNamespace(
            assoc=self.assoc(ident),
            context=SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian),
            request=SimpleNamespace(DataSet=BytesIO(encoded(series, sop, **kw))),
        )
        return self.receiver._on_c_store(event)

    def release(self, ident: int) -> None:
        self.receiver._release_with_spool(ident)

    def abort(self, ident: int) -> None:
        self.store.association_aborted(ident)
        self.spool.abort(ident)

    def due(self) -> list:
        self.clock.advance(10)
        return self.store.collect_ready()

    def commits(self, series: str) -> list[str]:
        folder = self.spool.series / series_folder_name((STUDY, series))
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_released_series_is_committed_and_reads_back_byte_for_byte(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for i in range(3):
        assert h.send(1, "9.1", f"9.1.{i}") == STATUS_SUCCESS
    assert h.send(1, "9.2", "9.2.0", description="T2") == STATUS_SUCCESS  # not selected
    assert h.commits("9.1") == []  # pending until the release
    h.release(1)
    assert len(h.commits("9.1")) == 1
    assert not (h.spool.series / series_folder_name((STUDY, "9.2"))).exists()
    assert list(h.spool.incoming.iterdir()) == []

    (job,) = h.due()
    assert job.spool_commits == tuple(h.commits("9.1"))
    (recovered,) = Spool(tmp_path).recover()
    assert recovered.key == (STUDY, "9.1") and recovered.commits == job.spool_commits
    assert fingerprint(recovered.instances) == fingerprint(job.instances)  # exactly-once key
    path = next((h.spool.series / series_folder_name((STUDY, "9.1"))).rglob("*.dcm"))
    assert pydicom.dcmread(path).SOPInstanceUID.startswith("9.1.")  # a valid Part 10 file
    assert read_spooled(path)[0].transfer_syntax == ExplicitVRLittleEndian


def test_aborted_and_unreleased_instances_are_never_recovered(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.send(1, "9.1", "9.1.0")
    h.send(1, "9.1", "9.1.1")
    h.abort(1)
    assert list(h.spool.incoming.iterdir()) == []
    h.send(2, "9.3", "9.3.0")  # the node "dies" with association 2 open
    h.send(2, "9.3", "9.3.1")

    restarted = Spool(tmp_path)
    assert restarted.prepare() == (2, 1)  # discarded, with a WARNING
    assert restarted.recover() == []
    assert list(restarted.incoming.iterdir()) == []


def test_spool_is_deleted_only_when_the_job_is_finished(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.send(1, "9.1", "9.1.0")
    h.send(1, "9.1", "9.1.1")
    h.release(1)
    (job1,) = h.due()
    # A new instance arrives while job 1 is analysed: job 1 must not delete what job 2 needs.
    h.send(2, "9.1", "9.1.2")
    h.release(2)
    assert len(h.commits("9.1")) == 2
    h.spool.retire(job1, h.store)
    assert len(h.commits("9.1")) == 2
    (job2,) = h.due()
    assert len(job2.instances) == 3 and len(job2.spool_commits) == 2
    h.spool.retire(job2, h.store)
    assert h.commits("9.1") == []
    assert not (h.spool.series / series_folder_name((STUDY, "9.1"))).exists()


def test_late_instance_after_retire_commits_the_whole_series_again(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for i in range(3):
        h.send(1, "9.1", f"9.1.{i}")
    h.release(1)
    (job1,) = h.due()
    h.spool.retire(job1, h.store)
    assert h.commits("9.1") == []  # analysed; the store still holds it to merge late ones
    h.send(2, "9.1", "9.1.3", fill=7)
    h.release(2)
    (recovered,) = Spool(tmp_path).recover()
    assert len(recovered.instances) == 4  # never only the tail of the series
    (job2,) = h.due()
    assert fingerprint(recovered.instances) == fingerprint(job2.instances)


def test_unwritable_spool_answers_out_of_resources_and_refuses_the_series(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    assert h.send(1, "9.1", "9.1.0") == STATUS_SUCCESS
    os.rename(h.spool.incoming, tmp_path / "elsewhere")
    h.spool.incoming.write_text("not a folder")  # every write now fails (even as root)
    assert h.send(2, "9.4", "9.4.0") == STATUS_OUT_OF_RESOURCES
    assert h.send(2, "9.4", "9.4.1") == STATUS_OUT_OF_RESOURCES  # series refused
    h.release(2)
    assert h.due() == []  # a partial series is never analysed
    h.spool.incoming.unlink()
    os.rename(tmp_path / "elsewhere", h.spool.incoming)
    assert h.send(3, "9.4", "9.4.0") == STATUS_SUCCESS  # a retry starts clean
    assert h.send(3, "9.4", "9.4.1") == STATUS_SUCCESS
    h.release(3)
    assert [len(j.instances) for j in h.due()] == [2]


def test_restored_series_is_due_after_settle_with_restart_trigger(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    for i in range(3):
        h.send(1, "9.1", f"9.1.{i}")
    h.release(1)

    clock = FakeClock()
    store = make_store(clock, max_series_bytes=100_000, max_total_bytes=200_000)
    (series,) = Spool(tmp_path).recover()
    assert store.restore(series.key, series.header, series.instances, series.commits)
    clock.advance(1)
    assert store.collect_ready() == []  # settle window: its sender may still be resending
    clock.advance(3)
    (job,) = store.collect_ready()
    assert job.trigger == "restart" and len(job.instances) == 3
    assert job.spool_commits == series.commits

    other = make_store(FakeClock())
    series.header.SeriesDescription = "T2"  # selection changed: not restored
    assert not other.restore(series.key, series.header, series.instances, series.commits)


@pytest.mark.parametrize("fsync", [True, False])
def test_unreadable_commit_is_discarded_at_start(tmp_path: Path, fsync: bool) -> None:
    h = Harness(tmp_path)
    h.send(1, "9.1", "9.1.0")
    h.release(1)
    path = next(h.spool.series.rglob("*.dcm"))
    path.write_bytes(b"garbage")
    assert Spool(tmp_path, fsync=fsync).recover() == []
    assert list(h.spool.series.iterdir()) == []
