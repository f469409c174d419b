"""PriorResultsQuery against a real Orthanc (deploy_scripts/start_orthanc.sh, free ports).

The SRs in the PACS are real: the project's pipeline (the network_weights model) analyses
Study1's HippoCrop series twice, once as it is (the "current" examination) and once re-labelled
as an examination a year earlier. Copies of the earlier SR, re-labelled again, stand for what
must be ignored: an SR series with another description, a study dated after the current one,
and an SR with one volume missing in the most recent earlier study (so the lookup must fall
back to the study before it); the prior study also holds an older SR series (an earlier
analysis by other weights), which must not be read. The lookup runs as the node does it:
calling AE title HIPPOAI, the ``hippoai`` modality that orthanc.json.template allows to C-FIND
and C-GET.
"""

from __future__ import annotations

import copy
import io
import logging
import socket
import socketserver
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from benchmarks.study_factory import as_new_study
from hippo_scp.assembly.series_store import SeriesStore, StoreSettings
from hippo_scp.config import Destination, NodeConfig
from hippo_scp.network.prior_query import (
    NO_PATIENT_ID,
    NO_STUDY_DATE,
    MoveToNode,
    PriorResultsQuery,
    StudyAnswer,
    earlier_studies,
    prior_from_sr,
)
from hippo_scp.network.receiver import StorageReceiver
from hippo_scp.network.retrieval_inbox import RetrievalInbox
from hippo_scp.outputs.identity import SR_SERIES_DESCRIPTION, model_version_of
from hippo_scp.outputs.sr import read_volumes
from hippo_scp.pipeline.prior_comparison import parse_dicom_date
from tests.deploy.conftest import Stack, free_port, require_orthanc

CROP_FOLDER = Path("TestVolumes") / "Study1" / "13_HCropVolume"
PRIOR_DATE = "20190119"  # Study1 is dated 20200119: one year earlier
OLDER_DATE = "20180119"
UNREADABLE_DATE = "20190719"  # between the prior and the current examination
LATER_DATE = "20210119"
OTHER_PATIENT_ID = "PGBM-NO-RESULTS"
UNREADABLE_PATIENT_ID = "PGBM-UNREADABLE-RESULT"


@dataclass
class PacsWithResults:
    """A running Orthanc holding the SRs, and what the tests compare the lookups with."""

    stack: Stack
    source: Destination
    calling_ae_title: str
    #: one instance of the series being analysed (Study1 HippoCrop as it is)
    current: Dataset
    #: the SR of the earlier examination, as stored
    prior_sr: Dataset
    #: a header of the patient who has studies in the PACS but no results
    other_patient: Dataset
    #: a header of a patient whose only earlier result is an unreadable SR
    unreadable_patient: Dataset

    def query(self, **kwargs) -> PriorResultsQuery:
        return PriorResultsQuery(
            self.source, calling_ae_title=self.calling_ae_title, timeout_s=10.0, **kwargs
        )


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def without_whole_volume(sr: Dataset) -> Dataset:
    """``sr`` with its last measurement group (the whole hippocampus) removed."""
    broken = copy.deepcopy(sr)
    for item in broken.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Imaging Measurements":
            del item.ContentSequence[-1]
    return broken


def store(stack: Stack, ds: Dataset) -> None:
    """POST one instance to Orthanc's REST API."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    request = urllib.request.Request(
        stack.orthanc_url + "/instances", data=buffer.getvalue(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200


@pytest.fixture(scope="module")
def pacs(
    tmp_path_factory: pytest.TempPathFactory, data_dir: Path, network_weights: Path
) -> Iterator[PacsWithResults]:
    require_orthanc()
    from hippo_scp.model.inference import Segmenter
    from hippo_scp.pipeline.analysis import SeriesAnalyzer

    series = [pydicom.dcmread(p) for p in sorted((data_dir / CROP_FOLDER).glob("*.dcm"))]
    analyzer = SeriesAnalyzer(Segmenter(weights_path=network_weights, num_threads=1))
    current_sr = analyzer.analyze(series).sr
    prior_sr = analyzer.analyze(as_new_study(series, StudyDate=PRIOR_DATE)).sr
    ignored = [
        *as_new_study([prior_sr], StudyDate=OLDER_DATE, SeriesDescription="Other vendor SR"),
        *as_new_study([prior_sr], StudyDate=LATER_DATE),
        *as_new_study([without_whole_volume(prior_sr)], StudyDate=UNREADABLE_DATE),
    ]
    other_patient = as_new_study(series[:1], StudyDate=PRIOR_DATE, PatientID=OTHER_PATIENT_ID)
    unreadable = as_new_study(
        [without_whole_volume(prior_sr)], StudyDate=PRIOR_DATE, PatientID=UNREADABLE_PATIENT_ID
    )
    # the prior study analysed once before, by other weights: an older SR series of the study
    superseded = copy.deepcopy(prior_sr)
    superseded.SeriesInstanceUID = generate_uid()
    superseded.SOPInstanceUID = superseded.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    superseded.SeriesDate, superseded.SeriesTime = PRIOR_DATE, "120000"
    superseded.SoftwareVersions = ["hippo-scp 0.0.9", "model superseded-weights"]

    stack = Stack.create(
        tmp_path_factory.mktemp("prior_query") / "run", routing="none", route_series=""
    )
    stack.env["ORTHANC_ALLOW_MOVE"] = "true"  # for the C-MOVE retrieval test
    try:
        stack.start("--no-node", "--no-ohif", timeout=120)
        for ds in (current_sr, prior_sr, superseded, *ignored, *other_patient, *unreadable):
            store(stack, ds)
        source = Destination(
            ae_title=stack.env.get("ORTHANC_AET", "ORTHANC"),
            host="127.0.0.1",
            port=int(stack.env["ORTHANC_DICOM_PORT"]),
        )
        later_header = as_new_study(other_patient, StudyDate=LATER_DATE)[0]
        yield PacsWithResults(
            stack=stack,
            source=source,
            calling_ae_title=stack.env.get("HIPPO_AET", "HIPPOAI"),
            current=series[0],
            prior_sr=prior_sr,
            other_patient=later_header,
            unreadable_patient=as_new_study(
                series[:1], StudyDate=LATER_DATE, PatientID=UNREADABLE_PATIENT_ID
            )[0],
        )
    finally:
        stack.stop()


# ----------------------------------------------------------------------------- against Orthanc
def test_finds_the_earlier_sr_and_ignores_the_rest(
    pacs: PacsWithResults, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pynetdicom")  # as configure_logging sets it
    caplog.set_level(logging.INFO)  # last: set_level also sets the capture handler's level

    lookup = pacs.query().lookup(pacs.current)

    assert lookup.status == "found", lookup.reason
    assert lookup.studies_with_results == 2  # the unreadable one and the prior
    (prior,) = lookup.priors  # not the current study, the later one, nor the other SRs
    expected = read_volumes(pacs.prior_sr)
    assert prior.study_instance_uid == pacs.prior_sr.StudyInstanceUID
    assert prior.study_date == parse_dicom_date(PRIOR_DATE)
    assert prior.anterior_mm3 == expected["Anterior hippocampus"]
    assert prior.posterior_mm3 == expected["Posterior hippocampus"]
    assert prior.total_mm3 == expected["Hippocampus"]
    # the newest SR series of the study, not the superseded one (which is never read)
    assert prior.model_version == model_version_of(pacs.prior_sr) != ""
    assert prior.content_datetime == f"{pacs.prior_sr.ContentDate}{pacs.prior_sr.ContentTime}"

    messages = [r.getMessage() for r in caplog.records]
    summary = (
        f"prior lookup at {pacs.source.ae_title}: 3 earlier studies, 2 with results, 1 SR(s) read"
    )
    assert summary in "\n".join(messages)
    assert any("skipped an SR: no volume for Hippocampus" in m for m in messages), messages
    identifiers = (str(pacs.current.PatientID), *str(pacs.current.PatientName).split("^"))
    for record in caplog.records:
        if record.levelno >= logging.INFO:
            assert not any(i in record.getMessage() for i in identifiers), record.getMessage()


def test_retrieval_by_c_move_to_the_nodes_own_receiver(pacs: PacsWithResults) -> None:
    """priors.retrieve: move -- Orthanc C-STOREs the SR to the node's Storage SCP (the
    ``hippoai`` modality it routes images to); the receiver hands it to the waiting lookup,
    never to the series store, and the lookup finds the same prior as by C-GET."""
    config = NodeConfig.model_validate(
        {"node": {"ae_title": pacs.calling_ae_title, "bind_address": "127.0.0.1",
                  "port": int(pacs.stack.env["HIPPO_PORT"])}}
    )  # fmt: skip
    offered: list[Dataset] = []
    store = SeriesStore(StoreSettings.from_config(config), lambda ds: offered.append(ds) or True)
    inbox = RetrievalInbox()
    receiver = StorageReceiver(config, store, inbox=inbox)
    receiver.start()
    try:
        move = MoveToNode(pacs.calling_ae_title, inbox)
        by_move = pacs.query(move=move).lookup(pacs.current)
        by_get = pacs.query().lookup(pacs.current)
    finally:
        receiver.shutdown()
    assert by_move.status == "found", by_move.reason
    assert by_move.priors == by_get.priors
    assert offered == [] and len(store) == 0  # nothing reached the series store


class OtherSenderInbox(RetrievalInbox):
    """As if the PACS stored its C-MOVE sub-operations under another calling AE title."""

    def claim(self, series_uid: str, **kwargs) -> bool:
        return super().claim(series_uid, **{**kwargs, "calling_ae_title": "ORTHANC-OUT"})


def test_c_move_whose_instances_come_from_another_ae_fails_clearly(
    pacs: PacsWithResults,
) -> None:
    """Not a silent "no earlier result": the PACS said it moved the SR, none was claimed."""
    config = NodeConfig.model_validate(
        {"node": {"ae_title": pacs.calling_ae_title, "bind_address": "127.0.0.1",
                  "port": int(pacs.stack.env["HIPPO_PORT"])}}
    )  # fmt: skip
    store = SeriesStore(StoreSettings.from_config(config), lambda ds: False)
    inbox = OtherSenderInbox()
    receiver = StorageReceiver(config, store, inbox=inbox)
    receiver.start()
    try:
        lookup = pacs.query(move=MoveToNode(pacs.calling_ae_title, inbox)).lookup(pacs.current)
    finally:
        receiver.shutdown()
    assert lookup.status == "failed"
    assert "none arrived from" in lookup.reason and "another AE title" in lookup.reason


def test_results_that_cannot_be_read_are_a_failure_not_none(pacs: PacsWithResults) -> None:
    """An administrator must see it (status counts failures), not a silent "no results"."""
    lookup = pacs.query().lookup(pacs.unreadable_patient)
    assert lookup.status == "failed"
    assert "1 earlier stud(ies) hold results, but no SR could be" in lookup.reason


def test_an_sr_of_another_person_with_the_same_id_is_skipped(pacs: PacsWithResults) -> None:
    """Same PatientID, different birth date (another ID domain): not this patient's prior."""
    header = copy.deepcopy(pacs.current)
    header.PatientBirthDate = "19000101"
    prior_sr = copy.deepcopy(pacs.prior_sr)
    prior_sr.PatientBirthDate = "19500505"
    study = StudyAnswer(str(prior_sr.StudyInstanceUID), PRIOR_DATE)
    assert PriorResultsQuery._parse(study, prior_sr, header) is None
    prior_sr.PatientBirthDate = "19000101"
    assert PriorResultsQuery._parse(study, prior_sr, header) is not None
    del prior_sr.PatientBirthDate  # absent on one side: PatientID decides
    assert PriorResultsQuery._parse(study, prior_sr, header) is not None


def test_patient_without_results_gets_none(pacs: PacsWithResults) -> None:
    lookup = pacs.query().lookup(pacs.other_patient)
    assert lookup.status == "none"
    assert lookup.reason == f"no earlier hippo-scp results in {pacs.source.ae_title}"


def test_unknown_patient_gets_none(pacs: PacsWithResults) -> None:
    header = copy.deepcopy(pacs.current)
    header.PatientID = "PGBM-NOT-IN-PACS"
    assert pacs.query().lookup(header).status == "none"


@pytest.mark.parametrize("patient_id", [None, "", "  "])
def test_series_without_patient_id_is_unavailable(
    pacs: PacsWithResults, patient_id: str | None
) -> None:
    header = copy.deepcopy(pacs.current)
    if patient_id is None:
        del header.PatientID
    else:
        header.PatientID = patient_id
    lookup = pacs.query().lookup(header)
    assert (lookup.status, lookup.reason) == ("unavailable", NO_PATIENT_ID)


def test_series_without_study_date_is_unavailable_without_asking() -> None:
    """Nothing can be called earlier than an undated study: the PACS is not even asked (the
    source here is a closed port, which would fail if it were)."""
    header = Dataset()
    header.PatientID, header.StudyInstanceUID, header.StudyDate = "P-1", "1.2.3", ""
    unreachable = Destination(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    lookup = PriorResultsQuery(unreachable, calling_ae_title="HIPPOAI").lookup(header)
    assert (lookup.status, lookup.reason) == ("unavailable", NO_STUDY_DATE)


def test_calling_ae_unknown_to_orthanc_fails(pacs: PacsWithResults) -> None:
    query = PriorResultsQuery(pacs.source, calling_ae_title="STRANGER", timeout_s=5.0)
    started = time.monotonic()
    lookup = query.lookup(pacs.current)
    assert time.monotonic() - started < 2.5  # aborted, not released (no ACSE timeout wait)
    assert lookup.status == "failed"
    assert lookup.reason.startswith(f"{pacs.source}: ")
    # Orthanc 1.10 accepts the association (DicomAlwaysAllowEcho) and aborts at the C-FIND;
    # other PACS reject the association outright.
    assert "aborted by the PACS at the STUDY C-FIND" in lookup.reason or "rejected" in lookup.reason


def test_deadline_bounds_the_whole_lookup(pacs: PacsWithResults) -> None:
    clock = FakeClock()

    def slow_clock() -> float:  # every step seems to take 20 s: past 3 x 10 s at once
        clock.now += 20.0
        return clock.now

    lookup = pacs.query(clock=slow_clock).lookup(pacs.current)
    assert lookup.status == "failed"
    assert "no complete answer within 30 s" in lookup.reason


# ----------------------------------------------------------------------------- failures
class CountingHangUp(socketserver.TCPServer):
    """Accepts TCP connections and closes them at once (a PACS that drops associations),
    counting them: how the tests see whether a lookup went to the network."""

    allow_reuse_address = True

    def __init__(self) -> None:
        self.connections = 0
        super().__init__(("127.0.0.1", 0), socketserver.BaseRequestHandler)

    def finish_request(self, request: socket.socket, client_address: object) -> None:
        self.connections += 1

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def hang_up() -> Iterator[CountingHangUp]:
    server = CountingHangUp()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_closed_port_fails_quickly_without_raising(pacs: PacsWithResults) -> None:
    source = Destination(ae_title="ORTHANC", host="127.0.0.1", port=free_port())
    query = PriorResultsQuery(source, calling_ae_title="HIPPOAI", timeout_s=5.0)
    started = time.monotonic()
    lookup = query.lookup(pacs.current)
    assert time.monotonic() - started < 5.0
    assert lookup.status == "failed"
    assert lookup.reason.startswith(f"ORTHANC@127.0.0.1:{source.port}: ")


def test_outage_window_answers_failed_without_asking(
    pacs: PacsWithResults, hang_up: CountingHangUp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pynetdicom")
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    source = Destination(ae_title="ORTHANC", host="127.0.0.1", port=hang_up.port)
    query = PriorResultsQuery(
        source, calling_ae_title="HIPPOAI", timeout_s=5.0, retry_after_s=60.0, clock=clock
    )

    first = query.lookup(pacs.current)
    assert first.status == "failed"
    assert hang_up.connections == 1
    assert any(r.levelno == logging.WARNING for r in caplog.records)

    clock.now += 59.0
    started = time.monotonic()
    second = query.lookup(pacs.current)
    assert time.monotonic() - started < 0.05
    assert second.status == "failed"
    assert "not asked again until the outage window ends" in second.reason
    assert hang_up.connections == 1

    clock.now += 2.0  # the window is over: asked again
    assert query.lookup(pacs.current).status == "failed"
    assert hang_up.connections == 2

    for record in caplog.records:
        assert str(pacs.current.PatientID) not in record.getMessage()


def test_silent_peer_fails_after_the_timeout(pacs: PacsWithResults) -> None:
    with socket.socket() as silent:  # accepts TCP (backlog) but never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        source = Destination(ae_title="ORTHANC", host="127.0.0.1", port=silent.getsockname()[1])
        query = PriorResultsQuery(source, calling_ae_title="HIPPOAI", timeout_s=0.5)
        started = time.monotonic()
        lookup = query.lookup(pacs.current)
    assert time.monotonic() - started < 2.5
    assert lookup.status == "failed"
    assert "no answer to the association request within" in lookup.reason


def test_tls_source_without_tls_context_fails(pacs: PacsWithResults) -> None:
    source = pacs.source.model_copy(update={"tls": True})
    lookup = PriorResultsQuery(source, calling_ae_title="HIPPOAI").lookup(pacs.current)
    assert lookup.status == "failed"
    assert "needs TLS" in lookup.reason


# ----------------------------------------------------------------------------- pure parts
def test_earlier_studies_excludes_current_and_later_keeps_most_recent() -> None:
    current = Dataset()
    current.StudyInstanceUID = "1.1"
    current.StudyDate = "20200601"
    answers = [
        StudyAnswer("1.1", "20200601"),  # the current study
        StudyAnswer("1.2", "20210101"),  # after it
        StudyAnswer("1.3", "20190101"),
        StudyAnswer("1.4", "20200601"),  # same day, another study: kept
        StudyAnswer("1.5", ""),  # undated: kept, last
        StudyAnswer("1.6", "20150101"),
    ]
    kept = earlier_studies(answers, current, max_studies=3)
    assert [a.study_instance_uid for a in kept] == ["1.4", "1.3", "1.6"]
    assert [a.study_instance_uid for a in earlier_studies(answers, current, 10)][-1] == "1.5"


def test_prior_from_unreadable_sr_raises_value_error_without_patient_data() -> None:
    sr = Dataset()
    sr.PatientID = "PGBM-SECRET"
    with pytest.raises(ValueError) as raised:
        prior_from_sr(sr, StudyAnswer("1.2", "20190101"))
    assert "PGBM-SECRET" not in str(raised.value)


def test_description_constant_is_what_the_sr_carries(pacs: PacsWithResults) -> None:
    assert pacs.prior_sr.SeriesDescription == SR_SERIES_DESCRIPTION
