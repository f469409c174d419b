"""Find the series to analyse in a folder tree (the ``hippo-scp analyze`` input).

Mirrors what the network node does with received instances, for files on disk: any nesting,
any file names, non-DICOM files ignored; instances grouped by Study / Series Instance UID and
judged by the same :class:`~hippo_scp.assembly.selection.SeriesSelector` as the node, so
``analyze`` and ``serve`` pick the same series.

The scan reads headers only (``stop_before_pixels``); pixel data is read for selected series
only, one series at a time, so a folder of full-brain studies costs little memory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from hippo_scp.assembly.selection import SelectionDecision, SeriesSelector

logger = logging.getLogger(__name__)


@dataclass
class FolderSeries:
    """The files of one series found on disk, with the selection decision for it."""

    study_instance_uid: str
    series_instance_uid: str
    files: list[Path]
    first_header: Dataset
    decision: SelectionDecision | None = None

    @property
    def series_description(self) -> str:
        return str(self.first_header.get("SeriesDescription", "") or "")

    @property
    def modality(self) -> str:
        return str(self.first_header.get("Modality", "") or "")

    def load(self) -> list[Dataset]:
        """Read the series' instances in full (pixel data included)."""
        return [pydicom.dcmread(path, force=False) for path in self.files]


@dataclass
class FolderScan:
    """Result of scanning a folder: every series found, plus what was skipped."""

    root: Path
    series: list[FolderSeries] = field(default_factory=list)
    non_dicom_files: int = 0
    unreadable_files: int = 0

    @property
    def selected(self) -> list[FolderSeries]:
        return [s for s in self.series if s.decision is not None and s.decision.selected]

    @property
    def not_selected(self) -> list[FolderSeries]:
        return [s for s in self.series if s.decision is None or not s.decision.selected]


def _walk_files(root: Path) -> Iterator[Path]:
    """All regular files below ``root`` (or ``root`` itself), in a stable order."""
    if root.is_file():
        yield root
        return
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs.sort()
        for name in sorted(files):
            yield Path(directory) / name


def scan_folder(root: Path, selector: SeriesSelector) -> FolderScan:
    """Group the DICOM files under ``root`` by series and decide which to analyse.

    Files without a DICOM preamble/header are counted as non-DICOM (``force=False``: a
    random file must never be "parsed" into garbage). Files lacking Study/Series UIDs are
    counted as unreadable.
    """
    scan = FolderScan(root=root)
    grouped: dict[tuple[str, str], FolderSeries] = {}
    for path in _walk_files(root):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=False)
        except (InvalidDicomError, EOFError, IsADirectoryError):
            scan.non_dicom_files += 1
            continue
        except (OSError, ValueError, TypeError, AttributeError, KeyError) as error:
            logger.debug("unreadable file %s: %s", path, error)
            scan.unreadable_files += 1
            continue
        study = str(header.get("StudyInstanceUID", "") or "")
        series = str(header.get("SeriesInstanceUID", "") or "")
        if not study or not series:
            scan.unreadable_files += 1
            continue
        key = (study, series)
        if key not in grouped:
            grouped[key] = FolderSeries(study, series, [], header)
        grouped[key].files.append(path)
    for entry in grouped.values():
        entry.decision = selector.decide(entry.first_header, len(entry.files))
        scan.series.append(entry)
    # The folder path is not logged at INFO: real-world folders are often named after patients.
    logger.debug("scanned %s", root)
    logger.info(
        "scan found %d series (%d selected), %d non-DICOM and %d unreadable files ignored",
        len(scan.series),
        len(scan.selected),
        scan.non_dicom_files,
        scan.unreadable_files,
    )
    return scan
