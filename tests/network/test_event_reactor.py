"""pynetdicom's reactor loops wake on events (hippo_scp.network.event_reactor).

What a user relies on: associations still negotiate, transfer real instances, release and
abort as before, and their threads and wake-up sockets go away afterwards; the loops wait for
work instead of a fixed 1 ms, but never sit on work that is already queued. The speed gain
itself is measured by ``benchmarks/bench_node_tuning.py`` (``bare`` part), not here.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, association, dul, evt
from pynetdicom.sop_class import MRImageStorage, Verification

from hippo_scp.network import event_reactor
from hippo_scp.network.event_reactor import (
    WakeLine,
    WakingCheckpoint,
    WakingQueue,
    install_event_driven_reactors,
)
from hippo_scp.network.response_guard import keep_responses_for_caller

pytestmark = pytest.mark.network


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def installed() -> bool:
    return install_event_driven_reactors()


@pytest.fixture
def store_scp(installed: bool) -> Iterator[tuple[int, list[pydicom.Dataset]]]:
    """A pynetdicom Storage SCP on loopback that keeps what it receives."""
    received: list[pydicom.Dataset] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0x0000

    ae = AE(ae_title="STORESCP")
    ae.add_supported_context(Verification)
    ae.add_supported_context(MRImageStorage)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()


def _hippocrop_files(data_dir: Path) -> list[Path]:
    folder = data_dir / "TestVolumes" / "Study1" / "13_HCropVolume"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert files, folder
    return files


def _scu() -> AE:
    ae = AE(ae_title="HIPPOAI")
    ae.add_requested_context(Verification)
    ae.add_requested_context(MRImageStorage)
    ae.dimse_timeout = 5
    ae.acse_timeout = 5
    return ae


def test_installs_on_this_pynetdicom(installed: bool) -> None:
    """The loops it relies on are there (an upgrade that changes them fails here first)."""
    assert installed is True
    assert isinstance(dul.time, event_reactor._SleepRouter)
    assert isinstance(association.time, event_reactor._SleepRouter)
    # the two sleeps it replaces are still where it looks for them
    assert "sleep" in dul.DULServiceProvider.run_reactor.__code__.co_names
    assert 0.001 in association.Association._run_reactor.__code__.co_consts


def test_store_release_and_cleanup_with_real_instances(
    store_scp: tuple[int, list[pydicom.Dataset]], data_dir: Path
) -> None:
    port, received = store_scp
    files = _hippocrop_files(data_dir)
    threads_before = threading.active_count()
    fds_before = _open_fds()
    assoc = _scu().associate("127.0.0.1", port, ae_title="STORESCP")
    assert assoc.is_established
    # As the node's sender does: pynetdicom's reactor can take a response meant for the
    # waiting send_c_store ("Received unexpected C-STORE service message", then a DIMSE
    # timeout -- seen once in CI); response_guard hands it back.
    assert keep_responses_for_caller(assoc)
    assert isinstance(assoc.dul.to_provider_queue, WakingQueue)
    assert isinstance(assoc.dimse.msg_queue, WakingQueue)
    assert isinstance(assoc._reactor_checkpoint, WakingCheckpoint)
    assert assoc.send_c_echo().Status == 0x0000
    statuses = [assoc.send_c_store(pydicom.dcmread(path)).Status for path in files]
    assoc.release()
    assert assoc.is_released
    assert statuses == [0x0000] * len(files)
    expected = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in files}
    assert {ds.SOPInstanceUID for ds in received} == expected
    # both ends' reactor threads end and their wake-up socket pairs are closed
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
        threading.active_count() > threads_before or _open_fds() > fds_before
    ):
        time.sleep(0.01)
    assert threading.active_count() <= threads_before
    assert _open_fds() <= fds_before


def test_abort_from_either_side_ends_the_association(
    store_scp: tuple[int, list[pydicom.Dataset]],
) -> None:
    port, _ = store_scp
    assoc = _scu().associate("127.0.0.1", port, ae_title="STORESCP")
    assert assoc.is_established
    assoc.abort()
    assert assoc.is_aborted
    # the acceptor side notices the abort and lets its reactor go
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(threading.enumerate()) > 3:
        if not any(isinstance(t, association.Association) for t in threading.enumerate()):
            break
        time.sleep(0.01)
    assert not any(
        isinstance(t, association.Association) and t.is_alive() and t.is_acceptor
        for t in threading.enumerate()
    )


def test_peer_that_vanishes_is_noticed(store_scp: tuple[int, list[pydicom.Dataset]]) -> None:
    """A sender that closes its socket without A-RELEASE/A-ABORT: the acceptor's DUL wakes on
    the end of stream (no polling left to find it) and the association ends."""
    port, _ = store_scp
    assoc = _scu().associate("127.0.0.1", port, ae_title="STORESCP")
    assert assoc.is_established
    assoc.dul.socket.socket.close()  # the peer's process dies
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(
        isinstance(t, association.Association) and t.is_acceptor and t.is_alive()
        for t in threading.enumerate()
    ):
        time.sleep(0.01)
    assert not any(
        isinstance(t, association.Association) and t.is_acceptor and t.is_alive()
        for t in threading.enumerate()
    )
    assoc.abort()


def test_waking_queue_wakes_after_the_item_is_in() -> None:
    seen: list[int] = []
    # wake() runs with the queue's lock held (it must not block): read the deque directly
    box: WakingQueue = WakingQueue(lambda: seen.append(len(box.queue)))
    box.put("a")
    box.put("b")
    assert seen == [1, 2]  # the item is visible to the woken thread
    assert box.get() == "a"


def test_pausing_the_reactor_wakes_it() -> None:
    """send_* pauses the loop by clearing the checkpoint, then waits for the loop to reach its
    pause point: the clear must wake a loop that sits in its wait."""
    woken = threading.Event()
    checkpoint = WakingCheckpoint(woken.set)
    checkpoint.set()
    assert not woken.is_set()
    checkpoint.clear()
    assert woken.is_set() and not checkpoint.is_set()


def test_wake_line_rings_drains_and_ignores_rings_after_close() -> None:
    line = WakeLine()
    line.ring()
    line.ring()
    assert line.reader.recv(16) == b"\0\0"
    line.ring()
    line.drain()
    with pytest.raises(BlockingIOError):
        line.reader.recv(16)
    line.close()
    line.ring()  # a late put from another thread after the DUL ended: no error, no write


class _FakeDul:
    def __init__(self) -> None:
        self._hippo_activity = threading.Event()
        self.to_user_queue: queue.Queue = queue.Queue()


class _FakeAssociation:
    def __init__(self) -> None:
        self.dul = _FakeDul()
        self.dimse = type("Dimse", (), {"msg_queue": queue.Queue()})()


def test_association_wait_never_sits_on_a_queued_message() -> None:
    """The loop serves one message per turn; a second one already queued must not wait for a
    wake-up that came before the first was taken."""
    fake = _FakeAssociation()
    fake.dimse.msg_queue.put((1, "message"))
    start = time.monotonic()
    for _ in range(50):
        event_reactor._association_wait(fake, 0.001)
    assert time.monotonic() - start < 50 * event_reactor.MAX_WAIT_S / 2


def test_association_wait_returns_when_woken() -> None:
    fake = _FakeAssociation()
    waker = threading.Timer(0.005, fake.dul._hippo_activity.set)
    waker.start()
    event_reactor._association_wait(fake, 0.001)
    waker.join()
    assert not fake.dul._hippo_activity.is_set()  # cleared for the next turn


def test_other_sleeps_in_pynetdicom_still_sleep(installed: bool) -> None:
    """Only the two loop sleeps are replaced; any other caller gets the real time.sleep."""
    start = time.perf_counter()
    association.time.sleep(0.01)
    assert time.perf_counter() - start >= 0.009
    assert association.time.monotonic() > 0  # every other attribute is the time module's
