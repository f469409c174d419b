"""On-disk outbox: results wait here until each destination has confirmed them.

Layout (one folder per destination, one folder per result set)::

    <directory>/<AET>@<host>_<port>/<time-ns>-<series-label>/00-seg.dcm
                                                             01-sr.dcm
                                                             02-report.dcm
                                                             summary.json

Why this shape:

* A result set is written to ``.<id>.tmp`` and renamed into place, so the sender (and a
  restarted node) only ever sees complete sets: a crash mid-write leaves a ``.tmp`` folder
  that start-up removes, never a set missing its SEG.
* Each destination has its own copy, so one PACS being down does not hold back another, and
  a file is deleted only after a successful C-STORE to *that* destination.
* Names sort by creation time, so results are delivered oldest first after an outage.
* ``summary.json`` carries timings and volumes for the log line written on delivery; it holds
  no patient identifiers (series label, not UIDs or names).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

LOGGER = logging.getLogger(__name__)

SUMMARY_NAME = "summary.json"
#: Folder (under the outbox) for files that can never be sent; not a destination.
QUARANTINE_FOLDER = "quarantine"
_KIND_NAMES = ("seg", "sr", "report")


def destination_folder_name(ae_title: str, host: str, port: int) -> str:
    """A filesystem-safe, stable folder name for a destination."""
    text = f"{ae_title.strip()}@{host}_{port}"
    return re.sub(r"[^A-Za-z0-9@._-]", "_", text)


@dataclass(frozen=True)
class OutboxItem:
    """One result set waiting for one destination."""

    destination: str  # folder name
    path: Path

    @property
    def item_id(self) -> str:
        return self.path.name

    @property
    def created_s(self) -> float | None:
        """When :meth:`Outbox.put` wrote the set (epoch s): its id starts with ``time_ns``."""
        stamp = self.item_id.split("-", 1)[0]
        return int(stamp) / 1e9 if stamp.isdigit() and len(stamp) >= 19 else None

    def files(self) -> list[Path]:
        """The DICOM files still to send, in order (SEG, SR, report)."""
        try:
            return sorted(p for p in self.path.iterdir() if p.suffix == ".dcm")
        except FileNotFoundError:
            return []

    def summary(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / SUMMARY_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class EncodedObjects:
    """DICOM objects serialised as the outbox writes them: the slow half of a put.

    Serialising a TID 1500 SR with its image library takes pydicom ~0.45 s. The worker does it
    while a released series' grace is still running (before it knows whether the results
    will be kept) and hands the bytes to :meth:`Outbox.put`, which then only writes files.
    """

    blobs: tuple[bytes, ...]
    write_ms: float

    @classmethod
    def of(cls, datasets: Sequence[Dataset]) -> EncodedObjects:
        started = time.perf_counter()
        blobs = tuple(_encode(ds) for ds in datasets)
        return cls(blobs, (time.perf_counter() - started) * 1000)

    def __len__(self) -> int:
        return len(self.blobs)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Outbox:
    """Durable queue of result sets, one copy per destination folder."""

    def __init__(self, directory: Path, destinations: Iterable[str]) -> None:
        self.directory = Path(directory)
        self.destinations = list(destinations)
        self._lock = threading.Lock()
        self._counter = 0

    def prepare(self) -> int:
        """Create the folders and remove half-written sets; return how many sets are waiting."""
        self.directory.mkdir(parents=True, exist_ok=True)
        waiting = 0
        for destination in self.destinations:
            folder = self.directory / destination
            folder.mkdir(parents=True, exist_ok=True)
            for child in folder.iterdir():
                if child.name.startswith(".") and child.name.endswith(".tmp"):
                    shutil.rmtree(child, ignore_errors=True)
                    LOGGER.warning("outbox: removed an incomplete result set %s", child.name)
            waiting += len(self.pending(destination))
        for folder in self.directory.iterdir():
            if folder.is_dir() and folder.name not in (*self.destinations, QUARANTINE_FOLDER):
                left = [p for p in folder.iterdir() if not p.name.startswith(".")]
                if left:
                    LOGGER.warning(
                        "outbox: %d result set(s) for %s, which is no longer a destination, "
                        "are kept but not sent",
                        len(left),
                        folder.name,
                    )
        return waiting

    def put(
        self,
        label: str,
        datasets: Sequence[Dataset] | EncodedObjects,
        summary: dict[str, Any],
    ) -> str:
        """Write one result set for every destination atomically; return its id.

        Raises OSError (e.g. ENOSPC) with nothing left behind for any destination.
        Serialising the objects is a real part of the latency (a TID 1500 SR with its image
        library takes pydicom ~0.45 s): its time goes into ``summary["timings_ms"]["write"]``
        so the delivery log accounts for it, also when the caller serialised them earlier
        (:class:`EncodedObjects`).
        """
        objects = datasets if isinstance(datasets, EncodedObjects) else EncodedObjects.of(datasets)
        encoded = objects.blobs
        timings = summary.get("timings_ms")
        if isinstance(timings, dict):
            summary = {**summary, "timings_ms": {**timings, "write": round(objects.write_ms, 1)}}
        with self._lock:
            self._counter += 1
            item_id = f"{time.time_ns():020d}-{self._counter:04d}-{label}"
        summary_bytes = json.dumps(summary, sort_keys=True).encode("utf-8")
        placed: list[Path] = []
        tmp: Path | None = None
        try:
            for destination in self.destinations:
                folder = self.directory / destination
                folder.mkdir(parents=True, exist_ok=True)
                tmp = folder / f".{item_id}.tmp"
                tmp.mkdir()
                for index, data in enumerate(encoded):
                    kind = _KIND_NAMES[index] if index < len(_KIND_NAMES) else f"obj{index}"
                    self._write(tmp / f"{index:02d}-{kind}.dcm", data)
                self._write(tmp / SUMMARY_NAME, summary_bytes)
                _fsync_dir(tmp)
                os.replace(tmp, folder / item_id)
                placed.append(folder / item_id)
                tmp = None
                _fsync_dir(folder)
        except OSError:
            # All or nothing: a half-written set would hold the (full) disk until the next
            # start, and a set queued for only some destinations would be delivered unevenly.
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            for done in placed:
                shutil.rmtree(done, ignore_errors=True)
            raise
        return item_id

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        with open(path, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def pending(self, destination: str) -> list[OutboxItem]:
        """Complete result sets waiting for ``destination``, oldest first."""
        folder = self.directory / destination
        try:
            names = sorted(
                child.name
                for child in folder.iterdir()
                if child.is_dir() and not child.name.startswith(".")
            )
        except FileNotFoundError:
            return []
        return [OutboxItem(destination, folder / name) for name in names]

    def count(self) -> int:
        return sum(len(self.pending(d)) for d in self.destinations)

    def quarantine(self, item: OutboxItem, file: Path) -> Path:
        """Move a file that can never be sent out of the queue (kept for inspection)."""
        target = self.directory / QUARANTINE_FOLDER / item.destination / item.item_id
        target.mkdir(parents=True, exist_ok=True)
        destination = target / file.name
        os.replace(file, destination)
        if not item.files():
            shutil.rmtree(item.path, ignore_errors=True)
        return destination

    def delivered(self, item: OutboxItem, file: Path) -> bool:
        """Remove a file the destination has confirmed; True when the whole set is done."""
        file.unlink(missing_ok=True)
        if item.files():
            return False
        shutil.rmtree(item.path, ignore_errors=True)
        return True
