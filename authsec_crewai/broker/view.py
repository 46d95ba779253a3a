"""``BrokerAgent``: the broker as one agent sees it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..token import DelegationToken, ScopesLike
    from .agents import AgentState
    from .stats import BrokerStats

__all__ = ["BrokerAgent"]


class _Broker(Protocol):
    """What a view needs of its broker (the broker makes views; a view does not import it)."""

    _clock: Callable[[], float]

    async def _serve(self, agent: AgentState, scopes: ScopesLike) -> DelegationToken: ...

    def _cached_of(self, agent: AgentState, scopes: ScopesLike) -> DelegationToken | None: ...

    def _invalidate(self, agent: AgentState, token: DelegationToken) -> bool: ...

    def stats_for(self, client_id: str) -> BrokerStats: ...


class BrokerAgent:
    """The broker as one agent sees it: that agent's tokens, invalidation and counters.

    A light view (two references); make as many as you like. It shares the
    broker's transport, task group and life cycle.
    """

    __slots__ = ("_agent", "_broker", "_clock", "_hot")

    def __init__(self, broker: _Broker, agent: AgentState) -> None:
        self._broker = broker
        self._agent = agent
        self._clock = broker._clock
        self._hot = agent.cache.hot

    def __repr__(self) -> str:
        return f"BrokerAgent(client_id={self.client_id!r})"

    @property
    def client_id(self) -> str:
        return self._agent.client_id

    async def token(self, scopes: ScopesLike) -> DelegationToken:
        """A valid token of this agent covering ``scopes`` (see ``TokenBroker.token``)."""
        # The broker's fast path, inlined: this is the hot path of a named agent.
        try:
            entry = (
                self._hot.get(tuple(scopes)) if scopes.__class__ is list else self._hot.get(scopes)
            )
        except TypeError:
            entry = None
        if entry is not None and self._clock() < entry.serve_until:
            self._agent.fast_hits += 1  # unlocked: may undercount when threads race here
            return entry.token
        return await self._broker._serve(self._agent, scopes)

    def cached_token(self, scopes: ScopesLike) -> DelegationToken | None:
        """This agent's token for ``scopes`` if it can be served without waiting."""
        return self._broker._cached_of(self._agent, scopes)

    def invalidate(self, token: DelegationToken) -> bool:
        """Drop ``token`` from this agent's cache if it is still cached; True if it was."""
        return self._broker._invalidate(self._agent, token)

    @property
    def stats(self) -> BrokerStats:
        """This agent's counters."""
        return self._broker.stats_for(self._agent.client_id)
