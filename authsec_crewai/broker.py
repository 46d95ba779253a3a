"""``TokenBroker``: a TTL cache with single flight, refresh-ahead and a failure policy.

How a cached token is served depends on where "now" falls in its life::

    issued ─── FRESH ─── advisory_at ─── ADVISORY ─── mandatory_at ─── MANDATORY ─── exp ─ EXPIRED
               serve                      serve + one                  callers wait on       never
                                          background refresh           the one refresh       served

The windows scale with the token's lifetime and the ADVISORY start carries
per-token jitter, so a fleet of brokers does not refresh in step (botocore's
refreshable credentials). Every fetch for a key is one task in the broker's
own task group: callers only wait for it, so a cancelled caller can never
cancel or poison the shared fetch (google-auth's shielded refresh).

Callers may be on any thread and any event loop. The broker's state is guarded
by one ``threading.Lock`` that is never held across an ``await``; fetches run
on the loop that entered the broker (its "home"), which also keeps the
transport's connection pool on one loop.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio

from . import errors, telemetry
from ._loopref import LoopRef
from .logging import get_logger
from .redact import redact_text
from .token import DelegationToken, ScopesLike, TokenRequest

if TYPE_CHECKING:
    from anyio.abc import TaskGroup
    from opentelemetry.context import Context

    from .stores.base import TokenStore
    from .stores.fleet import Fleet
    from .transports.base import Transport
    from .verify import TokenVerifier

__all__ = ["CACHE_LIMIT", "BrokerAgent", "BrokerStats", "RefreshPolicy", "TokenBroker", "Zone"]

_log = get_logger("authsec_crewai.broker")
_fallback_log = logging.getLogger("authsec_crewai.broker")
_LogLine = tuple[str, str, dict[str, object]]

# Bounds on what one agent's input can make the broker keep. A scope string is
# the agent's (often a language model's) choice, so every map keyed by it is
# bounded: going past a bound costs at most a repeated lookup or fetch.
MEMO_LIMIT = 1024
"""Scope strings remembered per agent with their canonical request (then cleared)."""
CACHE_LIMIT = 256
"""Distinct scope sets cached per agent (the oldest entry makes room)."""
FAILURE_LIMIT = 256
"""Failures remembered per agent (expired ones first, then the oldest, make room)."""


class Zone(enum.Enum):
    """Where a cached token is in its life, and so how it may be served."""

    FRESH = "fresh"
    ADVISORY = "advisory"
    MANDATORY = "mandatory"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When to refresh ahead of expiry and how to behave when refreshing fails.

    Windows are fractions of the token's lifetime, capped in seconds, so a
    5-minute token gets a 60 s advisory window, not a 15-minute one. A policy
    that would leave some token without an advisory window (and so without a
    background refresh) is refused here, where it is built.
    """

    advisory_fraction: float = 0.2
    advisory_max: float = 900.0
    mandatory_fraction: float = 0.05
    mandatory_max: float = 300.0
    jitter_fraction: float = 0.25
    failure_memory: float = 1.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0

    def __post_init__(self) -> None:
        for name in ("advisory_fraction", "mandatory_fraction"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be between 0 and 1 (exclusive)")
        if self.mandatory_fraction >= self.advisory_fraction:
            raise ValueError("mandatory_fraction must be smaller than advisory_fraction")
        if not 0.0 <= self.jitter_fraction <= 1.0:
            raise ValueError("jitter_fraction must be between 0 and 1")
        for name in ("advisory_max", "mandatory_max", "backoff_initial", "backoff_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.advisory_max <= self.mandatory_max:
            raise ValueError(
                f"advisory_max ({self.advisory_max:g}s) must be greater than mandatory_max "
                f"({self.mandatory_max:g}s): otherwise a long-lived token has no advisory "
                "window, is never refreshed in the background, and every caller waits for "
                "its mandatory refresh"
            )
        if self.failure_memory < 0:
            raise ValueError("failure_memory must not be negative")

    def windows(self, lifetime: float) -> tuple[float, float]:
        """(advisory, mandatory) window lengths in seconds before expiry.

        The advisory window is always the longer one: both its fraction and
        its cap are larger (checked when the policy is built).
        """
        mandatory = min(lifetime * self.mandatory_fraction, self.mandatory_max)
        advisory = min(lifetime * self.advisory_fraction, self.advisory_max)
        return advisory, mandatory

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Seconds before the next advisory attempt: exponential, half jittered."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2.0 ** max(0, failures - 1))
        return ceiling * (0.5 + rng.random() / 2)


_COUNTERS = (
    "hits",
    "misses",
    "fetches",
    "coalesced",
    "background_refreshes",
    "failures",
    "stale_served",
    "refused",
)


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """A snapshot of the broker's counters (for all agents, or for one).

    ``hits``: served from cache without waiting; ``misses``: had to wait for a
    fetch; ``fetches``: transport calls; ``coalesced``: waiters that joined a
    fetch already in flight; ``background_refreshes``: ADVISORY refreshes
    started; ``failures``: fetches that failed; ``stale_served``: ADVISORY
    tokens served after their refresh had failed; ``refused``: requests for
    scopes the agent's delegation does not grant, refused without a fetch.
    ``cached`` is not a counter: the number of cache entries right now. With a
    shared store (counted for the whole broker): ``store_hits``: flights served
    from the store without a transport call; ``store_errors``: store
    operations that failed or timed out; ``lease_waits``: flights that waited
    for another process's fetch.
    """

    hits: int = 0
    misses: int = 0
    fetches: int = 0
    coalesced: int = 0
    background_refreshes: int = 0
    failures: int = 0
    stale_served: int = 0
    refused: int = 0
    store_hits: int = 0
    store_errors: int = 0
    lease_waits: int = 0
    cached: int = 0


@dataclass(slots=True)
class _Entry:
    token: DelegationToken  # always covers the scopes of the key it is cached under
    advisory_at: float  # wall clock
    mandatory_at: float  # wall clock
    expires_at: float  # wall clock
    serve_until: float = 0.0  # wall clock: the lock-free fast path may serve until then
    retry_at: float = 0.0  # monotonic: no background refresh before this
    confirmed_until: float = 0.0  # monotonic: the server re-confirmed this token
    failures: int = 0

    def zone(self, now: float) -> Zone:
        if now >= self.expires_at:
            return Zone.EXPIRED
        if now >= self.mandatory_at:
            return Zone.MANDATORY
        if now >= self.advisory_at:
            return Zone.ADVISORY
        return Zone.FRESH


@dataclass(slots=True)
class _Waiter:
    """A caller on another thread's event loop, woken through that loop."""

    event: anyio.Event
    loop: LoopRef


@dataclass(slots=True)
class _Remembered:
    error: errors.AuthSecError
    until: float  # monotonic


@dataclass(slots=True)
class _Agent:
    """All the broker knows about one agent identity.

    Everything but ``memo`` and ``fast_hits`` is guarded by the broker's lock.
    The memo is only added to or cleared (each atomic under the GIL), and
    ``fast_hits`` may undercount when threads race on it.
    """

    client_id: str
    memo: dict[str, TokenRequest] = field(default_factory=dict)
    cache: dict[TokenRequest, _Entry] = field(default_factory=dict)
    flights: dict[TokenRequest, _Flight] = field(default_factory=dict)
    remembered: dict[TokenRequest, _Remembered] = field(default_factory=dict)
    terminal: _Remembered | None = None  # the agent's delegation was withdrawn
    # What the agent's latest token says its delegation grants, trusted until
    # that token expires (AuthSec hands out one token per agent, whatever scope
    # is asked, so a scope outside it cannot be had until the token changes).
    grants: frozenset[str] | None = None
    grants_until: float = 0.0  # wall clock
    grants_issued: float = 0.0  # wall clock: so an older token never overrides a newer one
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTERS, 0))
    fast_hits: int = 0

    def stats(self) -> BrokerStats:
        """The agent's counters (lock held)."""
        counts = dict(self.counts)
        counts["hits"] += self.fast_hits
        return BrokerStats(**counts, cached=len(self.cache))

    def forget_grants(self) -> None:
        self.grants, self.grants_until, self.grants_issued = None, 0.0, 0.0


@dataclass(slots=True)
class _Flight:
    agent: _Agent
    request: TokenRequest
    background: bool
    home_event: anyio.Event | None = None  # one event for every waiter on the home loop
    waiters: list[_Waiter] = field(default_factory=list)  # waiters on other loops
    joined: int = 0  # callers waiting on this flight
    done: bool = False
    token: DelegationToken | None = None
    error: errors.AuthSecError | None = None
    parent: Context | None = field(default_factory=telemetry.current_context)  # asker's trace
    source: str = "fetch"  # "store" when a shared store answered instead of the transport


def check_client_id(client_id: object, *, opaque: bool = False) -> str:
    """``client_id`` if it is a UUID, as the AuthSec contract requires; else a clear error.

    ``opaque``: the transport declares its client ids opaque (OAuth): any non-empty
    string of printable characters then passes.
    """
    if not isinstance(client_id, str):
        raise errors.ConfigurationError(
            f"an agent's client_id must be a UUID string, not {type(client_id).__name__}"
        )
    if not client_id:
        raise errors.ConfigurationError(
            "an agent's client_id is required (set AUTHSEC_CLIENT_ID, or name the agent)"
        )
    if opaque:
        if not client_id.isprintable() or len(client_id) > 1024:
            raise errors.ConfigurationError(
                "an OAuth client_id must be printable and at most 1024 characters"
            )
        return client_id
    try:
        uuid.UUID(client_id)
    except ValueError:
        raise errors.ConfigurationError(
            f"an agent's client_id must be a UUID (the AuthSec contract), not {client_id[:60]!r}"
        ) from None
    return client_id


class TokenBroker:
    """Gets, caches and refreshes delegation tokens for any number of agents.

    Use it as ``async with TokenBroker(transport, client_id=...) as broker``;
    fetches and background refreshes belong to the broker and stop with it.
    ``client_id`` is the default agent, the one ``token(scopes)`` asks for; any
    other agent is named per call (``token(scopes, agent=...)``) or through a
    view (``broker.agent(client_id)``). Every agent has its own cache, single
    flights, failure memory and terminal answers, over one transport and one
    task group. ``clock`` (UNIX seconds) decides every expiry question;
    ``monotonic`` times back-offs and the failure memory. Both are injectable
    so tests and replays can move time without patching globals.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        client_id: str | None = None,
        audience: str | Iterable[str] = (),
        policy: RefreshPolicy | None = None,
        verify: bool = True,
        verify_leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        close_transport: bool = True,
        rng: random.Random | None = None,
        store: TokenStore | None = None,
    ) -> None:
        self.transport = transport
        info = transport.info
        self._opaque_ids = info.client_ids == "opaque"
        self._issuer = info.issuer
        self._whole_grant = info.whole_grant
        self.client_id = (
            None if client_id is None else check_client_id(client_id, opaque=self._opaque_ids)
        )
        self.audience = (audience,) if isinstance(audience, str) else tuple(audience)
        self.audience = self.audience or info.audience
        self.policy = policy or RefreshPolicy()
        self._verify = verify
        self._verify_leeway = verify_leeway
        self._verifier: TokenVerifier | None = None
        self._clock = clock
        self._monotonic = monotonic
        self._close_transport = close_transport
        self._rng = rng or random.Random()
        self._mode = transport.info.mode
        self.store = store
        self._fleet: Fleet | None = None

        self._lock = threading.Lock()
        self._agents: dict[str, _Agent] = {}
        self._default: _Agent | None = None
        if self.client_id is not None:
            self._default = self._agents[self.client_id] = _Agent(self.client_id)
        # Aliases of the default agent's memo and cache (empty without one), and
        # its lock-free hits: the hot path of token() reads only these.
        self._memo = {} if self._default is None else self._default.memo
        self._cache = {} if self._default is None else self._default.cache
        self._fast_hits = 0
        self._log_failed = False

        self._tg: TaskGroup | None = None
        self._home: LoopRef | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._tg else "not started")
        cached = sum(len(agent.cache) for agent in list(self._agents.values()))
        return (
            f"TokenBroker(client_id={self.client_id!r}, agents={len(self._agents)}, "
            f"mode={self._mode!r}, cached={cached}, {state})"
        )

    # --- life cycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None or self._closed:
            raise errors.BrokerClosedError("a TokenBroker can be entered only once")
        if self._verify and not self.transport.info.verifies_tokens:
            from .verify import TokenVerifier

            self._verifier = TokenVerifier(
                self.transport,
                audience=self.audience,
                leeway=self._verify_leeway,
                clock=self._clock,
                monotonic=self._monotonic,
                # A replaying transport serves tokens whose signatures were redacted.
                claims_only=self.transport.info.claims_only,
            )
        if self.store is not None:
            from .stores.fleet import Fleet

            await self.store.__aenter__()
            verifier = self._verifier
            self._fleet = Fleet(
                self.store,
                verify=verifier.verify if verifier is not None else None,
                clock=self._clock,
                monotonic=self._monotonic,
                rng=self._rng,
            )
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg, self._home = tg, LoopRef.current()
        if self._fleet is not None:
            tg.start_soon(self._fleet.listen, self._revoked_elsewhere)
        telemetry.track(self, self._mode)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop background work, fail pending waiters, forget every token.

        Call it from the task that entered the broker (``async with`` does).
        """
        if self._closed:
            return
        self._closed = True
        telemetry.untrack(self)
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        with self._lock:
            pending = [f for agent in self._agents.values() for f in agent.flights.values()]
        for flight in pending:
            self._complete(flight, error=errors.BrokerClosedError("the broker was closed"))
        with self._lock:
            for agent in self._agents.values():
                agent.cache.clear()
                agent.remembered.clear()
                agent.terminal = None
                agent.forget_grants()
        if self._fleet is not None and self.store is not None:
            await self.store.__aexit__(None, None, None)
        if self._close_transport:
            await self.transport.aclose()

    # --- the public API ---------------------------------------------------------------

    @property
    def stats(self) -> BrokerStats:
        """A consistent snapshot of the counters, summed over every agent."""
        with self._lock:
            per_agent = [self._agent_stats(agent) for agent in self._agents.values()]
        total = dict.fromkeys((*_COUNTERS, "cached"), 0)
        for stats in per_agent:
            for name in total:
                total[name] += getattr(stats, name)
        if self._fleet is not None:
            total.update(self._fleet.counts)
        return BrokerStats(**total)

    def stats_for(self, client_id: str) -> BrokerStats:
        """The counters of one agent (all zero for an agent the broker has not served)."""
        agent = self._agents.get(client_id)
        if agent is None:
            check_client_id(client_id, opaque=self._opaque_ids)
            return BrokerStats()
        with self._lock:
            return self._agent_stats(agent)

    @property
    def agent_ids(self) -> tuple[str, ...]:
        """Every agent this broker has served or was built for."""
        return tuple(self._agents)

    def agent(self, client_id: str) -> BrokerAgent:
        """A light view of the broker for one agent: ``token()``, ``invalidate()``, ``stats``."""
        return BrokerAgent(self, self._agent(client_id))

    async def token(self, scopes: ScopesLike, agent: str | None = None) -> DelegationToken:
        """A valid token of ``agent`` (default: the broker's ``client_id``) covering ``scopes``.

        Raises a :class:`~authsec_crewai.errors.TokenError` subclass when no
        such token can be had (``ScopeNotGrantedError`` when the delegation
        does not grant the scopes). Pass ``agent`` by keyword; it is not
        keyword-only because that costs the default agent's hot path a little.
        """
        if agent is not None:
            return await self._token(self._agent(agent), scopes)
        # The default agent's hot path, inlined: its memo and cache are aliased
        # on the broker, so a hit costs what it cost before there were agents.
        try:
            request = self._memo[scopes]  # type: ignore[index]
        except (KeyError, TypeError):
            request = self.request_for(scopes)  # raises if there is no default agent
        # Fast path: a hit that needs neither the lock nor a wait.
        entry = self._cache.get(request)
        if entry is not None and self._clock() < entry.serve_until:
            self._fast_hits += 1  # unlocked: may undercount when threads race here
            return entry.token
        assert self._default is not None
        return await self._serve_or_wait(self._default, request)

    def cached_token(
        self, scopes: ScopesLike, *, agent: str | None = None
    ) -> DelegationToken | None:
        """The token for ``scopes`` if it can be served without waiting, else None.

        Never waits and never does I/O itself: an ADVISORY hit only schedules
        the background refresh on the broker's loop. Safe from any thread.
        """
        if agent is not None:
            return self._cached(self._agent(agent), scopes)
        # The default agent's hit, inlined as in ``token``: SyncTokenBroker serves
        # every cached token through here, from any thread.
        try:
            request = self._memo[scopes]  # type: ignore[index]
        except (KeyError, TypeError):
            request = self.request_for(scopes)  # raises if there is no default agent
        entry = self._cache.get(request)
        if entry is not None and self._clock() < entry.serve_until:
            self._fast_hits += 1
            return entry.token
        assert self._default is not None
        return self._cached_locked(self._default, request)

    def invalidate(self, token: DelegationToken) -> bool:
        """Drop ``token`` from the cache if it is still cached; True if it was.

        A newer token cached in the meantime is left alone, so a caller holding
        an old token cannot throw away a fresh one.
        """
        with self._lock:
            agents = list(self._agents.values())
        return any([self._invalidate(agent, token) for agent in agents])

    def request_for(self, scopes: ScopesLike, *, agent: str | None = None) -> TokenRequest:
        """The canonical request (and cache key) for ``scopes`` from this broker."""
        state = self._default if agent is None else self._agent(agent)
        if state is None:
            raise self._no_default()
        return self._request(state, scopes)

    # --- agents -------------------------------------------------------------------------

    def _agent(self, client_id: str) -> _Agent:
        """The state of agent ``client_id``, made on first use (its id checked once)."""
        agent = self._agents.get(client_id)
        if agent is None:
            check_client_id(client_id, opaque=self._opaque_ids)
            with self._lock:
                agent = self._agents.setdefault(client_id, _Agent(client_id))
        return agent

    def _agent_stats(self, agent: _Agent) -> BrokerStats:
        """One agent's counters (lock held); the default agent's inlined fast path counts
        its hits on the broker itself."""
        stats = agent.stats()
        if agent is self._default:
            stats = replace(stats, hits=stats.hits + self._fast_hits)
        return stats

    @staticmethod
    def _no_default() -> errors.ConfigurationError:
        return errors.ConfigurationError(
            "this broker has no default agent: name one with token(scopes, agent=client_id) "
            "or broker.agent(client_id), or build it with client_id=..."
        )

    def _request(self, agent: _Agent, scopes: ScopesLike) -> TokenRequest:
        if isinstance(scopes, str):
            memo = agent.memo.get(scopes)
            if memo is not None:
                return memo
        request = TokenRequest.create(agent.client_id, scopes, self.audience, issuer=self._issuer)
        if isinstance(scopes, str):
            if len(agent.memo) >= MEMO_LIMIT:
                agent.memo.clear()
            agent.memo[scopes] = request
        return request

    async def _token(self, agent: _Agent, scopes: ScopesLike) -> DelegationToken:
        """``token()`` for a named agent (the default agent's path is inlined in ``token``)."""
        try:
            request = agent.memo[scopes]  # type: ignore[index]
        except (KeyError, TypeError):
            request = self._request(agent, scopes)
        entry = agent.cache.get(request)
        if entry is not None and self._clock() < entry.serve_until:
            agent.fast_hits += 1
            return entry.token
        return await self._serve_or_wait(agent, request)

    def _cached(self, agent: _Agent, scopes: ScopesLike) -> DelegationToken | None:
        request = self._request(agent, scopes)
        entry = agent.cache.get(request)
        if entry is not None and self._clock() < entry.serve_until:
            agent.fast_hits += 1
            return entry.token
        return self._cached_locked(agent, request)

    def _cached_locked(self, agent: _Agent, request: TokenRequest) -> DelegationToken | None:
        """A cached token that needs the lock to serve (ADVISORY, MANDATORY), or None."""
        with self._lock:
            served = self._serve_locked(agent, request, self._clock(), self._monotonic())
        return None if served is None else self._served(agent, request, *served)

    def _invalidate(self, agent: _Agent, token: DelegationToken) -> bool:
        with self._lock:
            keys = [k for k, e in agent.cache.items() if e.token.value == token.value]
            for key in keys:
                del agent.cache[key]
            if keys:
                # The application says this token is no good: what it said the
                # delegation grants is no longer trusted either.
                agent.forget_grants()
        if keys:
            self._emit(
                "info",
                "token.invalidated",
                {
                    "client_id": agent.client_id,
                    "fingerprint": token.fingerprint,
                    "jti": token.jti,
                    "mode": self._mode,
                },
            )
            self._announce_revocation(keys[0].client_id, keys, token.fingerprint)
        return bool(keys)

    # --- one decision: serve from cache, refuse, or wait for a flight ------------------

    def _find(
        self, agent: _Agent, request: TokenRequest, now: float
    ) -> tuple[TokenRequest, _Entry] | None:
        """The exact entry, else any unexpired entry whose token covers the scopes."""
        entry = agent.cache.get(request)
        if entry is not None and now < entry.expires_at:
            return request, entry
        best: tuple[TokenRequest, _Entry] | None = None
        for key, candidate in agent.cache.items():
            if (
                key.audience == request.audience
                and candidate.token.covers(request.scopes)
                and now < candidate.mandatory_at
                and (best is None or candidate.expires_at > best[1].expires_at)
            ):
                best = key, candidate
        return best

    def _serve_locked(
        self, agent: _Agent, request: TokenRequest, now: float, mono: float
    ) -> tuple[DelegationToken, Zone, _Flight | None] | None:
        """A cached token that may be served now, and a background refresh to launch
        (lock held); None when the caller must wait for a fetch."""
        found = self._find(agent, request, now)
        if found is None:
            return None
        key, entry = found
        zone = entry.zone(now)
        if zone is Zone.MANDATORY and mono >= entry.confirmed_until:
            return None
        background: _Flight | None = None
        if zone is Zone.ADVISORY and key not in agent.flights and mono >= entry.retry_at:
            background = self._new_flight(agent, key, background=True)
            agent.counts["background_refreshes"] += 1
            entry.serve_until = entry.mandatory_at  # hits need not look again until MANDATORY
        if zone is Zone.ADVISORY and entry.failures:
            agent.counts["stale_served"] += 1
        agent.counts["hits"] += 1
        return entry.token, zone, background

    def _served(
        self,
        agent: _Agent,
        request: TokenRequest,
        token: DelegationToken,
        zone: Zone,
        background: _Flight | None,
    ) -> DelegationToken:
        """After the lock: launch the background refresh, log the hit, hand out the token."""
        if background is not None:
            self._launch(background)
        self._emit(
            "debug",
            "token.cache_hit",
            {
                "client_id": agent.client_id,
                "fingerprint": token.fingerprint,
                "jti": token.jti,
                "scopes": sorted(request.scopes),
                "zone": zone.value,
                "mode": self._mode,
            },
        )
        return token

    async def _serve_or_wait(self, agent: _Agent, request: TokenRequest) -> DelegationToken:
        """Looks at the cache and joins (or starts) a flight in ONE critical section.

        Two sections would leave a gap in which another caller's flight lands:
        this caller would then start a second fetch for a token just cached.
        """
        refusal: errors.AuthSecError | None = None
        with self._lock:
            now, mono = self._clock(), self._monotonic()
            served = self._serve_locked(agent, request, now, mono)
            if served is None:
                refusal = self._refusal_locked(agent, request, now, mono)
                if refusal is None:
                    flight, event, launch = self._join_locked(agent, request)
        if served is not None:
            return self._served(agent, request, *served)
        if refusal is not None:
            if isinstance(refusal, errors.ScopeNotGrantedError):
                self._emit(
                    "debug",
                    "token.refused",
                    {
                        "client_id": agent.client_id,
                        "missing": sorted(refusal.missing),
                        "mode": self._mode,
                    },
                )
            raise refusal
        if launch:
            self._launch(flight)
        await event.wait()
        got = flight.token is not None and flight.token.covers(request.scopes)
        telemetry.count_request(self._mode, flight.source, "ok" if got else "error")
        if flight.error is not None:
            raise flight.error
        assert flight.token is not None
        if not flight.token.covers(request.scopes):
            raise self._not_granted(flight.token.permissions, request)
        return flight.token

    def _join_locked(
        self, agent: _Agent, request: TokenRequest
    ) -> tuple[_Flight, anyio.Event, bool]:
        """Join the request's flight, or start one (lock held, after ``_refusal_locked``):
        the flight, the event to wait on, and whether the caller must launch it."""
        assert self._home is not None  # checked by _refusal_locked
        flight = agent.flights.get(request)
        launch = flight is None
        if flight is None:
            flight = self._new_flight(agent, request, background=False)
        else:
            agent.counts["coalesced"] += 1
        agent.counts["misses"] += 1
        flight.joined += 1
        if self._home.is_current_thread():
            if flight.home_event is None:
                flight.home_event = anyio.Event()
            event = flight.home_event
        else:
            event = anyio.Event()
            flight.waiters.append(_Waiter(event, LoopRef.current()))
        return flight, event, launch

    def _refusal_locked(
        self, agent: _Agent, request: TokenRequest, now: float, mono: float
    ) -> errors.AuthSecError | None:
        """Why this request gets no fetch, if it gets none (lock held)."""
        if (
            agent.grants is not None
            and now < agent.grants_until
            and not request.scopes <= agent.grants
        ):
            agent.counts["refused"] += 1
            return self._not_granted(agent.grants, request)
        if self._tg is None or self._home is None:
            return errors.BrokerClosedError(
                "the broker is not running; use `async with TokenBroker(...) as broker`"
            )
        for remembered in (agent.terminal, agent.remembered.get(request)):
            if remembered is not None and mono < remembered.until:
                return remembered.error
        return None

    # --- fetching -------------------------------------------------------------------------

    def _new_flight(self, agent: _Agent, request: TokenRequest, *, background: bool) -> _Flight:
        """Register a flight; the caller holds the lock and then calls ``_launch``."""
        flight = _Flight(agent, request, background)
        agent.flights[request] = flight
        return flight

    def _launch(self, flight: _Flight) -> None:
        """Start the flight's one fetch on the broker's home loop."""
        home = self._home
        if home is not None and home.is_current_thread():
            self._start_on_home(flight)
        elif home is None or not home.call_soon(self._start_on_home, flight):
            self._complete(
                flight, error=errors.BrokerClosedError("the broker's event loop has stopped")
            )

    def _start_on_home(self, flight: _Flight) -> None:
        """Runs on the home loop's thread, where the task group may be touched.

        It may run as a loop callback, so it must never raise (trio would abort).
        """
        try:
            if self._tg is None:
                raise RuntimeError("the broker was closed")
            self._tg.start_soon(telemetry.run_within, flight.parent, self._run_flight, flight)
        except RuntimeError:  # closed, or its task group closing to new tasks
            self._complete(flight, error=errors.BrokerClosedError("the broker was closed"))

    async def _run_flight(self, flight: _Flight) -> None:
        """The one fetch of a flight; whatever happens, every waiter is woken."""
        try:
            self._emit(
                "debug",
                "token.refresh.start",
                {
                    "client_id": flight.agent.client_id,
                    "scopes": sorted(flight.request.scopes),
                    "background": flight.background,
                    "mode": self._mode,
                },
            )
            token = await self._obtain(flight.agent, flight.request)
        except errors.AuthSecError as exc:
            self._complete(flight, error=exc)
            if exc.terminal and self._fleet is not None:
                await self._fleet.revoke(flight.request.client_id, [flight.request], None)
        except Exception as exc:  # a third-party transport's bug must not hang waiters
            wrapped = errors.TransportError(
                f"the transport failed: {type(exc).__name__}: {redact_text(str(exc))[:300]}"
            )
            wrapped.__cause__ = exc
            self._complete(flight, error=wrapped)
        except BaseException:
            self._complete(flight, error=errors.BrokerClosedError("the broker was closed"))
            raise
        else:
            flight.source = telemetry.flight_source()
            self._complete(flight, token=token)

    async def _obtain(self, agent: _Agent, request: TokenRequest) -> DelegationToken:
        """Get a token for ``request``: through the shared store when there is one."""
        if self._fleet is None:
            return await self._fetch(agent, request)
        return await self._fleet.fetch_shared(
            request, lambda: self._fetch(agent, request), self._serves_from_store
        )

    async def _fetch(self, agent: _Agent, request: TokenRequest) -> DelegationToken:
        """Ask the transport, then verify what it gave."""
        with self._lock:
            agent.counts["fetches"] += 1
        token = await telemetry.traced_fetch(
            self.transport.fetch_token(request),
            request.scopes,
            self._mode,
            client_id=request.client_id,
        )
        if self._verifier is not None:
            await self._verifier.verify(token)
        return token

    def _serves_from_store(self, token: DelegationToken, written_at: float) -> bool:
        """A stored token is worth taking before MANDATORY, or when just re-confirmed."""
        now = self._clock()
        _, mandatory = self.policy.windows(token.lifetime)
        fresh = now - written_at < self.policy.backoff_initial
        return now < token.expires_at_ts - mandatory or fresh

    # --- revocation across processes ------------------------------------------------------

    def _announce_revocation(
        self, client_id: str, keys: list[TokenRequest], fingerprint: str | None
    ) -> None:
        """Tell the fleet (from any thread): the revocation runs on the home loop."""
        fleet, home = self._fleet, self._home
        if fleet is None or home is None:
            return

        def start() -> None:
            if self._tg is not None:
                self._tg.start_soon(fleet.revoke, client_id, keys, fingerprint)

        if home.is_current_thread():
            start()
        else:
            home.call_soon(start)

    def _revoked_elsewhere(self, agent: str, fingerprint: str | None) -> None:
        """Another process saw a revocation: drop this process's copies at once."""
        from .stores.base import agent_digest

        dropped = 0
        with self._lock:
            for state in self._agents.values():
                if agent_digest(state.client_id) != agent:
                    continue
                doomed = [
                    key
                    for key, entry in state.cache.items()
                    if fingerprint is None or entry.token.fingerprint == fingerprint
                ]
                for key in doomed:
                    del state.cache[key]
                if doomed:
                    state.forget_grants()
                dropped += len(doomed)
        if dropped:
            self._emit("info", "token.revoked_elsewhere", {"dropped": dropped, "mode": self._mode})

    def _complete(
        self,
        flight: _Flight,
        *,
        token: DelegationToken | None = None,
        error: errors.AuthSecError | None = None,
    ) -> None:
        """Record the flight's outcome, wake every waiter once, and only then log."""
        with self._lock:
            if flight.done:
                return
            flight.done, flight.token, flight.error = True, token, error
            agent, key = flight.agent, flight.request
            if agent.flights.get(key) is flight:
                del agent.flights[key]
            log: _LogLine | None = None
            if token is not None:
                log = self._store(agent, key, token)
            elif error is not None:
                log = self._record_failure(flight, error)
            waiters, flight.waiters = flight.waiters, []
        home, shared = self._home, flight.home_event
        if shared is not None:
            if home is None or home.is_current_thread():
                shared.set()
            else:
                home.call_soon(shared.set)
        for waiter in waiters:
            waiter.loop.call_soon(waiter.event.set)
        if log is not None:
            self._emit(*log)

    def _emit(self, level: str, event: str, fields: dict[str, object]) -> None:
        """Log an event; a logging failure never reaches a caller or the task group.

        An application's structlog processor may raise (a bug, but it happens);
        that must not change what any caller receives. The first such failure
        is reported on the standard library logger, once per broker.
        """
        try:
            getattr(_log, level)(event, **fields)
        except Exception as exc:
            if not self._log_failed:
                self._log_failed = True
                with contextlib.suppress(Exception):  # else nowhere is left to say it
                    _fallback_log.error(
                        "logging the broker event %r failed (%s); further failures are "
                        "not reported",
                        event,
                        type(exc).__name__,
                    )

    def _store(self, agent: _Agent, key: TokenRequest, token: DelegationToken) -> _LogLine:
        """Cache a fetched token (lock held); returns the log line to emit."""
        mono, now = self._monotonic(), self._clock()
        agent.remembered.pop(key, None)
        agent.terminal = None
        exp = token.expires_at_ts
        issued = token.issued_at.timestamp()
        if issued >= agent.grants_issued and self._whole_grant:
            agent.grants, agent.grants_until, agent.grants_issued = token.permissions, exp, issued
        facts: dict[str, object] = {
            "client_id": agent.client_id,
            "fingerprint": token.fingerprint,
            "jti": token.jti,
        }
        if not token.covers(key.scopes):
            # The delegation does not grant these scopes: nothing to cache under
            # them (and an entry the token no longer covers goes).
            agent.cache.pop(key, None)
            missing = sorted(key.scopes - token.permissions)
            return ("info", "token.scope_not_granted", {**facts, "missing": missing})
        current = agent.cache.get(key)
        if current is not None and current.token.value == token.value:
            # The server re-confirmed the token it already gave: not churn. Keep
            # the schedule, and look again only after a while.
            recheck = max(self.policy.backoff_initial, 0.1 * token.expires_in(now))
            current.confirmed_until = current.retry_at = mono + recheck
            current.serve_until = min(current.mandatory_at, max(current.advisory_at, now + recheck))
            current.failures = 0
            return (
                "debug",
                "token.refresh.end",
                {**facts, "changed": False, "expires_in": round(token.expires_in(now))},
            )
        # The server keeps one token per agent: the same JWT cached under another
        # scope set is not a new issue, so it is logged quietly.
        known = any(entry.token.value == token.value for entry in agent.cache.values())
        advisory, mandatory = self.policy.windows(token.lifetime)
        jitter = self._rng.random() * self.policy.jitter_fraction * advisory
        advisory_at = exp - advisory - jitter
        if current is None and len(agent.cache) >= CACHE_LIMIT:
            del agent.cache[next(iter(agent.cache))]  # the oldest entry makes room
        agent.cache[key] = _Entry(
            token=token,
            advisory_at=advisory_at,
            mandatory_at=exp - mandatory,
            expires_at=exp,
            serve_until=advisory_at,
        )
        return (
            "debug" if known else "info",
            "token.cached" if known else "token.issued",
            {
                **facts,
                "scopes": sorted(key.scopes),
                "expires_in": round(token.expires_in(now)),
                "mode": self._mode,
            },
        )

    def _record_failure(self, flight: _Flight, error: errors.AuthSecError) -> _LogLine:
        """Apply the failure policy (lock held); returns the log line to emit."""
        agent, key, mono = flight.agent, flight.request, self._monotonic()
        agent.counts["failures"] += 1
        dropped = 0
        if error.terminal:
            # The server withdrew this agent's delegation: fail closed for every
            # scope set of this agent (and never touch another agent's tokens).
            dropped = len(agent.cache)
            agent.cache.clear()
            agent.forget_grants()
            agent.terminal = _Remembered(error, mono + self.policy.failure_memory)
        entry = agent.cache.get(key)
        if flight.background and entry is not None:
            entry.failures += 1
            entry.retry_at = mono + self.policy.backoff(entry.failures, self._rng)
            entry.serve_until = entry.advisory_at  # back to the counted, backed-off path
        if not flight.background or flight.joined:
            self._remember(agent, key, _Remembered(error, mono + self.policy.failure_memory))
        return (
            "warning",
            "token.refresh.failed",
            {
                "client_id": agent.client_id,
                "error": error.kind,
                "message": str(error),
                "scopes": sorted(key.scopes),
                "background": flight.background,
                "dropped": dropped,
                "mode": self._mode,
            },
        )

    def _remember(self, agent: _Agent, key: TokenRequest, failure: _Remembered) -> None:
        """Remember a failure for ``key`` (lock held), within ``FAILURE_LIMIT`` entries."""
        remembered = agent.remembered
        remembered.pop(key, None)
        if len(remembered) >= FAILURE_LIMIT:
            mono = self._monotonic()
            for stale in [k for k, r in remembered.items() if r.until <= mono]:
                del remembered[stale]
            while len(remembered) >= FAILURE_LIMIT:
                del remembered[next(iter(remembered))]  # the oldest goes
        remembered[key] = failure

    @staticmethod
    def _not_granted(
        permissions: frozenset[str], request: TokenRequest
    ) -> errors.ScopeNotGrantedError:
        missing = request.scopes - permissions
        return errors.ScopeNotGrantedError(
            f"the agent's delegation grants {', '.join(sorted(permissions)) or 'nothing'}"
            f", not {', '.join(sorted(missing))}; ask an administrator to delegate those "
            "permissions to this agent",
            missing=frozenset(missing),
        )


class BrokerAgent:
    """The broker as one agent sees it: that agent's tokens, invalidation and counters.

    A light view (two references); make as many as you like. It shares the
    broker's transport, task group and life cycle.
    """

    __slots__ = ("_agent", "_broker", "_clock")

    def __init__(self, broker: TokenBroker, agent: _Agent) -> None:
        self._broker = broker
        self._agent = agent
        self._clock = broker._clock

    def __repr__(self) -> str:
        return f"BrokerAgent(client_id={self.client_id!r})"

    @property
    def client_id(self) -> str:
        return self._agent.client_id

    async def token(self, scopes: ScopesLike) -> DelegationToken:
        """A valid token of this agent covering ``scopes`` (see ``TokenBroker.token``)."""
        agent = self._agent
        try:  # the broker's fast path, inlined: this is the hot path of a named agent
            request = agent.memo[scopes]  # type: ignore[index]
        except (KeyError, TypeError):
            request = self._broker._request(agent, scopes)
        entry = agent.cache.get(request)
        if entry is not None and self._clock() < entry.serve_until:
            agent.fast_hits += 1  # unlocked: may undercount when threads race here
            return entry.token
        return await self._broker._serve_or_wait(agent, request)

    def cached_token(self, scopes: ScopesLike) -> DelegationToken | None:
        """This agent's token for ``scopes`` if it can be served without waiting."""
        return self._broker._cached(self._agent, scopes)

    def invalidate(self, token: DelegationToken) -> bool:
        """Drop ``token`` from this agent's cache if it is still cached; True if it was."""
        return self._broker._invalidate(self._agent, token)

    @property
    def stats(self) -> BrokerStats:
        """This agent's counters."""
        return self._broker.stats_for(self._agent.client_id)
