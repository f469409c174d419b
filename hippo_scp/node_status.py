"""What an administrator asks of a running node, answered from outside it.

``hippo-scp status`` (see :mod:`hippo_scp.cli.status`) reads what the node leaves on disk and
asks the node itself one question, so it works while the node runs, after it stopped, and from
a monitoring script (its exit status says whether anything needs a person):

* **Is it up?** A C-ECHO to the node's AE title and port, as Orthanc's "Test" button or
  ``echoscu`` would do it (a refusal names the reason: wrong AE title, calling AE not allowed).
* **Is anything stuck?** The outbox: result sets waiting per destination and the age of the
  oldest (sets leave the outbox only when the PACS has stored them), sets waiting for a folder
  that is no longer a destination, files in quarantine.
* **What did it do lately?** The audit log over a time window: associations by outcome and
  rejection reason, instances stored and refused, series analysed with results / refused
  (bad input, by error kind) / failed, result sets delivered per destination, destination
  outages (and which destination is failing now, since when, why), starts and stops.

Nothing here changes state: the outbox is listed, never prepared or cleaned; patient data is
never read (the audit log carries none, and summaries are not opened).
"""

from __future__ import annotations

import json
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hippo_scp.config import NodeConfig
from hippo_scp.network.outbox import QUARANTINE_FOLDER, Outbox, destination_folder_name
from hippo_scp.network.tls import client_context

__all__ = [
    "AuditSummary",
    "EchoResult",
    "NodeStatus",
    "OutboxBacklog",
    "OutboxFolder",
    "echo_node",
    "node_status",
    "read_outbox_backlog",
    "summarise_audit_log",
]

#: Destinations listed by name in the delivery line (the busiest first).
MAX_LISTED_DESTINATIONS = 5


@dataclass(frozen=True)
class EchoResult:
    """Outcome of one C-ECHO to the node."""

    address: str
    answered: bool
    detail: str  # "0x0000 in 12 ms", "association rejected: ...", "no answer: ..."


@dataclass(frozen=True)
class OutboxFolder:
    """Result sets waiting in one destination folder of the outbox."""

    name: str
    configured: bool  # False: a destination removed from the configuration (never sent)
    waiting: int
    oldest_age_s: float | None


@dataclass(frozen=True)
class OutboxBacklog:
    directory: Path
    exists: bool
    folders: list[OutboxFolder]
    quarantined_files: int

    @property
    def waiting(self) -> int:
        return sum(f.waiting for f in self.folders if f.configured)

    @property
    def oldest_age_s(self) -> float | None:
        ages = [f.oldest_age_s for f in self.folders if f.configured and f.oldest_age_s is not None]
        return max(ages) if ages else None


@dataclass
class AuditSummary:
    """Counts of audit events since ``since`` (absent log: ``exists`` False, all zero)."""

    path: Path | None
    exists: bool
    since: datetime
    events: Counter[str] = field(default_factory=Counter)
    rejection_reasons: Counter[str] = field(default_factory=Counter)
    instances_stored: int = 0
    instances_refused: int = 0
    results_sent: Counter[str] = field(default_factory=Counter)  # per destination
    analyses: Counter[str] = field(default_factory=Counter)  # outcome -> series
    refusal_kinds: Counter[str] = field(default_factory=Counter)  # "SliceGapError" -> series
    outages: Counter[str] = field(default_factory=Counter)  # destination -> outages begun
    #: prior lookups by what they gave (compared / none / failed / unavailable)
    priors: Counter[str] = field(default_factory=Counter)
    last_prior_failure: str | None = None
    #: Destinations whose last outage record (whole log) has no recovery: since, reason.
    failing: dict[str, tuple[str, str]] = field(default_factory=dict)
    last_started: str | None = None
    last_stopped: str | None = None
    unreadable_lines: int = 0


@dataclass(frozen=True)
class NodeStatus:
    """Everything ``hippo-scp status`` reports, and the problems that need a person."""

    ae_title: str
    echo: EchoResult | None
    outbox: OutboxBacklog
    audit: AuditSummary
    stale_after_s: float

    @property
    def problems(self) -> list[str]:
        found = []
        if self.echo is not None and not self.echo.answered:
            found.append(f"the node does not answer C-ECHO at {self.echo.address}")
        oldest = self.outbox.oldest_age_s
        if oldest is not None and oldest > self.stale_after_s:
            found.append(
                f"results have waited {_duration(oldest)} in the outbox "
                f"(more than {_duration(self.stale_after_s)}): is the PACS reachable?"
            )
        if self.outbox.quarantined_files:
            found.append(f"{self.outbox.quarantined_files} file(s) in the outbox quarantine")
        return found


def echo_node(
    host: str,
    port: int,
    called_ae_title: str,
    calling_ae_title: str,
    timeout_s: float = 5.0,
    tls_context: ssl.SSLContext | None = None,
) -> EchoResult:
    """One C-ECHO (Verification SCU), the way a PACS tests a modality (over DICOM TLS when
    ``tls_context`` is given)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    address = f"{called_ae_title}@{host}:{port}"
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    started = time.perf_counter()
    tls_args = (tls_context, None) if tls_context is not None else None
    assoc = ae.associate(host, port, ae_title=called_ae_title, tls_args=tls_args)
    try:
        if assoc.is_rejected:
            reason = assoc.acceptor.primitive.reason_str if assoc.acceptor.primitive else "?"
            return EchoResult(address, False, f"association rejected: {reason}")
        if not assoc.is_established:
            why = "TLS handshake failed or " if tls_context is not None else ""
            return EchoResult(address, False, f"{why}connection refused or timed out")
        status = assoc.send_c_echo()
        elapsed_ms = (time.perf_counter() - started) * 1000
        if status and status.get("Status") == 0x0000:
            return EchoResult(address, True, f"status 0x0000 in {elapsed_ms:.0f} ms")
        code = f"0x{status.Status:04X}" if status and "Status" in status else "no response"
        return EchoResult(address, False, f"C-ECHO answered {code}")
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def read_outbox_backlog(config: NodeConfig, now_s: float | None = None) -> OutboxBacklog:
    """List the outbox without touching it (item names start with their creation time, ns)."""
    now_s = time.time() if now_s is None else now_s
    directory = Path(config.outbox.directory)
    configured = {destination_folder_name(d.ae_title, d.host, d.port) for d in config.destinations}
    if not directory.is_dir():
        return OutboxBacklog(directory, False, [], 0)
    outbox = Outbox(directory, [])  # only listed: pending() reads, nothing is created
    folders = []
    names = (p.name for p in directory.iterdir() if p.is_dir() and p.name != QUARANTINE_FOLDER)
    for name in sorted(names):
        items = outbox.pending(name)
        known = [t for t in (item.created_s for item in items) if t is not None]
        oldest = now_s - min(known) if known else None
        folders.append(OutboxFolder(name, name in configured, len(items), oldest))
    for name in sorted(configured - {f.name for f in folders}):
        folders.append(OutboxFolder(name, True, 0, None))
    quarantine = directory / QUARANTINE_FOLDER
    quarantined = sum(1 for p in quarantine.rglob("*.dcm")) if quarantine.is_dir() else 0
    return OutboxBacklog(directory, True, folders, quarantined)


def summarise_audit_log(path: Path | None, since: datetime) -> AuditSummary:
    """Count the audit events at or after ``since`` (timezone-aware)."""
    summary = AuditSummary(path, bool(path and path.is_file()), since)
    if not summary.exists:
        return summary
    assert path is not None
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                record = json.loads(line)
                when = datetime.fromisoformat(record["time"])
                event = str(record["event"])
            except (ValueError, KeyError, TypeError):
                summary.unreadable_lines += bool(line.strip())
                continue
            destination = str(record.get("destination", "?"))
            if event == "destination_unreachable":  # open outages: over the whole log
                summary.failing[destination] = (record["time"], str(record.get("reason", "?")))
            elif event == "destination_recovered":
                summary.failing.pop(destination, None)
            if when < since:
                continue
            if event == "destination_unreachable":
                summary.outages[destination] += 1
            summary.events[event] += 1
            if event == "association_rejected":
                summary.rejection_reasons[str(record.get("reason", "?"))] += 1
            summary.instances_stored += int(record.get("instances_stored", 0) or 0)
            summary.instances_refused += int(record.get("instances_refused", 0) or 0)
            if event == "series_analysis":
                outcome = str(record.get("outcome", "?"))
                summary.analyses[outcome] += 1
                if outcome != "results_queued":
                    summary.refusal_kinds[_reason_kind(str(record.get("reason", "?")))] += 1
                if "prior" in record:
                    summary.priors[str(record["prior"])] += 1
                    if record["prior"] == "failed":
                        summary.last_prior_failure = str(record.get("prior_reason", "?"))
            if event == "results_sent" and record.get("outcome") == "success":
                summary.results_sent[destination] += 1
            if event == "node_started":
                summary.last_started = record["time"]
            if event == "node_stopped":
                summary.last_stopped = record["time"]
    return summary


def _reason_kind(reason: str) -> str:
    """``"SliceGapError: slice 7 ..."`` -> ``"SliceGapError"``; other reasons as they are."""
    head = reason.split(":", 1)[0]
    return head if head.endswith("Error") else reason


def node_status(
    config: NodeConfig,
    *,
    window: timedelta = timedelta(hours=24),
    stale_after_s: float = 600.0,
    echo: bool = True,
    host: str | None = None,
    calling_ae_title: str = "HIPPOSTATUS",
) -> NodeStatus:
    """Gather the status of the node ``config`` describes (see the module docstring)."""
    echo_result = None
    if echo:
        target = host or _connect_address(config.node.bind_address)
        try:
            context = _own_node_tls_context(config) if config.tls.enabled else None
        except (OSError, ssl.SSLError) as error:
            address = f"{config.node.ae_title}@{target}:{config.node.port}"
            echo_result = EchoResult(address, False, f"TLS set-up failed: {error}")
        else:
            echo_result = echo_node(
                target,
                config.node.port,
                config.node.ae_title,
                calling_ae_title,
                tls_context=context,
            )
    since = datetime.now(UTC) - window
    return NodeStatus(
        ae_title=config.node.ae_title,
        echo=echo_result,
        outbox=read_outbox_backlog(config),
        audit=summarise_audit_log(config.logging.audit_log, since),
        stale_after_s=stale_after_s,
    )


def _own_node_tls_context(config: NodeConfig) -> ssl.SSLContext:
    """The sender's TLS client context, made to check our own node: its certificate is
    verified against the CA bundle or, self-signed, against itself; not against the host name
    (the node is asked by address), and ours is presented for require_client_certificate."""
    context = client_context(config.tls)
    context.check_hostname = False
    if config.tls.certificate is not None:
        context.load_verify_locations(cafile=str(config.tls.certificate))
    return context


def _connect_address(bind_address: str) -> str:
    """A node bound to every interface is asked on this machine's loopback."""
    return "127.0.0.1" if bind_address in ("0.0.0.0", "", "::") else bind_address


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def format_status(status: NodeStatus) -> str:
    """The human-readable report ``hippo-scp status`` prints."""
    out = []
    if status.echo is None:
        out.append(f"node {status.ae_title}: C-ECHO not checked")
    else:
        verdict = "answers C-ECHO" if status.echo.answered else "does NOT answer C-ECHO"
        out.append(f"node {status.echo.address}: {verdict} ({status.echo.detail})")
    box = status.outbox
    if not box.exists:
        out.append(f"outbox {box.directory}: not created yet (the node has not run here)")
    else:
        out.append(f"outbox {box.directory}:")
        for folder in box.folders:
            age = f", oldest {_duration(folder.oldest_age_s)}" if folder.oldest_age_s else ""
            note = "" if folder.configured else " (no longer a destination: never sent)"
            out.append(f"  {folder.name:<40} {folder.waiting} result set(s) waiting{age}{note}")
        out.append(f"  {QUARANTINE_FOLDER:<40} {box.quarantined_files} file(s)")
    audit = status.audit
    if audit.path is None:
        out.append("audit log disabled (logging.audit_log: null): no activity counts")
    elif not audit.exists:
        out.append(f"audit log {audit.path}: absent (logging.audit_log)")
    else:
        ev = audit.events
        since = audit.since.astimezone().strftime("%Y-%m-%d %H:%M")
        out.append(f"since {since} (audit log {audit.path}):")
        reasons = ", ".join(f"{r}: {n}" for r, n in audit.rejection_reasons.most_common())
        out.append(
            f"  associations: {ev['association_accepted']} accepted, "
            f"{ev['association_rejected']} rejected{f' ({reasons})' if reasons else ''}, "
            f"{ev['association_aborted']} aborted, {ev['association_closed']} dropped"
        )
        out.append(
            f"  instances: {audit.instances_stored} stored, {audit.instances_refused} refused"
        )
        kinds = ", ".join(f"{k}: {n}" for k, n in audit.refusal_kinds.most_common())
        out.append(
            f"  series analysed: {audit.analyses['results_queued']} with results, "
            f"{audit.analyses['refused']} refused, {audit.analyses['failed']} failed"
            + (f" ({kinds})" if kinds else "")
        )
        if audit.priors:
            p = audit.priors
            failure = f" (last: {audit.last_prior_failure})" if audit.last_prior_failure else ""
            out.append(
                f"  prior comparisons: {p['compared']} compared, {p['none']} without an "
                f"earlier result, {p['failed']} failed{failure}, {p['unavailable']} not "
                "possible (no PatientID or StudyDate)"
            )
        top = audit.results_sent.most_common(MAX_LISTED_DESTINATIONS)
        sent = ", ".join(f"{d}: {n}" for d, n in top) or "none"
        if len(audit.results_sent) > len(top):
            sent += f", {len(audit.results_sent) - len(top)} other destination(s)"
        out.append(f"  result sets delivered: {sum(audit.results_sent.values())} ({sent})")
        if audit.outages:
            begun = ", ".join(f"{d}: {n}" for d, n in audit.outages.most_common())
            out.append(f"  destination outages begun: {sum(audit.outages.values())} ({begun})")
        for destination, (since_time, reason) in sorted(audit.failing.items()):
            out.append(f"  {destination} failing since {since_time}: {reason}")
        out.append(
            f"  node started {ev['node_started']}x (last {audit.last_started or '-'}), "
            f"stopped {ev['node_stopped']}x (last {audit.last_stopped or '-'})"
        )
        if audit.unreadable_lines:
            out.append(f"  {audit.unreadable_lines} unreadable line(s) skipped")
    problems = status.problems
    out.append("status: OK" if not problems else "status: ATTENTION")
    out += [f"  - {p}" for p in problems]
    return "\n".join(out)
