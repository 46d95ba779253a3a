"""The broker's seam to a shared token store; :mod:`authsec_crewai.stores.fleet` runs the protocol.

The in-process cache stays the hot path: the store is asked only when a flight
would call the transport (read the shared entry, else take the lease, fetch,
write, announce). Revocations seen here are announced to the fleet, and
revocations announced by other processes drop this process's copies.

A fetched token reaches the flight's waiters *before* it is written to the
store: a store that is slow (bounded by its own timeout) delays the other
processes' reads, never this process's callers.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import anyio

from ..policy import RefreshPolicy
from ..token import DelegationToken, TokenRequest

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from ..stores.base import TokenStore
    from ..stores.fleet import Fleet
    from .flights import FlightRunner

__all__ = ["SharedStore"]

Verify = Callable[[DelegationToken], Awaitable[None]]


class SharedStore:
    """One broker's use of a :class:`~authsec_crewai.stores.TokenStore`."""

    __slots__ = (
        "_clock",
        "_fleet",
        "_monotonic",
        "_open",
        "_policy",
        "_released",
        "_rng",
        "_scope",
        "store",
    )

    def __init__(
        self,
        store: TokenStore,
        *,
        policy: RefreshPolicy,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.store = store
        self._policy = policy
        self._clock = clock
        self._monotonic = monotonic
        self._rng = rng
        self._fleet: Fleet | None = None
        self._open = False
        self._released = anyio.Event()
        self._scope: anyio.CancelScope | None = None

    @property
    def counts(self) -> dict[str, int]:
        """``store_hits``, ``store_errors`` and ``lease_waits`` (kept after closing)."""
        return {} if self._fleet is None else dict(self._fleet.counts)

    async def keep(
        self, verify: Verify | None, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Enter the store, report started, and keep it open until :meth:`release`.

        Runs as a task of the broker's task group. Once the store is entered,
        its scope is shielded and only :meth:`release` ends it (the task
        group's cancellation does not reach it; a hanging entry it does),
        so the store is entered and left in one task and one scope, whoever
        closes the broker and however cancelled they are. Stored tokens are
        checked with ``verify`` when read back.
        """
        from ..stores.fleet import Fleet

        with anyio.CancelScope() as scope:  # entering may be cancelled (a store that hangs)
            self._scope = scope
            async with self.store:
                self._fleet = Fleet(
                    self.store,
                    verify=verify,
                    clock=self._clock,
                    monotonic=self._monotonic,
                    rng=self._rng,
                )
                self._open = True
                task_status.started()
                scope.shield = True  # entered: from now on only release() ends it
                try:
                    await self._released.wait()
                finally:
                    self._open = False

    def release(self, timeout: float) -> None:
        """Close the store now, within ``timeout`` seconds (the kept task ends)."""
        self._released.set()
        if self._scope is not None:
            self._scope.deadline = min(self._scope.deadline, anyio.current_time() + timeout)

    async def listen(self, on_revoked: Callable[[str, str | None], None]) -> None:
        """Deliver other processes' revocations until cancelled."""
        if self._fleet is not None:
            await self._fleet.listen(on_revoked)

    async def obtain(
        self,
        request: TokenRequest,
        fetch: Callable[[], Awaitable[DelegationToken]],
        fetched: Callable[[DelegationToken], bool],
    ) -> DelegationToken:
        """A token for ``request``: from the store, or fetched once for the fleet.

        ``fetched(token)`` is called as soon as this process fetched a token,
        before the store is written, so the waiters need not wait for the write;
        it answers False for a token that must not be shared (fenced).
        """
        fleet = self._fleet
        if fleet is None or not self._open:
            return await fetch()
        return await fleet.fetch_shared(request, fetch, self._serves_from_store, fetched)

    def _serves_from_store(self, token: DelegationToken, written_at: float) -> bool:
        """A stored token is worth taking before MANDATORY, or when just re-confirmed."""
        now = self._clock()
        _, mandatory = self._policy.windows(token.lifetime)
        fresh = now - written_at < self._policy.backoff_initial
        return now < token.expires_at_ts - mandatory or fresh

    async def revoke(
        self, client_id: str, keys: Iterable[TokenRequest], fingerprint: str | None
    ) -> None:
        """Mark the agent revoked in the store and tell the fleet (on the home loop)."""
        if self._fleet is not None:
            await self._fleet.revoke(client_id, keys, fingerprint)

    def announce(
        self,
        runner: FlightRunner,
        client_id: str,
        keys: list[TokenRequest],
        fingerprint: str | None,
    ) -> None:
        """:meth:`revoke` from any thread: it runs in the broker's task group."""
        if self._fleet is not None:
            runner.spawn(functools.partial(self.revoke, client_id, keys, fingerprint))
