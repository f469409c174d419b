"""The analysis worker: one thread that turns due series into results in the outbox.

Why one thread: inference is CPU-bound and the node shares a small machine with the network
threads; one series at a time keeps latency predictable and memory bounded (the store bounds
what is *held*, the worker bounds what is *decoded*). The worker never talks to the network:
it writes results to the on-disk outbox and pokes the sender, so a PACS outage cannot stall
analysis and a crash after the write loses nothing.

With the durable spool, a series leaves the spool only once it is finished: results in the
outbox, refused, or skipped as already analysed (:meth:`Spool.retire`). The outbox summary
carries the series' content fingerprint, so a restart after a crash between "results
written" and "spool deleted" recognises the series as done instead of analysing it twice.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Protocol

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

from hippo_scp.assembly.series_store import ReceivedInstance, SeriesJob, SeriesStore
from hippo_scp.imaging.errors import VolumeError
from hippo_scp.logging_setup import audit_event
from hippo_scp.network.outbox import EncodedObjects

LOGGER = logging.getLogger(__name__)


class ResultLike(Protocol):
    """What the worker needs from :class:`hippo_scp.pipeline.analysis.AnalysisResult`."""

    sr: Dataset
    seg: Dataset
    report: Dataset
    timings_ms: dict[str, float]
    model_version: str

    def to_json_dict(self) -> dict[str, Any]: ...


class OutboxLike(Protocol):
    def put(self, label: str, datasets: EncodedObjects, summary: dict[str, Any]) -> str: ...


class SpoolLike(Protocol):
    """What the worker needs from :class:`hippo_scp.assembly.spool.Spool`."""

    def retire(self, job: SeriesJob, store: SeriesStore) -> None: ...


#: Analyse the instances of one series; raises VolumeError (or ValueError) to refuse it.
AnalyzeFn = Callable[[Sequence[Dataset]], ResultLike]


def decode_instance(instance: ReceivedInstance) -> Dataset:
    """Parse a stored instance into a Dataset with File Meta (the pixel decoder needs the
    transfer syntax; compressed Pixel Data stays encapsulated until it is decoded)."""
    ts = UID(instance.transfer_syntax)
    ds = read_dataset(BytesIO(instance.data), ts.is_implicit_VR, ts.is_little_endian)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = instance.sop_class_uid
    meta.MediaStorageSOPInstanceUID = instance.sop_instance_uid
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.set_original_encoding(ts.is_implicit_VR, ts.is_little_endian)
    return ds


def fingerprint(instances: Sequence[ReceivedInstance]) -> str:
    """Content hash of a series: same instances with the same bytes -> same fingerprint."""
    digest = hashlib.blake2b(digest_size=16)
    for instance in sorted(instances, key=lambda i: i.sop_instance_uid):
        digest.update(instance.sop_instance_uid.encode("ascii", "replace"))
        digest.update(hashlib.blake2b(instance.data, digest_size=16).digest())
    return digest.hexdigest()


@dataclass
class WorkerStats:
    """Counters for tests and the shutdown log line."""

    analysed: int = 0
    refused: int = 0
    skipped_unchanged: int = 0
    failed: int = 0
    #: provisional analyses dropped because the series changed during the release grace
    superseded: int = 0


@dataclass(frozen=True)
class _Refusal:
    """Why a series produced no results: bad input (``error`` None) or a bug (``error``)."""

    reason: str
    count: int | None = None  # instances, when the log line should say how many
    error: BaseException | None = None


class AnalysisWorker(threading.Thread):
    """Waits for due series in the store, analyses them, and files the results."""

    def __init__(
        self,
        store: SeriesStore,
        analyze: AnalyzeFn,
        outbox: OutboxLike,
        *,
        on_results: Callable[[], None] = lambda: None,
        reanalyze_unchanged: bool = False,
        poll_s: float = 1.0,
        spool: SpoolLike | None = None,
    ) -> None:
        super().__init__(name="hippo-analysis", daemon=True)
        self._store = store
        self._analyze = analyze
        self._outbox = outbox
        self._on_results = on_results
        self._reanalyze_unchanged = reanalyze_unchanged
        self._poll_s = poll_s
        self._spool = spool
        self._stop_event = threading.Event()
        self._drain = False
        self.stats = WorkerStats()
        self.idle = threading.Event()
        self.idle.set()

    def stop(self, *, drain: bool = True) -> None:
        """Stop after the current series; with ``drain`` also analyse released series still
        waiting out their grace period (complete, so they must not be lost)."""
        self._drain = drain
        self._stop_event.set()
        self._store.wake()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                jobs = self._store.wait_ready(self._poll_s)
            except Exception:  # pragma: no cover - defensive: the loop must survive
                LOGGER.exception("series store failed; retrying")
                time.sleep(self._poll_s)
                continue
            self._run_jobs(jobs)
        if self._drain:
            self._run_jobs(self._store.collect_ready(force_release_due=True))

    def _run_jobs(self, jobs: list[SeriesJob]) -> None:
        for job in jobs:
            self.idle.clear()
            try:
                self.process(job)
            except Exception:
                self.stats.failed += 1
                LOGGER.exception("series %s: analysis failed unexpectedly", job.label)
            finally:
                self.idle.set()

    def process(self, job: SeriesJob) -> str | None:
        """Analyse one series and file its results; returns the outbox id (None: nothing).

        A provisional job (dispatched at its release, during the grace) is analysed -- and its
        objects serialised -- first and confirmed afterwards: its outcome, results or refusal,
        is filed only if the store confirms that no other association delivered to the series
        before the grace ended.
        """
        queue_ms = max(0.0, time.monotonic() - job.queued_at) * 1000
        content = fingerprint(job.instances)
        if self._store.was_analysed(job.key, content) and not self._reanalyze_unchanged:
            self.stats.skipped_unchanged += 1
            LOGGER.info(
                "series %s re-sent unchanged (%d instances): not analysed again",
                job.label,
                len(job.instances),
            )
            self._retire(job)
            return None
        outcome = self._analyse(job)
        grace_ms = self._wait_for_confirmation(job)
        if grace_ms is None:
            return None
        if isinstance(outcome, _Refusal):
            self._refuse(job, content, outcome)
            return None
        result, parse_ms, encoded = outcome
        timings = dict(result.timings_ms)
        stages = {
            "receive": round(job.receive_ms, 1),
            "queue": round(queue_ms, 1),
            "assemble": round(parse_ms + timings.get("load", 0.0), 1),
            "infer": round(timings.get("infer", 0.0), 1),
            "encode": round(timings.get("encode", 0.0), 1),
        }
        if "priors" in timings:  # the PACS query for earlier results (priors.enabled)
            stages["priors"] = round(timings["priors"], 1)
        if job.confirm_at is not None:
            stages["grace"] = round(grace_ms, 1)  # what was left of the grace after the analysis
        summary = {
            "series": job.label,
            "trigger": job.trigger,
            "instances": len(job.instances),
            "timings_ms": stages,
            "volumes": _volumes(result),
            "model_version": str(result.model_version),
            "content": content,
        }
        prior = _prior_summary(result)
        if prior is not None:
            summary["prior_comparison"] = prior
        try:
            outbox_id = self._outbox.put(job.label, encoded, summary)
        except OSError as error:
            # Not marked analysed and kept in the spool: a resend (or, with the spool, a
            # restart) analyses the series again once there is room.
            self.stats.failed += 1
            self._store.results_lost(job)
            LOGGER.error(
                "series %s: results cannot be written to the outbox %s: %s; nothing sent, "
                "the series is analysed again when it is re-sent (free disk space)",
                job.label,
                self._outbox.directory,
                error.strerror or type(error).__name__,
            )
            self._audit(job, "failed", f"outbox write failed: {error.strerror or error}")
            return None
        self._store.mark_analysed(job.key, content)
        self._retire(job)  # only now: the results are durable in the outbox
        self.stats.analysed += 1
        LOGGER.info(
            "series %s analysed (%d instances, trigger %s): results queued in the outbox",
            job.label,
            len(job.instances),
            job.trigger,
        )
        if prior is not None:
            LOGGER.info("series %s: %s", job.label, describe_prior(prior))
        self._audit(job, "results_queued", None, prior=prior)
        self._on_results()
        return outbox_id

    def _analyse(self, job: SeriesJob) -> tuple[ResultLike, float, EncodedObjects] | _Refusal:
        """Decode, analyse and serialise: (result, parse ms, the objects as the outbox writes
        them: SEG, SR, report) or why not."""
        t0 = time.perf_counter()
        try:
            datasets = [decode_instance(instance) for instance in job.instances]
        except Exception as error:
            return _Refusal(f"an instance cannot be parsed ({type(error).__name__})")
        parse_ms = (time.perf_counter() - t0) * 1000
        try:
            result = self._analyze(datasets)
        except (VolumeError, ValueError, RuntimeError) as error:
            # VolumeError (a ValueError) and AnalysisError (a RuntimeError): the series
            # cannot be measured correctly. Expected for bad input; sending nothing is right.
            return _Refusal(
                f"{type(error).__name__}: {error}; no results sent", count=len(job.instances)
            )
        except Exception as error:
            return _Refusal("analysis failed unexpectedly; no results sent", error=error)
        try:
            encoded = EncodedObjects.of([result.seg, result.sr, result.report])
        except Exception as error:
            return _Refusal("results cannot be serialised; no results sent", error=error)
        return result, parse_ms, encoded

    def _wait_for_confirmation(self, job: SeriesJob) -> float | None:
        """Ms waited for a provisional job's grace to end (0 for other jobs); None when the
        series changed meanwhile and this outcome must be dropped."""
        t0 = time.perf_counter()
        if self._store.confirm_release(job, hurry=self._stop_event.is_set):
            return (time.perf_counter() - t0) * 1000
        self.stats.superseded += 1
        LOGGER.info(
            "series %s: another association delivered to it during the release grace; this "
            "analysis is dropped and the series is analysed once it is complete",
            job.label,
        )
        return None

    def _refuse(self, job: SeriesJob, content: str, refusal: _Refusal) -> None:
        """File a refusal: logged, remembered (the same content is not retried), spool freed."""
        self._store.mark_analysed(job.key, content)
        if refusal.error is not None:
            self.stats.failed += 1
            LOGGER.error("series %s: %s", job.label, refusal.reason, exc_info=refusal.error)
        else:
            self.stats.refused += 1
            if refusal.count is None:
                LOGGER.warning("series %s not analysed: %s", job.label, refusal.reason)
            else:
                LOGGER.warning(
                    "series %s not analysed (%d instances): %s",
                    job.label,
                    refusal.count,
                    refusal.reason,
                )
        self._audit(job, "failed" if refusal.error is not None else "refused", refusal.reason)
        self._retire(job)

    @staticmethod
    def _audit(
        job: SeriesJob, outcome: str, reason: str | None, *, prior: dict[str, Any] | None = None
    ) -> None:
        """One ``series_analysis`` audit record per filed outcome (``hippo-scp status`` counts
        them): the series label, never patient data; the reason as the log states it; with
        the prior comparison on, what the lookup gave (``prior``, and ``prior_reason`` when
        it was not a comparison)."""
        fields: dict[str, Any] = {
            "series": job.label,
            "instances": len(job.instances),
            "trigger": job.trigger,
            "outcome": outcome,
        }
        if reason is not None:
            fields["reason"] = reason
        if prior is not None:
            fields["prior"] = prior.get("status")
            if prior.get("reason"):
                fields["prior_reason"] = prior["reason"]
        audit_event("series_analysis", **fields)

    def _retire(self, job: SeriesJob) -> None:
        if self._spool is not None:
            self._spool.retire(job, self._store)


def _prior_summary(result: ResultLike) -> dict[str, Any] | None:
    """The comparison with the prior (numbers, no identifiers), when one was asked for
    (``AnalysisResult.prior_summary``; results without one have none)."""
    summary = getattr(result, "prior_summary", None)
    return summary() if callable(summary) else None


def describe_prior(prior: dict[str, Any]) -> str:
    """One log line for ``AnalysisResult.prior_summary``."""
    if prior.get("status") != "compared":
        return f"no comparison with a prior ({prior.get('status')}: {prior.get('reason', '')})"
    total = prior["changes"]["total"]
    change = total["change_pct"]
    change_text = "n/a" if change is None else f"{change:+.1f} %"
    return (
        f"compared with the prior examination {prior['interval_days']} days earlier: total "
        f"{total['prior_mm3']:.0f} -> {total['current_mm3']:.0f} mm3 ({change_text})"
    )


def _volumes(result: ResultLike) -> dict[str, float]:
    """The three volumes (mm³) from the result, however the analyzer exposes them."""
    volumes = getattr(result, "volumes", None)
    out: dict[str, float] = {}
    for name in ("anterior_mm3", "posterior_mm3", "total_mm3"):
        value = getattr(volumes, name, None)
        if value is None and isinstance(volumes, dict):
            value = volumes.get(name)
        if value is not None:
            out[name] = round(float(value), 1)
    return out
