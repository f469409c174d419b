"""Keep a DIMSE response for the ``send_*`` caller that waits for it (pynetdicom 3.0 race).

Why: pynetdicom's association reactor polls the DIMSE queue, and every ``send_*`` method
(``send_c_store`` among them) first pauses it: ``_reactor_checkpoint.clear()``, then waits
until ``_is_paused`` is true. The reactor sets ``_is_paused = True`` just *before* it blocks on
the checkpoint and ``False`` just after, so a caller that clears the checkpoint while the
reactor is between those two statements reads a stale ``True``, sends its request, and the
reactor (no longer paused) may take the peer's response off the queue. It treats it as an
unexpected message ("Received unexpected C-STORE service message"), drops it, and the caller
waits for the whole DIMSE timeout and aborts the association (seen as pydicom/pynetdicom#875
with C-FIND; here it cost one result set a 60 s timeout plus an outbox retry, and made one
test flaky).

The fix is narrow: on the associations we request, the reactor's ``_serve_request`` is
wrapped so that a *response* it receives while a ``send_*`` call holds the reactor paused
(checkpoint cleared) goes back on the DIMSE queue, where the waiting caller's blocking
``get_msg`` picks it up. Requests from the peer, and responses nobody is waiting for, are
handled exactly as before. The wrapper is bound to the one association object, so pynetdicom
itself is not patched.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom.association import Association

LOGGER = logging.getLogger(__name__)


def keep_responses_for_caller(assoc: Association) -> bool:
    """Wrap ``assoc``'s reactor so it hands a stolen response back to the waiting caller.

    Returns whether the guard is in place. If the installed pynetdicom no longer has the
    members this relies on, it logs a warning and returns ``False``: the association then works
    as pynetdicom ships it (the race is rare), rather than a delivery failing outright; the
    tests of this module fail on such a version, so the change gets looked at.
    """
    serve_request = getattr(assoc, "_serve_request", None)
    checkpoint = getattr(assoc, "_reactor_checkpoint", None)
    msg_queue = getattr(getattr(assoc, "dimse", None), "msg_queue", None)
    if serve_request is None or checkpoint is None or msg_queue is None:
        LOGGER.warning(
            "this pynetdicom's Association lacks _serve_request/_reactor_checkpoint/"
            "dimse.msg_queue: the reactor race guard is off (see %s)",
            __name__,
        )
        return False

    def serve_or_hand_back(msg: Any, context_id: int) -> None:
        if not msg.is_valid_request and not checkpoint.is_set():
            # A send_* call paused the reactor and is blocked in get_msg(): this is its answer.
            LOGGER.debug("handing a %s taken by the reactor back to its caller", msg.msg_type)
            msg_queue.put((context_id, msg))
            return
        serve_request(msg, context_id)

    assoc._serve_request = serve_or_hand_back  # type: ignore[method-assign]
    return True
