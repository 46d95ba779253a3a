"""``MemoryStore``: the store protocol inside one process.

The default (``AUTHSEC_STORE=memory:``) gives a broker no shared store at all:
its own cache is the memory tier, as it always was. A ``MemoryStore`` object
is for several brokers on one event loop that should share fetches (and for
testing the fleet logic without a server); nothing leaves the process, so
values are framed, not encrypted, unless keys are given.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

import anyio

from .base import DEFAULT_LEASE_SECONDS, DEFAULT_TIMEOUT_SECONDS, SealedCodec

__all__ = ["MemoryStore"]


class MemoryStore:
    """Dicts with expiry, leases and in-process event delivery (one event loop)."""

    channel = "memory-events"

    def __init__(
        self,
        *,
        keys: Sequence[bytes] = (),
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_interval: float = 0.05,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.codec = SealedCodec(keys)
        self.timeout = timeout
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self._monotonic = monotonic
        self._clock = clock
        self._values: dict[str, tuple[bytes, float]] = {}
        self._leases: dict[str, tuple[str, float]] = {}
        self._listeners: list[Callable[[str], None]] = []

    def __repr__(self) -> str:
        return f"MemoryStore(entries={len(self._values)})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def items(self) -> dict[str, bytes]:
        """Every live name and value (what an attacker reading the store would see)."""
        now = self._monotonic()
        return {name: value for name, (value, until) in self._values.items() if until > now}

    async def get(self, names: Sequence[str]) -> list[bytes | None]:
        now = self._monotonic()
        out: list[bytes | None] = []
        for name in names:
            found = self._values.get(name)
            out.append(found[0] if found is not None and found[1] > now else None)
        return out

    async def put(self, name: str, value: bytes, ttl: float) -> None:
        self._values[name] = (value, self._monotonic() + ttl)

    async def delete(self, names: Sequence[str]) -> None:
        for name in names:
            self._values.pop(name, None)

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        now = self._monotonic()
        held = self._leases.get(name)
        if held is not None and held[1] > now:
            return False
        self._leases[name] = (owner, now + ttl)
        return True

    async def renew(self, name: str, owner: str, ttl: float) -> bool:
        now = self._monotonic()
        held = self._leases.get(name)
        if held is None or held[0] != owner or held[1] <= now:
            return False
        self._leases[name] = (owner, now + ttl)
        return True

    async def now(self) -> float:
        return self._clock()

    async def release(self, name: str, owner: str) -> None:
        held = self._leases.get(name)
        if held is not None and held[0] == owner:
            del self._leases[name]

    async def publish(self, message: str) -> None:
        for listener in list(self._listeners):
            listener(message)

    async def listen(self, on_message: Callable[[str], None]) -> None:
        self._listeners.append(on_message)
        try:
            await anyio.sleep_forever()
        finally:
            self._listeners.remove(on_message)
