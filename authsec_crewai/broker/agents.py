"""The agents a broker serves: their state, their grants, and the registry that makes them.

One broker serves any number of client ids. Each agent has its own cache,
flights, failure memory, grants and counters, so one agent's revocation,
failure or refused scope never touches another's.

An agent's *grants* are what its latest token says its delegation grants,
trusted until that token expires: AuthSec hands out one token per agent
whatever is asked, so a scope outside it cannot be had until the token changes,
and asking the server for it again would only cost a request.

Its *epoch* counts the revocations and invalidations it has seen: a flight
started before the latest one may not cache what it brings back (fail closed).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .. import errors
from ..identity import check_client_id
from ..token import DelegationToken, TokenRequest
from .cache import TokenCache
from .failures import FailureMemory
from .stats import COUNTERS, BrokerStats

if TYPE_CHECKING:
    from .flights import Flight

__all__ = ["AgentRegistry", "AgentState", "not_granted"]


class AgentState:
    """All the broker knows about one agent identity.

    Guarded by the broker's lock, except what the fast path touches: the
    cache's ``hot`` and ``requests`` maps (single dictionary operations) and
    ``fast_hits`` (which may undercount when threads race on it).
    """

    __slots__ = (
        "cache",
        "client_id",
        "counts",
        "epoch",
        "failures",
        "fast_hits",
        "flights",
        "grants",
        "grants_issued",
        "grants_until",
        "whole_grant",
    )

    def __init__(self, client_id: str, *, whole_grant: bool = True) -> None:
        self.client_id = client_id
        # AuthSec hands the whole delegation in every token, so one token's scopes
        # are what the agent may ever get; an OAuth server's answer scopes only
        # the request it answered, and says nothing of the rest.
        self.whole_grant = whole_grant
        self.cache = TokenCache()
        self.flights: dict[TokenRequest, Flight] = {}
        self.failures = FailureMemory()
        self.grants: frozenset[str] | None = None
        self.grants_until = 0.0  # wall clock
        self.grants_issued = 0.0  # wall clock: so an older token never overrides a newer one
        self.epoch = 0
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.fast_hits = 0

    def __repr__(self) -> str:
        return f"AgentState(client_id={self.client_id!r}, cached={len(self.cache)})"

    def stats(self, extra_hits: int = 0) -> BrokerStats:
        """The agent's counters (lock held)."""
        counts = dict(self.counts)
        counts["hits"] += self.fast_hits + extra_hits
        return BrokerStats(**counts, cached=len(self.cache))

    # --- grants -----------------------------------------------------------------------------

    def learn_grants(self, token: DelegationToken) -> None:
        """What ``token`` grants is now what the delegation grants, unless a newer token
        said otherwise (only where a token carries the whole grant)."""
        issued = token.issued_at.timestamp()
        if self.whole_grant and issued >= self.grants_issued:
            self.grants, self.grants_until = token.permissions, token.expires_at_ts
            self.grants_issued = issued

    def forget_grants(self) -> None:
        self.grants, self.grants_until, self.grants_issued = None, 0.0, 0.0

    def refused_by_grants(
        self, request: TokenRequest, now: float
    ) -> errors.ScopeNotGrantedError | None:
        """The refusal for scopes the known grants do not cover, if that is the case."""
        grants = self.grants
        if grants is not None and now < self.grants_until and not request.scopes <= grants:
            return not_granted(grants, request)
        return None

    # --- revocation ---------------------------------------------------------------------------

    def fence(self) -> None:
        """A revocation or invalidation: flights in the air may no longer cache their result."""
        self.epoch += 1


def not_granted(permissions: frozenset[str], request: TokenRequest) -> errors.ScopeNotGrantedError:
    """The error for a request the delegation's ``permissions`` do not cover."""
    missing = request.scopes - permissions
    return errors.ScopeNotGrantedError(
        f"the agent's delegation grants {', '.join(sorted(permissions)) or 'nothing'}"
        f", not {', '.join(sorted(missing))}; ask an administrator to delegate those "
        "permissions to this agent",
        missing=frozenset(missing),
    )


class AgentRegistry:
    """The broker's agents by client id, each made on first use (its id checked once)."""

    __slots__ = ("_agents", "_lock", "_opaque_ids", "_whole_grant", "default")

    def __init__(
        self,
        lock: threading.Lock,
        default: str | None,
        *,
        opaque_ids: bool = False,
        whole_grant: bool = True,
    ) -> None:
        self._lock = lock
        self._opaque_ids = opaque_ids  # the transport's client ids are opaque (OAuth)
        self._whole_grant = whole_grant
        self._agents: dict[str, AgentState] = {}
        self.default: AgentState | None = None
        if default is not None:
            checked = check_client_id(default, opaque=opaque_ids)
            self.default = self._agents[checked] = AgentState(checked, whole_grant=whole_grant)

    def __iter__(self) -> Iterator[AgentState]:
        return iter(list(self._agents.values()))

    def __len__(self) -> int:
        return len(self._agents)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._agents)

    def get(self, client_id: str) -> AgentState:
        """The state of agent ``client_id``, made on first use."""
        agent = self._agents.get(client_id)
        if agent is None:
            check_client_id(client_id, opaque=self._opaque_ids)
            with self._lock:
                agent = self._agents.setdefault(
                    client_id, AgentState(client_id, whole_grant=self._whole_grant)
                )
        return agent

    def find(self, client_id: str) -> AgentState | None:
        """The agent if the broker has served it; its id is checked either way."""
        agent = self._agents.get(client_id)
        if agent is None:
            check_client_id(client_id, opaque=self._opaque_ids)
        return agent
