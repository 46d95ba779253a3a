"""``MockTransport``: real RS256 tokens minted in process, with fault knobs.

Tokens come from a :class:`~authsec_crewai.testing.authority.MockAuthority` and pass
through the same parser as the live transport's, so code tested against the
mock reads exactly what production reads. API calls go through the mock
server app in process (``httpx.ASGITransport``), no socket needed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import anyio
import httpx

from .. import errors
from ..testing.authority import DEFAULT_PERMISSIONS, MockAuthority
from ..token import DelegationToken, TokenRequest
from ..wire import error_for_status, parse_token_body
from .base import KeySet, TransportInfo

__all__ = ["MockTransport", "TokenFault"]

TokenFault = int | Literal["timeout"]
"""An injected failure: an HTTP status code the server would answer, or a timeout."""


@dataclass
class _FaultPlan:
    queued: list[TokenFault] = field(default_factory=list)
    rate: float = 0.0
    rate_fault: TokenFault = 500
    rng: random.Random = field(default_factory=random.Random)

    def next(self) -> TokenFault | None:
        if self.queued:
            return self.queued.pop(0)
        if self.rate and self.rng.random() < self.rate:
            return self.rate_fault
        return None


class MockTransport:
    """A transport that needs nothing but this process.

    ``latency`` (seconds) is slept before each token answer; ``fail_next`` and
    ``fail_rate`` inject failures. ``calls`` counts ``fetch_token`` calls, which
    is how tests prove single flight.
    """

    def __init__(
        self,
        *,
        authority: MockAuthority | None = None,
        ttl_seconds: float = 1800,
        permissions: Iterable[str] = DEFAULT_PERMISSIONS,
        latency: float = 0.0,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        self.authority = authority or MockAuthority(
            ttl_seconds=ttl_seconds, permissions=permissions, clock=clock
        )
        self.latency = latency
        self.calls = 0
        self.key_set_calls = 0
        self._faults = _FaultPlan(rng=random.Random(seed))
        self._api: httpx.AsyncBaseTransport | None = None

    @property
    def info(self) -> TransportInfo:
        """Mock: tokens and the API are served in process, on wall time."""
        return TransportInfo(mode="mock")

    def __repr__(self) -> str:
        return f"MockTransport(tenant_id={self.authority.tenant_id!r}, calls={self.calls})"

    # --- knobs ---------------------------------------------------------------------

    def fail_next(self, count: int = 1, fault: TokenFault = 500) -> None:
        """Make the next ``count`` token fetches fail with ``fault``."""
        self._faults.queued.extend([fault] * count)

    def fail_rate(self, rate: float, fault: TokenFault = 500) -> None:
        """Make each token fetch fail with probability ``rate`` (0 turns it off)."""
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        self._faults.rate, self._faults.rate_fault = rate, fault

    # --- the Transport protocol -----------------------------------------------------

    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        self.calls += 1
        fault = self._faults.next()
        if self.latency:
            await anyio.sleep(self.latency)
        if fault == "timeout":
            raise errors.TransportTimeoutError("the mock AuthSec server timed out (injected)")
        if fault is not None:
            raise error_for_status(fault, {"error": "injected failure"})
        status, body = self.authority.token_answer(request.client_id)
        if status != 200:
            raise error_for_status(status, body)
        return parse_token_body(body, now=self.authority.clock())

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        self.key_set_calls += 1
        return self.authority.key_set(tenant_id)

    def api(self) -> httpx.AsyncBaseTransport:
        if self._api is None:
            from ..testing.mockserver import create_app

            self._api = httpx.ASGITransport(app=create_app(self.authority))
        return self._api

    async def aclose(self) -> None:
        if self._api is not None:
            await self._api.aclose()
