"""Single flight: one fetch per key however many tasks, threads and event loops ask.

Every fetch is one task in the broker's own task group, on the loop that
entered the broker (its *home*): callers only wait for it, so a cancelled
caller can never cancel or poison the shared fetch (google-auth's shielded
refresh), and the transport's connection pool stays on one loop.

Waiters on the home loop share one event per flight; a waiter on another
thread's loop (asyncio or trio) gets an event of its own, set through that
loop's thread-safe entry point (:class:`~authsec_crewai._loopref.LoopRef`), so
no loop ever blocks on another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from .. import errors
from .._loopref import LoopRef
from ..token import DelegationToken, TokenRequest

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

__all__ = ["Flight", "FlightRunner", "Waiter"]


@dataclass(slots=True)
class Waiter:
    """A caller on another thread's event loop, woken through that loop."""

    event: anyio.Event
    loop: LoopRef


@dataclass(slots=True, eq=False)
class Flight:
    """One fetch for one agent's key (``request.client_id`` is the agent), and everyone
    waiting for it."""

    request: TokenRequest
    background: bool
    epoch: int  # the agent's epoch when the flight started
    parent: object = None  # the asker's trace context, for the fetch's span
    home_event: anyio.Event | None = None  # one event for every waiter on the home loop
    waiters: list[Waiter] = field(default_factory=list)  # waiters on other loops
    joined: int = 0  # callers waiting on this flight
    done: bool = False
    stale: bool = False  # it landed after a revocation or invalidation: nothing was cached
    token: DelegationToken | None = None
    error: errors.AuthSecError | None = None
    source: str = "fetch"  # "store" when a shared store answered instead of the transport

    def join(self, home: LoopRef) -> anyio.Event:
        """Register the calling task as a waiter (lock held); the event to wait on."""
        self.joined += 1
        if home.is_current_thread():
            if self.home_event is None:
                self.home_event = anyio.Event()
            return self.home_event
        event = anyio.Event()
        self.waiters.append(Waiter(event, LoopRef.current()))
        return event

    def wake(self, home: LoopRef | None, waiters: list[Waiter]) -> None:
        """Wake every waiter once (after the lock is released)."""
        shared = self.home_event
        if shared is not None:
            if home is None or home.is_current_thread():
                shared.set()
            else:
                home.call_soon(shared.set)
        for waiter in waiters:
            waiter.loop.call_soon(waiter.event.set)


class FlightRunner:
    """Starts flights as tasks of the broker's task group, on its home loop, from any thread.

    ``run(flight)`` is the flight's work; ``fail(flight, error)`` completes a
    flight that could not be started (the broker is closing, its loop is gone).
    """

    __slots__ = ("_fail", "_run", "home", "tg")

    def __init__(
        self,
        run: Callable[[Flight], Coroutine[Any, Any, None]],
        fail: Callable[[Flight, errors.AuthSecError], None],
    ) -> None:
        self._run = run
        self._fail = fail
        self.tg: TaskGroup | None = None
        self.home: LoopRef | None = None

    @property
    def running(self) -> bool:
        return self.tg is not None and self.home is not None

    def launch(self, flight: Flight) -> None:
        """Start the flight's one fetch on the home loop (from any thread)."""
        home = self.home
        if home is not None and home.is_current_thread():
            self._start_on_home(flight)
        elif home is None or not home.call_soon(self._start_on_home, flight):
            self._fail(flight, errors.BrokerClosedError("the broker's event loop has stopped"))

    def spawn(self, work: Callable[[], Coroutine[Any, Any, object]]) -> None:
        """Run ``work()`` in the task group, on the home loop (from any thread); dropped
        when the broker has stopped (it is only ever best-effort housekeeping)."""

        def start() -> None:
            if self.tg is not None:
                with contextlib.suppress(RuntimeError):  # closing to new tasks
                    self.tg.start_soon(work)

        home = self.home
        if home is None:
            return
        if home.is_current_thread():
            start()
        else:
            home.call_soon(start)

    def _start_on_home(self, flight: Flight) -> None:
        """Runs on the home loop's thread, where the task group may be touched.

        It may run as a loop callback, so it must never raise (trio would abort).
        """
        try:
            if self.tg is None:
                raise RuntimeError("the broker was closed")
            self.tg.start_soon(self._run, flight)
        except RuntimeError:  # closed, or its task group closing to new tasks
            self._fail(flight, errors.BrokerClosedError("the broker was closed"))
