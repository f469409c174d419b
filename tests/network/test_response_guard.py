"""A response the association reactor takes in the pause race goes back to the waiting caller.

The race itself depends on thread timing, so the tests replay its steps on a real association
to a real SCP: pause the reactor as ``send_*`` does, send a request, let the "reactor" take
the response off the DIMSE queue and serve it, then wait for the response as ``send_*`` does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO
from pynetdicom.sop_class import Verification

from hippo_scp.network.event_reactor import MAX_WAIT_S
from hippo_scp.network.response_guard import keep_responses_for_caller
from tests.network.conftest import verification_association

ECHO_SUCCESS = 0x0000


@pytest.fixture
def association() -> Iterator[Association]:
    """An established association to a pynetdicom Verification SCP on loopback."""
    with verification_association(dimse_timeout=1) as assoc:
        yield assoc


def _replay_race(assoc: Association) -> int | None:
    """Send a C-ECHO with the reactor paused and let the "reactor" serve its response first;
    return the status the caller then receives (None: lost, as after a DIMSE timeout)."""
    assoc._reactor_checkpoint.clear()  # what send_c_echo() does before sending
    while not assoc._is_paused:
        time.sleep(0.0001)
    # The test must not hit the race it replays: a reactor caught between setting
    # _is_paused and blocking runs one more loop (a 1 ms sleep, or with the node's
    # event-driven loops at most MAX_WAIT_S) and then blocks for good.
    time.sleep(MAX_WAIT_S + 0.02)
    assert assoc._is_paused
    try:
        request = C_ECHO()
        request.MessageID = 7
        request.AffectedSOPClassUID = Verification
        context_id = assoc.accepted_contexts[0].context_id
        assoc.dimse.send_msg(request, context_id)
        deadline = time.monotonic() + 5
        while assoc.dimse.msg_queue.empty() and time.monotonic() < deadline:
            time.sleep(0.001)
        # The racing reactor: take the response off the queue and serve it.
        stolen_context, stolen = assoc.dimse.get_msg(block=False)
        assert stolen is not None and not stolen.is_valid_request
        assoc._serve_request(stolen, stolen_context)
        # The caller, as send_c_echo() continues.
        _, response = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return None if response is None else int(response.Status)


def test_without_the_guard_the_response_is_lost(association: Association) -> None:
    """The failure the guard exists for (pynetdicom 3.0.4): if this starts passing with a
    newer pynetdicom, the race may be fixed upstream and the guard can go."""
    assert _replay_race(association) is None


def test_guard_hands_the_response_back_to_the_caller(association: Association) -> None:
    assert keep_responses_for_caller(association) is True
    assert _replay_race(association) == ECHO_SUCCESS
    # the association is still usable for the next request
    assert int(association.send_c_echo().Status) == ECHO_SUCCESS


def test_response_nobody_waits_for_is_still_dropped(association: Association) -> None:
    """With the reactor running (no send_* in progress) an unsolicited response is ignored as
    before, not put back on the queue, where the reactor would take it again forever."""
    keep_responses_for_caller(association)
    unsolicited = C_ECHO()
    unsolicited.MessageIDBeingRespondedTo = 99
    unsolicited.Status = ECHO_SUCCESS
    assert not unsolicited.is_valid_request
    association._serve_request(unsolicited, association.accepted_contexts[0].context_id)
    assert association.dimse.msg_queue.empty()


def test_guard_reports_a_pynetdicom_without_the_reactor_members(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pynetdicom that changed its internals: the guard says so and stays off, rather than
    failing the delivery."""
    assert keep_responses_for_caller(object()) is False  # type: ignore[arg-type]
    assert "race guard is off" in caplog.text
