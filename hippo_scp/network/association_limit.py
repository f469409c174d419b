"""``node.max_associations``: how many inbound associations the node serves at once.

pynetdicom enforces its ``maximum_associations`` by counting *live association threads*. A
thread lives on after the association is over: pynetdicom sends the A-RELEASE-RP first, then
runs the EVT_RELEASED handlers (the node hands the series to the store there) and joins the DUL
thread. A sender that sends one study per association -- dcmtk ``storescu`` in a loop, Orthanc's
router, a scanner -- receives the A-RELEASE-RP, closes and immediately opens the next
association, which pynetdicom then refuses ("local limit exceeded") while the previous
association's thread is still winding down. With every slot in use by such senders that is a
refusal *below* the limit, seen in the 4-sender load test.

:class:`AssociationLimit` counts what the limit is about instead: associations this node
admitted that are still in service -- not released, aborted or closed, and no A-RELEASE-RQ
received (the DUL state, which changes before the A-RELEASE-RP leaves: ``is_released`` is set
by the association's own thread later, and a busy node was seen to refuse the reconnect in
that window too). The check runs in EVT_REQUESTED under a lock, so two
requests arriving together cannot both take the last slot. pynetdicom's own count stays on as a
backstop against leaked threads (:func:`thread_backstop`).

A request that finds every slot taken waits up to :data:`ADMISSION_WAIT_S` for one to free
before it is refused. Why: the CI load test (4 storescu loops, limit 4) still saw a rare
refusal of a reconnect with all four slots counted in service, after the state-based count
above; a sender that reconnects the moment its previous association ends is exactly the
traffic a PACS router produces. Waiting briefly on the new association's own thread (the
peer waits for the A-ASSOCIATE-AC anyway; storescu's ACSE timeout is 30 s) absorbs any
such hand-over window, while a node that is really full still refuses, a moment later, and
the log line names the associations holding the slots.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

#: A-ASSOCIATE-RJ (result, source, reason): rejected-transient, DUL service provider
#: (presentation related function), local-limit-exceeded -- what pynetdicom sends for its own
#: limit, and what senders retry on.
LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)

#: DUL states (PS3.8 9.2) of an association that may still carry DIMSE traffic: transport
#: open, negotiating, established. From the peer's A-RELEASE-RQ on (Sta8; Sta7-Sta12 for
#: releases and collisions, Sta13 awaiting close, Sta1 closed) it no longer does. The state
#: machine enters Sta8 before the A-RELEASE-RP can be sent (AR-4 runs only in Sta8), so a peer
#: that reconnects as soon as it has the RP always finds its old association out of service.
_IN_SERVICE_STATES = frozenset({"Sta2", "Sta3", "Sta4", "Sta5", "Sta6"})

#: Longest wait of a request for a free slot before it is refused (see the module docstring).
ADMISSION_WAIT_S = 2.0
_ADMISSION_POLL_S = 0.02


def thread_backstop(max_associations: int) -> int:
    """pynetdicom's thread count limit: far enough above ``max_associations`` that threads of
    finished associations never decide, still a bound on threads if they ever leak."""
    return 2 * max_associations + 8


def _dul_state(assoc: Any) -> str | None:
    machine = getattr(getattr(assoc, "dul", None), "state_machine", None)
    return getattr(machine, "current_state", None)


def in_service(assoc: Any) -> bool:
    """True while ``assoc`` may still send or receive DIMSE messages."""
    if not assoc.is_alive():
        return False
    if assoc.is_released or assoc.is_aborted or assoc.is_rejected:
        return False
    state = _dul_state(assoc)
    return state is None or state in _IN_SERVICE_STATES


def describe(assoc: Any) -> str:
    """``CALLING_AE (DUL state)`` of an association, for the log line of a refusal: which
    peers hold the slots is what an integrator needs to see (AE titles, no patient data)."""
    requestor = getattr(assoc, "requestor", None)
    calling = str(getattr(requestor, "ae_title", "") or "?").strip()
    return f"{calling} ({_dul_state(assoc) or 'no DUL state'})"


class AssociationLimit:
    """Admits at most ``maximum`` inbound associations in service at any time."""

    def __init__(self, maximum: int, admission_wait_s: float = ADMISSION_WAIT_S) -> None:
        if maximum < 1:
            raise ValueError(f"maximum must be at least 1, got {maximum}")
        if admission_wait_s < 0:
            raise ValueError(f"admission_wait_s must be >= 0, got {admission_wait_s}")
        self.maximum = maximum
        self.admission_wait_s = admission_wait_s
        self._lock = threading.Lock()
        self._admitted: weakref.WeakSet[Any] = weakref.WeakSet()

    def admit(self, assoc: Any) -> bool:
        """Called for each A-ASSOCIATE-RQ, on that association's thread: True (and counted)
        once a slot is free, False if none frees within ``admission_wait_s``."""
        deadline = time.monotonic() + self.admission_wait_s
        while True:
            if self._try_admit(assoc):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_ADMISSION_POLL_S)

    def _try_admit(self, assoc: Any) -> bool:
        with self._lock:
            for other in [a for a in self._admitted if not in_service(a)]:
                self._admitted.discard(other)
            if len(self._admitted) >= self.maximum:
                return False
            self._admitted.add(assoc)
            return True

    def count_in_service(self) -> int:
        """Admitted associations still in service (for logs and tests)."""
        with self._lock:
            return sum(1 for a in self._admitted if in_service(a))

    def describe_in_service(self) -> list[str]:
        """The admitted associations still in service, as ``CALLING_AE (DUL state)``."""
        with self._lock:
            return sorted(describe(a) for a in self._admitted if in_service(a))
