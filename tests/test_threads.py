"""One broker shared by many threads and event loops; the blocking SyncTokenBroker."""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import anyio
import httpx
import pytest
import structlog
from brokerkit import mock, run_threads

from authsec_crewai import errors
from authsec_crewai._brokerthread import BrokerThread
from authsec_crewai.broker import TokenBroker
from authsec_crewai.sync import SyncTokenBroker
from authsec_crewai.token import DelegationToken, TokenRequest
from authsec_crewai.transports import KeySet, MockTransport, TransportInfo


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_64_threads_on_a_sync_broker_make_one_fetch(client_id: str, backend: str) -> None:
    transport = mock(time.time, latency=0.2)
    barrier = threading.Barrier(64)
    tokens: list[DelegationToken] = []
    with SyncTokenBroker(transport, client_id=client_id, backend=backend) as broker:

        def call() -> None:
            barrier.wait()
            tokens.append(broker.token("read:records"))

        run_threads(*[call] * 64)
        assert transport.calls == 1
        assert len(tokens) == 64 and len({t.value for t in tokens}) == 1
        assert broker.stats.fetches == 1


@pytest.mark.anyio
async def test_sync_broker_works_inside_a_running_event_loop(client_id: str) -> None:
    transport = mock(time.time)
    with SyncTokenBroker(transport, client_id=client_id) as broker:
        first = broker.token("read:records")  # called on this test's running loop
        assert broker.token("read:metrics") is first
    assert transport.calls == 1


def test_sync_broker_from_an_asyncio_app_thread(client_id: str) -> None:
    transport = mock(time.time)
    with SyncTokenBroker(transport, client_id=client_id) as broker:

        async def app() -> DelegationToken:
            return broker.token("read:records")

        token = asyncio.run(app())
    assert "read:records" in token.permissions


def test_sync_broker_raises_typed_errors_and_stops_its_thread(client_id: str) -> None:
    transport = mock(time.time)
    transport.fail_next(1, 404)
    before = threading.active_count()
    with SyncTokenBroker(transport, client_id=client_id) as broker:
        assert threading.active_count() > before
        with pytest.raises(errors.NotDelegatedError, match="delegate"):
            broker.token("read:records")
    assert threading.active_count() == before
    with pytest.raises(errors.BrokerClosedError):
        broker.token("read:records")


@contextmanager
def broker_on_its_own_loop(broker: TokenBroker, backend: str) -> Iterator[None]:
    """Enter ``broker`` on an event loop in a background thread (its home)."""
    ready = threading.Event()
    stop = threading.Event()

    async def home() -> None:
        async with broker:
            ready.set()
            await anyio.to_thread.run_sync(stop.wait)

    thread = threading.Thread(target=anyio.run, args=(home,), kwargs={"backend": backend})
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


@pytest.mark.parametrize("home_backend", ["asyncio", "trio"])
def test_threads_with_their_own_loops_share_one_fetch(client_id: str, home_backend: str) -> None:
    transport = mock(time.time, latency=0.2)
    broker = TokenBroker(transport, client_id=client_id)
    tokens: list[DelegationToken] = []
    barrier = threading.Barrier(8)
    lock = threading.Lock()

    def caller(backend: str) -> None:
        async def many() -> None:
            barrier.wait()
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(one)

        async def one() -> None:
            token = await broker.token("read:records")
            with lock:
                tokens.append(token)

        anyio.run(many, backend=backend)

    with broker_on_its_own_loop(broker, home_backend):
        run_threads(*[partial(caller, "asyncio" if i % 2 else "trio") for i in range(8)])
    assert transport.calls == 1
    assert len(tokens) == 800 and len({t.value for t in tokens}) == 1


def test_cancelled_waiter_on_another_loop_does_not_hurt_the_others(client_id: str) -> None:
    transport = mock(time.time, latency=0.3)
    broker = TokenBroker(transport, client_id=client_id)
    outcome: dict[str, object] = {}

    def impatient() -> None:
        async def run() -> None:
            with anyio.move_on_after(0.05) as scope:
                await broker.token("read:records")
            outcome["impatient_cancelled"] = scope.cancelled_caught

        anyio.run(run, backend="trio")

    def patient() -> None:
        async def run() -> None:
            outcome["patient"] = await broker.token("read:records")

        anyio.run(run)

    with broker_on_its_own_loop(broker, "asyncio"):
        run_threads(impatient, patient)
    assert outcome["impatient_cancelled"] is True
    assert isinstance(outcome["patient"], DelegationToken)
    assert transport.calls == 1


def test_a_sync_broker_left_open_does_not_hang_interpreter_exit() -> None:
    code = (
        "import uuid\n"
        "from authsec_crewai import SyncTokenBroker\n"
        "from authsec_crewai.transports import MockTransport\n"
        "broker = SyncTokenBroker(MockTransport(), client_id=str(uuid.uuid4()))\n"
        "print(broker.token('read:records').fingerprint)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()[-1]) == 12  # the fingerprint, printed last


# --- one decision per caller: the cache lookup and joining a flight are atomic ---------------


class GatedTransport:
    """Wraps a MockTransport; fetches (on any loop) wait until ``gate`` is set.

    ``started`` is set when a fetch is inside the transport. Both are
    ``threading.Event``s, so a test thread can hold and release the broker's
    home loop from outside it.
    """

    def __init__(self, inner: MockTransport) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls = 0

    @property
    def info(self) -> TransportInfo:
        return self.inner.info

    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        self.calls += 1
        self.started.set()
        await anyio.to_thread.run_sync(self.gate.wait, 10)
        return await self.inner.fetch_token(request)

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        return await self.inner.fetch_key_set(tenant_id)

    def api(self) -> httpx.AsyncBaseTransport:
        return self.inner.api()

    async def aclose(self) -> None:
        await self.inner.aclose()


class PauseAfterRelease:
    """Stands in for a lock: the first time ``thread_name`` releases it, runs ``hook``.

    That parks the thread right after a critical section, where another
    thread's work may land before it takes the lock again.
    """

    def __init__(self, lock: threading.Lock, thread_name: str, hook: Callable[[], None]) -> None:
        self._lock = lock
        self._thread_name = thread_name
        self._hook = hook
        self.fired = False

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()
        if not self.fired and threading.current_thread().name == self._thread_name:
            self.fired = True
            self._hook()


@pytest.mark.parametrize("home_backend", ["asyncio", "trio"])
def test_a_flight_landing_between_lookup_and_join_does_not_start_a_second_fetch(
    client_id: str, home_backend: str
) -> None:
    transport = GatedTransport(mock(time.time))
    broker = TokenBroker(transport, client_id=client_id)
    tokens: list[DelegationToken] = []

    def caller(backend: str) -> None:
        async def one() -> None:
            tokens.append(await broker.token("read:records"))

        anyio.run(one, backend=backend)

    def let_the_first_flight_land() -> None:
        transport.gate.set()
        deadline = time.monotonic() + 10
        while broker.cached_token("read:records") is None:
            assert time.monotonic() < deadline, "the first flight never landed"
            time.sleep(0.001)

    with broker_on_its_own_loop(broker, home_backend):
        first = threading.Thread(target=caller, args=("asyncio",), name="first-caller")
        first.start()
        assert transport.started.wait(10)
        pause = PauseAfterRelease(broker._lock, "second-caller", let_the_first_flight_land)
        broker._lock = pause  # type: ignore[assignment]
        second = threading.Thread(target=caller, args=("trio",), name="second-caller")
        second.start()
        for thread in (first, second):
            thread.join(30)
            assert not thread.is_alive()
    assert pause.fired
    assert len(tokens) == 2 and tokens[0] is tokens[1]
    assert transport.calls == 1


def test_many_threads_on_fresh_brokers_make_one_fetch_each(client_id: str) -> None:
    """Threads with their own event loops race a cold broker, round after round."""
    rounds, callers = 300, 6
    brokers: list[TokenBroker] = []
    transports: list[MockTransport] = []
    start = threading.Barrier(callers + 1)
    done = threading.Barrier(callers + 1)
    failures: list[BaseException] = []

    def caller(index: int) -> None:
        async def run() -> None:
            rng = random.Random(index)
            for round_ in range(rounds):
                start.wait(30)
                await anyio.sleep(rng.random() * 0.002)  # spread arrivals over the flight
                try:
                    await brokers[round_].token("read:records")
                except BaseException as exc:  # reported below, not lost in a thread
                    failures.append(exc)
                done.wait(30)

        anyio.run(run, backend="asyncio" if index % 2 else "trio")

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so the gaps get visited
    try:
        threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        for thread in threads:
            thread.start()
        for _ in range(rounds):
            transport = mock(time.time)
            broker = TokenBroker(transport, client_id=client_id)
            transports.append(transport)
            brokers.append(broker)
            with broker_on_its_own_loop(broker, "asyncio"):
                start.wait(30)
                done.wait(30)
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()
    finally:
        sys.setswitchinterval(previous)
    assert failures == []
    assert [t.calls for t in transports] == [1] * rounds


# --- a log processor that raises changes nothing a caller receives --------------------------


class LogSinkDown(RuntimeError):
    pass


def raise_in_processor(logger: object, method: str, event_dict: dict[str, object]) -> object:
    raise LogSinkDown(f"the log sink is down ({event_dict.get('event')})")


@contextmanager
def raising_log_processor() -> Iterator[None]:
    """An application's structlog set-up whose processor raises on every event."""
    saved = structlog.get_config()
    structlog.configure(
        processors=[raise_in_processor, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.ReturnLoggerFactory(),
    )
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.parametrize("home_backend", ["asyncio", "trio"])
def test_a_raising_log_processor_strands_no_waiter_on_any_loop(
    client_id: str, home_backend: str
) -> None:
    transport = GatedTransport(mock(time.time))
    broker = TokenBroker(transport, client_id=client_id)
    tokens: list[DelegationToken] = []
    errors_seen: list[BaseException] = []
    home_outcome: list[BaseException | None] = []
    ready, stop = threading.Event(), threading.Event()
    lock = threading.Lock()

    async def home() -> None:
        async with broker:
            ready.set()
            await anyio.to_thread.run_sync(stop.wait)

    def run_home() -> None:
        try:
            anyio.run(home, backend=home_backend)
            home_outcome.append(None)
        except BaseException as exc:
            home_outcome.append(exc)

    def caller(backend: str) -> None:
        async def one() -> None:
            try:
                with anyio.fail_after(20):  # a guard against a hang, not a speed limit
                    token = await broker.token("read:records")
                with lock:
                    tokens.append(token)
            except BaseException as exc:
                with lock:
                    errors_seen.append(exc)

        async def many() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(25):
                    tg.start_soon(one)

        anyio.run(many, backend=backend)

    with raising_log_processor():
        home_thread = threading.Thread(target=run_home)
        home_thread.start()
        assert ready.wait(10)
        try:
            callers = [
                threading.Thread(target=caller, args=("asyncio" if i % 2 else "trio",))
                for i in range(4)
            ]
            for thread in callers:
                thread.start()
            assert transport.started.wait(10)
            time.sleep(0.05)  # let every caller join the held flight
            transport.gate.set()
            for thread in callers:
                thread.join(30)
                assert not thread.is_alive()
            # Served from cache, and dropped from it, in spite of the logger.
            cached = broker.cached_token("read:records")
            assert cached is not None and broker.invalidate(cached) is True
        finally:
            stop.set()
            home_thread.join(10)
    assert errors_seen == []
    assert len(tokens) == 100 and len({t.value for t in tokens}) == 1
    assert home_outcome == [None]  # the home loop got no ExceptionGroup
    assert transport.calls == 1


# --- a call that did not return never returns None -------------------------------------------


class Crash(BaseException):
    """Not an Exception: it passes every ``except Exception`` on its way up."""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_job_that_did_not_return_raises_a_typed_error(client_id: str, backend: str) -> None:
    runtime = BrokerThread(
        TokenBroker(mock(time.time), client_id=client_id), owns_broker=True, backend=backend
    )
    waiting = threading.Event()
    outcome: list[object] = []

    async def wait_forever() -> str:
        waiting.set()
        await anyio.sleep_forever()
        return "never"

    async def crash() -> str:
        raise Crash

    def waiter() -> None:
        try:
            outcome.append(runtime.call(wait_forever))
        except errors.BrokerClosedError as exc:
            outcome.append(exc)

    try:
        thread = threading.Thread(target=waiter)
        thread.start()
        assert waiting.wait(10)
        # The crash takes the runtime's task group down, cancelling the waiting job.
        with pytest.raises(errors.BrokerClosedError):
            runtime.call(crash)
        thread.join(10)
        assert not thread.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], errors.BrokerClosedError)
    finally:
        runtime.close()


class CrashingTransport(GatedTransport):
    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        self.calls += 1
        raise Crash


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_token_never_returns_none(client_id: str, backend: str) -> None:
    transport = CrashingTransport(mock(time.time))
    with SyncTokenBroker(transport, client_id=client_id, backend=backend) as broker:
        with pytest.raises(errors.BrokerClosedError):
            broker.token("read:records")
        with pytest.raises(errors.BrokerClosedError):
            broker.token("read:records")
    assert transport.calls == 1
