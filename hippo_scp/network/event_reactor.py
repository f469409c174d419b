"""Wake pynetdicom's two reactor loops when there is work, instead of polling every 1 ms.

Why: every association runs two threads that hand each message over through queues and poll
them. The DUL thread checks the socket and its queue, and when there is nothing to do sleeps
``_run_loop_delay`` (1 ms); the association thread sleeps 1 ms at the top of every loop before
it looks for a decoded DIMSE message. A C-STORE therefore waits up to ~1 ms for the
association thread to notice it and up to ~1 ms more for the DUL thread to send the response,
and the sender waits for that response before its next instance: about 2 ms of idle time per
instance on top of the CPU work (Study1 with a tuned storescu: 0.73 s wall for 0.5 s CPU).
pynetdicom's own source says ``TODO: try and make this event based rather than running loops``.

What this does, once per process (``install_event_driven_reactors``):

* each DUL gets a socket pair as a wake-up line; its ``to_provider_queue`` (what the
  association wants sent) writes a byte to it on every ``put``, and ``kill_dul`` does too;
* where the DUL loop would sleep, it blocks in ``select`` on the peer's socket *and* that wake-up
  line, so it continues the moment data arrives or a response is queued;
* the DUL's ``to_user_queue`` (received A-ASSOCIATE/RELEASE/ABORT primitives) and the DIMSE
  ``msg_queue`` (decoded messages) set a per-association event on ``put``, and where the
  association loop would sleep 1 ms it waits on that event;
* clearing the association's ``_reactor_checkpoint`` (how every ``send_*`` call pauses the
  loop before it sends a request) wakes the loop, so it reaches its pause point at once;
* ``kill_dul``/``stop_dul`` and ``Association.kill`` wake the loops they stop, and a DUL that
  ends wakes its association, so ending an association never waits out a timeout;
* both waits are capped (``MAX_WAIT_S``) so what the loops check on a clock (ARTIM and idle
  timers) is still seen in time.

The loops' logic is untouched: only the two sleeps are replaced, recognised by the code object
of the loop that calls them, so any other ``time.sleep`` in pynetdicom sleeps as before. If the
installed pynetdicom lacks a member this relies on, nothing is changed (``False``) and the
tests of this module fail, so an upgrade gets looked at (docs/operations.md). Set
``HIPPO_EVENT_REACTOR=0`` to run pynetdicom's polling loops (for comparisons).

Measured (``benchmarks/bench_node_tuning.py``, 2 cores, 2026-11-28): the node receiving Study1
from a tuned storescu 0.57-0.59 -> 0.48-0.51 s; releasing an association the node requested
12.5 -> 1.4 ms; four idle associations 31-33 % -> 2.4 % of a core.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import sys
import threading
import time
from collections.abc import Callable
from types import CodeType
from typing import Any

from pynetdicom import association as _association_module
from pynetdicom import dul as _dul_module

LOGGER = logging.getLogger(__name__)

#: Longest a reactor waits for a wake-up before it runs its loop anyway: only pynetdicom's
#: clock-driven checks (ARTIM and idle timers) rely on it, every flag it sets is followed by a
#: wake-up. 50 ms: an idle association costs ~40 wake-ups a second instead of ~2,000.
MAX_WAIT_S = 0.05

_lock = threading.Lock()
_installed = False


def event_reactor_enabled() -> bool:
    """Whether the event-driven loops are wanted (``HIPPO_EVENT_REACTOR`` is not ``0``)."""
    return os.environ.get("HIPPO_EVENT_REACTOR", "1") != "0"


class WakingQueue(queue.Queue):
    """A ``queue.Queue`` that calls ``wake()`` after every item it takes in."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def _put(self, item: Any) -> None:  # called by put() with the queue's lock held
        super()._put(item)
        self._wake()


class WakingCheckpoint(threading.Event):
    """The association's ``_reactor_checkpoint``, calling ``wake()`` when it is cleared.

    Every ``send_*`` method pauses the reactor by clearing the checkpoint and then waits until
    the loop reaches its pause point; a loop that sits in its wait would make each request
    wait for the wake-up cap (measured: +40 ms for an association sending three instances).
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def clear(self) -> None:
        super().clear()
        self._wake()


class WakeLine:
    """A socket pair one thread can ``select`` on and any thread can ``ring``.

    A socket pair rather than ``os.pipe``: once closed, a late ``ring`` fails on the closed
    socket object instead of writing into whatever file reused the descriptor number.
    """

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def ring(self) -> None:
        # A full buffer already means "wake up"; a closed line means nobody listens any more.
        with contextlib.suppress(OSError):
            self.writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def _dul_wait(dul: Any, seconds: float) -> None:
    """Instead of the DUL loop's sleep: until the peer's socket or the wake-up line is ready."""
    line: WakeLine | None = getattr(dul, "_hippo_wake_line", None)
    assoc_socket = getattr(dul, "socket", None)
    sock = getattr(assoc_socket, "socket", None)
    if line is None or sock is None:
        time.sleep(seconds)
        return
    pending = getattr(sock, "pending", None)  # TLS: decrypted bytes select() cannot see
    if pending is not None and pending():
        return
    try:
        ready, _, _ = select.select([sock, line.reader], [], [], MAX_WAIT_S)
    except (OSError, ValueError):  # socket closed under us: let the loop find out
        time.sleep(seconds)
        return
    if line.reader in ready:
        line.drain()


def _activity_of(assoc: Any) -> threading.Event | None:
    """The event that wakes ``assoc``'s loop (None: created before the install)."""
    return getattr(getattr(assoc, "dul", None), "_hippo_activity", None)


def _association_wait(assoc: Any, seconds: float) -> None:
    """Instead of the association loop's 1 ms sleep: until a message or primitive arrives."""
    activity = _activity_of(assoc)
    if activity is None:
        time.sleep(seconds)
        return
    # The loop serves one message per turn: with more already queued, go straight on. Items
    # are queued before the event is set, so a put after this check also ends the wait.
    if not assoc.dimse.msg_queue.empty() or not assoc.dul.to_user_queue.empty():
        return
    activity.wait(MAX_WAIT_S)
    activity.clear()


class _SleepRouter:
    """Stands in for the ``time`` module inside pynetdicom's ``dul`` and ``association``.

    ``sleep`` called from one of the given loops (matched by code object) waits for an event;
    everything else, and every other attribute, is the real ``time`` module.
    """

    def __init__(self, waits: dict[CodeType, Callable[[Any, float], None]]) -> None:
        self._waits = waits

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        caller = sys._getframe(1)
        wait = self._waits.get(caller.f_code)
        if wait is None:
            time.sleep(seconds)
            return
        wait(caller.f_locals.get("self"), seconds)


def install_event_driven_reactors() -> bool:
    """Make every association created from now on wake on events (once per process).

    Returns whether the event-driven loops are active.
    """
    global _installed
    if not event_reactor_enabled():
        return False
    with _lock:
        if _installed:
            return True
        dul_cls = getattr(_dul_module, "DULServiceProvider", None)
        assoc_cls = getattr(_association_module, "Association", None)
        dul_loop = getattr(dul_cls, "run_reactor", None)
        assoc_loop = getattr(assoc_cls, "_run_reactor", None)
        dul_kill = getattr(dul_cls, "kill_dul", None)
        dul_stop = getattr(dul_cls, "stop_dul", None)
        assoc_kill = getattr(assoc_cls, "kill", None)
        if (
            dul_loop is None
            or assoc_loop is None
            or dul_kill is None
            or dul_stop is None
            or assoc_kill is None
            or getattr(_dul_module, "time", None) is not time
            or getattr(_association_module, "time", None) is not time
        ):
            LOGGER.warning(
                "this pynetdicom does not have the reactor loops %s expects; "
                "its polling loops stay as shipped",
                __name__,
            )
            return False

        assoc_init = assoc_cls.__init__

        def init_association(self: Any, *args: Any, **kwargs: Any) -> None:
            # pynetdicom creates the association's DUL and DIMSE providers here; give them
            # queues that wake the loops, before any thread runs.
            assoc_init(self, *args, **kwargs)
            dul = getattr(self, "dul", None)
            dimse = getattr(self, "dimse", None)
            original = getattr(self, "_reactor_checkpoint", None)
            if dul is None or dimse is None or not isinstance(original, threading.Event):
                return  # not the pynetdicom this was written for: its polling loops, as shipped
            line = WakeLine()
            activity = threading.Event()
            dul._hippo_wake_line = line
            dul._hippo_activity = activity
            dul.to_provider_queue = WakingQueue(line.ring)
            dul.to_user_queue = WakingQueue(activity.set)
            dimse.msg_queue = WakingQueue(activity.set)
            checkpoint = WakingCheckpoint(activity.set)
            if original.is_set():
                checkpoint.set()
            self._reactor_checkpoint = checkpoint

            run = getattr(dul, "_target", None)
            if run is not None:

                def run_then_close(*args: Any, **kwargs: Any) -> None:
                    try:
                        run(*args, **kwargs)
                    finally:
                        line.close()
                        activity.set()  # the association loop then sees a dead DUL at once

                dul._target = run_then_close

        def kill_dul(self: Any) -> None:
            dul_kill(self)
            line = getattr(self, "_hippo_wake_line", None)
            if line is not None:
                line.ring()

        def stop_dul(self: Any) -> bool:
            # pynetdicom sets the kill flag in Sta1 and then waits for the thread to end: set it
            # first and wake the loop, so the wait is not a whole MAX_WAIT_S (every release).
            line = getattr(self, "_hippo_wake_line", None)
            if line is not None and self.state_machine.current_state == "Sta1":
                self._kill_thread = True
                line.ring()
            return dul_stop(self)

        def kill(self: Any) -> None:
            activity = _activity_of(self)
            if activity is not None:
                activity.set()
            assoc_kill(self)

        dul_cls.kill_dul = kill_dul
        dul_cls.stop_dul = stop_dul
        assoc_cls.kill = kill
        assoc_cls.__init__ = init_association
        _dul_module.time = _SleepRouter({dul_loop.__code__: _dul_wait})
        _association_module.time = _SleepRouter({assoc_loop.__code__: _association_wait})
        _installed = True
    return True
