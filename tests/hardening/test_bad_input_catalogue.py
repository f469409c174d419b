"""Bad-input catalogue (issue #9): what the node does with everything a network can throw at it.

One node process (module scope) receives every case in turn. Each row of :data:`CATALOGUE`
names what is sent and the expected outcome:

* the association result (accepted / A-ASSOCIATE-RJ with its reason / connection closed) or the
  presentation-context result, and the DIMSE status of every C-STORE;
* a clear line in the node's log (regexes below; ``{label}`` is the series' log label);
* whether a result set may reach the destination: a series that cannot be measured correctly
  must produce *nothing* at the sink;
* afterwards the node still answers C-ECHO.

The final tests check, once for the whole run, that a good study sent after all the bad input
is analysed correctly (one result set, volumes equal to an in-process analysis with the same
weights), that no bad study ever produced results, and that no patient identifier of any case
reached the node's log or audit log.

Analysed series are 12 slices (NIfTI case 1, cropped) to keep the module fast on a small CPU.
"""

from __future__ import annotations

import copy
import json
import random
import re
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pynetdicom import build_context
from pynetdicom.sop_class import MRImageStorage, Verification

from hippo_scp.outputs.sr import read_volumes
from tests.hardening.conftest import (
    HardNode,
    Sent,
    Sink,
    assert_sane_result_set,
    association,
    chunked_send,
    contexts_for,
    echo,
    echoscu,
    for_study,
    free_port,
    raw_file,
    series_label,
    store,
    wait_until,
    write_node_config,
)
from tests.result_sets import kind

pytestmark = [pytest.mark.network, pytest.mark.timeout(240)]

#: Slices of every series built here (>= selection.min_slices = 8).
SLICES = 12
#: limits.max_series_bytes of the node under test: a 12-slice series (~55 kB) fits, 70 do not.
SERIES_LIMIT = 200_000
#: node.network_timeout_s / acse_timeout_s: short so idle associations are closed quickly.
NETWORK_TIMEOUT_S = 3
ACSE_TIMEOUT_S = 4
#: node.max_associations: small, so that a case can occupy every slot.
MAX_ASSOCIATIONS = 4
SETTLE_S = 2

S_OK = 0x0000
S_OUT_OF_RESOURCES = 0xA700
S_CANNOT_UNDERSTAND = 0xC000

#: Distinctive patient identifiers put in every case (privacy test greps the logs for them).
PATIENT_NAME = "Quillfeather^Ottoline"
PATIENT_ID = "PRIV-83XK27"
BIRTH_DATE = "19310214"
UTF8_NAME = "Müllerová^Zoë Ångström"
JAPANESE_NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"
LONG_NAME = "Lonnnnnnnnnng" * 16 + "^" + "Namesake" * 16


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sink() -> Iterator[Sink]:
    running = Sink(ae_title="HARDSINK").start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, hardening_weights: Path, sink: Sink, dcmtk: None
) -> Iterator[HardNode]:
    folder = tmp_path_factory.mktemp("catalogue_node")
    config = write_node_config(
        folder / "ae_config.yaml",
        hardening_weights,
        node={
            "network_timeout_s": NETWORK_TIMEOUT_S,
            "acse_timeout_s": ACSE_TIMEOUT_S,
            "max_associations": MAX_ASSOCIATIONS,
        },
        access={"allowed_calling_ae_titles": ["HARDEN", "ECHOSCU", "STORESCU"]},
        limits={"max_series_bytes": SERIES_LIMIT},
    )
    running = HardNode(config, free_port(), sink.destination, settle=SETTLE_S).start()
    yield running
    running.terminate()
    (folder / "node.log").write_text(running.output, encoding="utf-8")  # for a post-mortem


#: case id -> (study UID, whether results are expected); filled as the cases run.
OUTCOMES: dict[str, tuple[str, bool]] = {}


# --------------------------------------------------------------------------- inputs
def patient(ds_list: list[Dataset], name: str = PATIENT_NAME) -> list[Dataset]:
    for ds in ds_list:
        ds.PatientName = name
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = BIRTH_DATE
    return ds_list


def series(**kwargs) -> list[Dataset]:
    """A valid 12-slice HippoCrop series with the distinctive identifiers, fresh UIDs."""
    from tests.hardening.conftest import _nifti

    image, _ = _nifti(1)
    from tests.dicom_factory import series_from_volume

    name = kwargs.pop("patient_name", PATIENT_NAME)
    datasets = series_from_volume(
        image[:, :, kwargs.pop("z0", 10) :][:, :, : kwargs.pop("slices", SLICES)],
        patient_name=name,
        patient_id=PATIENT_ID,
        **kwargs,
    )
    for ds in datasets:
        ds.PatientBirthDate = BIRTH_DATE
    return datasets


def dataset_bytes(ds: Dataset) -> bytes:
    """The data set as it travels in a C-STORE (Explicit VR Little Endian, no File Meta)."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


# --------------------------------------------------------------------------- observation
@dataclass
class Obs:
    sent: Sent = field(default_factory=Sent)
    study_uid: str | None = None
    series_uid: str | None = None
    closed_by_node: bool | None = None  # raw-socket cases
    notes: dict = field(default_factory=dict)


@dataclass
class Ctx:
    node: HardNode
    sink: Sink
    tmp: Path
    mark: int = 0

    @property
    def port(self) -> int:
        return self.node.port


def send_series(ctx: Ctx, datasets: list[Dataset], **kwargs) -> Obs:
    sent = store(ctx.port, datasets, **kwargs)
    return Obs(sent, str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID))


def send_raw_bodies(ctx: Ctx, ts: str, bodies: list[bytes], like: Dataset) -> Obs:
    """C-STORE arbitrary data set bytes (malformed on purpose) under a valid File Meta."""
    paths = []
    for index, body in enumerate(bodies):
        paths.append(
            raw_file(ctx.tmp / f"raw{index}.dcm", str(like.SOPClassUID), generate_uid(), ts, body)
        )
    contexts = [build_context(Verification), build_context(MRImageStorage, ts)]
    with chunked_send(), association(ctx.port, contexts=contexts) as (assoc, sent):
        for path in paths:
            status = assoc.send_c_store(path)
            sent.statuses.append(int(status.Status) if "Status" in status else -1)
    return Obs(sent, str(like.StudyInstanceUID), str(like.SeriesInstanceUID))


def raw_socket(
    ctx: Ctx,
    payload: bytes,
    hold_s: float = 0.0,
    wait_s: float = max(ACSE_TIMEOUT_S, NETWORK_TIMEOUT_S) + 2,
) -> Obs:
    """Connect, send ``payload`` (may be empty), keep sending nothing; did the node close?"""
    obs = Obs()
    with socket.create_connection(("127.0.0.1", ctx.port), timeout=wait_s) as sock:
        if payload:
            sock.sendall(payload)
        time.sleep(hold_s)
        deadline = time.monotonic() + wait_s
        received = b""
        closed = False
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                closed = True
                break
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
        obs.closed_by_node = closed
        obs.notes["reply_pdu_type"] = received[0] if received else None
    obs.sent.established = False
    return obs


# --------------------------------------------------------------------------- case bodies
def c_random_bytes(ctx: Ctx) -> Obs:
    rng = random.Random(9)
    payload = bytes([rng.randrange(0x08, 0x100)]) + rng.randbytes(4095)  # no valid PDU type
    return raw_socket(ctx, payload)


def c_pdu_length_bomb(ctx: Ctx) -> Obs:
    # A-ASSOCIATE-RQ whose header claims a ~4 GiB PDU, then a few bytes and silence.
    before = ctx.node.rss_bytes()
    payload = struct.pack(">BBI", 0x01, 0x00, 0xFFFFFFF0) + b"\x00\x01" + b"\x00" * 98
    obs = raw_socket(ctx, payload)
    obs.notes["rss_growth"] = ctx.node.rss_bytes() - before
    return obs


def c_stalled_peers_fill_slots(ctx: Ctx) -> Obs:
    # node.max_associations peers each announce a huge PDU and stall; once network_timeout_s
    # has passed their slots must be free again for a real sender.
    obs = Obs()
    header = struct.pack(">BBI", 0x01, 0x00, 0xFFFFFFF0) + b"\x00" * 100
    stalled = [socket.create_connection(("127.0.0.1", ctx.port), timeout=5)
               for _ in range(MAX_ASSOCIATIONS)]  # fmt: skip
    try:
        for sock in stalled:
            sock.sendall(header)
        time.sleep(NETWORK_TIMEOUT_S + 2)
        with association(ctx.port, sent=obs.sent) as (assoc, _):
            if assoc.is_established:
                obs.sent.echo_ok = int(assoc.send_c_echo().Status) == 0
    finally:
        for sock in stalled:
            sock.close()
        wait_until(lambda: echo(ctx.port), 15, step=0.5)
    return obs


def c_silent_connection(ctx: Ctx) -> Obs:
    t0 = time.monotonic()
    obs = raw_socket(ctx, b"")
    obs.notes["closed_after_s"] = time.monotonic() - t0
    return obs


def c_wrong_called_ae(ctx: Ctx) -> Obs:
    obs = Obs()
    with association(ctx.port, called="NOTHIPPO", sent=obs.sent):
        pass
    return obs


def c_unknown_calling_ae(ctx: Ctx) -> Obs:
    obs = Obs()
    with association(ctx.port, calling="INTRUDER", sent=obs.sent):
        pass
    return obs


def c_unsupported_sop_class(ctx: Ctx) -> Obs:
    obs = Obs()
    worklist_find = "1.2.840.10008.5.1.4.31"
    contexts = [build_context(worklist_find, ExplicitVRLittleEndian), build_context(Verification)]
    with association(ctx.port, contexts=contexts, sent=obs.sent) as (assoc, _):
        if assoc.is_established:
            obs.notes["accepted_abstract"] = [c.abstract_syntax for c in assoc.accepted_contexts]
    return obs


def c_unsupported_transfer_syntax(ctx: Ctx) -> Obs:
    obs = Obs()
    mpeg2 = "1.2.840.10008.1.2.4.100"
    contexts = [build_context(MRImageStorage, mpeg2), build_context(Verification)]
    with association(ctx.port, contexts=contexts, sent=obs.sent) as (assoc, _):
        if assoc.is_established:
            obs.notes["accepted_abstract"] = [c.abstract_syntax for c in assoc.accepted_contexts]
    return obs


def c_garbage_dataset(ctx: Ctx) -> Obs:
    like = series(slices=8)[0]
    body = random.Random(11).randbytes(4096)
    return send_raw_bodies(ctx, ExplicitVRLittleEndian, [body], like)


def c_truncated_header(ctx: Ctx) -> Obs:
    like = series(slices=8)[0]
    return send_raw_bodies(ctx, ExplicitVRLittleEndian, [dataset_bytes(like)[:400]], like)


def c_corrupt_deflate(ctx: Ctx) -> Obs:
    like = series(slices=8)[0]
    body = random.Random(12).randbytes(2048)
    return send_raw_bodies(ctx, DeflatedExplicitVRLittleEndian, [body], like)


def c_missing_uids(ctx: Ctx) -> Obs:
    datasets = series(slices=8)
    for ds in datasets:
        del ds.SeriesInstanceUID
    sent = store(ctx.port, datasets)
    return Obs(sent, str(datasets[0].StudyInstanceUID), None)


def c_truncated_stream(ctx: Ctx) -> Obs:
    # Every instance cut 2000 bytes short: Pixel Data's length says more than arrives.
    datasets = series()
    like = datasets[0]
    bodies = []
    for ds in datasets:
        ds.SeriesInstanceUID = like.SeriesInstanceUID
        bodies.append(dataset_bytes(ds)[:-2000])
    return send_raw_bodies(ctx, ExplicitVRLittleEndian, bodies, like)


def c_no_pixel_data(ctx: Ctx) -> Obs:
    datasets = series()
    for ds in datasets:
        del ds.PixelData
    return send_series(ctx, datasets)


def c_truncated_pixel_data(ctx: Ctx) -> Obs:
    datasets = series()
    for ds in datasets:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    return send_series(ctx, datasets)


def c_absurd_matrix(ctx: Ctx) -> Obs:
    datasets = series()
    for ds in datasets:
        ds.Rows = ds.Columns = 65535
    return send_series(ctx, datasets)


def c_mixed_sizes(ctx: Ctx) -> Obs:
    datasets = series()
    odd = datasets[5]
    pixels = odd.pixel_array[:-3, :]  # three rows fewer
    odd.Rows = pixels.shape[0]
    odd.PixelData = np.ascontiguousarray(pixels).tobytes()
    return send_series(ctx, datasets)


def c_mixed_orientations(ctx: Ctx) -> Obs:
    datasets = series()
    datasets[6].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal among axials
    return send_series(ctx, datasets)


def c_missing_slice(ctx: Ctx) -> Obs:
    datasets = series()
    del datasets[6]
    return send_series(ctx, datasets)


def c_duplicate_positions(ctx: Ctx) -> Obs:
    datasets = series()
    datasets[7].ImagePositionPatient = datasets[6].ImagePositionPatient
    return send_series(ctx, datasets)


def c_single_slice(ctx: Ctx) -> Obs:
    return send_series(ctx, series()[:1])


def c_rgb(ctx: Ctx) -> Obs:
    datasets = series()
    for ds in datasets:
        gray = ds.pixel_array.astype(np.float64)
        gray8 = np.round(255 * gray / max(1.0, gray.max())).astype(np.uint8)
        ds.PixelData = np.ascontiguousarray(np.stack([gray8] * 3, axis=-1)).tobytes()
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
            if keyword in ds:
                delattr(ds, keyword)
    return send_series(ctx, datasets)


def c_corrupt_rle(ctx: Ctx) -> Obs:
    datasets = series(transfer_syntax=RLELossless)
    rng = random.Random(13)
    for ds in datasets:
        # A plausible RLE header (1 segment at offset 64) followed by noise.
        header = struct.pack("<16I", 1, 64, *([0] * 14))
        ds.PixelData = encapsulate([header + rng.randbytes(500)])
    return send_series(ctx, datasets)


def c_nan_spacing(ctx: Ctx) -> Obs:
    datasets = series()
    for ds in datasets:
        ds["PixelSpacing"].value = ["nan", "nan"]
    return send_series(ctx, datasets)


def c_over_memory_limit(ctx: Ctx) -> Obs:
    # 70 slices (two copies of case 1 stacked) ~ 260 kB > limits.max_series_bytes.
    from tests.dicom_factory import series_from_volume
    from tests.hardening.conftest import _nifti

    image, _ = _nifti(1)
    datasets = patient(series_from_volume(np.concatenate([image, image], axis=2)))
    return send_series(ctx, datasets)


def c_not_selected(ctx: Ctx) -> Obs:
    return send_series(ctx, series(series_description="T1post"))


def c_abort_then_resend(ctx: Ctx) -> Obs:
    datasets = series()
    first = store(ctx.port, datasets, abort_after=6)
    obs = Obs(first, str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID))
    label = series_label(obs.series_uid)
    assert ctx.node.wait_log(r"association aborted: discarded 6 unreleased", 15, ctx.mark), label
    time.sleep(SETTLE_S + 1)  # past the settle window: the 6 must not be analysed
    assert not for_study(ctx.sink.snapshot(), obs.study_uid)
    again = store(ctx.port, datasets)
    obs.notes["resend_statuses"] = sorted(set(again.statuses))
    return obs


def c_never_released(ctx: Ctx) -> Obs:
    datasets = series()
    obs = Obs(Sent(), str(datasets[0].StudyInstanceUID), str(datasets[0].SeriesInstanceUID))
    with association(ctx.port, contexts=contexts_for(datasets), sent=obs.sent, timeout=60) as (
        assoc,
        sent,
    ):
        for ds in datasets:
            sent.statuses.append(int(assoc.send_c_store(ds).Status))
        t0 = time.monotonic()
        wait_until(lambda: not assoc.is_established, NETWORK_TIMEOUT_S + 15)
        obs.notes["closed_after_s"] = time.monotonic() - t0
        obs.notes["aborted_by_node"] = assoc.is_aborted
    time.sleep(SETTLE_S + 1)
    assert not for_study(ctx.sink.snapshot(), obs.study_uid), "unreleased series analysed"
    again = store(ctx.port, datasets)
    obs.notes["resend_statuses"] = sorted(set(again.statuses))
    return obs


def c_same_sop_twice(ctx: Ctx) -> Obs:
    datasets = series()
    changed = copy.deepcopy(datasets[3])
    pixels = changed.pixel_array.copy()
    pixels[:, :] = pixels[::-1, :]  # same size, different content
    changed.PixelData = pixels.tobytes()
    return send_series(ctx, [*datasets, changed])


def c_changed_instance_later(ctx: Ctx) -> Obs:
    datasets = series()
    obs = send_series(ctx, datasets)
    assert wait_until(lambda: len(for_study(ctx.sink.snapshot(), obs.study_uid)) >= 3, 60)
    changed = copy.deepcopy(datasets[3])
    pixels = changed.pixel_array.copy()
    changed.PixelData = pixels[::-1, :].copy().tobytes()
    again = store(ctx.port, [changed])
    obs.notes["resend_statuses"] = sorted(set(again.statuses))
    obs.notes["expected_sets"] = 2
    return obs


def c_utf8_names(ctx: Ctx) -> Obs:
    datasets = series(character_set="ISO_IR 192", patient_name=UTF8_NAME)
    for ds in datasets:
        ds.StudyDescription = "IRM cérébrale – hippocampe"
    return send_series(ctx, datasets)


def c_japanese_iso2022(ctx: Ctx) -> Obs:
    datasets = series(character_set=["", "ISO 2022 IR 87"], patient_name=JAPANESE_NAME)
    return send_series(ctx, datasets)


def c_very_long_strings(ctx: Ctx) -> Obs:
    datasets = series(patient_name=LONG_NAME)
    for ds in datasets:
        ds.StudyDescription = "D" * 1000  # LO: at most 64
        ds.InstitutionName = "Institution " * 80
        ds.ReferringPhysicianName = "Ref^" + "R" * 500
        ds.AccessionNumber = "A" * 300  # SH: at most 16
        ds.ImageComments = "comment " * 600  # LT, 4800 chars
    return send_series(ctx, datasets)


# --------------------------------------------------------------------------- the table
def check_names(name: str, charset: str | list[str]) -> Callable[[list[Dataset]], None]:
    def check(results: list[Dataset]) -> None:
        for ds in results:
            assert str(ds.PatientName) == name, (kind(ds), str(ds.PatientName))

    return check


@dataclass(frozen=True)
class Case:
    id: str
    sends: str
    expect: str
    run: Callable[[Ctx], Obs]
    assoc: str = "accepted"  # accepted | rejected | closed
    reject: tuple[int, int, int] | None = None  # A-ASSOCIATE-RJ (result, source, reason)
    context_result: int | None = None  # presentation context result of the rejected context
    statuses: frozenset[int] | None = None  # distinct C-STORE statuses observed
    log: tuple[str, ...] = ()  # regexes in the node log after the case starts
    result_sets: int = 0  # result sets that must reach the sink for the case's study
    check: Callable[[list[Dataset]], None] | None = None
    bug: str | None = None  # set while a node bug makes the case fail (strict xfail)

    def param(self):
        marks = [pytest.mark.xfail(strict=True, reason=f"node bug: {self.bug}")] if self.bug else []
        return pytest.param(self, id=self.id, marks=marks)


NOT_ANALYSED = r"series {label} not analysed \(\d+ instances\): "

CATALOGUE: list[Case] = [
    Case("random_bytes", "4 KiB of random bytes on the DICOM port (no valid PDU type)",
         "node sends A-ABORT / closes the connection; keeps serving", c_random_bytes,
         assoc="closed", log=(r"(?i)(unknown|invalid|unrecogni[sz]ed).*PDU",)),
    Case("pdu_length_bomb", "A-ASSOCIATE-RQ header claiming a 4 GiB PDU, then silence",
         "connection closed after the timeout, no allocation of the claimed size",
         c_pdu_length_bomb, assoc="closed"),
    Case("stalled_peers_fill_slots",
         "max_associations peers each send a 4 GiB PDU header and stall",
         "their slots are freed after network_timeout_s: a real sender is accepted",
         c_stalled_peers_fill_slots),
    Case("silent_connection", "TCP connect, never send an A-ASSOCIATE-RQ",
         "closed within acse_timeout (ARTIM)", c_silent_connection, assoc="closed"),
    Case("wrong_called_ae", "A-ASSOCIATE-RQ to called AE NOTHIPPO",
         "A-ASSOCIATE-RJ permanent, service-user, called AE not recognised (0x07)",
         c_wrong_called_ae, assoc="rejected", reject=(1, 1, 7),
         log=(r"association rejected: called AE title not recognised",)),
    Case("unknown_calling_ae", "calling AE INTRUDER, allow-list HARDEN/ECHOSCU/STORESCU",
         "A-ASSOCIATE-RJ permanent, service-user, calling AE not recognised (0x03)",
         c_unknown_calling_ae, assoc="rejected", reject=(1, 1, 3),
         log=(r"association rejected: calling AE title not recognised \(calling 'INTRUDER'",)),
    Case("unsupported_sop_class", "only Modality Worklist FIND proposed (+ Verification)",
         "context rejected: abstract syntax not supported (0x03)", c_unsupported_sop_class,
         context_result=0x03),
    Case("unsupported_transfer_syntax", "MR Image Storage proposed only with MPEG2 MP@ML",
         "context rejected: transfer syntaxes not supported (0x04)",
         c_unsupported_transfer_syntax, context_result=0x04),
    Case("garbage_dataset", "C-STORE whose data set is 4 KiB of random bytes",
         "0xC000, logged", c_garbage_dataset, statuses=frozenset({S_CANNOT_UNDERSTAND}),
         log=(r"C-STORE refused",)),
    Case("truncated_header", "data set cut after 400 bytes (before the UIDs)",
         "0xC000, logged", c_truncated_header, statuses=frozenset({S_CANNOT_UNDERSTAND}),
         log=(r"C-STORE refused",)),
    Case("corrupt_deflate", "Deflated Explicit VR LE context, data set = random bytes",
         "0xC000, logged", c_corrupt_deflate, statuses=frozenset({S_CANNOT_UNDERSTAND}),
         log=(r"C-STORE refused: the data set cannot be parsed",)),
    Case("missing_uids", "8 instances without SeriesInstanceUID",
         "0xC000, logged", c_missing_uids, statuses=frozenset({S_CANNOT_UNDERSTAND}),
         log=(r"C-STORE refused: Study/Series/SOP Instance UID missing",)),
    Case("truncated_stream", "every instance's bytes end 2000 bytes into Pixel Data",
         "stored (header fine), series refused at analysis, no results", c_truncated_stream,
         statuses=frozenset({S_OK}), log=(NOT_ANALYSED + r"MissingPixelDataError",)),
    Case("no_pixel_data", "12 slices without Pixel Data", "series refused, no results",
         c_no_pixel_data, statuses=frozenset({S_OK}),
         log=(NOT_ANALYSED + r"MissingPixelDataError",)),
    Case("truncated_pixel_data", "Pixel Data half of Rows x Columns",
         "series refused, no results", c_truncated_pixel_data, statuses=frozenset({S_OK}),
         log=(NOT_ANALYSED + r"MissingPixelDataError",)),
    Case("absurd_matrix", "Rows = Columns = 65535 (pixel data unchanged)",
         "series refused (absurd size), no results", c_absurd_matrix,
         statuses=frozenset({S_OK}), log=(NOT_ANALYSED + r"AbsurdSizeError",)),
    Case("mixed_sizes", "one slice with 3 rows fewer", "series refused, no results",
         c_mixed_sizes, statuses=frozenset({S_OK}),
         log=(NOT_ANALYSED + r"InconsistentGeometryError",)),
    Case("mixed_orientations", "one sagittal slice among axial ones",
         "series refused, no results", c_mixed_orientations, statuses=frozenset({S_OK}),
         log=(NOT_ANALYSED + r"InconsistentGeometryError",)),
    Case("missing_slice", "slice 7 of 12 not sent (gap)", "series refused (gap), no results",
         c_missing_slice, statuses=frozenset({S_OK}), log=(NOT_ANALYSED + r"SliceGapError",)),
    Case("duplicate_positions", "two slices at the same position",
         "series refused, no results", c_duplicate_positions, statuses=frozenset({S_OK}),
         log=(NOT_ANALYSED + r"DuplicateSliceError",)),
    Case("single_slice", "a one-instance HippoCrop series", "refused (too few), no results",
         c_single_slice, statuses=frozenset({S_OK}), log=(NOT_ANALYSED + r"TooFewSlicesError",)),
    Case("rgb", "12 RGB slices (3 samples per pixel)", "refused (photometric), no results",
         c_rgb, statuses=frozenset({S_OK}),
         log=(NOT_ANALYSED + r"UnsupportedPhotometricError",)),
    Case("corrupt_rle", "RLE Lossless with noise in the fragments",
         "refused (undecodable), no results", c_corrupt_rle, statuses=frozenset({S_OK}),
         log=(NOT_ANALYSED + r"(UndecodablePixelDataError|MissingPixelDataError)",)),
    Case("nan_spacing", "PixelSpacing NaN\\NaN", "refused (geometry), no results",
         c_nan_spacing, statuses=frozenset({S_OK}),
         log=(NOT_ANALYSED + r"(MissingGeometryError|AbsurdSizeError)",)),
    Case("over_memory_limit", "70-slice series, ~260 kB > limits.max_series_bytes 200 kB",
         "0xA700 from the first instance over the limit, no results", c_over_memory_limit,
         statuses=frozenset({S_OK, S_OUT_OF_RESOURCES}),
         log=(r"series {label} exceeds limits.max_series_bytes",
              r"series {label} not analysed: it exceeded a memory limit")),
    Case("not_selected", "a 'T1post' series", "acknowledged 0x0000, never analysed",
         c_not_selected, statuses=frozenset({S_OK})),
    Case("abort_then_resend", "6 of 12 slices then A-ABORT; later all 12, released",
         "the 6 discarded (logged), the resend analysed once", c_abort_then_resend,
         statuses=frozenset({S_OK}), result_sets=1,
         log=(r"association aborted: discarded 6 unreleased instance",)),
    Case("never_released", "12 slices, then the association is left open",
         "node aborts it after network_timeout_s, instances discarded; resend analysed once",
         c_never_released, statuses=frozenset({S_OK}), result_sets=1,
         log=(r"association aborted: discarded 12 unreleased instance",)),
    Case("same_sop_twice", "12 slices + slice 4 again (same SOP UID, other pixels)",
         "both 0x0000, one result set over 12 instances", c_same_sop_twice,
         statuses=frozenset({S_OK}), result_sets=1,
         log=(r"series {label}: results delivered to .* \(12 instances",)),
    Case("changed_instance_later", "12 slices; after their result, slice 4 changed alone",
         "a second result set for the new content, over all 12 instances",
         c_changed_instance_later, statuses=frozenset({S_OK}), result_sets=2),
    Case("utf8_names", "ISO_IR 192, PatientName with Czech/German/Swedish letters",
         "analysed; results carry the same name", c_utf8_names, statuses=frozenset({S_OK}),
         result_sets=1, check=check_names(UTF8_NAME, "ISO_IR 192")),
    Case("japanese_iso2022", "ISO 2022 IR 87, PatientName alphabetic=ideographic=phonetic",
         "analysed; results carry the same name", c_japanese_iso2022,
         statuses=frozenset({S_OK}), result_sets=1,
         check=check_names(JAPANESE_NAME, ["", "ISO 2022 IR 87"])),
    Case("very_long_strings", "PN 270 chars, LO 1000, SH 300, LT 4800",
         "accepted and analysed (values over VR limits are not a reason to refuse)",
         c_very_long_strings, statuses=frozenset({S_OK}), result_sets=1),
]  # fmt: skip


# --------------------------------------------------------------------------- the test
@pytest.mark.parametrize("case", [c.param() for c in CATALOGUE])
def test_bad_input(case: Case, node: HardNode, sink: Sink, tmp_path: Path) -> None:
    mark = node.mark()
    obs = case.run(Ctx(node, sink, tmp_path, mark))
    label = series_label(obs.series_uid) if obs.series_uid else "s-none"
    log = node.log_since(mark)
    if obs.study_uid and not case.bug:
        OUTCOMES[case.id] = (obs.study_uid, case.result_sets > 0)

    # Association / transport result.
    if case.assoc == "closed":
        assert obs.closed_by_node, f"node did not close the connection: {obs.notes}"
    elif case.assoc == "rejected":
        assert obs.sent.rejected, obs.sent
        assert obs.sent.reject == case.reject
    else:
        assert obs.sent.established, obs.sent
    if case.context_result is not None:
        assert case.context_result in obs.sent.context_results, obs.sent.context_results
        assert obs.notes.get("accepted_abstract") in ([], [Verification], None)

    # DIMSE statuses.
    if case.statuses is not None:
        assert set(obs.sent.statuses) == case.statuses, [hex(s) for s in obs.sent.statuses]
    if S_OUT_OF_RESOURCES in (case.statuses or ()):
        first = obs.sent.statuses.index(S_OUT_OF_RESOURCES)
        assert all(s == S_OUT_OF_RESOURCES for s in obs.sent.statuses[first:])
    for status in obs.notes.get("resend_statuses", []):
        assert status == S_OK

    # Case-specific observations.
    if case.id == "pdu_length_bomb":
        assert obs.notes["rss_growth"] < 64 * 1024**2, obs.notes
    if case.id == "stalled_peers_fill_slots":
        assert obs.sent.echo_ok, obs.sent
    if case.id == "silent_connection":
        assert obs.notes["closed_after_s"] <= ACSE_TIMEOUT_S + NETWORK_TIMEOUT_S + 5
    if case.id == "never_released":
        assert obs.notes["aborted_by_node"]
        assert obs.notes["closed_after_s"] <= NETWORK_TIMEOUT_S + 5, obs.notes

    # A clear log line.
    for pattern in case.log:
        regex = pattern.format(label=re.escape(label))
        assert node.wait_log(regex, timeout=60, mark=mark), (
            f"no log line matching {regex!r}:\n{node.log_since(mark)[-3000:]}"
        )

    # Results: exactly what is expected for this study.
    if obs.study_uid:
        if case.result_sets:
            want = 3 * case.result_sets
            refused = re.compile(
                NOT_ANALYSED.format(label=re.escape(label)) + f"|{label}: analysis failed"
            )

            def arrived_or_refused() -> bool:
                arrived = len(for_study(sink.snapshot(), obs.study_uid)) >= want
                return arrived or bool(refused.search(node.log_since(mark)))

            assert wait_until(arrived_or_refused, 90), f"{case.id}: no results, no refusal"
            assert not refused.search(node.log_since(mark)), node.log_since(mark)[-3000:]
            assert wait_until(lambda: len(for_study(sink.snapshot(), obs.study_uid)) >= want, 30)
            results = for_study(sink.snapshot(), obs.study_uid)
            for seg in [ds for ds in results if kind(ds) == "SEG"]:
                # every result set covers the whole series, never a part of it
                refs = {
                    i.ReferencedSOPInstanceUID
                    for s in seg.ReferencedSeriesSequence
                    for i in s.ReferencedInstanceSequence
                }
                assert len(refs) == SLICES, (case.id, len(refs))
            kinds = sorted(kind(ds) for ds in results)
            assert kinds == sorted(["SC", "SEG", "SR"] * case.result_sets), kinds
            if case.check:
                case.check(results)
        else:
            # The refusal line (or the C-STORE refusal) is the sync point: nothing was sent
            # for this study; the final test re-checks after the settle window.
            assert not for_study(sink.snapshot(), obs.study_uid), log[-2000:]

    # The node is still there and answers C-ECHO (pynetdicom and dcmtk).
    assert node.running, node.output[-3000:]
    assert echo(node.port)
    assert echoscu(node.port).returncode == 0


# --------------------------------------------------------------------------- afterwards
def test_good_study_after_the_catalogue_is_analysed_correctly(
    node: HardNode, sink: Sink, hardening_weights: Path
) -> None:
    datasets = series()
    study_uid = str(datasets[0].StudyInstanceUID)
    mark = node.mark()
    sent = store(node.port, datasets)
    assert set(sent.statuses) == {S_OK}
    assert wait_until(lambda: len(for_study(sink.snapshot(), study_uid)) >= 3, 90), node.log_since(
        mark
    )[-3000:]
    results = for_study(sink.snapshot(), study_uid)
    assert_sane_result_set(results, SLICES)

    # Same numbers as the pipeline run in-process with the same weights.
    from hippo_scp.model.inference import Segmenter
    from hippo_scp.pipeline.analysis import SeriesAnalyzer

    expected = SeriesAnalyzer(Segmenter(weights_path=hardening_weights, num_threads=1)).analyze(
        datasets
    )
    (sr,) = [ds for ds in results if kind(ds) == "SR"]
    assert read_volumes(sr) == read_volumes(expected.sr)
    volumes = expected.volumes
    assert 0 <= volumes.total_mm3 <= SLICES * 35 * 51 * 1.0
    assert abs(volumes.anterior_mm3 + volumes.posterior_mm3 - volumes.total_mm3) < 1.0
    sidecar = json.loads(hardening_weights.with_suffix(".json").read_text())
    if "training" in sidecar:  # trained weights (not the random stand-in): near the truth
        from tests.hardening.conftest import _nifti

        _, label = _nifti(1)
        truth = float((label[:, :, 10 : 10 + SLICES] > 0).sum())  # 1 mm isotropic voxels
        assert 0.6 * truth <= volumes.total_mm3 <= 1.4 * truth, (volumes, truth)
    OUTCOMES["good_after"] = (study_uid, True)


def test_no_results_for_bad_input_and_one_set_per_good_study(node: HardNode, sink: Sink) -> None:
    time.sleep(SETTLE_S + 2)  # any late (wrong) analysis would be delivered by now
    received = sink.snapshot()
    expected_sets = {c.id: c.result_sets for c in CATALOGUE} | {"good_after": 1}
    for case_id, (study_uid, wants) in OUTCOMES.items():
        got = sorted(kind(ds) for ds in for_study(received, study_uid))
        want = sorted(["SC", "SEG", "SR"] * expected_sets[case_id]) if wants else []
        assert got == want, (case_id, got)
    known = {uid for uid, _ in OUTCOMES.values()}
    strays = {str(ds.StudyInstanceUID) for ds in received} - known
    assert not strays, f"results for studies no case sent: {strays}"


def test_no_patient_identifiers_in_logs(node: HardNode) -> None:
    """Every case carried distinctive names / IDs / birth dates: none is in the INFO+ log
    (the node logs at INFO) nor in the audit log."""
    audit = (node.config.parent / "audit.jsonl").read_text(encoding="utf-8")
    texts = {"node log": node.output, "audit log": audit}
    needles = [PATIENT_ID, BIRTH_DATE, "Quillfeather", "Ottoline", "Müllerová", "Zoë"]
    needles += ["Ångström", "山田", "太郎", "やまだ", "Yamada", "Lonnnnnnnnnng", "Namesake"]
    for where, text in texts.items():
        found = [n for n in needles if n in text]
        assert not found, f"patient identifiers {found} in the {where}"


def test_audit_log_records_association_events(node: HardNode) -> None:
    records = [
        json.loads(line)
        for line in (node.config.parent / "audit.jsonl").read_text().splitlines()
        if line.strip()
    ]
    events = {r.get("event") for r in records}
    assert {"association_accepted", "association_released", "association_aborted",
            "association_rejected", "results_sent"} <= events, events  # fmt: skip
    for record in records:
        if str(record.get("event", "")).startswith("association_"):
            assert record.get("calling_ae_title"), record
            assert record.get("peer_address") == "127.0.0.1", record
            assert record.get("outcome"), record
    rejected = [r for r in records if r["event"] == "association_rejected"]
    assert {r["calling_ae_title"] for r in rejected} >= {"INTRUDER"}
    assert all(r.get("reason") for r in rejected)
    # Each series the worker filed: results queued, or refused with the log's reason.
    analyses = [r for r in records if r["event"] == "series_analysis"]
    outcomes = Counter(r["outcome"] for r in analyses)
    assert outcomes["results_queued"] >= 1 and outcomes["refused"] >= 5, outcomes
    assert any("SliceGapError" in r.get("reason", "") for r in analyses)
    assert all(r["series"].startswith("s-") for r in analyses)


def test_audit_log_one_end_record_per_association_with_counts(node: HardNode) -> None:
    records = [
        json.loads(line)
        for line in (node.config.parent / "audit.jsonl").read_text().splitlines()
        if line.strip()
    ]
    ends = ("association_released", "association_aborted", "association_closed")
    ended = [r for r in records if r.get("event") in ends]
    assert ended
    per_association = Counter(r.get("association") for r in ended)
    twice = {a: n for a, n in per_association.items() if n != 1}
    assert not twice, [r for r in ended if r.get("association") in twice][:4]
    for record in ended:
        for key in ("stores_received", "instances_stored", "instances_refused"):
            assert isinstance(record.get(key), int), record
    # 'abort_then_resend': the peer aborted after 6 C-STOREs; 'never_released': the node
    # aborted after 12 (network timeout). Both are recorded as aborted with their counts.
    aborted = [r for r in ended if r["event"] == "association_aborted"]
    assert any(r["stores_received"] == 6 for r in aborted), aborted
    assert any(r["stores_received"] == 12 for r in aborted), aborted
