"""The running node: wires receiver -> series store -> analysis worker -> outbox -> sender.

Threads (all started and stopped here):

* pynetdicom's server thread and one thread per association: run the handlers in
  :mod:`hippo_scp.network.receiver`, which only file instances into the store;
* ``hippo-analysis`` (:class:`~hippo_scp.pipeline.worker.AnalysisWorker`): waits for series the
  store declares due, analyses them one at a time, writes results to the outbox;
* ``hippo-sender`` (:class:`~hippo_scp.network.sender.ResultSender`): delivers the outbox to
  every destination with per-destination backoff.

The only hand-offs are the store (a lock + condition) and the outbox (files), so a slow model
never stalls the network and a PACS outage never stalls analysis.

Shutdown (SIGTERM / SIGINT): stop accepting, let associations in progress end (bounded wait),
finish the analysis in progress and any released series still in its grace period, make one
last delivery attempt, exit 0. Results not delivered stay in the outbox for the next start.
Series still waiting for their settle window are lost without the spool (the sender must
resend them); with ``spool.enabled`` they stay in the spool and are analysed after the next
start, exactly like after a crash (docs/crash_recovery.md).
"""

from __future__ import annotations

import functools
import logging
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from hippo_scp.assembly.selection import SeriesSelector, is_own_output
from hippo_scp.assembly.series_store import DecideFn, SeriesStore, StoreSettings, series_label
from hippo_scp.assembly.spool import Spool
from hippo_scp.config import NodeConfig
from hippo_scp.logging_setup import audit_event, configure_logging
from hippo_scp.network.outbox import EncodedObjects, Outbox
from hippo_scp.network.prior_query import MoveToNode, PriorResultsQuery
from hippo_scp.network.receiver import StorageReceiver
from hippo_scp.network.retrieval_inbox import RetrievalInbox
from hippo_scp.network.sender import ResultSender, SenderSettings
from hippo_scp.network.tls import client_context, server_context
from hippo_scp.pipeline.prior_comparison import PriorComparisonSettings
from hippo_scp.pipeline.warmup import warm_up
from hippo_scp.pipeline.worker import AnalysisWorker, AnalyzeFn, fingerprint

LOGGER = logging.getLogger(__name__)

#: How long shutdown waits for associations in progress to end before closing them.
SHUTDOWN_ASSOCIATION_WAIT_S = 10.0
#: Exit status when the node cannot start (bad weights, port in use, ...).
EXIT_STARTUP_FAILED = 2


class StartupError(RuntimeError):
    """The node cannot start; the message is one line for the operator."""


def make_decide(config: NodeConfig) -> DecideFn:
    """The store's per-series decision: selection rules, never the node's own outputs."""
    selector = SeriesSelector(config.selection)

    def decide(first_instance: Dataset) -> bool:
        label = series_label(str(first_instance.get("SeriesInstanceUID", "")))
        if is_own_output(first_instance):
            LOGGER.debug("series %s is this node's own output: acknowledged, ignored", label)
            return False
        decision = selector.decide(first_instance, None)
        if decision.selected:
            LOGGER.info("series %s selected by rule %r", label, decision.rule)
        else:
            LOGGER.debug("series %s not selected: %s", label, decision.reason)
        return decision.selected

    return decide


def load_analyzer(config: NodeConfig, inbox: RetrievalInbox | None = None) -> AnalyzeFn:
    """Load the model once and return the real analysis function (raises StartupError)."""
    weights = Path(config.model.weights)
    if not weights.is_file():
        raise StartupError(f"model weights not found: {weights} (model.weights / --weights)")
    try:
        from hippo_scp.model.inference import Segmenter
        from hippo_scp.pipeline.analysis import AnalysisSettings, SeriesAnalyzer

        segmenter = Segmenter(weights_path=weights, num_threads=config.model.threads)
    except Exception as error:
        raise StartupError(f"cannot load model weights {weights}: {error}") from None
    settings = AnalysisSettings(
        min_slices=config.selection.min_slices,
        priors=PriorComparisonSettings(
            max_plausible_change_pct=config.priors.max_plausible_change_pct
        ),
    )
    analyzer = SeriesAnalyzer(segmenter, settings)
    LOGGER.info("model %s loaded from %s", segmenter.model_version, weights)
    if config.model.warm_up:
        # before the node listens: the first patient's series does not pay for lazy loading
        # (and asks no PACS for priors: the prior source is only bound below)
        warm_up(analyzer.analyze, EncodedObjects.of)
    prior_source = build_prior_source(config, inbox)
    if prior_source is None:
        return analyzer.analyze
    return functools.partial(analyzer.analyze, prior_source=prior_source)


def build_prior_source(
    config: NodeConfig, inbox: RetrievalInbox | None = None
) -> PriorResultsQuery | None:
    """The PACS query for earlier results, when ``priors.enabled`` (raises StartupError).

    ``inbox``: where the node's receiver puts what a C-MOVE brings back (``priors.retrieve:
    move``; see :func:`retrieval_inbox_for`)."""
    source = config.prior_source
    if source is None:
        return None
    move = None
    if config.priors.retrieve == "move":
        if inbox is None:
            raise StartupError("priors.retrieve: move needs the node's receiver (an inbox)")
        move = MoveToNode(config.node.ae_title, inbox)
    tls_context = _tls_or_fail(config, client=True) if source.tls else None
    LOGGER.info(
        "prior comparison on: earlier results are asked from %s (C-FIND / C-%s)",
        source,
        config.priors.retrieve.upper(),
    )
    return PriorResultsQuery(
        source,
        calling_ae_title=config.node.ae_title,
        timeout_s=config.priors.timeout_s,
        tls_context=tls_context,
        retry_after_s=config.priors.retry_after_s,
        move=move,
    )


def retrieval_inbox_for(config: NodeConfig) -> RetrievalInbox | None:
    """The inbox shared by the receiver and the prior lookup when it retrieves by C-MOVE."""
    if config.prior_source is not None and config.priors.retrieve == "move":
        return RetrievalInbox()
    return None


def _tls_or_fail(config: NodeConfig, *, client: bool) -> ssl.SSLContext | None:
    """Build the TLS context now so a bad certificate stops start-up with one line."""
    try:
        if client:  # results to destinations, and the prior lookup's PACS
            source = config.prior_source
            needed = any(d.tls for d in config.destinations) or bool(source and source.tls)
            return client_context(config.tls) if needed else None
        return server_context(config.tls)
    except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
        raise StartupError(f"tls: cannot load certificates: {error}") from None


@dataclass
class NodeAddress:
    host: str
    port: int


class Node:
    """All long-lived parts of the node; ``start()`` then ``stop()``."""

    def __init__(
        self, config: NodeConfig, analyze: AnalyzeFn, inbox: RetrievalInbox | None = None
    ) -> None:
        self.config = config
        self.store = SeriesStore(StoreSettings.from_config(config), make_decide(config))
        self.spool = (
            Spool(config.spool.directory, fsync=config.spool.fsync)
            if config.spool.enabled
            else None
        )
        self.outbox = Outbox(config.outbox.directory, ResultSender.folders(config.destinations))
        self.sender = ResultSender(
            self.outbox,
            list(config.destinations),
            SenderSettings(
                calling_ae_title=config.node.ae_title,
                retry_initial_s=config.outbox.retry_initial_s,
                retry_max_s=config.outbox.retry_max_s,
                acse_timeout_s=config.node.acse_timeout_s,
                dimse_timeout_s=config.node.dimse_timeout_s,
                network_timeout_s=config.node.network_timeout_s,
                max_pdu_bytes=config.node.max_pdu_bytes,
                tls_context=_tls_or_fail(config, client=True),
            ),
        )
        self.worker = AnalysisWorker(
            self.store,
            analyze,
            self.outbox,
            on_results=self.sender.wake,
            reanalyze_unchanged=config.triggers.reanalyze_unchanged,
            spool=self.spool,
        )
        _tls_or_fail(config, client=False)  # fail fast; the receiver builds its own
        self.receiver = StorageReceiver(config, self.store, spool=self.spool, inbox=inbox)
        self.address: NodeAddress | None = None

    def start(self) -> NodeAddress:
        waiting = self.outbox.prepare()
        if waiting:
            LOGGER.info("outbox holds %d result set(s) from before; delivering them", waiting)
        self._recover_spool()
        self.sender.start()
        self.worker.start()
        try:
            host, port = self.receiver.start()
        except OSError as error:
            raise StartupError(
                f"cannot listen on {self.config.node.bind_address}:{self.config.node.port}: "
                f"{error.strerror or error}"
            ) from None
        self.address = NodeAddress(host, port)
        return self.address

    def _recover_spool(self) -> None:
        """Put the committed series of the spool back into the store (before listening)."""
        if self.spool is None:
            LOGGER.info(
                "spool disabled: series received but not yet analysed when the node stops or "
                "crashes are lost (the sender must send them again)"
            )
            return
        try:
            self.spool.prepare()
            recovered = self.spool.recover()
        except OSError as error:
            raise StartupError(
                f"spool: cannot use {self.config.spool.directory}: {error.strerror or error}"
            ) from None
        # Content already in the outbox (crash between "results written" and "spool
        # deleted"): finished, not analysed again.
        queued = {
            item.summary().get("content")
            for destination in self.outbox.destinations
            for item in self.outbox.pending(destination)
        }
        restored = 0
        for series in recovered:
            with self.spool.lock:
                if fingerprint(series.instances) in queued:
                    LOGGER.info(
                        "spool: series %s already has results in the outbox; removed from the "
                        "spool",
                        series.label,
                    )
                    self.spool.discard(series.key, series.commits)
                    continue
                if self.store.restore(series.key, series.header, series.instances, series.commits):
                    restored += 1
                    LOGGER.info(
                        "spool: series %s (%d instances) recovered; analysed after the settle "
                        "window",
                        series.label,
                        len(series.instances),
                    )
                else:
                    LOGGER.warning(
                        "spool: series %s (%d instances) not recovered (not selected any more, "
                        "or over a memory limit); removed from the spool",
                        series.label,
                        len(series.instances),
                    )
                    self.spool.discard(series.key, series.commits)
        LOGGER.info("spool enabled at %s: %d series recovered", self.spool.directory, restored)

    def stop(self) -> None:
        """Graceful stop; see the module docstring for the order and why."""
        LOGGER.info("shutting down: no new associations")
        self.receiver.stop_accepting()
        in_progress = self.receiver.active_associations()
        if in_progress:
            LOGGER.info(
                "shutting down: waiting up to %.0f s for %d association(s) in progress",
                SHUTDOWN_ASSOCIATION_WAIT_S,
                in_progress,
            )
        deadline = time.monotonic() + SHUTDOWN_ASSOCIATION_WAIT_S
        while self.receiver.active_associations() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.receiver.shutdown()  # aborts any association still open (its sender retries)
        self.worker.stop(drain=True)
        self.worker.join()
        left = self.store.unanalysed_series()
        if left and self.spool is not None:
            LOGGER.info(
                "shutdown: %d series still waiting for their settle window are kept in the "
                "spool and analysed after the next start",
                left,
            )
        elif left:
            LOGGER.warning(
                "shutdown: %d series still waiting for their settle window were not analysed "
                "(no spool: the sender must resend them)",
                left,
            )
        self.sender.stop()
        self.sender.join(timeout=self.config.node.acse_timeout_s + 15)
        if self.outbox.count():
            self.sender.flush_once()
        remaining = self.outbox.count()
        if remaining:
            LOGGER.warning(
                "shutdown: %d result set(s) kept in the outbox for the next start", remaining
            )
        LOGGER.info("stopped")


def run_node(
    config: NodeConfig,
    *,
    analyze: AnalyzeFn | None = None,
    stop_event: threading.Event | None = None,
    configure: bool = True,
) -> int:
    """Run until SIGTERM / SIGINT (or ``stop_event``); return the process exit status.

    ``analyze`` replaces the real model (tests); ``configure=False`` leaves logging alone.
    """
    if configure:
        configure_logging(
            config.logging.level, config.logging.format, audit_log=config.logging.audit_log
        )
        if config.logging.level != "DEBUG":
            # highdicom logs one INFO line per copied module for every SEG / SR it builds.
            logging.getLogger("highdicom").setLevel(logging.WARNING)
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    try:
        inbox = retrieval_inbox_for(config)
        analyze_fn = analyze if analyze is not None else load_analyzer(config, inbox)
        node = Node(config, analyze_fn, inbox)
        address = node.start()
    except StartupError as error:
        LOGGER.error("%s", error)
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_STARTUP_FAILED
    destinations = ", ".join(str(d) for d in config.destinations) or "none"
    message = (
        f"hippo-scp listening on {address.host}:{address.port} as {config.node.ae_title} "
        f"(results to {destinations})"
    )
    LOGGER.info("%s", message)
    print(message, flush=True)
    if config.triggers.whole_series_senders:
        LOGGER.info(
            "series released by %s are reported without the %.1f s release grace "
            "(triggers.whole_series_senders)",
            ", ".join(config.triggers.whole_series_senders),
            config.triggers.release_grace_seconds,
        )
    audit_event("node_started", ae_title=config.node.ae_title, port=address.port)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        node.stop()
        audit_event("node_stopped", ae_title=config.node.ae_title)
    return 0


__all__ = [
    "Node",
    "StartupError",
    "build_prior_source",
    "load_analyzer",
    "make_decide",
    "retrieval_inbox_for",
    "run_node",
]
