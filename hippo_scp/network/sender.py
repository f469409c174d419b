"""Result sender: a C-STORE SCU thread that empties the outbox into every destination.

Why a separate thread with its own backoff per destination: a PACS that is down (or slow)
must delay only its own deliveries, never the receiver or the analysis worker. Files leave
the outbox only after the destination answered Success (or a Warning, which per PS3.4 B.2.3
still means "stored"); anything else is retried with exponential backoff from
``outbox.retry_initial_s`` to ``outbox.retry_max_s``. A restart re-reads the outbox, so a
result is delivered eventually however long the outage.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, evt

from hippo_scp.config import Destination
from hippo_scp.logging_setup import audit_event
from hippo_scp.network.event_reactor import install_event_driven_reactors
from hippo_scp.network.outbox import Outbox, OutboxItem, destination_folder_name
from hippo_scp.network.presentation import requested_contexts
from hippo_scp.network.response_guard import keep_responses_for_caller
from hippo_scp.network.socket_tuning import disable_nagle

LOGGER = logging.getLogger(__name__)
#: How a C-STORE that got no response is reported.
NO_ANSWER = "nothing (connection lost or timeout)"

#: C-STORE statuses after which the destination holds the object (Success and Warnings).
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


@dataclass
class SenderSettings:
    calling_ae_title: str
    retry_initial_s: float = 2.0
    retry_max_s: float = 60.0
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 60.0
    network_timeout_s: float = 120.0
    connection_timeout_s: float = 10.0
    max_pdu_bytes: int = 131072
    #: TLS context for destinations with ``tls: true`` (built from the ``tls`` section)
    tls_context: ssl.SSLContext | None = None


@dataclass
class _DestinationState:
    destination: Destination
    folder: str
    backoff_s: float
    next_attempt: float = 0.0
    failures: int = 0
    last_error: str = ""  # why the last attempt failed, for the audit record


class ResultSender(threading.Thread):
    """Delivers outbox result sets to each destination, retrying with backoff."""

    def __init__(
        self,
        outbox: Outbox,
        destinations: list[Destination],
        settings: SenderSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="hippo-sender", daemon=True)
        install_event_driven_reactors()  # once per process; the DUL answers without polling
        self._outbox = outbox
        self._settings = settings
        self._clock = clock
        self._states = [
            _DestinationState(
                destination=d,
                folder=destination_folder_name(d.ae_title, d.host, d.port),
                backoff_s=settings.retry_initial_s,
            )
            for d in destinations
        ]
        self._wake = threading.Event()
        self._stop_event = threading.Event()
        self._attempt_lock = threading.Lock()
        self.delivered_sets = 0

    @staticmethod
    def folders(destinations: list[Destination]) -> list[str]:
        return [destination_folder_name(d.ae_title, d.host, d.port) for d in destinations]

    def wake(self) -> None:
        """New results are in the outbox: try the destinations that are not backing off."""
        self._wake.set()

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                timeout = self._run_once()
            except Exception:  # the sender must outlive anything (disk errors, bugs)
                LOGGER.exception("result sender: unexpected error; retrying")
                timeout = self._settings.retry_initial_s
            self._wake.wait(timeout=timeout)
            self._wake.clear()

    def _run_once(self) -> float:
        """Attempt every destination that is due; return how long to sleep."""
        now = self._clock()
        for state in self._states:
            if self._stop_event.is_set():
                break
            if now >= state.next_attempt and self._outbox.pending(state.folder):
                self._attempt(state)
        now = self._clock()
        waits = [
            s.next_attempt - now
            for s in self._states
            if s.next_attempt > now and self._outbox.pending(s.folder)
        ]
        return max(0.05, min(waits)) if waits else 30.0

    def flush_once(self) -> bool:
        """One attempt per destination, ignoring backoff (shutdown); True if all delivered."""
        ok = True
        for state in self._states:
            if self._outbox.pending(state.folder):
                ok = self._attempt(state) and ok
        return ok

    # ------------------------------------------------------------------ internals
    def _attempt(self, state: _DestinationState) -> bool:
        with self._attempt_lock:
            delivered_all = self._deliver(state)
        now = self._clock()
        if delivered_all:
            if state.failures:
                LOGGER.info("destination %s reachable again", state.destination)
                audit_event(
                    "destination_recovered",
                    destination=str(state.destination),
                    failed_attempts=state.failures,
                    outcome="recovered",
                )
            state.failures = 0
            state.backoff_s = self._settings.retry_initial_s
            state.next_attempt = now
        else:
            state.failures += 1
            state.next_attempt = now + state.backoff_s
            LOGGER.warning(
                "destination %s: delivery failed (attempt %d); %d result set(s) kept in the "
                "outbox, next try in %.0f s",
                state.destination,
                state.failures,
                len(self._outbox.pending(state.folder)),
                state.backoff_s,
            )
            if state.failures == 1:
                # One record per outage, not per retry: the SIEM (and `hippo-scp status`)
                # learns when results stopped flowing and why; the recovery closes it.
                audit_event(
                    "destination_unreachable",
                    destination=str(state.destination),
                    waiting=len(self._outbox.pending(state.folder)),
                    outcome="failed",
                    reason=state.last_error or "unknown",
                )
            state.backoff_s = min(state.backoff_s * 2, self._settings.retry_max_s)
        return delivered_all

    def _deliver(self, state: _DestinationState) -> bool:
        items = self._outbox.pending(state.folder)
        files: list[tuple[OutboxItem, Path]] = [(i, f) for i in items for f in i.files()]
        if not files:
            for item in items:  # a set whose files are all gone: tidy up
                self._outbox.delivered(item, item.path / "none.dcm")
            return True
        syntaxes: dict[str, set[str]] = {}
        readable: list[tuple[OutboxItem, Path]] = []
        for item, path in files:
            try:
                meta = read_file_meta_info(path)
                syntaxes.setdefault(str(meta.MediaStorageSOPClassUID), set()).add(
                    str(meta.TransferSyntaxUID)
                )
                readable.append((item, path))
            except Exception as error:
                # Retrying cannot fix a corrupt file, and it would block everything behind it.
                moved = self._outbox.quarantine(item, path)
                LOGGER.error(
                    "outbox file %s is unreadable (%s); moved to %s",
                    path.name,
                    type(error).__name__,
                    moved,
                )
        files = readable
        if not files:
            return True
        settings = self._settings
        ae = AE(ae_title=settings.calling_ae_title)
        ae.requested_contexts = requested_contexts(syntaxes)
        ae.acse_timeout = settings.acse_timeout_s
        ae.dimse_timeout = settings.dimse_timeout_s
        ae.network_timeout = settings.network_timeout_s
        ae.connection_timeout = settings.connection_timeout_s
        ae.maximum_pdu_size = settings.max_pdu_bytes
        dest = state.destination
        t_assoc = time.perf_counter()
        tls_args = None
        if dest.tls:
            if settings.tls_context is None:
                LOGGER.error("destination %s needs TLS but no tls section is configured", dest)
                state.last_error = "needs TLS but no tls section is configured"
                return False
            tls_args = (settings.tls_context, dest.host)
        try:
            assoc = ae.associate(
                dest.host,
                dest.port,
                ae_title=dest.ae_title,
                max_pdu=settings.max_pdu_bytes,
                tls_args=tls_args,
                evt_handlers=[(evt.EVT_CONN_OPEN, disable_nagle)],
            )
        except Exception as error:
            LOGGER.warning("destination %s: cannot associate: %s", dest, error)
            state.last_error = f"cannot associate: {error}"
            return False
        if not assoc.is_established:
            outcome = "rejected" if assoc.is_rejected else "unreachable or aborted"
            LOGGER.warning("destination %s: association %s", dest, outcome)
            state.last_error = f"association {outcome}"
            return False
        keep_responses_for_caller(assoc)
        assoc_ms = (time.perf_counter() - t_assoc) * 1000
        ok = True
        try:
            current: OutboxItem | None = None
            item_ms = assoc_ms
            summary: dict = {}
            for item, path in files:
                if current is None or item.path != current.path:
                    # Read the summary now: the folder is removed with its last file.
                    summary = item.summary()
                    current, item_ms = item, (assoc_ms if current is None else 0.0)
                if not path.exists():
                    continue
                t0 = time.perf_counter()
                try:
                    status = assoc.send_c_store(path)
                except Exception as error:
                    LOGGER.warning("destination %s: C-STORE failed: %s", dest, error)
                    state.last_error = f"C-STORE failed: {error}"
                    ok = False
                    break
                item_ms += (time.perf_counter() - t0) * 1000
                code = int(getattr(status, "Status", -1)) if status else -1
                if code not in STORED_STATUSES:
                    answer = f"0x{code:04X}" if code >= 0 else NO_ANSWER
                    LOGGER.warning(
                        "destination %s: C-STORE of %s answered %s", dest, path.name, answer
                    )
                    state.last_error = f"C-STORE answered {answer}"
                    ok = False
                    break
                if self._outbox.delivered(item, path):
                    self.delivered_sets += 1
                    self._log_delivery(item, summary, dest, item_ms)
                if not assoc.is_established:
                    state.last_error = "association ended during the transfer"
                    ok = False
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        return ok

    def _log_delivery(
        self, item: OutboxItem, summary: dict, dest: Destination, send_ms: float
    ) -> None:
        timings = dict(summary.get("timings_ms", {}))
        timings["send"] = round(send_ms, 1)
        volumes = summary.get("volumes", {})
        parts = ", ".join(
            f"{name} {timings[name]:.0f} ms"
            for name in (
                "receive",
                "queue",
                "assemble",
                "infer",
                "priors",
                "encode",
                "write",
                "grace",
                "send",
            )
            if name in timings
        )
        vols = ", ".join(
            f"{name.removesuffix('_mm3')} {value:.1f} mm3" for name, value in volumes.items()
        )
        LOGGER.info(
            "series %s: results delivered to %s (%s instances, trigger %s): %s; %s",
            summary.get("series", item.item_id),
            dest,
            summary.get("instances", "?"),
            summary.get("trigger", "?"),
            parts,
            vols,
        )
        audit_event(
            "results_sent",
            destination=str(dest),
            series=summary.get("series"),
            outcome="success",
        )
