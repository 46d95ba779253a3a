"""One broker shared by many threads and event loops; the blocking SyncTokenBroker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import anyio
import pytest
from brokerkit import mock, run_threads

from authsec_crewai import errors
from authsec_crewai.broker import TokenBroker
from authsec_crewai.sync import SyncTokenBroker
from authsec_crewai.token import DelegationToken


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
