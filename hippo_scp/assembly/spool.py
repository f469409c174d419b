"""Optional durable spool: received instances of selected series on disk until analysed.

Without it (``spool.enabled: false``, the default) a series lives only in memory between its
first instance and the moment its results are in the outbox, so a crash, a power loss or a
``kill -9`` in that window loses it and the sender must send it again. With it, every instance
the store keeps is also written here, and a restarted node analyses what it finds.

Layout::

    <directory>/incoming/<pid>-<association>/<series>/<instance>.dcm   association still open
    <directory>/series/<series>/<commit>/<instance>.dcm                 released: trustworthy
    <directory>/trash/...                                               being deleted

``<series>`` and ``<instance>`` are hashes of the UIDs (no identifier in a path); every file
is a DICOM Part 10 file (preamble, File Meta, then the data set exactly as received, deflate
undone), so ``dcmread`` opens it and a restart reads it back byte for byte (the worker's
content fingerprint of a recovered series equals the one it had before the crash).

Rules (why they are what they are):

* **Pending vs committed.** The C-STORE handler writes into the association's own
  ``incoming`` folder. On release, the folder of each series is fsynced and renamed into
  ``series/<series>/<commit>`` -- one atomic rename, so a series is never half committed. On
  abort (or a connection lost without release) the folder is deleted. At start-up whatever
  is left in ``incoming`` belonged to an association that never released (the node died
  under it): it is deleted with a WARNING; the sender saw a failure and must resend.
* **fsync policy.** Nothing is fsynced per instance (that would cost a disk flush per
  C-STORE). On release, before the rename, every file of the association and its folder are
  fsynced (several at a time: the file system batches concurrent flushes into one journal
  commit, about 3-4x faster than one after the other), then the parent folder after the
  rename: a *released* series survives a power loss; an unreleased one was never
  acknowledged as complete anyway. (Each instance file is
  written in place, not tmp+renamed: the folder rename on release is the atomic step, and an
  interrupted write can only be in a folder that is discarded.) ``spool.fsync: false`` keeps
  the renames but skips the flushes: survives a process crash, not a power loss.
* **Retire.** A series' commits are deleted once its results are in the outbox, or it was
  refused / skipped as already analysed -- never before. They are first renamed into
  ``trash`` (atomic), so a crash during the delete cannot leave a partial series behind.
  When newer content of the series is waiting for its own analysis, nothing is deleted: that
  later analysis covers the earlier instances too.
* **Exactly once.** The worker puts the content fingerprint in the outbox summary. At
  start-up a committed series whose fingerprint is already in the outbox (crash between
  "results written" and "spool deleted") is deleted, not analysed again.
* **Coordination.** :attr:`Spool.lock` is held while a release commits *and* the store
  registers the commit, and while the worker retires a series: the store therefore always
  knows which commits back which content. An analysed series kept in memory (to merge late
  instances) is no longer on disk; if new instances arrive, the release writes the held
  instances again with them, so the spool never holds only the tail of a series.
* A write that fails (disk full, read-only, permission) makes the C-STORE answer 0xA700 and
  the series is refused like an over-limit one: it is never analysed partially.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from hippo_scp.assembly.headers import number_of_frames, read_header
from hippo_scp.assembly.series_store import ReceivedInstance, SeriesKey, series_label

if TYPE_CHECKING:
    from hippo_scp.assembly.series_store import SeriesJob, SeriesStore

LOGGER = logging.getLogger(__name__)

_PREAMBLE = b"\x00" * 128 + b"DICM"


def series_folder_name(key: SeriesKey) -> str:
    """The folder of a series: a hash of its Study + Series Instance UIDs."""
    text = f"{key[0]}\\{key[1]}".encode("ascii", "replace")
    return hashlib.blake2b(text, digest_size=12).hexdigest()


def instance_file_name(sop_instance_uid: str) -> str:
    digest = hashlib.blake2b(sop_instance_uid.encode("ascii", "replace"), digest_size=12)
    return digest.hexdigest() + ".dcm"


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble + 'DICM' + File Meta group for an instance written as received."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return _PREAMBLE + buffer.getvalue()


def read_spooled(path: Path) -> tuple[ReceivedInstance, Dataset]:
    """Read a spooled file back: the instance (bytes as received) and its header."""
    raw = path.read_bytes()
    if raw[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file")
    # (0002,0000) File Meta Information Group Length, explicit VR little endian, UL.
    group_length = int.from_bytes(raw[140:144], "little")
    start = 144 + group_length
    meta = read_dataset(BytesIO(raw[132:start]), is_implicit_VR=False, is_little_endian=True)
    ts = UID(str(meta.TransferSyntaxUID))
    data = raw[start:]
    header = read_header(data, ts)
    instance = ReceivedInstance(
        sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
        sop_class_uid=str(meta.MediaStorageSOPClassUID),
        transfer_syntax=str(ts),
        data=data,
        received_at=time.monotonic(),
        frames=number_of_frames(header),
    )
    return instance, header


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_existing(path: Path) -> OSError | None:
    try:
        _fsync_path(path)
    except FileNotFoundError:
        return None  # dropped meanwhile (series refused)
    except OSError as error:
        return error
    return None


@dataclass(frozen=True)
class RecoveredSeries:
    """A committed series found at start-up, ready to be put back into the store."""

    key: SeriesKey
    label: str
    header: Dataset  # first instance's header, for the selection decision
    instances: list[ReceivedInstance]
    commits: tuple[str, ...]


class Spool:
    """The on-disk spool; thread-safe. See the module docstring for the rules."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = Path(directory)
        self.incoming = self.directory / "incoming"
        self.series = self.directory / "series"
        self.trash = self.directory / "trash"
        self.fsync = fsync
        #: Held across "commit + store registers it" and "store decides + delete" (see module).
        self.lock = threading.RLock()
        self._map_lock = threading.Lock()
        #: association id -> {series folder name: series key} written while it is open
        self._pending: dict[int, dict[str, SeriesKey]] = {}
        self._counter = itertools.count(1)
        self._pid = os.getpid()
        self._flushers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="hippo-spool-fsync")

    # ------------------------------------------------------------------ start-up
    def prepare(self) -> tuple[int, int]:
        """Create the folders; discard uncommitted instances and half-deleted series.

        Returns (instances discarded, associations they came from).
        """
        for folder in (self.incoming, self.series, self.trash):
            folder.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.trash, ignore_errors=True)
        self.trash.mkdir(exist_ok=True)
        instances = associations = 0
        for association in sorted(self.incoming.iterdir()):
            associations += 1
            instances += sum(1 for p in association.rglob("*.dcm"))
            if association.is_dir():
                shutil.rmtree(association, ignore_errors=True)
            else:
                association.unlink(missing_ok=True)
        if instances or associations:
            LOGGER.warning(
                "spool: discarded %d instance(s) from %d association(s) that were not released "
                "when the node stopped; the sender must send them again",
                instances,
                associations,
            )
        return instances, associations

    def recover(self) -> list[RecoveredSeries]:
        """Read every committed series back (oldest commit first; a later copy of an
        instance wins). A series that cannot be read is deleted with a WARNING."""
        recovered: list[RecoveredSeries] = []
        for folder in sorted(p for p in self.series.iterdir() if p.is_dir()):
            commits = sorted(p.name for p in folder.iterdir() if p.is_dir())
            if not commits:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                instances: dict[str, ReceivedInstance] = {}
                header: Dataset | None = None
                for commit in commits:
                    for path in sorted((folder / commit).glob("*.dcm")):
                        instance, parsed = read_spooled(path)
                        instances[instance.sop_instance_uid] = instance
                        header = header or parsed
                if header is None:
                    raise ValueError("no instance")
                key = (str(header.StudyInstanceUID), str(header.SeriesInstanceUID))
                if series_folder_name(key) != folder.name:
                    raise ValueError("series folder does not match the instances' UIDs")
            except Exception as error:
                LOGGER.warning(
                    "spool: a committed series cannot be read back (%s: %s): discarded; the "
                    "sender must send it again",
                    type(error).__name__,
                    error,
                )
                self._delete(folder)
                continue
            recovered.append(
                RecoveredSeries(
                    key=key,
                    label=series_label(key[1]),
                    header=header,
                    instances=list(instances.values()),
                    commits=tuple(commits),
                )
            )
        return recovered

    # ------------------------------------------------------------------ network side
    def write(
        self,
        association_id: int,
        key: SeriesKey,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        data: bytes | memoryview,
    ) -> None:
        """Write one instance into the association's incoming folder (raises OSError)."""
        name = series_folder_name(key)
        folder = self.incoming / f"{self._pid}-{association_id}" / name
        with self._map_lock:
            known = self._pending.setdefault(association_id, {})
            new_folder = name not in known
            known[name] = key
        if new_folder:
            folder.mkdir(parents=True, exist_ok=True)
        with open(folder / instance_file_name(sop_instance_uid), "wb") as handle:
            handle.write(encode_file_meta(sop_class_uid, sop_instance_uid, transfer_syntax))
            handle.write(data)

    def sync_pending(self, association_id: int) -> None:
        """fsync the association's files (on release, before :meth:`commit`; no lock held)."""
        if not self.fsync:
            return
        with self._map_lock:
            names = list(self._pending.get(association_id, {}))
        base = self.incoming / f"{self._pid}-{association_id}"
        paths: list[Path] = []
        for name in names:
            try:
                paths.extend((base / name).iterdir())
            except FileNotFoundError:
                continue  # dropped meanwhile (series refused)
            paths.append(base / name)
        for result in self._flushers.map(_fsync_existing, paths):
            if result is not None:
                raise result

    def pending_series(self, association_id: int) -> list[SeriesKey]:
        """The series the association has written instances of."""
        with self._map_lock:
            return list(self._pending.get(association_id, {}).values())

    def commit(
        self, association_id: int, base: dict[SeriesKey, list[ReceivedInstance]] | None = None
    ) -> tuple[dict[SeriesKey, str], list[SeriesKey], OSError | None]:
        """Move the association's series into ``series/`` (call with :attr:`lock` held).

        ``base[key]``: instances the store holds for the series that are no longer on disk
        (analysed earlier); they are written into the same commit so it is whole.
        Returns ({series key: commit name}, series that failed, the first error).
        """
        with self._map_lock:
            pending = self._pending.pop(association_id, {})
        source_root = self.incoming / f"{self._pid}-{association_id}"
        committed: dict[SeriesKey, str] = {}
        failed: list[SeriesKey] = []
        first_error: OSError | None = None
        for name, key in pending.items():
            source = source_root / name
            if not source.is_dir():
                continue  # dropped (series refused)
            try:
                committed[key] = self._commit_one(name, source, (base or {}).get(key, ()))
            except OSError as error:
                failed.append(key)
                first_error = first_error or error
        shutil.rmtree(source_root, ignore_errors=True)
        return committed, failed, first_error

    def _commit_one(self, name: str, source: Path, base: Iterable[ReceivedInstance]) -> str:
        for instance in base:
            path = source / instance_file_name(instance.sop_instance_uid)
            if path.exists():
                continue  # the newer copy of this instance came with this association
            with open(path, "wb") as handle:
                handle.write(
                    encode_file_meta(
                        instance.sop_class_uid, instance.sop_instance_uid, instance.transfer_syntax
                    )
                )
                handle.write(instance.data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
        target = self.series / name
        created = not target.is_dir()
        target.mkdir(parents=True, exist_ok=True)
        commit = f"c{time.time_ns():020d}-{next(self._counter):06d}"
        os.rename(source, target / commit)
        if self.fsync:
            _fsync_path(target)
            if created:
                _fsync_path(self.series)
        return commit

    def abort(self, association_id: int) -> int:
        """Delete the association's uncommitted instances; returns how many there were."""
        with self._map_lock:
            pending = self._pending.pop(association_id, None)
        if pending is None:
            return 0
        root = self.incoming / f"{self._pid}-{association_id}"
        count = sum(1 for _ in root.rglob("*.dcm")) if root.is_dir() else 0
        shutil.rmtree(root, ignore_errors=True)
        return count

    def drop(self, key: SeriesKey) -> None:
        """Delete everything held for a series (refused: it will not be analysed)."""
        name = series_folder_name(key)
        with self.lock:
            with self._map_lock:
                owners = [a for a, names in self._pending.items() if name in names]
                for association_id in owners:
                    self._pending[association_id].pop(name, None)
            for association_id in owners:
                shutil.rmtree(
                    self.incoming / f"{self._pid}-{association_id}" / name, ignore_errors=True
                )
            folder = self.series / name
            if folder.exists():
                self._delete(folder)

    # ------------------------------------------------------------------ worker side
    def discard(self, key: SeriesKey, commits: Iterable[str]) -> None:
        """Delete the named commits of a series (call with :attr:`lock` held)."""
        folder = self.series / series_folder_name(key)
        names = set(commits)
        if not names or not folder.is_dir():
            return
        present = {p.name for p in folder.iterdir()}
        if present <= names:
            self._delete(folder)
            return
        for name in names & present:
            self._delete(folder / name)

    def retire(self, job: SeriesJob, store: SeriesStore) -> None:
        """The job's results are in the outbox (or it was refused): delete what the store
        no longer needs. Errors are logged; the series is then analysed again after a
        restart, which is safe (its fingerprint is in the outbox summary)."""
        try:
            with self.lock:
                deletable = store.spool_retire(job)
                self.discard(job.key, deletable)
        except OSError as error:
            LOGGER.error("spool: series %s cannot be removed from the spool (%s)", job.label, error)

    def held_series(self) -> int:
        """How many series have committed instances on disk."""
        try:
            return sum(1 for p in self.series.iterdir() if p.is_dir())
        except FileNotFoundError:
            return 0

    # ------------------------------------------------------------------ internals
    def _delete(self, path: Path) -> None:
        """Rename into trash (atomic: never a partial series left), then delete."""
        target = self.trash / f"{time.time_ns():020d}-{next(self._counter):06d}"
        os.rename(path, target)
        shutil.rmtree(target, ignore_errors=True)


__all__ = [
    "RecoveredSeries",
    "Spool",
    "encode_file_meta",
    "instance_file_name",
    "read_spooled",
    "series_folder_name",
]
