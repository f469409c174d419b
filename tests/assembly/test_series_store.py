"""Series store trigger and limit rules, driven by a fake clock (no threads, no network)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from hippo_scp.assembly.series_store import (
    SeriesStore,
    StoreOutcome,
    StoreSettings,
    series_label,
)
from tests.dicom_factory import data_set_bytes

STUDY = "1.2.3"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def header(series: str, sop: str, description: str = "HippoCrop") -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = sop
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.SeriesDescription = description
    return ds


def make_store(clock: FakeClock, **overrides: object) -> SeriesStore:
    """A store with the classic release rule (nothing due during the grace); the tests of
    ``analyze_during_grace`` (provisional jobs) turn it on explicitly."""
    settings = StoreSettings(
        **{
            "settle_seconds": 3.0,
            "release_grace_seconds": 1.0,
            "analyze_during_grace": False,
            "retain_analysed_seconds": 60.0,
            "max_series_bytes": 1000,
            "max_total_bytes": 2000,
            **overrides,
        }
    )
    return SeriesStore(settings, lambda ds: ds.SeriesDescription == "HippoCrop", clock=clock)


def offer(
    store: SeriesStore, assoc: int, series: str, sop: str, data: bytes = b"x" * 100, **kw: str
) -> StoreOutcome:
    return store.offer(
        assoc, header(series, sop, **kw), lambda: data, len(data), "1.2.840.10008.1.2.1"
    )


def test_release_of_whole_series_triggers_after_grace() -> None:
    clock = FakeClock()
    store = make_store(clock)
    for i in range(5):
        assert offer(store, 1, "9.1", f"9.1.{i}") is StoreOutcome.STORED
    assert store.collect_ready() == []  # still open: nothing is due
    clock.advance(10)
    assert store.collect_ready() == []  # open associations never settle
    store.association_released(1)
    assert store.collect_ready() == []  # grace period
    clock.advance(1.0)
    jobs = store.collect_ready()
    assert len(jobs) == 1
    assert jobs[0].trigger == "release"
    assert len(jobs[0].instances) == 5
    assert jobs[0].label == series_label("9.1")
    clock.advance(100)
    assert store.collect_ready() == []  # never twice for the same content


def test_one_instance_per_association_waits_for_settle() -> None:
    clock = FakeClock()
    store = make_store(clock)
    for i in range(6):
        offer(store, 10 + i, "9.2", f"9.2.{i}")
        store.association_released(10 + i)
        clock.advance(0.2)
        assert store.collect_ready() == []
    clock.advance(2.0)
    assert store.collect_ready() == []  # 2.2 s quiet < 3 s settle
    clock.advance(1.0)
    jobs = store.collect_ready()
    assert [len(j.instances) for j in jobs] == [6]
    assert jobs[0].trigger == "settle"


def test_aborted_association_is_discarded_and_retry_is_analysed_once() -> None:
    clock = FakeClock()
    store = make_store(clock)
    offer(store, 1, "9.3", "9.3.1")
    offer(store, 1, "9.3", "9.3.2")
    store.association_aborted(1)
    assert store.total_bytes == 0
    clock.advance(10)
    assert store.collect_ready() == []
    offer(store, 2, "9.3", "9.3.1")
    offer(store, 2, "9.3", "9.3.2")
    store.association_released(2)
    clock.advance(1)
    assert [len(j.instances) for j in store.collect_ready()] == [2]


def test_connection_closed_without_release_counts_as_abort() -> None:
    clock = FakeClock()
    store = make_store(clock)
    offer(store, 1, "9.4", "9.4.1")
    store.association_closed(1)
    assert store.total_bytes == 0 and len(store) == 0
    offer(store, 2, "9.4", "9.4.1")
    store.association_released(2)
    store.association_closed(2)  # after a release: nothing to discard
    clock.advance(3)  # a lone instance: settle rule
    assert len(store.collect_ready()) == 1


def test_not_selected_series_keeps_no_bytes() -> None:
    clock = FakeClock()
    store = make_store(clock)
    for i in range(50):
        assert offer(store, 1, "8.1", f"8.1.{i}", description="T1post") is StoreOutcome.IGNORED
    assert store.total_bytes == 0
    store.association_released(1)
    clock.advance(10)
    assert store.collect_ready() == []


def test_duplicates_are_acknowledged_and_unchanged_resend_is_not_reanalysed() -> None:
    clock = FakeClock()
    store = make_store(clock)
    offer(store, 1, "9.5", "9.5.1")
    assert offer(store, 1, "9.5", "9.5.1") is StoreOutcome.DUPLICATE
    store.association_released(1)
    clock.advance(3)
    assert len(store.collect_ready()) == 1
    # the same series again, unchanged
    assert offer(store, 2, "9.5", "9.5.1") is StoreOutcome.DUPLICATE
    store.association_released(2)
    clock.advance(10)
    assert store.collect_ready() == []
    # a changed series (one more instance) is analysed again, with all instances
    offer(store, 3, "9.5", "9.5.2")
    store.association_released(3)
    clock.advance(1)
    assert store.collect_ready() == []  # not carried whole by one association: settle rule
    clock.advance(2)
    assert [len(j.instances) for j in store.collect_ready()] == [2]


def test_reanalyze_unchanged_when_configured() -> None:
    clock = FakeClock()
    store = make_store(clock, reanalyze_unchanged=True)
    offer(store, 1, "9.6", "9.6.1")
    store.association_released(1)
    clock.advance(3)
    assert len(store.collect_ready()) == 1
    offer(store, 2, "9.6", "9.6.1")
    store.association_released(2)
    clock.advance(3)
    assert len(store.collect_ready()) == 1


def test_series_whose_results_were_lost_is_analysed_again_on_unchanged_resend() -> None:
    """Outbox disk full: the sender's resend of the same content must be analysed again."""
    clock = FakeClock()
    store = make_store(clock)
    offer(store, 1, "9.7", "9.7.1")
    store.association_released(1)
    clock.advance(3)
    (job,) = store.collect_ready()
    store.results_lost(job)
    offer(store, 2, "9.7", "9.7.1")
    store.association_released(2)
    clock.advance(3)
    assert [len(j.instances) for j in store.collect_ready()] == [1]
    # Once analysed successfully, an unchanged resend is ignored again.
    offer(store, 3, "9.7", "9.7.1")
    store.association_released(3)
    clock.advance(3)
    assert store.collect_ready() == []


def test_per_series_limit_refuses_and_never_analyses_partial() -> None:
    clock = FakeClock()
    store = make_store(clock)
    outcomes = [offer(store, 1, "9.7", f"9.7.{i}", data=b"y" * 300) for i in range(5)]
    assert outcomes[:3] == [StoreOutcome.STORED] * 3
    assert outcomes[3:] == [StoreOutcome.OUT_OF_RESOURCES] * 2
    assert store.total_bytes == 0  # the partial series was freed at once
    # another series is unaffected
    assert offer(store, 2, "9.8", "9.8.1") is StoreOutcome.STORED
    store.association_released(1)
    store.association_released(2)
    clock.advance(10)
    jobs = store.collect_ready()
    assert [j.key[1] for j in jobs] == ["9.8"]
    # a retry after the overflow starts clean (and overflows again with the same limit)
    assert offer(store, 3, "9.7", "9.7.0", data=b"y" * 300) is StoreOutcome.STORED


def test_total_limit_evicts_analysed_series_first() -> None:
    clock = FakeClock()
    store = make_store(clock)
    for i in range(3):
        offer(store, 1, "9.9", f"9.9.{i}", data=b"z" * 300)
    store.association_released(1)
    clock.advance(1)
    assert len(store.collect_ready()) == 1  # analysed, still held (900 bytes)
    for i in range(3):
        assert offer(store, 2, "9.10", f"9.10.{i}", data=b"w" * 300) is StoreOutcome.STORED
    # 1800 held; the next needs the analysed series' bytes: it is evicted, not refused
    assert offer(store, 3, "9.11", "9.11.0", data=b"v" * 300) is StoreOutcome.STORED
    assert store.total_bytes == 1200
    # unanalysed series are never evicted: now the total limit refuses
    offer(store, 3, "9.11", "9.11.1", data=b"v" * 300)
    offer(store, 3, "9.11", "9.11.2", data=b"v" * 300)
    assert offer(store, 4, "9.12", "9.12.0", data=b"u" * 300) is StoreOutcome.OUT_OF_RESOURCES


def test_analysed_series_is_evicted_after_retention_and_fingerprint_remembered() -> None:
    clock = FakeClock()
    store = make_store(clock)
    offer(store, 1, "9.13", "9.13.1")
    store.association_released(1)
    clock.advance(3)
    (job,) = store.collect_ready()
    store.mark_analysed(job.key, "fp1")
    clock.advance(61)
    store.collect_ready()
    assert len(store) == 0 and store.total_bytes == 0
    assert store.was_analysed(job.key, "fp1")
    assert not store.was_analysed(job.key, "fp2")


def test_two_concurrent_associations_wait_for_both() -> None:
    clock = FakeClock()
    store = make_store(clock)
    offer(store, 1, "9.14", "9.14.1")
    offer(store, 2, "9.14", "9.14.2")
    store.association_released(1)
    clock.advance(5)
    assert store.collect_ready() == []  # association 2 still holds pending instances
    store.association_released(2)
    clock.advance(2.9)
    assert store.collect_ready() == []
    clock.advance(0.2)
    assert [len(j.instances) for j in store.collect_ready()] == [2]


def test_missing_uids_are_invalid() -> None:
    store = make_store(FakeClock())
    ds = Dataset()
    ds.SOPInstanceUID = "1"
    assert store.offer(1, ds, lambda: b"", 0, "1.2.840.10008.1.2") is StoreOutcome.INVALID


def test_next_deadline_tracks_grace_and_settle() -> None:
    clock = FakeClock()
    store = make_store(clock)
    assert store.next_deadline() is None
    offer(store, 1, "9.15", "9.15.1")
    offer(store, 1, "9.15", "9.15.2")
    assert store.next_deadline() is None  # pending: only a release can make it due
    store.association_released(1)
    assert store.next_deadline() == clock.now + 1.0
    offer(store, 2, "9.18", "9.18.1")
    store.association_released(2)  # a lone instance: only the settle window applies
    assert store.next_deadline() == clock.now + 1.0
    clock.advance(1.0)
    store.collect_ready()
    assert store.next_deadline() == clock.now + 2.0


def test_slow_one_instance_per_association_sender_is_never_analysed_piecemeal() -> None:
    clock = FakeClock()
    store = make_store(clock)
    for i in range(5):  # gaps longer than the grace, shorter than the settle window
        offer(store, 20 + i, "9.16", f"9.16.{i}")
        store.association_released(20 + i)
        clock.advance(2.0)
        assert store.collect_ready() == []
    clock.advance(1.0)
    assert [len(j.instances) for j in store.collect_ready()] == [5]


def test_single_multiframe_instance_counts_as_whole_series() -> None:
    clock = FakeClock()
    store = make_store(clock)
    ds = header("9.17", "9.17.1")
    ds.NumberOfFrames = 40
    store.offer(1, ds, lambda: b"m" * 100, 100, "1.2.840.10008.1.2.1")
    store.association_released(1)
    clock.advance(1.0)
    assert [j.trigger for j in store.collect_ready()] == ["release"]


# ---------------------------------------------------------------- analysis during the grace
def released_series(clock: FakeClock, series: str, count: int = 4) -> SeriesStore:
    store = make_store(clock, analyze_during_grace=True)
    for i in range(count):
        offer(store, 1, series, f"{series}.{i}")
    store.association_released(1)
    return store


def test_released_series_is_dispatched_at_once_and_confirmed_when_the_grace_ends() -> None:
    clock = FakeClock()
    store = released_series(clock, "9.30")
    assert store.next_deadline() == clock.now  # due now, not after the grace
    (job,) = store.collect_ready()
    assert job.trigger == "release" and job.confirm_at == clock.now + 1.0
    clock.advance(1.0)  # the analysis took as long as the grace
    assert store.confirm_release(job) is True
    clock.advance(100)
    assert store.collect_ready() == []  # never twice for the same content


def test_delivery_during_the_grace_drops_the_provisional_job_and_waits_for_settle() -> None:
    clock = FakeClock()
    store = released_series(clock, "9.31")
    (job,) = store.collect_ready()
    clock.advance(0.5)
    offer(store, 2, "9.31", "9.31.9")  # the sender spreads the series over associations
    assert store.confirm_release(job) is False  # at once: no need to wait out the grace
    store.association_released(2)
    clock.advance(2.9)
    assert store.collect_ready() == []  # settle window not over
    clock.advance(0.1)
    (again,) = store.collect_ready()
    assert (again.trigger, len(again.instances), again.confirm_at) == ("settle", 5, None)
    assert store.confirm_release(again) is True


def test_duplicate_only_delivery_during_the_grace_still_gets_the_series_analysed() -> None:
    """Dropping the provisional job must not lose the series when the later association
    only repeats instances (content unchanged, so no new version would make it due)."""
    clock = FakeClock()
    store = released_series(clock, "9.32", count=3)
    (job,) = store.collect_ready()
    offer(store, 2, "9.32", "9.32.0")  # same bytes as before
    store.association_released(2)
    assert store.confirm_release(job) is False
    clock.advance(3.0)
    assert [len(j.instances) for j in store.collect_ready()] == [3]


def test_confirmation_is_refused_for_a_series_that_was_evicted_and_recreated() -> None:
    clock = FakeClock()
    store = released_series(clock, "9.33")
    (job,) = store.collect_ready()
    clock.advance(1.0)
    stale = type(job)(**{f: getattr(job, f) for f in job.__slots__})
    stale.generation = job.generation + 1000
    assert store.confirm_release(stale) is False
    assert store.confirm_release(job) is True


def test_hurry_confirms_before_the_grace_ends() -> None:
    """Node shutdown: the association was released, so the series is complete."""
    clock = FakeClock()
    store = released_series(clock, "9.34")
    (job,) = store.collect_ready()
    assert store.confirm_release(job, hurry=lambda: True) is True


def test_provisional_series_is_not_evicted_for_memory() -> None:
    clock = FakeClock()
    store = make_store(clock, analyze_during_grace=True, max_series_bytes=1500)
    for i in range(10):  # 1000 of the 2000 bytes
        offer(store, 1, "9.35", f"9.35.{i}")
    store.association_released(1)
    (job,) = store.collect_ready()
    for i in range(10):  # another series needs the rest and more
        assert offer(store, 3, "9.36", f"9.36.{i}") is StoreOutcome.STORED
    assert offer(store, 3, "9.36", "9.36.10") is StoreOutcome.OUT_OF_RESOURCES
    clock.advance(1.0)
    assert store.confirm_release(job) is True  # evicted, it would be refused


def test_classic_grace_when_analysis_during_grace_is_off() -> None:
    clock = FakeClock()
    store = make_store(clock)  # analyze_during_grace False
    offer(store, 1, "9.37", "9.37.0")
    offer(store, 1, "9.37", "9.37.1")
    store.association_released(1)
    assert store.collect_ready() == []
    clock.advance(1.0)
    (job,) = store.collect_ready()
    assert job.confirm_at is None and store.confirm_release(job) is True


# ---------------------------------------------------------------- whole-series senders
def test_whole_series_sender_release_is_due_at_once_without_a_grace() -> None:
    """A sender listed in triggers.whole_series_senders (Orthanc routing stable series):
    its release ends the series, so the job is final at once, not provisional."""
    for during_grace in (False, True):
        clock = FakeClock()
        store = make_store(
            clock, analyze_during_grace=during_grace, whole_series_senders=frozenset({"ORTHANC"})
        )
        for i in range(4):
            offer(store, 1, "9.40", f"9.40.{i}")
        store.association_released(1, calling_ae_title="ORTHANC ")  # padded as on the wire
        assert store.next_deadline() == clock.now
        (job,) = store.collect_ready()
        assert (job.trigger, job.confirm_at, len(job.instances)) == (
            "whole-series release",
            None,
            4,
        )
        assert store.confirm_release(job) is True


def test_other_senders_keep_the_grace_when_some_sender_is_trusted() -> None:
    clock = FakeClock()
    store = make_store(clock, whole_series_senders=frozenset({"ORTHANC"}))
    for i in range(4):
        offer(store, 1, "9.41", f"9.41.{i}")
    store.association_released(1, calling_ae_title="MODALITY1")
    assert store.collect_ready() == []  # grace period
    clock.advance(1.0)
    assert [j.trigger for j in store.collect_ready()] == ["release"]


def test_whole_series_sender_that_splits_a_series_falls_back_to_settle() -> None:
    """Trust ends where the evidence contradicts it: a second association adding to a series
    the trusted sender released makes it a multi-association series (settle rule)."""
    clock = FakeClock()
    store = make_store(clock, whole_series_senders=frozenset({"ORTHANC"}))
    offer(store, 1, "9.42", "9.42.0")
    offer(store, 1, "9.42", "9.42.1")
    store.association_released(1, calling_ae_title="ORTHANC")
    (first,) = store.collect_ready()  # analysed at once: that is the trust
    offer(store, 2, "9.42", "9.42.2")
    store.association_released(2, calling_ae_title="ORTHANC")
    assert store.collect_ready() == []  # not a whole series: waits for quiet
    clock.advance(3.0)
    (again,) = store.collect_ready()
    assert (again.trigger, len(again.instances)) == ("settle", 3)


# ---------------------------------------------------------------- short headers
def _short(ds: Dataset) -> Dataset:
    """What the receiver parses for a C-STORE: elements up to the Series Instance UID."""
    short = Dataset()
    for element in ds:
        if element.tag <= 0x0020000E:
            short.add(element)
    return short


def offer_short(store: SeriesStore, assoc: int, ds: Dataset, calls: list[str]) -> StoreOutcome:
    data = data_set_bytes(ds)

    def full() -> Dataset:
        calls.append(str(ds.SOPInstanceUID))
        return ds

    return store.offer(
        assoc, _short(ds), lambda: data, len(data), "1.2.840.10008.1.2.1", full_header=full
    )


def test_full_header_is_parsed_for_the_first_instance_of_a_series_only() -> None:
    """Selection rules may name any attribute (here Rows, group 0028, beyond the short
    header): the first instance decides with the whole header, later ones skip it."""
    clock = FakeClock()
    settings = StoreSettings(max_series_bytes=10**6, max_total_bytes=10**7)
    store = SeriesStore(settings, lambda ds: ds.get("Rows") == 35, clock=clock)
    calls: list[str] = []
    for i in range(3):
        ds = header("9.50", f"9.50.{i}")
        ds.Rows = 35
        assert offer_short(store, 1, ds, calls) is StoreOutcome.STORED
    other = header("9.51", "9.51.0")
    other.Rows = 512
    assert offer_short(store, 1, other, calls) is StoreOutcome.IGNORED
    assert offer_short(store, 1, header("9.51", "9.51.1"), calls) is StoreOutcome.IGNORED
    assert calls == ["9.50.0", "9.51.0"]


def test_lone_multiframe_instance_counts_as_whole_series_from_a_short_header() -> None:
    """A series' second instance comes with a short header (no NumberOfFrames); when it is
    all that is left to release, its frame count is read from its bytes."""
    clock = FakeClock()
    store = make_store(clock, max_series_bytes=10**6, max_total_bytes=10**7)
    calls: list[str] = []
    first = header("9.52", "9.52.0")
    first.NumberOfFrames = 40
    offer_short(store, 1, first, calls)
    second = header("9.52", "9.52.1")
    second.NumberOfFrames = 40
    offer_short(store, 2, second, calls)
    store.association_aborted(1)  # only the second association's instance remains
    store.association_released(2)
    clock.advance(1.0)
    assert [(j.trigger, len(j.instances)) for j in store.collect_ready()] == [("release", 1)]
    assert calls == ["9.52.0"]
