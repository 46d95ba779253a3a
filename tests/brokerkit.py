"""Test helpers for the broker: a movable clock and a transport that can be held.

Imported by test modules directly; nothing here imports crewai.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import anyio
import httpx
from joserfc.jwk import RSAKey

from authsec_crewai.broker import RefreshPolicy, TokenBroker
from authsec_crewai.testing import MockAuthority
from authsec_crewai.token import DelegationToken, TokenRequest
from authsec_crewai.transports import KeySet, MockTransport, TransportInfo

START = 1_800_000_000.0
SIGNING_KEY = RSAKey.generate_key(2048, parameters={"kid": "default"}, private=True)
"""One real RS256 key for the module's mocks: generating one per test is slow."""
NO_JITTER = RefreshPolicy(jitter_fraction=0.0)


class FakeClock:
    """Wall and monotonic time that only move when a test says so."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self.mono = 1000.0

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


class HeldTransport:
    """Wraps a MockTransport; while ``hold`` is set, fetches wait for ``release()``.

    ``started`` is set when a fetch is inside the transport, so a test knows
    the single flight is in progress before it adds waiters or cancels them.
    """

    def __init__(self, inner: MockTransport) -> None:
        self.inner = inner
        self.hold = False
        self.calls = 0
        self.started = anyio.Event()
        self._release = anyio.Event()

    def arm(self) -> None:
        """Hold the next fetches until ``release()``; ``started`` reports the next one."""
        self.hold = True
        self.started = anyio.Event()
        self._release = anyio.Event()

    @property
    def info(self) -> TransportInfo:
        return self.inner.info

    def release(self) -> None:
        self._release.set()

    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        self.calls += 1
        self.started.set()
        if self.hold:
            await self._release.wait()
        return await self.inner.fetch_token(request)

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        return await self.inner.fetch_key_set(tenant_id)

    def api(self) -> httpx.AsyncBaseTransport:
        return self.inner.api()

    async def aclose(self) -> None:
        await self.inner.aclose()


def mock(clock: Callable[[], float], *, ttl: float = 1000.0, latency: float = 0.0) -> MockTransport:
    """A MockTransport whose authority issues tokens on ``clock``."""
    authority = MockAuthority(ttl_seconds=ttl, clock=clock, key=SIGNING_KEY)
    return MockTransport(authority=authority, latency=latency)


def broker(
    transport: object, client_id: str, clock: FakeClock, policy: RefreshPolicy = NO_JITTER
) -> TokenBroker:
    return TokenBroker(
        transport,  # type: ignore[arg-type]
        client_id=client_id,
        policy=policy,
        clock=clock,
        monotonic=clock.monotonic,
    )


async def settle() -> None:
    """Let every ready task run (background refreshes finish on mock transports)."""
    for _ in range(50):
        await anyio.lowlevel.checkpoint()


def run_threads(*targets: Callable[[], object]) -> None:
    """Run each target on its own thread, all at once, and wait for every one."""
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive()


def loops_calling(
    call: Callable[[], Coroutine[Any, Any, object]],
    *,
    backends: tuple[str, ...] = ("asyncio", "trio"),
    concurrent: int = 10,
) -> list[Callable[[], object]]:
    """Targets for :func:`run_threads`: each runs an event loop of one backend that
    makes ``concurrent`` calls at once, all loops starting together."""
    start = threading.Barrier(len(backends))

    async def calls() -> None:
        start.wait()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrent):
                tg.start_soon(call)

    return [partial(anyio.run, calls, backend=backend) for backend in backends]
