"""Find the patient's earlier hippo-scp results in the PACS: a Query/Retrieve SCU.

The comparison with the prior examination (:mod:`hippo_scp.pipeline.prior_comparison`) needs
the volumes the node measured last time. They are in the PACS already: every analysis sends a
TID 1500 SR there (SeriesDescription :data:`~hippo_scp.outputs.identity.SR_SERIES_DESCRIPTION`).
So the node asks the PACS for them, on one association, in three steps:

1. **C-FIND, STUDY level** (Study Root), PatientID matched exactly: the patient's studies with
   their StudyDate. Kept: studies other than the one being analysed and not dated after it,
   the ``max_studies`` most recent (a patient with decades of imaging costs a bounded time).
2. **C-FIND, SERIES level** in each kept study: series with Modality ``SR`` and our
   SeriesDescription. The answers are checked again here, because some PACS ignore matching
   keys they do not index and answer every series.
3. **C-GET, SERIES level** of the newest result series (SeriesDate / SeriesTime) of the most
   recent of those studies (an older one only if its SR cannot be read): the PACS sends the SR
   instances back as C-STORE sub-operations *on the same association* (we propose
   Comprehensive 3D SR Storage with the SCP role). C-GET rather than C-MOVE: C-MOVE makes the
   PACS open a second association to a listening port, which the PACS must have configured as
   a move destination (AE title, host, port) for the node; C-GET needs only the association
   the node opened, so a node behind a firewall or NAT and a PACS administrator who only
   registered the node as a query client both work. The SRs are small (tens of kB), so
   C-GET's lack of parallelism costs nothing. For a PACS without C-GET, ``priors.retrieve:
   move`` (:class:`MoveToNode`) asks for a C-MOVE to the node's own AE title instead: the PACS
   knows it already (it routes images there), and the node's receiver hands what arrives to
   the lookup (:mod:`hippo_scp.network.retrieval_inbox`).

Each SR is read the way a downstream system would (:func:`hippo_scp.outputs.sr.read_volumes`)
into a :class:`~hippo_scp.pipeline.prior_comparison.PriorMeasurement`.

Why :meth:`PriorResultsQuery.lookup` never raises and gives up early: it runs in the analysis
worker, and the comparison is an addition to the report, not its purpose. A PACS that is down,
slow or refuses the query must not stop (or noticeably delay) the volumes being delivered, so
every failure becomes a ``failed`` :class:`~hippo_scp.pipeline.prior_comparison.PriorLookup`
whose reason the report prints; the whole lookup is bounded by an overall deadline; and after
a failure the PACS is not asked again for ``retry_after_s`` seconds, so an outage costs one
timeout, not one per series.

Patient identifiers are sent to the PACS (they are the query) but never logged at INFO or
above: the summary line counts studies only, and study UIDs appear at DEBUG.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from hippo_scp.config import Destination
from hippo_scp.logging_setup import PATIENT_GUARD
from hippo_scp.network.event_reactor import install_event_driven_reactors
from hippo_scp.network.presentation import UNCOMPRESSED_TRANSFER_SYNTAXES
from hippo_scp.network.response_guard import keep_responses_for_caller
from hippo_scp.network.retrieval_inbox import RetrievalInbox
from hippo_scp.network.socket_tuning import disable_nagle
from hippo_scp.outputs.identity import (
    ANTERIOR_STRUCTURE,
    POSTERIOR_STRUCTURE,
    SR_SERIES_DESCRIPTION,
    WHOLE_STRUCTURE,
    model_version_of,
)
from hippo_scp.outputs.sr import read_volumes
from hippo_scp.pipeline.prior_comparison import PriorLookup, PriorMeasurement, parse_dicom_date

LOGGER = logging.getLogger(__name__)

#: The whole lookup (association, every C-FIND and C-GET) may take at most this many times
#: ``timeout_s``: each step is bounded by the DIMSE timeout, but 20 studies' worth of steps
#: would not be, and the analysis worker waits for the lookup.
DEADLINE_FACTOR = 3.0
#: Largest PDU we accept (the PACS sends SRs of tens of kB; as the sender and Orthanc use).
MAX_PDU_BYTES = 131072
#: The reason of an ``unavailable`` lookup.
NO_PATIENT_ID = "the series has no PatientID"
#: ... and when nothing could be called earlier than the analysed study.
NO_STUDY_DATE = "the study has no StudyDate"

_SUCCESS = 0x0000
_PENDING = frozenset({0xFF00, 0xFF01})
#: C-GET / C-MOVE Warning: sub-operations completed with one or more failures. What arrived is
#: usable.
_RETRIEVE_WARNING = 0xB000


class QueryFailed(Exception):
    """The PACS could not be asked or did not answer; the message says why in a few words."""


@dataclass(frozen=True)
class StudyAnswer:
    """One study of the patient, as the STUDY-level C-FIND answered it."""

    study_instance_uid: str
    #: StudyDate as answered (DA), "" when the PACS has none
    study_date: str = ""

    @property
    def date(self) -> datetime.date | None:
        return parse_dicom_date(self.study_date)


def earlier_studies(
    answers: list[StudyAnswer], current: Dataset, max_studies: int
) -> list[StudyAnswer]:
    """The studies worth asking for results: not the current one, not dated after it.

    A study whose date (or the current date) is unknown is kept: whether it is earlier is
    decided by :func:`~hippo_scp.pipeline.prior_comparison.select_prior`, which sees the SR's
    own StudyDate. Most recent first, at most ``max_studies`` (undated ones last).
    """
    current_uid = str(current.get("StudyInstanceUID", "") or "")
    current_date = parse_dicom_date(current.get("StudyDate"))
    unique = {a.study_instance_uid: a for a in answers if a.study_instance_uid}
    kept = [
        a
        for uid, a in unique.items()
        if uid != current_uid
        and not (current_date is not None and a.date is not None and a.date > current_date)
    ]
    kept.sort(
        key=lambda a: (a.date is not None, a.date or datetime.date.min, a.study_instance_uid),
        reverse=True,
    )
    return kept[: max(0, max_studies)]


def prior_from_sr(sr: Dataset, study: StudyAnswer) -> PriorMeasurement:
    """The measurement one retrieved SR states; ``ValueError`` (without patient data) if the
    SR cannot be read or lacks one of the three volumes."""
    try:
        volumes = read_volumes(sr, image_library=False)
    except Exception as error:  # highdicom raises several kinds on malformed content
        raise ValueError(f"not a readable TID 1500 SR ({type(error).__name__})") from error
    names = (ANTERIOR_STRUCTURE.name, POSTERIOR_STRUCTURE.name, WHOLE_STRUCTURE.name)
    missing = [name for name in names if name not in volumes]
    if missing:
        raise ValueError(f"no volume for {', '.join(missing)}")
    study_date = parse_dicom_date(sr.get("StudyDate")) or study.date
    return PriorMeasurement(
        study_instance_uid=str(sr.get("StudyInstanceUID", "") or study.study_instance_uid),
        study_date=study_date,
        anterior_mm3=volumes[ANTERIOR_STRUCTURE.name],
        posterior_mm3=volumes[POSTERIOR_STRUCTURE.name],
        total_mm3=volumes[WHOLE_STRUCTURE.name],
        model_version=model_version_of(sr),
        content_datetime=str(sr.get("ContentDate", "") or "")
        + str(sr.get("ContentTime", "") or ""),
    )


@dataclass
class RetrievedInstances:
    """Collects the C-STORE sub-operations the PACS sends during our C-GETs.

    Bound to one association (``evt.EVT_C_STORE``); :meth:`take` hands over what arrived
    since the last call, so each C-GET's instances are attributed to the study it asked for.
    """

    _datasets: list[Dataset] = field(default_factory=list, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def on_store(self, event: evt.Event) -> int:
        """Keep the instance; decoded later, so a malformed one costs only itself."""
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with self._lock:
            self._datasets.append(dataset)
        return _SUCCESS

    def take(self) -> list[Dataset]:
        with self._lock:
            taken, self._datasets = self._datasets, []
        return taken


@dataclass
class Deadline:
    """The overall time limit of one lookup, checked between its steps."""

    clock: Callable[[], float]
    limit_s: float
    start: float = 0.0

    def __post_init__(self) -> None:
        self.start = self.clock()

    def check(self) -> None:
        if self.clock() - self.start > self.limit_s:
            raise QueryFailed(f"no complete answer within {self.limit_s:.0f} s")


@dataclass(frozen=True)
class MoveToNode:
    """Retrieve by C-MOVE instead of C-GET (``priors.retrieve: move``), for a PACS that offers
    no C-GET: the PACS sends the SRs to ``destination_ae_title`` -- the node's own Storage
    SCP, which the PACS knows already because it routes images there -- and the receiver hands
    them to ``inbox`` instead of the series store."""

    destination_ae_title: str
    inbox: RetrievalInbox


class QuerySession:
    """The C-FIND and C-GET (or C-MOVE) requests of one lookup, on one association."""

    def __init__(
        self,
        assoc: Association,
        retrieved: RetrievedInstances,
        timeout_s: float,
        move: MoveToNode | None = None,
    ) -> None:
        self._assoc = assoc
        #: the PACS: the only AE whose C-STOREs a C-MOVE of ours may bring
        self._source_ae_title = str(assoc.acceptor.ae_title)
        self._retrieved = retrieved
        self._timeout_s = timeout_s
        self._move = move
        self._message_id = 0

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 65535 + 1
        return self._message_id

    def _ensure_established(self) -> None:
        if not self._assoc.is_established:
            raise QueryFailed("association ended (aborted or timed out)")

    def _no_answer(self, request: str, sent_at: float) -> QueryFailed:
        """Why a request got no response: pynetdicom reports a DIMSE timeout and an abort by
        the peer alike (an empty status), so the time waited tells them apart. Orthanc, for
        one, accepts an association from an AE it does not know and aborts at the C-FIND."""
        waited = time.monotonic() - sent_at
        if waited < 0.9 * self._timeout_s:
            return QueryFailed(f"association aborted by the PACS at the {request}")
        return QueryFailed(f"no {request} response within {self._timeout_s:.0f} s")

    def check_contexts(self) -> None:
        """Fail at once, with a reason an administrator can act on, when the PACS did not
        accept what the lookup needs (rather than "none" for a patient who has results)."""
        accepted = {str(cx.abstract_syntax): cx for cx in self._assoc.accepted_contexts}
        if str(StudyRootQueryRetrieveInformationModelFind) not in accepted:
            raise QueryFailed("Study Root C-FIND not accepted (allow queries from the node)")
        if self._move is not None:
            if str(StudyRootQueryRetrieveInformationModelMove) not in accepted:
                raise QueryFailed("Study Root C-MOVE not accepted (allow retrieval by the node)")
            return
        if str(StudyRootQueryRetrieveInformationModelGet) not in accepted:
            raise QueryFailed("Study Root C-GET not accepted (allow retrieval by the node)")
        store = accepted.get(str(Comprehensive3DSRStorage))
        if store is None or not store.as_scp:
            raise QueryFailed("C-STORE of SRs back to the node (SCP role) not accepted")

    def _responses(
        self,
        request: str,
        responses: Iterator[tuple[Dataset, Dataset | None]],
        *,
        warning_ends_well: bool = False,
    ) -> Iterator[tuple[Dataset, Dataset | None]]:
        """The responses of one request, raising QueryFailed for no answer (timeout or abort)
        and for a final status other than Success (or, for a retrieval, Warning)."""
        sent_at = time.monotonic()
        for status, identifier in responses:
            code = status.get("Status")
            if code is None:
                raise self._no_answer(request, sent_at)
            ends_well = code == _SUCCESS or (warning_ends_well and code == _RETRIEVE_WARNING)
            if code not in _PENDING and not ends_well:
                raise QueryFailed(f"{request} answered 0x{code:04X}")
            yield status, identifier

    def _find(self, identifier: Dataset) -> list[Dataset]:
        self._ensure_established()
        responses = self._assoc.send_c_find(
            identifier,
            StudyRootQueryRetrieveInformationModelFind,
            msg_id=self._next_message_id(),
        )
        request = f"{identifier.QueryRetrieveLevel} C-FIND"
        return [
            answer
            for status, answer in self._responses(request, responses)
            if status.Status in _PENDING and answer is not None
        ]

    def find_studies(self, patient_id: str) -> list[StudyAnswer]:
        """The patient's studies. Answers naming another patient (a PACS that treats ``*``
        or ``?`` in the ID as wildcards, or ignores the key) are dropped."""
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.PatientID = patient_id
        query.StudyInstanceUID = ""
        query.StudyDate = ""
        studies = []
        for answer in self._find(query):
            answered_id = str(answer.get("PatientID", "") or "").strip()
            if answered_id and answered_id != patient_id:
                continue
            studies.append(
                StudyAnswer(
                    study_instance_uid=str(answer.get("StudyInstanceUID", "") or ""),
                    study_date=str(answer.get("StudyDate", "") or ""),
                )
            )
        return studies

    def find_result_series(self, study: StudyAnswer) -> list[str]:
        """SeriesInstanceUIDs of our SR series in ``study``, matched again client-side,
        newest first (SeriesDate + SeriesTime; a study analysed again holds several, and only
        the newest is normally read)."""
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study.study_instance_uid
        query.SeriesInstanceUID = ""
        query.Modality = "SR"
        query.SeriesDescription = SR_SERIES_DESCRIPTION
        query.SeriesDate = ""
        query.SeriesTime = ""
        series: list[tuple[str, str]] = []
        for answer in self._find(query):
            uid = str(answer.get("SeriesInstanceUID", "") or "")
            modality = str(answer.get("Modality", "") or "").strip()
            description = str(answer.get("SeriesDescription", "") or "").strip()
            if uid and modality == "SR" and description == SR_SERIES_DESCRIPTION:
                made = f"{answer.get('SeriesDate', '') or ''}{answer.get('SeriesTime', '') or ''}"
                series.append((made, uid))
        return [uid for _, uid in sorted(series, reverse=True)]

    def retrieve(self, study: StudyAnswer, series_uid: str) -> list[Dataset]:
        """C-GET (or C-MOVE to the node) one series; the instances that came back."""
        self._ensure_established()
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study.study_instance_uid
        query.SeriesInstanceUID = series_uid
        if self._move is None:
            self._retrieved.take()  # nothing unasked-for is attributed to this series
            get = self._assoc.send_c_get(
                query, StudyRootQueryRetrieveInformationModelGet, msg_id=self._next_message_id()
            )
            self._await_retrieval("C-GET", get)
            return self._retrieved.take()
        with self._move.inbox.expecting(series_uid, self._source_ae_title) as received:
            move = self._assoc.send_c_move(
                query,
                self._move.destination_ae_title,
                StudyRootQueryRetrieveInformationModelMove,
                msg_id=self._next_message_id(),
            )
            # The final response comes after the last sub-operation, which the node's own
            # receiver has answered (and the inbox kept) by then.
            final = self._await_retrieval("C-MOVE", move)
            arrived = received()
        moved = int(final.get("NumberOfCompletedSuboperations", 0) or 0)
        if moved and not arrived:
            raise QueryFailed(
                f"C-MOVE reported {moved} instance(s) sent, none arrived from "
                f"{self._source_ae_title} (does the PACS store with another AE title?)"
            )
        return arrived

    def _await_retrieval(
        self, request: str, responses: Iterator[tuple[Dataset, Dataset | None]]
    ) -> Dataset:
        """Wait for the final response (returned); raise QueryFailed unless it is Success or
        Warning (some sub-operations failed: what arrived is used, and logged)."""
        final = Dataset()
        for final, _ in self._responses(request, responses, warning_ends_well=True):
            if final.Status == _RETRIEVE_WARNING:
                failed = final.get("NumberOfFailedSuboperations", "?")
                LOGGER.warning(
                    "prior lookup: %s of an SR series: %s sub-operation(s) failed", request, failed
                )
        return final


@dataclass
class Outage:
    """A failed lookup: until when the PACS is not asked again, and why."""

    until: float
    why: str


class PriorResultsQuery:
    """Finds the patient's earlier hippo-scp SRs in the PACS: C-FIND (Study Root) for the
    patient's studies, C-FIND for our SR series in each, C-GET of those SRs; one association.
    """

    def __init__(
        self,
        source: Destination,
        *,
        calling_ae_title: str,
        timeout_s: float = 10.0,
        tls_context: ssl.SSLContext | None = None,
        max_studies: int = 20,
        retry_after_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        move: MoveToNode | None = None,
    ) -> None:
        install_event_driven_reactors()  # once per process, as for the sender
        self._move = move
        self._source = source
        self._calling_ae_title = calling_ae_title
        self._timeout_s = timeout_s
        self._tls_context = tls_context
        self._max_studies = max_studies
        self._retry_after_s = retry_after_s
        self._clock = clock
        self._outage: Outage | None = None
        self._lock = threading.Lock()

    @property
    def source(self) -> Destination:
        return self._source

    # ------------------------------------------------------------------ public
    def lookup(self, current: pydicom.Dataset) -> PriorLookup:
        """Earlier results of the patient of ``current`` (one instance of the analysed series).

        Never raises: every failure is a ``failed`` lookup with a one-line reason.
        """
        patient_id = str(current.get("PatientID", "") or "").strip()
        if not patient_id:
            LOGGER.info("prior lookup skipped: %s", NO_PATIENT_ID)
            return PriorLookup("unavailable", reason=NO_PATIENT_ID)
        if parse_dicom_date(current.get("StudyDate")) is None:
            LOGGER.info("prior lookup skipped: %s", NO_STUDY_DATE)
            return PriorLookup("unavailable", reason=NO_STUDY_DATE)
        if self._source.tls and self._tls_context is None:
            # A configuration error, not an outage: said every time, no window.
            reason = f"{self._source}: needs TLS but no tls section is configured"
            LOGGER.warning("prior lookup failed: %s", reason)
            return PriorLookup("failed", reason=reason)
        blocked = self._outage_reason()
        if blocked:
            LOGGER.debug("prior lookup not attempted: %s", blocked)
            return PriorLookup("failed", reason=blocked)
        try:
            PATIENT_GUARD.remember(current)  # the node saw it already; a second line of defence
            lookup = self._lookup(patient_id, current)
        except QueryFailed as error:
            return self._failed(str(error))
        except Exception as error:  # the analysis worker must never crash on a lookup
            LOGGER.debug("prior lookup: unexpected error", exc_info=True)
            return self._failed(f"unexpected {type(error).__name__}")
        with self._lock:
            self._outage = None
        return lookup

    # ------------------------------------------------------------------ outage window
    def _outage_reason(self) -> str:
        """The reason to return at once while a recent failure's window lasts, else ""."""
        with self._lock:
            outage = self._outage
        if outage is None:
            return ""
        remaining = outage.until - self._clock()
        if remaining <= 0:
            return ""
        return (
            f"{self._source}: not asked again until the outage window ends "
            f"(in {remaining:.0f} s; last failure: {outage.why})"
        )

    def _failed(self, why: str) -> PriorLookup:
        reason = f"{self._source}: {why}"
        LOGGER.warning(
            "prior lookup failed: %s; not asked again for %.0f s", reason, self._retry_after_s
        )
        with self._lock:
            self._outage = Outage(until=self._clock() + self._retry_after_s, why=why)
        return PriorLookup("failed", reason=reason)

    # ------------------------------------------------------------------ the query
    def _lookup(self, patient_id: str, current: Dataset) -> PriorLookup:
        started = time.perf_counter()
        studies, with_results, priors = self._query(patient_id, current)
        LOGGER.info(
            "prior lookup at %s: %d earlier studies, %d with results, %d SR(s) read (%.0f ms)",
            self._source.ae_title,
            len(studies),
            with_results,
            len(priors),
            (time.perf_counter() - started) * 1000,
        )
        if priors:
            return PriorLookup("found", priors=tuple(priors), studies_with_results=with_results)
        return PriorLookup(
            "none", reason=f"no earlier hippo-scp results in {self._source.ae_title}"
        )

    def _query(
        self, patient_id: str, current: Dataset
    ) -> tuple[list[StudyAnswer], int, list[PriorMeasurement]]:
        """The earlier studies, how many hold our results, and the newest readable result
        of the most recent of them.

        Only one SR series is normally retrieved and read: the report compares with the latest
        earlier examination, and reading an SR (highdicom) costs ~0.3 s the worker would
        otherwise spend per earlier examination and per re-analysis. An older series (or
        study) is read only when the newer one is unusable.
        """
        deadline = Deadline(self._clock, DEADLINE_FACTOR * self._timeout_s)
        with self._session() as session:
            deadline.check()
            answers = session.find_studies(patient_id)
            studies = earlier_studies(answers, current, self._max_studies)
            candidates: list[tuple[StudyAnswer, list[str]]] = []
            for study in studies:
                deadline.check()
                series_uids = session.find_result_series(study)
                LOGGER.debug(
                    "prior lookup: study %s (%s): %d result series",
                    study.study_instance_uid,
                    study.study_date or "no date",
                    len(series_uids),
                )
                if series_uids:
                    candidates.append((study, series_uids))
            for study, series_uids in candidates:  # most recent study first
                for series_uid in series_uids:  # its newest result series first
                    deadline.check()
                    retrieved = session.retrieve(study, series_uid)
                    priors = [p for sr in retrieved if (p := self._parse(study, sr, current))]
                    if priors:
                        return studies, len(candidates), priors
        if candidates:
            # Results exist but none could be used: a fault to surface, not "no results".
            raise QueryFailed(
                f"{len(candidates)} earlier stud(ies) hold results, but no SR could be "
                "retrieved and read (see the warnings above)"
            )
        return studies, 0, []

    @staticmethod
    def _parse(study: StudyAnswer, sr: Dataset, current: Dataset) -> PriorMeasurement | None:
        """One retrieved SR as a measurement; None (and a warning) when it cannot be used.

        Same patient = same PatientID and, where both objects carry them, the same
        IssuerOfPatientID and PatientBirthDate (a PACS holding several ID domains may have
        the same ID for two people)."""
        for keyword in ("PatientID", "IssuerOfPatientID", "PatientBirthDate"):
            ours = str(current.get(keyword, "") or "").strip()
            theirs = str(sr.get(keyword, "") or "").strip()
            if (keyword == "PatientID" or (ours and theirs)) and ours != theirs:
                LOGGER.warning("prior lookup: skipped an SR of another patient (%s)", keyword)
                return None
        try:
            return prior_from_sr(sr, study)
        except ValueError as error:
            LOGGER.warning("prior lookup: skipped an SR: %s", error)
            LOGGER.debug("skipped SR %s", sr.get("SOPInstanceUID", "?"))
            return None

    def application_entity(self) -> AE:
        """The AE the lookup associates with (its requested contexts are also what
        docs/generate_conformance.py lists)."""
        ae = AE(ae_title=self._calling_ae_title)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        if self._move is not None:
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        else:
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
            ae.add_requested_context(Comprehensive3DSRStorage, UNCOMPRESSED_TRANSFER_SYNTAXES)
        ae.acse_timeout = self._timeout_s
        ae.dimse_timeout = self._timeout_s
        ae.network_timeout = self._timeout_s
        ae.connection_timeout = self._timeout_s
        ae.maximum_pdu_size = MAX_PDU_BYTES
        return ae

    def _not_established(self, assoc: Association, waited_s: float) -> str:
        """Why the association did not come up, in words an administrator can act on."""
        if assoc.is_rejected:
            return "association rejected (is the node's AE title registered in the PACS?)"
        if waited_s >= 0.9 * self._timeout_s:
            return f"no answer to the association request within {self._timeout_s:.0f} s"
        return "unreachable or connection closed"

    @contextlib.contextmanager
    def _session(self) -> Iterator[QuerySession]:
        """One association to the PACS: released after success, aborted after a failure."""
        source = self._source
        tls_args = (self._tls_context, source.host) if source.tls else None
        retrieved = RetrievedInstances()
        requested_at = time.monotonic()
        try:
            assoc = self.application_entity().associate(
                source.host,
                source.port,
                ae_title=source.ae_title,
                max_pdu=MAX_PDU_BYTES,
                ext_neg=(
                    None if self._move else [build_role(Comprehensive3DSRStorage, scp_role=True)]
                ),
                tls_args=tls_args,
                evt_handlers=[
                    (evt.EVT_CONN_OPEN, disable_nagle),
                    (evt.EVT_C_STORE, retrieved.on_store),
                ],
            )
        except Exception as error:
            raise QueryFailed(f"cannot associate ({type(error).__name__})") from error
        if not assoc.is_established:
            raise QueryFailed(self._not_established(assoc, time.monotonic() - requested_at))
        keep_responses_for_caller(assoc)
        try:
            session = QuerySession(assoc, retrieved, self._timeout_s, self._move)
            session.check_contexts()
            yield session
        except BaseException:
            # Aborted, not released: after a failure the PACS may be gone or may have aborted
            # already (pynetdicom can still report the association as established for a
            # moment), and a release would then wait the whole ACSE timeout for its answer.
            assoc.abort()
            raise
        if assoc.is_established:
            assoc.release()


__all__ = [
    "DEADLINE_FACTOR",
    "MoveToNode",
    "NO_PATIENT_ID",
    "NO_STUDY_DATE",
    "PriorResultsQuery",
    "QueryFailed",
    "StudyAnswer",
    "earlier_studies",
    "prior_from_sr",
]
