"""The Storage SCP: a pynetdicom AE whose handlers only file instances and report events.

Handlers run on the association's own thread and hold up the sender while they run, so each
does O(1) work and hands off: EVT_C_STORE parses the header (not the pixel data), files the
bytes in the :class:`~hippo_scp.assembly.series_store.SeriesStore` and returns a status;
EVT_RELEASED / EVT_ABORTED / EVT_CONN_CLOSE tell the store the association ended. Analysis
and delivery happen on other threads (``pipeline.worker``, ``network.sender``).

With the durable spool enabled (:mod:`hippo_scp.assembly.spool`) the C-STORE handler also
writes each kept instance to disk (no fsync) and answers 0xA700 when it cannot; when the
A-RELEASE-RQ arrives (EVT_ACSE_RECV, on the association's thread, *before* pynetdicom sends
the A-RELEASE-RP) the association's instances are fsynced and committed, so a sender that got
its release response has its series on disk; abort / connection loss deletes them. That disk
work is the price of durability and is only paid when the spool is on.

Access control happens in EVT_REQUESTED (before negotiation) so one place decides, audits and
answers with the A-ASSOCIATE-RJ reason PS3.8 defines: called AE title not recognised (0x07),
calling AE title not recognised (0x03, also used for a known AE calling from a host it is not
allowed to use).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import socket
import threading
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import A_RELEASE
from pynetdicom.transport import ThreadedAssociationServer

from hippo_scp.assembly.headers import BEFORE_PIXEL_DATA, SERIES_INSTANCE_UID, read_header
from hippo_scp.assembly.series_store import SeriesStore, StoreOutcome, series_label
from hippo_scp.assembly.spool import Spool
from hippo_scp.config import AccessSection, NodeConfig
from hippo_scp.logging_setup import PATIENT_GUARD, audit_event
from hippo_scp.network.association_limit import (
    LOCAL_LIMIT_EXCEEDED,
    AssociationLimit,
    thread_backstop,
)
from hippo_scp.network.event_reactor import install_event_driven_reactors
from hippo_scp.network.presentation import per_association_contexts, supported_contexts
from hippo_scp.network.socket_tuning import disable_nagle, install_pdu_read_tuning
from hippo_scp.network.store_response import use_fast_store_responses
from hippo_scp.network.tls import server_context

if TYPE_CHECKING:
    from hippo_scp.network.retrieval_inbox import RetrievalInbox

LOGGER = logging.getLogger(__name__)

#: C-STORE statuses (PS3.4 B.2.3).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000

#: A-ASSOCIATE-RJ (result, source, diagnostic): rejected-permanent, service-user.
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)

_ASSOCIATION_IDS = itertools.count(1)
#: How long a closed connection waits for EVT_ABORTED before it is audited as 'closed'.
AUDIT_CLOSE_DELAY_S = 1.0


def _parse_header(raw: BytesIO, syntax: UID, *, full: bool) -> Dataset:
    """The data set's elements up to Pixel Data (``full``) or only up to the Series Instance
    UID: all a C-STORE of a series the node already knows needs (UIDs, patient identifiers
    for the log guard). That skips the image, private and later groups: a GE MR header
    parses in 0.64 ms instead of 0.81 ms (``bench_node_tuning.py --parts micro``)."""
    return read_header(raw, syntax, through=BEFORE_PIXEL_DATA if full else SERIES_INSTANCE_UID)


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    reason: str
    reject: tuple[int, int, int] | None = None


@dataclass
class AssociationCounts:
    """What one association carried, for its audit record."""

    stores_received: int = 0
    instances_stored: int = 0
    instances_refused: int = 0


@dataclass
class AccessPolicy:
    """Who may associate: the called AE title, calling AE titles, and their hosts."""

    own_ae_title: str
    require_called_ae_title: bool = True
    allowed_calling: set[str] = field(default_factory=set)
    #: calling AE title -> hosts it may call from (empty set: any host)
    peer_hosts: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, own_ae_title: str, access: AccessSection) -> AccessPolicy:
        peer_hosts: dict[str, set[str]] = {}
        for peer in access.allowed_peers:
            peer_hosts.setdefault(peer.ae_title.strip(), set()).update(
                h.strip() for h in peer.hosts
            )
        return cls(
            own_ae_title=own_ae_title.strip(),
            require_called_ae_title=access.require_called_ae_title,
            allowed_calling={t.strip() for t in access.allowed_calling_ae_titles},
            peer_hosts=peer_hosts,
        )

    def check(self, calling: str, called: str, address: str) -> AccessDecision:
        calling, called = calling.strip(), called.strip()
        if self.require_called_ae_title and called != self.own_ae_title:
            return AccessDecision(False, "called AE title not recognised", REJECT_CALLED_AE)
        restricted = bool(self.allowed_calling or self.peer_hosts)
        if not restricted:
            return AccessDecision(True, "accepted")
        if calling in self.peer_hosts:
            hosts = self.peer_hosts[calling]
            if hosts and address not in hosts and not _resolves_to(hosts, address):
                return AccessDecision(
                    False, "calling AE title not allowed from this address", REJECT_CALLING_AE
                )
            return AccessDecision(True, "accepted")
        if calling in self.allowed_calling:
            return AccessDecision(True, "accepted")
        return AccessDecision(False, "calling AE title not recognised", REJECT_CALLING_AE)


def _resolves_to(hosts: set[str], address: str) -> bool:
    """Whether a configured host *name* resolves to ``address`` (only asked on a mismatch)."""
    for host in hosts:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            continue
        if any(info[4][0] == address for info in infos):
            return True
    return False


def _association_id(assoc: Any) -> int:
    """A process-unique id for an association (thread ids and ``id()`` can be reused)."""
    ident = getattr(assoc, "_hippo_id", None)
    if ident is None:
        ident = next(_ASSOCIATION_IDS)
        assoc._hippo_id = ident
    return ident


def _calling_ae_title(event: evt.Event) -> str:
    """The sender's AE title (the store trusts some senders to send whole series)."""
    return _peer(event.assoc)[0]


def _peer(assoc: Any) -> tuple[str, str, int | None]:
    requestor = assoc.requestor
    calling = requestor.ae_title
    primitive = getattr(requestor, "primitive", None)
    if not calling and primitive is not None:  # EVT_REQUESTED: not copied over yet
        calling = primitive.calling_ae_title
    try:
        address, port = requestor.address, requestor.port
    except (ValueError, AttributeError):
        address, port = "?", None
    return str(calling or "").strip(), str(address), port


class StorageReceiver:
    """Owns the AE, the association server and the event handlers."""

    def __init__(
        self,
        config: NodeConfig,
        store: SeriesStore,
        *,
        on_activity: Callable[[], None] = lambda: None,
        spool: Spool | None = None,
        inbox: RetrievalInbox | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._spool = spool
        #: instances the prior lookup C-MOVEs here are claimed before the store sees them
        self._inbox = inbox
        self._on_activity = on_activity
        self._counts: dict[int, AssociationCounts] = {}
        self._counts_lock = threading.Lock()
        #: ids of associations whose end is audited (bounded: only recent ones matter)
        self._ended: deque[int] = deque(maxlen=4096)
        self._policy = AccessPolicy.from_config(config.node.ae_title, config.access)
        self._limit = AssociationLimit(config.node.max_associations)
        #: parse headers of known series only up to the Series Instance UID (_parse_header);
        #: HIPPO_SHORT_HEADERS=0 parses every header up to Pixel Data (for comparisons)
        self._short_headers = os.environ.get("HIPPO_SHORT_HEADERS", "1") != "0"
        self.ae = self._build_ae()
        self.server: ThreadedAssociationServer | None = None

    def _build_ae(self) -> AE:
        node = self._config.node
        # quick ACKs (senders with Nagle on are not throttled by us) and whole-PDU reads
        install_pdu_read_tuning()
        install_event_driven_reactors()  # no 1 ms polling between a message and its answer
        ae = AE(ae_title=node.ae_title)
        ae.supported_contexts = supported_contexts()
        ae.maximum_pdu_size = node.max_pdu_bytes
        # node.max_associations is enforced in EVT_REQUESTED (AssociationLimit); pynetdicom's
        # thread count would also count associations that are over but whose thread lingers
        ae.maximum_associations = thread_backstop(node.max_associations)
        ae.acse_timeout = node.acse_timeout_s
        ae.dimse_timeout = node.dimse_timeout_s
        ae.network_timeout = node.network_timeout_s
        # Access control is done in EVT_REQUESTED (see module docstring); keep pynetdicom's
        # own checks off so there is exactly one decision and one audit line.
        ae.require_called_aet = False
        ae.require_calling_aet = []
        return ae

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        spool = [(evt.EVT_ACSE_RECV, self._on_acse_recv)] if self._spool is not None else []
        return spool + [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_C_ECHO, self._on_c_echo),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
        ]

    def start(self) -> tuple[str, int]:
        """Start listening (non-blocking); returns the bound (address, port)."""
        node = self._config.node
        self.server = self.ae.start_server(
            (node.bind_address, node.port),
            block=False,
            contexts=per_association_contexts(self.ae.supported_contexts),
            evt_handlers=self.handlers(),
            ssl_context=server_context(self._config.tls),
        )
        address, port = self.server.server_address[:2]
        return str(address), int(port)

    def stop_accepting(self) -> None:
        """Close the listening socket; associations in progress finish on their threads."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def active_associations(self) -> int:
        """Established inbound associations: the ones that may be carrying a series now.

        A TCP connection that has not (yet) been accepted as an association -- a load balancer's
        or monitoring system's port probe, a peer still negotiating -- does not count: shutdown
        must not wait ``acse_timeout_s`` for it, and aborting it loses nothing.
        """
        return len([a for a in self.ae.active_associations if a.is_acceptor and a.is_established])

    def shutdown(self) -> None:
        """Stop listening, drop connections that never became associations, abort the rest."""
        self.stop_accepting()
        # A port probe (or a peer still negotiating) is closed at the transport level: the
        # A-ABORT that ``ae.shutdown()`` sends is rejected by pynetdicom's state machine while
        # no A-ASSOCIATE-RQ has arrived (Sta2), with an exception in the reactor thread.
        unestablished = [
            a for a in self.ae.active_associations if a.is_acceptor and not a.is_established
        ]
        for assoc in unestablished:
            transport = getattr(assoc.dul, "socket", None)
            if transport is not None:
                with contextlib.suppress(OSError):
                    transport.close()
        self.ae.shutdown()

    # ------------------------------------------------------------------ handlers
    def _on_conn_open(self, event: evt.Event) -> None:
        """Disable Nagle (DIMSE responses are small and latency-bound); bound blocking reads;
        C-STORE responses pre-encoded (:mod:`hippo_scp.network.store_response`)."""
        _association_id(event.assoc)
        disable_nagle(event)
        use_fast_store_responses(event)
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            # pynetdicom reads a PDU with blocking recv() calls once select() says data is
            # there; a peer that announces a longer PDU than it sends would hold the thread
            # and an association slot forever. A socket timeout turns that into a closed
            # connection (pynetdicom maps the timeout to Evt17) after network_timeout_s.
            with contextlib.suppress(OSError):
                sock.settimeout(self._config.node.network_timeout_s)

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        calling, address, port = _peer(assoc)
        called = str(getattr(assoc.requestor.primitive, "called_ae_title", "") or "").strip()
        decision = self._policy.check(calling, called, address)
        if decision.allowed and not self._limit.admit(assoc):
            decision = AccessDecision(
                False,
                f"node.max_associations ({self._limit.maximum}) in service: "
                + ", ".join(self._limit.describe_in_service()),
                LOCAL_LIMIT_EXCEEDED,
            )
        if decision.allowed:
            return
        assert decision.reject is not None
        LOGGER.warning(
            "association rejected: %s (calling %r, called %r, from %s)",
            decision.reason,
            calling,
            called,
            address,
        )
        audit_event(
            "association_rejected",
            calling_ae_title=calling,
            called_ae_title=called,
            peer_address=address,
            peer_port=port,
            outcome="rejected",
            reason=decision.reason,
        )
        # Same sequence pynetdicom uses for its own rejections: send A-ASSOCIATE-RJ, then
        # wait for the DUL to finish (the peer closes the connection after the RJ).
        assoc.acse.send_reject(*decision.reject)
        assoc.kill()

    def _on_accepted(self, event: evt.Event) -> None:
        event.assoc._hippo_accepted = True
        calling, address, port = _peer(event.assoc)
        audit_event(
            "association_accepted",
            association=_association_id(event.assoc),
            calling_ae_title=calling,
            peer_address=address,
            peer_port=port,
            outcome="accepted",
        )

    def _on_rejected(self, event: evt.Event) -> None:
        """pynetdicom's own rejections; the only one left on is its thread count backstop
        (:func:`~hippo_scp.network.association_limit.thread_backstop`)."""
        calling, address, port = _peer(event.assoc)
        LOGGER.warning(
            "association rejected: %d association threads still running (calling %r, from %s)",
            self.ae.maximum_associations,
            calling,
            address,
        )
        audit_event(
            "association_rejected",
            calling_ae_title=calling,
            peer_address=address,
            peer_port=port,
            outcome="rejected",
            reason="association thread limit reached",
        )

    def _on_c_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _on_c_store(self, event: evt.Event) -> int:
        status = self._file_instance(event)
        counts = self._association_counts(_association_id(event.assoc))
        counts.stores_received += 1
        if status == STATUS_SUCCESS:
            counts.instances_stored += 1
        else:
            counts.instances_refused += 1
        return status

    def _association_counts(self, association_id: int) -> AssociationCounts:
        with self._counts_lock:
            return self._counts.setdefault(association_id, AssociationCounts())

    def _file_instance(self, event: evt.Event) -> int:
        """File the instance; answer at once. Never raises (pynetdicom would answer 0xC211)."""
        try:
            ts = UID(event.context.transfer_syntax)
            raw: BytesIO = event.request.DataSet
            if ts.is_deflated:
                inflated = zlib.decompress(raw.getvalue(), -zlib.MAX_WBITS)
                raw, ts = BytesIO(inflated), ExplicitVRLittleEndian
            short = self._short_headers
            header = _parse_header(raw, ts, full=not short)
            PATIENT_GUARD.remember(header)
            if self._inbox is not None and self._inbox.claim(
                str(header.get("SeriesInstanceUID", "") or ""),
                sop_instance_uid=str(header.get("SOPInstanceUID", "") or ""),
                sop_class_uid=str(header.get("SOPClassUID", "") or ""),
                transfer_syntax=str(ts),
                data=raw.getvalue,
                calling_ae_title=_calling_ae_title(event),
            ):
                return STATUS_SUCCESS  # a series the prior lookup is retrieving (C-MOVE)
            size = raw.getbuffer().nbytes
            association_id = _association_id(event.assoc)
            outcome = self._store.offer(
                association_id,
                header,
                raw.getvalue,
                size,
                str(ts),
                full_header=functools.partial(_parse_header, raw, ts, full=True) if short else None,
            )
        except Exception as error:
            LOGGER.warning(
                "C-STORE refused: the data set cannot be parsed (%s)", type(error).__name__
            )
            return STATUS_CANNOT_UNDERSTAND
        if self._spool is not None:
            if outcome is StoreOutcome.STORED:
                return self._spool_write(association_id, header, raw, str(ts))
            if outcome is StoreOutcome.OUT_OF_RESOURCES:
                self._spool_drop(header)
        if outcome is StoreOutcome.OUT_OF_RESOURCES:
            return STATUS_OUT_OF_RESOURCES
        if outcome is StoreOutcome.INVALID:
            LOGGER.warning("C-STORE refused: Study/Series/SOP Instance UID missing")
            return STATUS_CANNOT_UNDERSTAND
        return STATUS_SUCCESS

    def _spool_write(self, association_id: int, header: Any, raw: BytesIO, ts: str) -> int:
        """Durable copy of a kept instance; 0xA700 (series refused) when it cannot be made."""
        assert self._spool is not None
        key = (str(header.StudyInstanceUID), str(header.SeriesInstanceUID))
        try:
            with raw.getbuffer() as view:
                self._spool.write(
                    association_id,
                    key,
                    str(header.get("SOPClassUID", "")),
                    str(header.SOPInstanceUID),
                    ts,
                    view,
                )
        except OSError as error:
            label = series_label(key[1])
            LOGGER.error(
                "C-STORE refused with 0xA700: the spool copy cannot be written (%s); "
                "series %s is not analysed until it is sent again",
                error.strerror or type(error).__name__,
                label,
            )
            self._store.refuse_series(key, "its spool copy could not be written")
            self._spool_drop(header)
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS

    def _spool_drop(self, header: Any) -> None:
        self._spool_drop_key((str(header.StudyInstanceUID), str(header.SeriesInstanceUID)))

    def _spool_drop_key(self, key: tuple[str, str]) -> None:
        assert self._spool is not None
        try:
            self._spool.drop(key)
        except OSError as error:
            LOGGER.error("spool: cannot delete a series (%s)", error.strerror or error)

    def _on_acse_recv(self, event: evt.Event) -> None:
        """A-RELEASE-RQ received: commit to the spool before the A-RELEASE-RP goes out."""
        primitive = getattr(event, "primitive", None)
        if (
            isinstance(primitive, A_RELEASE)
            and primitive.result is None
            and event.assoc.is_acceptor
        ):
            self._release_with_spool(_association_id(event.assoc), _calling_ae_title(event))

    def _on_released(self, event: evt.Event) -> None:
        association_id = _association_id(event.assoc)
        if self._spool is None:
            self._store.association_released(
                association_id, calling_ae_title=_calling_ae_title(event)
            )
        else:  # normally done already on the A-RELEASE-RQ; then this finds nothing left
            self._release_with_spool(association_id, _calling_ae_title(event))
        self._association_ended(event, "released")

    def _release_with_spool(self, association_id: int, calling_ae_title: str = "") -> None:
        """Commit the association's instances in the spool, then in the store, under the
        spool lock (see :mod:`hippo_scp.assembly.spool`). A series whose commit fails is
        still analysed from memory, but is no longer in the spool (never a partial copy)."""
        assert self._spool is not None
        spool, store = self._spool, self._store
        error: OSError | None = None
        try:
            spool.sync_pending(association_id)
        except OSError as sync_error:
            error = sync_error
        with spool.lock:
            keys = spool.pending_series(association_id)
            if error is None:
                commits, failed, error = spool.commit(association_id, store.spool_base(keys))
            else:
                spool.abort(association_id)
                commits, failed = {}, keys
            for key in failed:
                self._spool_drop_key(key)
            redundant = store.association_released(
                association_id, commits, calling_ae_title=calling_ae_title
            )
            store.spool_unbacked(failed)
            try:
                for key, commit in redundant:
                    spool.discard(key, [commit])
            except OSError as discard_error:
                LOGGER.error("spool: cannot delete a commit (%s)", discard_error)
        if failed:
            LOGGER.error(
                "spool: %d released series cannot be committed (%s); they are analysed from "
                "memory but a crash before that loses them",
                len(failed),
                (error.strerror if error is not None else None) or error,
            )

    def _on_aborted(self, event: evt.Event) -> None:
        association_id = _association_id(event.assoc)
        self._store.association_aborted(association_id)
        if self._spool is not None:
            self._spool.abort(association_id)
        self._association_ended(event, "aborted")

    def _on_conn_close(self, event: evt.Event) -> None:
        if getattr(event.assoc, "is_released", False):
            # pynetdicom sends A-RELEASE-RP *then* runs EVT_RELEASED on the association's
            # thread; the peer may close the connection (this event, on the DUL thread)
            # while that handler still runs. The release handler does the bookkeeping.
            return
        association_id = _association_id(event.assoc)
        self._store.association_closed(association_id)
        if self._spool is not None:
            self._spool.abort(association_id)
        if getattr(event.assoc, "_hippo_accepted", False) and not event.assoc.is_aborted:
            # Dropped without A-RELEASE (e.g. a network timeout): audit it too. A peer's
            # A-ABORT also closes the connection, and pynetdicom may report the close before
            # EVT_ABORTED; wait briefly so an abort is audited once, as an abort.
            timer = threading.Timer(
                AUDIT_CLOSE_DELAY_S, self._audit_if_not_ended, (event, association_id)
            )
            timer.daemon = True
            timer.start()

    def _audit_if_not_ended(self, event: evt.Event, association_id: int) -> None:
        with self._counts_lock:
            ended = association_id in self._ended
        if not ended:
            self._association_ended(event, "closed")

    def _association_ended(self, event: evt.Event, outcome: str) -> None:
        calling, address, port = _peer(event.assoc)
        association_id = _association_id(event.assoc)
        with self._counts_lock:
            if association_id in self._ended:
                return
            self._ended.append(association_id)
            counts = self._counts.pop(association_id, AssociationCounts())
        audit_event(
            "association_" + outcome,
            association=association_id,
            calling_ae_title=calling,
            peer_address=address,
            peer_port=port,
            outcome=outcome,
            stores_received=counts.stores_received,
            instances_stored=counts.instances_stored,
            instances_refused=counts.instances_refused,
        )
        self._on_activity()
