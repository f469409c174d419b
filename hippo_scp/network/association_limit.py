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
"""

from __future__ import annotations

import threading
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


def thread_backstop(max_associations: int) -> int:
    """pynetdicom's thread count limit: far enough above ``max_associations`` that threads of
    finished associations never decide, still a bound on threads if they ever leak."""
    return 2 * max_associations + 8


def in_service(assoc: Any) -> bool:
    """True while ``assoc`` may still send or receive DIMSE messages."""
    if not assoc.is_alive():
        return False
    if assoc.is_released or assoc.is_aborted or assoc.is_rejected:
        return False
    machine = getattr(getattr(assoc, "dul", None), "state_machine", None)
    state = getattr(machine, "current_state", None)
    return state is None or state in _IN_SERVICE_STATES


class AssociationLimit:
    """Admits at most ``maximum`` inbound associations in service at any time."""

    def __init__(self, maximum: int) -> None:
        if maximum < 1:
            raise ValueError(f"maximum must be at least 1, got {maximum}")
        self.maximum = maximum
        self._lock = threading.Lock()
        self._admitted: weakref.WeakSet[Any] = weakref.WeakSet()

    def admit(self, assoc: Any) -> bool:
        """Called for each A-ASSOCIATE-RQ: True (and counted) if a slot is free."""
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
