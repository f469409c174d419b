"""Fixtures and helpers for the hardening tests (issue #9): the node as a real process.

Reuses the network tests' building blocks (:mod:`tests.network.conftest`: ``NodeProcess``,
``Sink``, ``write_node_config``, ``free_port``, ``network_weights``) and adds what hardening
needs on top: an in-process DICOM SCU that reports the exact DIMSE status / association result,
waits on the node's log text, the series label the node logs, the node's RSS.

Inputs are built from the NIfTI training data with :mod:`tests.dicom_factory` (fresh UIDs per
case, so every case is its own study at the sink); random bytes only where the case *is* random
bytes. Everything runs on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import math
import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, build_context
from pynetdicom.sop_class import MRImageStorage, Verification

import tests.network.conftest as netconf
from hippo_scp.network.response_guard import keep_responses_for_caller
from hippo_scp.outputs.sr import read_volumes

# Fixtures of the network folder, made available here (pytest finds fixtures by name in the
# conftest modules of a test's folder and its parents, and in modules imported into them).
from tests.network.conftest import (  # noqa: F401
    NodeProcess,
    Sink,
    free_port,
    network_weights,  # noqa: F401
    test_volumes,  # noqa: F401
    wait_until,
    write_node_config,
)
from tests.result_sets import kind

REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- the node
class HardNode(NodeProcess):
    """:class:`NodeProcess` plus what the hardening tests read: pid, RSS, log waits."""

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def kill9(self) -> None:
        """SIGKILL, no clean-up: what a power cut or the OOM killer does."""
        assert self._proc is not None
        self._proc.kill()
        self._proc.wait(10)

    def rss_bytes(self) -> int:
        import psutil

        try:
            return int(psutil.Process(self.pid).memory_info().rss)
        except psutil.Error:
            return 0

    def mark(self) -> int:
        """Position in the log; pass to :meth:`wait_log` / :meth:`log_since`."""
        return len(self.lines)

    def log_since(self, mark: int = 0) -> str:
        return "\n".join(self.lines[mark:])

    def wait_log(self, pattern: str, timeout: float, mark: int = 0) -> re.Match[str] | None:
        """First match of the regex ``pattern`` in the log after ``mark`` (None on timeout)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.log_since(mark))
            if found or time.monotonic() > deadline or not self.running:
                return found
            time.sleep(0.1)


def series_label(series_uid: str) -> str:
    """The node's non-identifying name of a series in its log (``assembly.series_store``)."""
    return "s-" + hashlib.sha256(series_uid.encode("ascii", "replace")).hexdigest()[:10]


# --------------------------------------------------------------------------- sending
@dataclass
class Sent:
    """What the SCU observed: association result and the C-STORE statuses, in order."""

    established: bool = False
    rejected: bool = False
    aborted: bool = False
    reject: tuple[int, int, int] | None = None  # (result, source, diagnostic)
    statuses: list[int] = field(default_factory=list)
    context_results: list[int] = field(default_factory=list)  # per proposed context
    echo_ok: bool | None = None

    @property
    def outcome(self) -> str:
        if self.rejected:
            return "rejected"
        if not self.established:
            return "aborted" if self.aborted else "failed"
        return "accepted"


def make_ae(calling: str = "HARDEN", timeout: float = 30.0) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = 10
    return ae


def contexts_for(datasets: Sequence[Dataset]) -> list:
    """One presentation context per (SOP class, transfer syntax) in ``datasets`` + Verification."""
    pairs = sorted(
        {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
        | {(str(MRImageStorage), str(ExplicitVRLittleEndian))}
    )
    return [build_context(Verification)] + [build_context(c, t) for c, t in pairs]


@contextlib.contextmanager
def association(
    port: int,
    *,
    calling: str = "HARDEN",
    called: str = "HIPPOAI",
    contexts: list | None = None,
    sent: Sent | None = None,
    release: bool = True,
    timeout: float = 30.0,
) -> Iterator[tuple]:
    """Open an association (yields ``(assoc, sent)``); released at the end unless told not to."""
    ae = make_ae(calling, timeout)
    ae.requested_contexts = contexts or [
        build_context(Verification),
        build_context(MRImageStorage, ExplicitVRLittleEndian),
    ]
    sent = sent or Sent()
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    sent.established = assoc.is_established
    sent.rejected = assoc.is_rejected
    sent.aborted = assoc.is_aborted
    if assoc.is_rejected and assoc.acceptor.primitive is not None:
        p = assoc.acceptor.primitive
        sent.reject = (int(p.result), int(p.result_source), int(p.diagnostic))
    if assoc.is_established:
        sent.context_results = [int(cx.result) for cx in assoc.rejected_contexts]
        keep_responses_for_caller(assoc)
    try:
        yield assoc, sent
    finally:
        if assoc.is_established:
            if release:
                assoc.release()
            else:
                assoc.abort()


def store(
    port: int,
    datasets: Sequence[Dataset],
    *,
    calling: str = "HARDEN",
    abort_after: int | None = None,
) -> Sent:
    """C-STORE ``datasets`` in one association; with ``abort_after``, A-ABORT after that many."""
    with association(port, calling=calling, contexts=contexts_for(datasets)) as (assoc, sent):
        if not assoc.is_established:
            return sent
        for index, ds in enumerate(datasets):
            if abort_after is not None and index == abort_after:
                assoc.abort()
                sent.aborted = True
                break
            status = assoc.send_c_store(ds)
            sent.statuses.append(int(status.Status) if "Status" in status else -1)
    return sent


@contextlib.contextmanager
def chunked_send() -> Iterator[None]:
    """Make pynetdicom send a *file*'s data set bytes verbatim (no decode / re-encode), so a
    test can put malformed bytes on the wire."""
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def raw_file(path: Path, sop_class: str, sop_instance: str, ts: str, body: bytes) -> Path:
    """A Part 10 file: a valid File Meta header followed by ``body`` as the data set bytes."""
    from io import BytesIO

    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    buffer = BytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(buffer.getvalue() + body)
    return path


def echo(port: int, calling: str = "HARDEN") -> bool:
    """C-ECHO from pynetdicom; True on status 0x0000."""
    ae = make_ae(calling, 15)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="HIPPOAI")
    if not assoc.is_established:
        return False
    keep_responses_for_caller(assoc)
    try:
        status = assoc.send_c_echo()
        return "Status" in status and int(status.Status) == 0
    finally:
        assoc.release()


def echoscu(port: int, calling: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", calling, "-aec", "HIPPOAI", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )


# --------------------------------------------------------------------------- inputs
@functools.cache
def _nifti(case: int):
    from tests.dicom_factory import load_nifti_case, require_data

    require_data()
    return load_nifti_case(case)


#: The NIfTI case every good series is built from (integer intensities, 35 slices).
GOOD_CASE = 1


def good_series(
    *,
    case: int = GOOD_CASE,
    patient_name: str = "Harden^Good",
    patient_id: str = "HARD-0001",
    **kwargs,
) -> list[Dataset]:
    """A complete, valid HippoCrop series (fresh study / series / SOP UIDs every call)."""
    from tests.dicom_factory import series_from_volume

    image, _ = _nifti(case)
    return series_from_volume(
        image, patient_name=patient_name, patient_id=patient_id, seed=case, **kwargs
    )


def label_volume_mm3(case: int = GOOD_CASE) -> float:
    """Ground-truth hippocampus volume of the case (1 mm isotropic voxels in the factory)."""
    _, label = _nifti(case)
    return float((label > 0).sum())


def restudy(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Deep copies with new Study / Series / SOP Instance UIDs (same pixels and geometry)."""
    study, series = generate_uid(), generate_uid()
    out = []
    for ds in datasets:
        copy_ = copy.deepcopy(ds)
        copy_.StudyInstanceUID, copy_.SeriesInstanceUID = study, series
        copy_.SOPInstanceUID = generate_uid()
        copy_.file_meta.MediaStorageSOPInstanceUID = copy_.SOPInstanceUID
        out.append(copy_)
    return out


# --------------------------------------------------------------------------- results
def for_study(received: Sequence[Dataset], study_uid: str) -> list[Dataset]:
    return [ds for ds in received if str(ds.StudyInstanceUID) == str(study_uid)]


def assert_sane_result_set(datasets: Sequence[Dataset], slices: int) -> dict[str, float]:
    """One SEG + SR + SC, the SEG covering every source slice, finite non-negative volumes."""
    kinds = sorted(kind(ds) for ds in datasets)
    assert kinds == ["SC", "SEG", "SR"], kinds
    (seg,) = [ds for ds in datasets if kind(ds) == "SEG"]
    referenced = {
        item.ReferencedSOPInstanceUID
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert len(referenced) == slices
    (sr,) = [ds for ds in datasets if kind(ds) == "SR"]
    volumes = read_volumes(sr)
    assert set(volumes) == {"Anterior hippocampus", "Posterior hippocampus", "Hippocampus"}, volumes
    assert all(math.isfinite(v) and v >= 0 for v in volumes.values()), volumes
    parts = volumes["Anterior hippocampus"] + volumes["Posterior hippocampus"]
    assert abs(parts - volumes["Hippocampus"]) <= 1.0, volumes
    (ref,) = {str(ds.SeriesInstanceUID) for ds in datasets if kind(ds) == "SEG"}
    assert ref  # the SEG has its own series
    return volumes


@pytest.fixture(scope="session")
def hardening_weights(
    tmp_path_factory: pytest.TempPathFactory,
    network_weights: Path,  # noqa: F811 - the fixture imported above
) -> Path:
    """A private, verified copy of the weights the network tests use.

    The shipped file may be rewritten by a training run while the tests run; the node and the
    in-process comparison must load the very same bytes, so both use this snapshot.
    """
    import shutil

    from hippo_scp.model.weights import load_weights, sidecar_path

    folder = tmp_path_factory.mktemp("weights_snapshot")
    for _ in range(5):
        target = folder / network_weights.name
        shutil.copy2(network_weights, target)
        if sidecar_path(network_weights).is_file():
            shutil.copy2(sidecar_path(network_weights), sidecar_path(target))
        try:
            load_weights(target)
            return target
        except Exception:  # caught mid-write: try again
            time.sleep(2)
    pytest.fail(f"weights {network_weights} keep changing; cannot take a consistent copy")


@pytest.fixture(scope="session")
def dcmtk() -> None:
    netconf.require_dcmtk()
