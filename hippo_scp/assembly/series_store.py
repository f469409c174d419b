"""In-memory series store: files received instances by series and decides when one is complete.

The C-STORE handler calls :meth:`SeriesStore.offer` for every instance and answers the sender
with what it returns; the association handlers call :meth:`association_released` /
:meth:`association_aborted` / :meth:`association_closed`; the analysis worker calls
:meth:`wait_ready` and gets :class:`SeriesJob` objects. Everything is O(1) per instance under one
lock, so the network threads never wait on anything slow (no decoding, no hashing here).

Trigger rules (why they are what they are):

* Instances are *pending* while the association that carried them is open, and *committed*
  when it is released. An aborted association's pending instances are discarded: the sender
  saw a failure and will send them again, so analysing them would risk a partial series.
* On release, a series whose instances *all* came with that association (the usual
  ``storescu +sd`` / PACS-router case) is due after a short grace period
  (``triggers.release_grace_seconds``). The grace catches senders that open one association
  per few instances: if another association delivers to the series within it, the series
  switches to the settle rule instead of being analysed piecemeal. With
  ``triggers.analyze_during_grace`` (the default) the series is handed to the worker at once,
  as a *provisional* job: the analysis runs while the grace runs, and the worker files the
  results only after :meth:`SeriesStore.confirm_release` says the grace ended with the series
  unchanged; otherwise they are discarded and the series waits for the settle window. The
  grace then costs no latency unless the analysis is quicker than it. Calling AE titles listed
  in ``triggers.whole_series_senders`` (a PACS auto-router that sends each *stable* series as
  one job, e.g. the Orthanc of ``deploy_scripts/route_dicoms.lua``) are known not to spread a
  series: their releases skip the grace, and the results are filed as soon as they are made
  (trigger ``whole-series release``). An association that
  carried a single single-frame instance never counts as "the whole series" (one association
  per instance, however slow the sender).
* A series spread over several associations is due once no open association holds pending
  instances of it and it has been quiet for ``triggers.settle_seconds``.
* A series is never dispatched twice for the same content (a version counter here; the
  worker also compares a content fingerprint so a series re-sent after eviction is skipped
  unless ``triggers.reanalyze_unchanged``).
* Series that are not selected are remembered only as a decision (no bytes kept), so a
  512x512 T1 series costs a dictionary entry, not its pixel data.
* Byte limits (``limits``): an instance that would exceed the per-series or the total limit
  is refused (the handler answers 0xA700) and its series is marked *overflowed*: it is
  partial now, so its data is freed and it is never analysed; the entry is forgotten when the
  associations that sent it end, so a retry starts clean. Analysed series kept for
  de-duplication are evicted first when memory is short.
* With the durable spool (:mod:`hippo_scp.assembly.spool`) each entry also knows which spool
  commits back its content (``spool_commits``) and whether all of it is on disk
  (``spool_backed``); the spool asks :meth:`SeriesStore.spool_retire` what it may delete.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import UID

from hippo_scp.assembly.headers import NUMBER_OF_FRAMES, number_of_frames, read_header

LOGGER = logging.getLogger(__name__)

#: (StudyInstanceUID, SeriesInstanceUID)
SeriesKey = tuple[str, str]

_GENERATIONS = itertools.count(1)


def series_label(series_uid: str) -> str:
    """A short, stable, non-identifying name for a series in logs (hash of its UID)."""
    return "s-" + hashlib.sha256(series_uid.encode("ascii", "replace")).hexdigest()[:10]


class StoreOutcome(enum.Enum):
    """What happened to an offered instance; the receiver maps it to a C-STORE status."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance UID and bytes already held: acknowledged
    IGNORED = "ignored"  # series not selected (or the node's own output): acknowledged
    OUT_OF_RESOURCES = "out_of_resources"  # over a byte limit: 0xA700
    INVALID = "invalid"  # missing Study/Series/SOP Instance UID: 0xC000-range failure


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """One received instance, still encoded: decoding is the worker's job, off the network."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    data: bytes  # the data set as received (deflate already undone), without File Meta
    received_at: float
    #: NumberOfFrames (a single multi-frame instance can be a whole series); None: not read
    #: yet (see _instance_frames)
    frames: int | None = 1


def _instance_frames(instance: ReceivedInstance) -> int:
    """NumberOfFrames of a held instance; parsed from its bytes when the receiver did not
    read that far (it stops after the Series Instance UID for series it already knows)."""
    if instance.frames is not None:
        return instance.frames
    try:
        header = read_header(instance.data, UID(instance.transfer_syntax), through=NUMBER_OF_FRAMES)
    except Exception:  # noqa: BLE001 - a header the receiver could parse once; be safe
        return 1
    return number_of_frames(header)


@dataclass(slots=True)
class SeriesJob:
    """A series handed to the analysis worker: an immutable snapshot of its instances."""

    key: SeriesKey
    label: str
    instances: list[ReceivedInstance]
    version: int
    #: "release", "whole-series release" (a whole_series_senders release: no grace),
    #: "settle" or "restart" (recovered from the spool)
    trigger: str
    receive_ms: float  # first instance of this content -> last instance
    queued_at: float
    generation: int = 0  # which store entry (an evicted and re-created series is a new one)
    spool_commits: tuple[str, ...] = ()  # spool commits holding these instances
    #: provisional job (analysed during the release grace): its results may be filed only
    #: after ``SeriesStore.confirm_release`` -- the grace ends at this clock time
    confirm_at: float | None = None


@dataclass(slots=True)
class _SeriesEntry:
    key: SeriesKey
    label: str
    committed: dict[str, ReceivedInstance] = field(default_factory=dict)
    #: association id -> {SOP Instance UID: instance} not yet committed
    pending: dict[int, dict[str, ReceivedInstance]] = field(default_factory=dict)
    #: association id -> SOP Instance UIDs it delivered (new or duplicate), while it is open
    delivered: dict[int, set[str]] = field(default_factory=dict)
    nbytes: int = 0
    version: int = 0
    dispatched_version: int = 0
    multi_association: bool = False
    release_due: float | None = None
    overflowed: bool = False
    receive_started: float | None = None
    last_activity: float = 0.0
    last_received: float = 0.0
    generation: int = field(default_factory=lambda: next(_GENERATIONS))
    #: spool commits holding the committed instances (durable spool only)
    spool_commits: list[str] = field(default_factory=list)
    #: False once an analysed series' spool copy is deleted while it is still held here
    spool_backed: bool = True
    restored: bool = False
    refusal: str = "it exceeded a memory limit"
    #: the last analysis produced results that could not be stored (e.g. outbox disk full):
    #: a resend of the same content must be analysed again
    rearm_on_resend: bool = False
    #: a provisional job is out (dispatched during the release grace): the dispatched_version
    #: to restore if another association delivers before the grace ends
    provisional_previous: int | None = None
    #: released by a calling AE title of ``whole_series_senders``: due at once, no grace
    whole_series_release: bool = False

    def has_pending(self) -> bool:
        return any(self.pending.values())


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """The trigger and limit settings the store needs (a subset of ``NodeConfig``)."""

    settle_seconds: float = 3.0
    release_grace_seconds: float = 1.0
    analyze_on_release: bool = True
    analyze_during_grace: bool = True
    reanalyze_unchanged: bool = False
    retain_analysed_seconds: float = 300.0
    max_series_bytes: int = 512 * 1024**2
    max_total_bytes: int = 2 * 1024**3
    max_remembered_series: int = 10_000
    #: calling AE titles whose release is known to end a whole series (no release grace)
    whole_series_senders: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, config: object) -> StoreSettings:
        """Build from a :class:`hippo_scp.config.NodeConfig` (typed loosely to avoid a cycle)."""
        triggers = config.triggers  # type: ignore[attr-defined]
        limits = config.limits  # type: ignore[attr-defined]
        return cls(
            settle_seconds=triggers.settle_seconds,
            release_grace_seconds=triggers.release_grace_seconds,
            analyze_on_release=triggers.analyze_on_release,
            analyze_during_grace=triggers.analyze_during_grace,
            reanalyze_unchanged=triggers.reanalyze_unchanged,
            retain_analysed_seconds=triggers.retain_analysed_seconds,
            max_series_bytes=limits.max_series_bytes,
            max_total_bytes=limits.max_total_bytes,
            whole_series_senders=frozenset(triggers.whole_series_senders),
        )


#: Decides from a series' first instance whether it is analysed (selection + own-output check).
DecideFn = Callable[[Dataset], bool]


class SeriesStore:
    """Thread-safe store of received series with the trigger rules described in the module."""

    def __init__(
        self,
        settings: StoreSettings,
        decide: DecideFn,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._decide = decide
        self._clock = clock
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._entries: dict[SeriesKey, _SeriesEntry] = {}
        #: series not analysed (decision remembered, no data), LRU-bounded
        self._ignored: OrderedDict[SeriesKey, None] = OrderedDict()
        #: association id -> series it has pending instances or deliveries in
        self._associations: dict[int, set[SeriesKey]] = {}
        #: series key -> content fingerprints already analysed (survives eviction), LRU-bounded
        self._analysed: OrderedDict[SeriesKey, set[str]] = OrderedDict()
        self._total_bytes = 0
        self._grace = min(settings.release_grace_seconds, settings.settle_seconds)

    # ------------------------------------------------------------------ network side
    def offer(
        self,
        association_id: int,
        header: Dataset,
        payload: Callable[[], bytes],
        payload_size: int,
        transfer_syntax: str,
        full_header: Callable[[], Dataset] | None = None,
    ) -> StoreOutcome:
        """File one instance; O(1). ``payload`` is only called when the bytes are kept.

        ``header`` is the instance parsed up to (not including) Pixel Data, or -- with
        ``full_header`` -- only far enough for the UIDs: ``full_header()`` then parses the
        rest, and is called for the first instance of a series only (selection decision).
        """
        study_uid = str(header.get("StudyInstanceUID", "") or "")
        series_uid = str(header.get("SeriesInstanceUID", "") or "")
        sop_uid = str(header.get("SOPInstanceUID", "") or "")
        if not (study_uid and series_uid and sop_uid):
            return StoreOutcome.INVALID
        key = (study_uid, series_uid)
        now = self._clock()
        with self._lock:
            if key in self._ignored:
                self._ignored.move_to_end(key)
                return StoreOutcome.IGNORED
            entry = self._entries.get(key)
            frames: int | None = None if full_header is not None else number_of_frames(header)
            if entry is None:
                # Decide on the first instance; decide() only reads header attributes.
                if full_header is not None:
                    header = full_header()
                    frames = number_of_frames(header)
                if not self._decide(header):
                    self._ignored[key] = None
                    while len(self._ignored) > self._settings.max_remembered_series:
                        self._ignored.popitem(last=False)
                    return StoreOutcome.IGNORED
                entry = _SeriesEntry(key=key, label=series_label(series_uid))
                self._entries[key] = entry
            self._associations.setdefault(association_id, set()).add(key)
            delivered = entry.delivered.setdefault(association_id, set())
            if entry.overflowed:
                return StoreOutcome.OUT_OF_RESOURCES
            entry.last_activity = now
            self._note_other_association(entry, association_id)

            # A duplicate is acknowledged without keeping a second copy, but only against
            # instances that cannot vanish: committed ones or this association's own (another
            # open association's pending instance is lost if that association aborts).
            existing = entry.committed.get(sop_uid) or entry.pending.get(association_id, {}).get(
                sop_uid
            )
            data: bytes | None = None
            if existing is not None and len(existing.data) == payload_size:
                data = payload()
                if data == existing.data:
                    delivered.add(sop_uid)
                    return StoreOutcome.DUPLICATE

            if not self._reserve(entry, payload_size, now):
                entry.overflowed = True
                self._free_entry_data(entry)
                return StoreOutcome.OUT_OF_RESOURCES
            if data is None:
                data = payload()
            instance = ReceivedInstance(
                sop_instance_uid=sop_uid,
                sop_class_uid=str(header.get("SOPClassUID", "")),
                transfer_syntax=str(transfer_syntax),
                data=data,
                received_at=now,
                frames=frames,
            )
            pending = entry.pending.setdefault(association_id, {})
            replaced = pending.get(sop_uid)
            if replaced is not None:
                self._release_bytes(entry, len(replaced.data))
            pending[sop_uid] = instance
            delivered.add(sop_uid)
            if entry.receive_started is None:
                entry.receive_started = now
            entry.last_received = now
            return StoreOutcome.STORED

    def association_released(
        self,
        association_id: int,
        spool_commits: dict[SeriesKey, str] | None = None,
        *,
        calling_ae_title: str = "",
    ) -> list[tuple[SeriesKey, str]]:
        """Commit the association's instances and arm the release / settle triggers.

        ``spool_commits``: the spool commit that now holds each series' instances of this
        association. ``calling_ae_title``: the sender; one of ``whole_series_senders`` makes
        a series it carried whole due at once, without the release grace. Returns the
        commits that hold nothing new (content already dispatched, or series refused): the
        caller deletes them.
        """
        now = self._clock()
        whole_series_sender = calling_ae_title.strip() in self._settings.whole_series_senders
        grace = 0.0 if whole_series_sender else self._grace
        spool_commits = dict(spool_commits or {})
        redundant: list[tuple[SeriesKey, str]] = []
        with self._lock:
            for key in self._associations.pop(association_id, set()):
                entry = self._entries.get(key)
                if entry is None:
                    continue
                pending = entry.pending.pop(association_id, {})
                delivered = entry.delivered.pop(association_id, set())
                if entry.overflowed:
                    self._forget_overflowed(entry)
                    continue
                spool_commit = spool_commits.pop(key, None)
                # The release itself is activity: quiet time (settle) counts from the end of
                # the last association, not from its last instance.
                entry.last_activity = now
                changed = False
                for sop_uid, instance in pending.items():
                    old = entry.committed.get(sop_uid)
                    if old is not None:
                        self._release_bytes(entry, len(old.data))
                        if old.data == instance.data:
                            entry.committed[sop_uid] = instance
                            continue
                    entry.committed[sop_uid] = instance
                    changed = True
                if (
                    not changed
                    and delivered
                    and (self._settings.reanalyze_unchanged or entry.rearm_on_resend)
                ):
                    changed = entry.version == entry.dispatched_version
                if changed:
                    entry.version += 1
                    entry.rearm_on_resend = False
                if spool_commit is not None:
                    if changed or entry.version != entry.dispatched_version:
                        entry.spool_commits.append(spool_commit)
                        entry.spool_backed = entry.spool_backed or changed
                    else:
                        redundant.append((key, spool_commit))
                if not entry.committed:
                    continue
                # "Carried the whole series": every instance held came with this association,
                # and it is more than one lone single-frame instance (a sender that opens one
                # association per instance must not get its series analysed slice by slice,
                # however slowly it sends).
                carried_all = delivered.issuperset(entry.committed) and (
                    len(delivered) >= 2
                    or any(_instance_frames(i) > 1 for i in entry.committed.values())
                )
                if (
                    changed
                    and carried_all
                    and self._settings.analyze_on_release
                    and not entry.multi_association
                ):
                    entry.release_due = now + grace
                    entry.whole_series_release = whole_series_sender
                elif changed or not carried_all:
                    entry.multi_association = entry.multi_association or not carried_all
                    entry.release_due = None
            redundant.extend(spool_commits.items())  # series gone or refused meanwhile
            self._changed.notify_all()
        return redundant

    def association_aborted(self, association_id: int) -> None:
        """Discard the association's pending instances: the sender will retry them."""
        with self._lock:
            discarded = 0
            for key in self._associations.pop(association_id, set()):
                entry = self._entries.get(key)
                if entry is None:
                    continue
                pending = entry.pending.pop(association_id, {})
                entry.delivered.pop(association_id, None)
                for instance in pending.values():
                    self._release_bytes(entry, len(instance.data))
                discarded += len(pending)
                if entry.overflowed:
                    self._forget_overflowed(entry)
                elif not entry.committed and not entry.has_pending():
                    del self._entries[key]
            if discarded:
                LOGGER.warning(
                    "association aborted: discarded %d unreleased instance(s); "
                    "the sender is expected to retry",
                    discarded,
                )
            self._changed.notify_all()

    def association_closed(self, association_id: int) -> None:
        """The connection closed: without a release before it, this counts as an abort."""
        with self._lock:
            open_still = association_id in self._associations
        if open_still:
            self.association_aborted(association_id)

    # ------------------------------------------------------------------ worker side
    def collect_ready(self, *, force_release_due: bool = False) -> list[SeriesJob]:
        """Return the series due now (marking them dispatched) and evict stale ones.

        ``force_release_due`` dispatches series waiting out the release grace immediately
        (used at shutdown: their association was released, so they are complete).
        """
        now = self._clock()
        with self._lock:
            jobs: list[SeriesJob] = []
            for entry in list(self._entries.values()):
                if self._is_due(entry, now, force_release_due):
                    jobs.append(self._dispatch(entry, now))
                elif self._is_stale(entry, now):
                    self._evict(entry)
            return jobs

    def next_deadline(self) -> float | None:
        """Clock time at which something may become due (None: nothing is waiting)."""
        with self._lock:
            return self._next_deadline_locked()

    def wait_ready(self, timeout: float) -> list[SeriesJob]:
        """Block until a series is due (or ``timeout`` seconds pass); return the due series."""
        with self._lock:
            deadline = self._next_deadline_locked()
            wait = timeout
            if deadline is not None:
                wait = max(0.0, min(timeout, deadline - self._clock()))
            if wait > 0:
                self._changed.wait(wait)
        return self.collect_ready()

    def wake(self) -> None:
        """Wake a thread blocked in :meth:`wait_ready` or :meth:`confirm_release` (shutdown)."""
        with self._lock:
            self._changed.notify_all()

    def confirm_release(self, job: SeriesJob, *, hurry: Callable[[], bool] = bool) -> bool:
        """For a provisional job: block until its release grace ends, then say whether its
        results stand (True) or another association delivered to the series meanwhile
        (False: discard them; the series is due again under the settle rule).

        ``hurry()`` true (node shutdown) ends the wait early with the series as it is: its
        association was released, so it is complete, as for ``force_release_due``. A job that
        is not provisional is confirmed at once.
        """
        if job.confirm_at is None:
            return True
        with self._lock:
            while True:
                entry = self._entries.get(job.key)
                if (
                    entry is None
                    or entry.generation != job.generation
                    or entry.provisional_previous is None
                    or entry.version != job.version
                ):
                    return False
                remaining = job.confirm_at - self._clock()
                if remaining <= 0 or hurry():
                    entry.provisional_previous = None
                    return True
                self._changed.wait(remaining)

    def was_analysed(self, key: SeriesKey, fingerprint: str) -> bool:
        """Whether this exact content of the series has been analysed before."""
        with self._lock:
            return fingerprint in self._analysed.get(key, ())

    def results_lost(self, job: SeriesJob) -> None:
        """The job's results could not be stored: analyse the series again when it is re-sent,
        even with unchanged content (the sender's retry is the natural moment to try again)."""
        with self._lock:
            entry = self._entries.get(job.key)
            if entry is not None and entry.generation == job.generation:
                entry.rearm_on_resend = True

    def mark_analysed(self, key: SeriesKey, fingerprint: str) -> None:
        """Record that this content has been analysed (or refused for good)."""
        with self._lock:
            self._analysed.setdefault(key, set()).add(fingerprint)
            self._analysed.move_to_end(key)
            while len(self._analysed) > self._settings.max_remembered_series:
                self._analysed.popitem(last=False)

    def release_grace_pending(self) -> bool:
        """Whether some released series is waiting out its grace period (shutdown drain)."""
        with self._lock:
            return any(e.release_due is not None for e in self._entries.values())

    def unanalysed_series(self) -> int:
        """How many series hold content that has not been dispatched (shutdown report)."""
        with self._lock:
            return sum(
                1
                for e in self._entries.values()
                if not e.overflowed
                and (e.has_pending() or (e.committed and e.version != e.dispatched_version))
            )

    # ------------------------------------------------------------------ durable spool
    def refuse_series(self, key: SeriesKey, reason: str) -> None:
        """Refuse a series as if over a byte limit (its spool copy cannot be written):
        its data is freed, it is never analysed, and a retry after its associations end
        starts clean."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.overflowed:
                return
            entry.overflowed = True
            entry.refusal = reason
            self._free_entry_data(entry)
            if not entry.delivered:
                self._forget_overflowed(entry)

    def spool_base(self, keys: Iterable[SeriesKey]) -> dict[SeriesKey, list[ReceivedInstance]]:
        """For each key: the committed instances held here that are no longer in the spool
        (analysed earlier, spool copy deleted). A release writes them again with its own."""
        out: dict[SeriesKey, list[ReceivedInstance]] = {}
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is None or entry.overflowed or entry.spool_backed:
                    continue
                if entry.committed:
                    out[key] = list(entry.committed.values())
        return out

    def spool_unbacked(self, keys: Iterable[SeriesKey]) -> None:
        """These series are no longer in the spool (a commit failed): their next release
        writes everything held again."""
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.spool_commits.clear()
                    entry.spool_backed = False

    def spool_retire(self, job: SeriesJob) -> set[str]:
        """The job is finished (results in the outbox, or refused): which spool commits may
        be deleted. None while a newer version of the series waits for its own analysis
        (that analysis covers the earlier instances too)."""
        with self._lock:
            entry = self._entries.get(job.key)
            if entry is None or entry.generation != job.generation or entry.overflowed:
                return set(job.spool_commits)
            if entry.version != job.version:
                return set()
            deletable = set(job.spool_commits) | set(entry.spool_commits)
            entry.spool_commits.clear()
            if entry.committed and deletable:
                entry.spool_backed = False
            return deletable

    def restore(
        self,
        key: SeriesKey,
        header: Dataset,
        instances: list[ReceivedInstance],
        spool_commits: tuple[str, ...],
    ) -> bool:
        """Put a series recovered from the spool back; it is due after the settle window
        (its sender may still be resending). False: not selected any more, or over a limit."""
        now = self._clock()
        size = sum(len(i.data) for i in instances)
        with self._lock:
            if key in self._entries or key in self._ignored or not instances:
                return False
            if not self._decide(header):
                return False
            entry = _SeriesEntry(key=key, label=series_label(key[1]))
            if not self._reserve(entry, size, now):
                return False
            entry.committed = {i.sop_instance_uid: i for i in instances}
            entry.version = 1
            entry.multi_association = True
            entry.restored = True
            entry.spool_commits = list(spool_commits)
            entry.receive_started = entry.last_received = entry.last_activity = now
            self._entries[key] = entry
            self._changed.notify_all()
            return True

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total_bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # ------------------------------------------------------------------ internals
    def _note_other_association(self, entry: _SeriesEntry, association_id: int) -> None:
        """A delivery to a series waiting out its release grace comes from a *later*
        association (the released one is closed): the sender spreads the series over
        associations, so switch it to the settle rule instead of analysing it now."""
        if entry.release_due is not None:
            entry.release_due = None
            entry.whole_series_release = False
            entry.multi_association = True
        if entry.provisional_previous is not None:
            # The provisional job is already analysing: un-dispatch its content, so the
            # series is due again (settle rule) and confirm_release() refuses the job.
            entry.dispatched_version = entry.provisional_previous
            entry.provisional_previous = None
            entry.multi_association = True
            self._changed.notify_all()

    def _is_due(self, entry: _SeriesEntry, now: float, force_release_due: bool) -> bool:
        if entry.overflowed or not entry.committed or entry.has_pending():
            return False
        if entry.version == entry.dispatched_version:
            return False
        if entry.release_due is not None and (
            force_release_due or now >= entry.release_due or self._settings.analyze_during_grace
        ):
            return True
        return now - entry.last_activity >= self._settings.settle_seconds

    def _is_stale(self, entry: _SeriesEntry, now: float) -> bool:
        return (
            entry.provisional_previous is None
            and not entry.has_pending()
            and not entry.delivered
            and entry.version == entry.dispatched_version
            and now - entry.last_activity >= self._settings.retain_analysed_seconds
        )

    def _dispatch(self, entry: _SeriesEntry, now: float) -> SeriesJob:
        trigger = "release" if entry.release_due is not None else "settle"
        if entry.release_due is not None and entry.whole_series_release:
            trigger = "whole-series release"
        if entry.restored:
            trigger = "restart"
        started = entry.receive_started if entry.receive_started is not None else now
        job = SeriesJob(
            key=entry.key,
            label=entry.label,
            instances=list(entry.committed.values()),
            version=entry.version,
            trigger=trigger,
            receive_ms=max(0.0, (entry.last_received - started) * 1000.0),
            queued_at=now,
            generation=entry.generation,
            spool_commits=tuple(entry.spool_commits),
        )
        if entry.release_due is not None and now < entry.release_due:
            job.confirm_at = entry.release_due  # dispatched early, during the grace
            entry.provisional_previous = entry.dispatched_version
        entry.restored = False
        entry.dispatched_version = entry.version
        entry.release_due = None
        entry.whole_series_release = False
        entry.multi_association = False
        entry.receive_started = None
        return job

    def _next_deadline_locked(self) -> float | None:
        now = self._clock()
        deadlines: list[float] = []
        for entry in self._entries.values():
            if entry.overflowed or entry.has_pending() or not entry.committed:
                continue
            if entry.version != entry.dispatched_version:
                if entry.release_due is not None:
                    # Analysed during the grace: due now (the grace is checked at filing).
                    during = self._settings.analyze_during_grace
                    deadlines.append(now if during else entry.release_due)
                deadlines.append(entry.last_activity + self._settings.settle_seconds)
            else:
                deadlines.append(entry.last_activity + self._settings.retain_analysed_seconds)
        return min(deadlines) if deadlines else None

    def _reserve(self, entry: _SeriesEntry, size: int, now: float) -> bool:
        if entry.nbytes + size > self._settings.max_series_bytes:
            LOGGER.warning(
                "series %s exceeds limits.max_series_bytes (%d bytes): refusing with 0xA700",
                entry.label,
                self._settings.max_series_bytes,
            )
            return False
        if self._total_bytes + size > self._settings.max_total_bytes:
            self._evict_for(size, keep=entry)
        if self._total_bytes + size > self._settings.max_total_bytes:
            LOGGER.warning(
                "series %s refused with 0xA700: limits.max_total_bytes (%d bytes) reached",
                entry.label,
                self._settings.max_total_bytes,
            )
            return False
        entry.nbytes += size
        self._total_bytes += size
        return True

    def _release_bytes(self, entry: _SeriesEntry, size: int) -> None:
        entry.nbytes -= size
        self._total_bytes -= size

    def _free_entry_data(self, entry: _SeriesEntry) -> None:
        self._total_bytes -= entry.nbytes
        entry.nbytes = 0
        entry.committed.clear()
        for pending in entry.pending.values():
            pending.clear()
        entry.release_due = None

    def _forget_overflowed(self, entry: _SeriesEntry) -> None:
        if entry.delivered:
            return  # another association still sends it; forget when the last one ends
        self._free_entry_data(entry)
        self._entries.pop(entry.key, None)
        LOGGER.warning("series %s not analysed: %s and is incomplete", entry.label, entry.refusal)

    def _evict(self, entry: _SeriesEntry) -> None:
        self._free_entry_data(entry)
        self._entries.pop(entry.key, None)

    def _evict_for(self, size: int, keep: _SeriesEntry) -> None:
        """Free analysed series (kept only to merge late duplicates), oldest first."""
        candidates = sorted(
            (
                e
                for e in self._entries.values()
                if e is not keep
                and e.provisional_previous is None
                and not e.has_pending()
                and not e.delivered
                and e.version == e.dispatched_version
            ),
            key=lambda e: e.last_activity,
        )
        for candidate in candidates:
            if self._total_bytes + size <= self._settings.max_total_bytes:
                break
            self._evict(candidate)
