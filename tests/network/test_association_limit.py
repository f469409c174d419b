"""AssociationLimit: what counts against node.max_associations (no network; fake associations
with the attributes pynetdicom's Association has)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from hippo_scp.network.association_limit import AssociationLimit, thread_backstop


class FakeAssociation:
    def __init__(self, state: str = "Sta6", requestor_ae: str = "SENDER") -> None:
        self.alive = True
        self.requestor = SimpleNamespace(ae_title=requestor_ae)
        self.is_released = self.is_aborted = self.is_rejected = False
        self.dul = SimpleNamespace(state_machine=SimpleNamespace(current_state=state))

    def is_alive(self) -> bool:
        return self.alive


def test_admits_up_to_the_maximum() -> None:
    limit = AssociationLimit(2, admission_wait_s=0)
    held = [FakeAssociation(), FakeAssociation()]
    assert all(limit.admit(a) for a in held)
    assert not limit.admit(FakeAssociation())
    assert limit.count_in_service() == 2


@pytest.mark.parametrize(
    "finish",
    [
        lambda a: setattr(a, "is_released", True),
        lambda a: setattr(a, "is_aborted", True),
        lambda a: setattr(a, "is_rejected", True),
        lambda a: setattr(a, "alive", False),
        lambda a: setattr(a.dul.state_machine, "current_state", "Sta8"),  # A-RELEASE-RQ in
        lambda a: setattr(a.dul.state_machine, "current_state", "Sta13"),  # A-RELEASE-RP sent
        lambda a: setattr(a.dul.state_machine, "current_state", "Sta1"),  # connection closed
    ],
    ids=[
        "released",
        "aborted",
        "rejected",
        "thread ended",
        "release requested",
        "awaiting close",
        "closed",
    ],  # fmt: skip
)
def test_a_finished_association_frees_its_slot_at_once(finish) -> None:
    limit = AssociationLimit(1, admission_wait_s=0)
    old, new = FakeAssociation(), FakeAssociation()
    assert limit.admit(old)
    assert not limit.admit(new)
    finish(old)  # its thread may well still be running (EVT_RELEASED handlers, DUL join)
    assert limit.admit(new)


def test_requests_arriving_together_cannot_share_the_last_slot() -> None:
    limit = AssociationLimit(3, admission_wait_s=0)
    start = threading.Barrier(16)
    admitted: list[bool] = []
    associations = [FakeAssociation() for _ in range(16)]  # alive: referenced, like threads

    def request(assoc: FakeAssociation) -> None:
        start.wait()
        admitted.append(limit.admit(assoc))

    threads = [threading.Thread(target=request, args=(a,)) for a in associations]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admitted.count(True) == 3


def test_invalid_maximum_and_backstop() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        AssociationLimit(0)
    with pytest.raises(ValueError, match=">= 0"):
        AssociationLimit(1, admission_wait_s=-1)
    assert thread_backstop(16) > 16


@pytest.mark.parametrize("state", ["Sta2", "Sta3", "Sta6", None])
def test_connected_negotiating_and_established_associations_hold_their_slot(state) -> None:
    limit = AssociationLimit(1, admission_wait_s=0)
    held = FakeAssociation(state)
    if state is None:
        held.dul = None  # not yet wired up: counted, to be safe
    assert limit.admit(held)
    assert not limit.admit(FakeAssociation())


def test_a_request_waits_briefly_for_a_slot_that_is_being_freed() -> None:
    """A sender reconnecting while its previous association is being wound down is admitted."""
    limit = AssociationLimit(1, admission_wait_s=2.0)
    old = FakeAssociation()
    assert limit.admit(old)
    timer = threading.Timer(0.3, setattr, (old, "is_released", True))
    timer.start()
    started = time.monotonic()
    assert limit.admit(FakeAssociation())
    assert 0.2 < time.monotonic() - started < 1.5
    timer.join()


def test_a_request_is_refused_after_the_wait_when_no_slot_frees() -> None:
    limit = AssociationLimit(1, admission_wait_s=0.3)
    holder = FakeAssociation(requestor_ae="HOLDER")  # referenced, like a running thread
    assert limit.admit(holder)
    started = time.monotonic()
    assert not limit.admit(FakeAssociation())
    assert time.monotonic() - started >= 0.3
    assert limit.describe_in_service() == ["HOLDER (Sta6)"]
