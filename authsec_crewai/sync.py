"""``SyncTokenBroker``: the async broker behind a blocking API.

The broker runs on its own event-loop thread (a daemon, so a program that
forgets to close it still exits), so ``token()`` works from any thread,
including one that is itself running an event loop (CrewAI runs sync tools in
worker threads of an async app). A token that can be served from cache is
returned without a thread hop.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from ._brokerthread import START_TIMEOUT, BrokerThread
from .broker import BrokerAgent, BrokerStats, TokenBroker

if TYPE_CHECKING:
    from .token import DelegationToken, ScopesLike
    from .transports.base import Transport

__all__ = ["SyncBrokerAgent", "SyncTokenBroker"]


class SyncTokenBroker:
    """A :class:`TokenBroker` on a background event-loop thread.

    Takes the same keyword arguments as ``TokenBroker``, and ``start_timeout``:
    the longest the first call waits for the broker to start. Use it as a context
    manager (or call :meth:`close`): leaving it stops the thread, cancels
    background refreshes and closes the transport.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        backend: Literal["asyncio", "trio"] = "asyncio",
        start_timeout: float = START_TIMEOUT,
        **broker_options: Any,
    ) -> None:
        self.broker = TokenBroker(transport, **broker_options)
        self._thread = BrokerThread(
            self.broker, owns_broker=True, backend=backend, start_timeout=start_timeout
        )

    def __repr__(self) -> str:
        return f"SyncTokenBroker({self.broker!r})"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the event-loop thread and enter the broker on it (``token()`` does too)."""
        self._thread.start()

    def close(self) -> None:
        """Stop the broker and its thread. Safe to call twice."""
        self._thread.close()

    def token(self, scopes: ScopesLike, *, agent: str | None = None) -> DelegationToken:
        """Like ``await TokenBroker.token(scopes, agent=...)``, blocking the calling thread."""
        cached = self.broker.cached_token(scopes, agent=agent)
        if cached is not None:
            return cached
        return self._thread.call(lambda: self.broker.token(scopes, agent=agent))

    def cached_token(
        self, scopes: ScopesLike, *, agent: str | None = None
    ) -> DelegationToken | None:
        """The token for ``scopes`` if it can be served without waiting, else None."""
        return self.broker.cached_token(scopes, agent=agent)

    def invalidate(self, token: DelegationToken) -> bool:
        """Drop ``token`` if it is still the cached one (see ``TokenBroker.invalidate``)."""
        return self.broker.invalidate(token)

    def agent(self, client_id: str) -> SyncBrokerAgent:
        """A light blocking view of the broker for one agent (see ``TokenBroker.agent``)."""
        return SyncBrokerAgent(self, self.broker.agent(client_id))

    @property
    def stats(self) -> BrokerStats:
        """The counters, summed over every agent."""
        return self.broker.stats

    def stats_for(self, client_id: str) -> BrokerStats:
        """One agent's counters."""
        return self.broker.stats_for(client_id)


class SyncBrokerAgent:
    """A :class:`SyncTokenBroker` as one agent sees it: blocking ``token()`` and the rest."""

    __slots__ = ("_sync", "_view")

    def __init__(self, sync: SyncTokenBroker, view: BrokerAgent) -> None:
        self._sync = sync
        self._view = view

    def __repr__(self) -> str:
        return f"SyncBrokerAgent(client_id={self.client_id!r})"

    @property
    def client_id(self) -> str:
        return self._view.client_id

    def token(self, scopes: ScopesLike) -> DelegationToken:
        """This agent's token covering ``scopes``, blocking the calling thread."""
        cached = self._view.cached_token(scopes)
        if cached is not None:
            return cached
        return self._sync._thread.call(lambda: self._view.token(scopes))

    def cached_token(self, scopes: ScopesLike) -> DelegationToken | None:
        return self._view.cached_token(scopes)

    def invalidate(self, token: DelegationToken) -> bool:
        return self._view.invalidate(token)

    @property
    def stats(self) -> BrokerStats:
        return self._view.stats
