"""``BrokerThread``: a token broker and the event loop, on a daemon thread, where its calls run.

Sync callers (``SyncTokenBroker``, the sync CrewAI tool) block on it; async
callers on any loop (asyncio or trio, any thread) await it without blocking
their own loop. Why a thread of its own: CrewAI calls tools from short-lived
worker threads and from other event loops, while a broker's fetches and the
transport's connection pool must live on one loop that outlives them all.
The thread is a daemon so that a program which never closes its broker still
exits; ``close()`` stops it cleanly, closing the broker and its transport.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import anyio

from . import errors, telemetry
from ._loopref import LoopRef
from .logging import get_logger
from .redact import redact_text

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from .broker import TokenBroker

__all__ = ["BrokerThread"]

T = TypeVar("T")

_log = get_logger("authsec_crewai.thread")
_CLOSED = "the broker's event-loop thread was closed"

START_TIMEOUT = 30.0
"""Longest :meth:`BrokerThread.start` waits for its loop to run and its broker to enter."""

CLOSE_GRACE = 5.0
"""Longest each closer (see :meth:`BrokerThread.add_closer`) may take when the runtime closes."""


class _Job:
    """One call handed to a runtime's loop, and its outcome."""

    __slots__ = (
        "cancel_requested",
        "done",
        "error",
        "func",
        "notify",
        "result",
        "scope",
        "trace_parent",
    )

    def __init__(self, func: Callable[[], Awaitable[Any]], notify: Callable[[], object]) -> None:
        self.func = func
        self.notify = notify
        self.trace_parent = telemetry.current_context()  # the asking thread's span
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.cancel_requested = False
        self.scope: anyio.CancelScope | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


class BrokerThread:
    """A token broker and the event loop, on a daemon thread, where its calls run.

    With ``owns_broker`` the thread enters the broker (``async with``) and
    closes it on :meth:`close`; otherwise the broker is someone else's and
    only calls run here.
    """

    def __init__(
        self,
        broker: TokenBroker,
        *,
        owns_broker: bool,
        backend: Literal["asyncio", "trio"] = "asyncio",
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.broker = broker
        self._start_timeout = start_timeout
        self._backend = backend
        self._owns_broker = owns_broker
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._home: LoopRef | None = None
        self._tg: TaskGroup | None = None
        self._stop: anyio.Event | None = None
        self._failure: BaseException | None = None
        self._closed = False
        self._ended = False  # the loop has stopped: nothing handed to it will run
        self._pending: set[_Job] = set()  # handed to the loop, not finished yet
        self._starting: tuple[LoopRef, anyio.CancelScope] | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._home else "not started")
        return f"BrokerThread({self.broker!r}, {state})"

    # copies of a tool share its runtime (CrewAI and pydantic may copy tools)
    def __copy__(self) -> BrokerThread:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> BrokerThread:
        return self

    @property
    def closed(self) -> bool:
        return self._closed or self._failure is not None

    def start(self) -> None:
        """Start the loop thread (once) and wait until it accepts calls, at most
        ``start_timeout`` seconds."""
        with self._lock:
            if self._closed:
                raise errors.BrokerClosedError(_CLOSED)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._thread_main, name="authsec-crewai-broker", daemon=True
                )
                self._thread.start()
        if not self._ready.wait(self._start_timeout):
            # The broker's entry hangs (a store that never answers, say): say so
            # rather than block every caller for ever. The thread is a daemon.
            raise errors.BrokerClosedError(
                f"the broker did not start within {self._start_timeout:g}s (its transport "
                "or shared store did not answer); check AUTHSEC_STORE and the network"
            )
        if self._failure is not None:
            raise errors.BrokerClosedError(
                f"the broker could not start ({type(self._failure).__name__}: "
                f"{redact_text(str(self._failure))[:200]})"
            )

    def _thread_main(self) -> None:
        try:
            anyio.run(self._main, backend=self._backend)
        except BaseException as exc:  # reported to callers by start(); the thread just ends
            self._failure = exc
            if self._ready.is_set():  # it ran, then failed (while closing, say): say so
                _log.warning(
                    "tools.broker_stopped",
                    error=getattr(exc, "kind", type(exc).__name__),
                    message=redact_text(str(exc))[:300],
                )
        finally:
            self._home, self._tg = None, None
            with self._lock:
                self._ended = True
                stranded, self._pending = self._pending, set()
            for job in stranded:  # handed over while the loop was ending: never ran
                self._finish(job, error=errors.BrokerClosedError(_CLOSED))
            self._ready.set()

    async def _main(self) -> None:
        # Until the broker has entered, close() may cancel a start that hangs. The
        # scope holds the whole run: the broker's task groups open inside it.
        with anyio.CancelScope() as starting:
            self._starting = (LoopRef.current(), starting)
            async with AsyncExitStack() as stack:
                if self._owns_broker:
                    await stack.enter_async_context(self.broker)
                self._starting = None
                tg = await stack.enter_async_context(anyio.create_task_group())
                self._stop = anyio.Event()
                self._tg, self._home = tg, LoopRef.current()
                self._ready.set()
                await self._stop.wait()
                self._tg = None  # from now on, new calls fail instead of starting
                await self._run_closers()
                tg.cancel_scope.cancel()

    async def _run_closers(self) -> None:
        """Let the services close on their own terms (an MCP session says goodbye to its
        server) before the task group is cancelled, each within ``CLOSE_GRACE`` seconds."""
        closers, self._closers = self._closers, []
        for closer in closers:
            with anyio.move_on_after(CLOSE_GRACE):
                try:
                    await closer()
                except Exception as exc:  # best effort: one closer must not keep others
                    _log.warning("tools.closer_failed", error=type(exc).__name__)

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting calls, cancel running ones, close an owned broker. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        starting = self._starting
        if not self._ready.is_set() and starting is not None:
            loop, scope = starting  # a start that hangs (or gave up waiting): cancel it
            loop.call_soon(scope.cancel)
        self._ready.wait(timeout)  # a start in progress: let it finish, then stop it
        home, stop = self._home, self._stop
        if home is None or stop is None:
            return
        if home.is_current_thread():
            raise RuntimeError("a runtime cannot be closed from its own event loop")
        if home.call_soon(stop.set):
            thread.join(timeout)

    # --- services: long-lived tasks on the loop ------------------------------------------

    async def start_service(
        self, func: Callable[..., Coroutine[Any, Any, object]], *args: object
    ) -> object:
        """Start ``func(*args, task_status=...)`` in the runtime's task group; return what it
        passes to ``task_status.started()``. Only on the runtime's own loop.

        Why: a resource whose async context holds task groups (an MCP session)
        must be entered and exited in one task, and must outlive the call that
        opened it; such a task lives here and ends when the runtime closes. An
        error before ``started()`` is raised here, not in the task group.
        """
        tg = self._tg
        if tg is None or self._closed:
            raise errors.BrokerClosedError(_CLOSED)
        return await tg.start(func, *args)

    def add_closer(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Await ``closer()`` on the loop when the runtime closes, before its tasks are
        cancelled (a service's graceful end). Only on the runtime's own loop."""
        self._closers.append(closer)

    # --- running calls on the loop ---------------------------------------------------------

    def _submit(self, job: _Job) -> LoopRef:
        with self._lock:
            home = self._home
            if self._closed or self._ended or home is None:
                raise errors.BrokerClosedError(_CLOSED)
            self._pending.add(job)
        if not home.call_soon(self._spawn, job):
            self._finish(job, error=errors.BrokerClosedError(_CLOSED))
            raise errors.BrokerClosedError(_CLOSED)
        return home

    def _spawn(self, job: _Job) -> None:
        """On the loop's thread: start the job, or fail it if the runtime is stopping.

        It runs as a loop callback, so it must never raise (trio would abort).
        """
        if self._tg is None:
            self._finish(job, error=errors.BrokerClosedError(_CLOSED))
            return
        # Made here so it can be closed if refused: trio creates the coroutine before
        # it refuses, which would leave a "never awaited" warning behind.
        run = self._run_job(job)
        try:
            self._tg.start_soon(lambda: run)
        except RuntimeError:  # the task group is closing to new tasks
            run.close()
            self._finish(job, error=errors.BrokerClosedError(_CLOSED))

    async def _run_job(self, job: _Job) -> None:
        """Run one job; its caller gets its result or a typed error, never a silent None.

        A job can end without returning: cancelled by its caller, or by the
        task group when the runtime stops or a sibling crashes it. Each of
        those is reported as ``BrokerClosedError`` (with the crash as cause).
        """
        cause: BaseException | None = None
        try:
            with anyio.CancelScope() as scope:
                job.scope = scope
                if job.cancel_requested:
                    scope.cancel()
                result = await telemetry.within(job.trace_parent, job.func())
                self._finish(job, result=result)
                return
        except Exception as exc:
            self._finish(job, error=exc)
        except BaseException as exc:  # cancellation, or a crash passing through
            if not isinstance(exc, anyio.get_cancelled_exc_class()):
                cause = exc
            raise
        finally:
            if not job.done:
                if job.scope is not None and job.scope.cancel_called:
                    reason = "the call was cancelled"
                elif cause is not None:
                    reason = f"the call did not finish ({type(cause).__name__})"
                else:
                    reason = _CLOSED
                error = errors.BrokerClosedError(reason)
                error.__cause__ = cause
                self._finish(job, error=error)

    def _finish(self, job: _Job, *, result: Any = None, error: BaseException | None = None) -> None:
        with self._lock:
            if job.done:
                return
            job.result, job.error, job.done = result, error, True
            self._pending.discard(job)
        job.notify()

    @staticmethod
    def _cancel(job: _Job) -> None:
        """On the loop's thread: the caller gave up, so stop the work done for it."""
        job.cancel_requested = True
        if job.scope is not None:
            job.scope.cancel()

    def call(self, func: Callable[[], Awaitable[T]]) -> T:
        """Run ``func()`` on the loop and block this thread until it is done."""
        self.start()
        done = threading.Event()
        job = _Job(func, done.set)
        home = self._home
        if home is not None and home.is_current_thread():
            raise RuntimeError("a blocking tool call cannot run on the broker's own event loop")
        home = self._submit(job)
        try:
            done.wait()
        except BaseException:  # KeyboardInterrupt: do not leave the request running
            home.call_soon(self._cancel, job)
            raise
        result: T = job.outcome()
        return result

    async def acall(self, func: Callable[[], Awaitable[T]]) -> T:
        """Run ``func()`` on the loop; the calling loop (any, asyncio or trio) keeps running.

        The caller's cancellation cancels the work done for it on the runtime's
        loop, and nothing else.
        """
        self.start()
        home = self._home
        if home is not None and home.is_current_thread():
            return await func()
        event = anyio.Event()
        waiter = LoopRef.current()
        job = _Job(func, functools.partial(waiter.call_soon, event.set))
        home = self._submit(job)
        try:
            await event.wait()
        except BaseException:
            if not job.done:
                home.call_soon(self._cancel, job)
            raise
        result: T = job.outcome()
        return result
