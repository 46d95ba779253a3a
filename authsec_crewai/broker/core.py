"""``TokenBroker``: the facade, its inlined fast path, and the one critical section.

A hit is served without the lock: the asked form of the scopes is looked up in
the agent's ``hot`` map (:mod:`.cache`) and the entry's ``serve_until`` is
compared with the clock. Everything else (a miss, a covered hit seen for the
first time, ADVISORY and MANDATORY tokens, refusals) goes through
:meth:`TokenBroker._serve_or_wait`, which decides under one lock whether to
serve, refuse, or join (or start) a flight (:mod:`.flights`).

The other jobs live beside this module, one each: the cache and its zones
(:mod:`.cache`), agents and grants (:mod:`.agents`), failure memory
(:mod:`.failures`), what an outcome does (:mod:`.outcomes`), the shared store
(:mod:`.shared`) and events for logging and telemetry (:mod:`.events`).

Callers may be on any thread and any event loop. The lock is a
``threading.Lock`` never held across an ``await``; fetches run on the loop
that entered the broker (its "home").
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio

from .. import errors
from .._loopref import LoopRef
from ..policy import RefreshPolicy, Zone
from ..redact import redact_text
from ..token import DelegationToken, ScopesLike, TokenRequest
from . import outcomes
from .agents import AgentRegistry, AgentState, not_granted
from .events import BrokerEvents
from .flights import Flight, FlightRunner
from .shared import SharedStore
from .stats import COUNTERS, BrokerStats

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ..stores.base import TokenStore
    from ..transports.base import Transport
    from ..verify import TokenVerifier
    from .view import BrokerAgent

__all__ = ["CLOSE_TIMEOUT", "TokenBroker"]

CLOSE_TIMEOUT = 5.0
"""Longest ``aclose()`` waits for the store, and then for the transport, to close."""

_Served = tuple[DelegationToken, Zone, Flight | None]


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
        info = transport.info
        self._lock = threading.Lock()
        self._agents = AgentRegistry(
            self._lock,
            client_id,
            opaque_ids=info.client_ids == "opaque",
            whole_grant=info.whole_grant,
        )
        self.transport = transport
        self.client_id = client_id
        self.audience = (audience,) if isinstance(audience, str) else tuple(audience)
        self.audience = self.audience or info.audience  # a resource the transport is for
        self._issuer = info.issuer  # part of every key: two servers' tokens never mix
        self.policy = policy or RefreshPolicy()
        self._verify = verify
        self._verify_leeway = verify_leeway
        self._verifier: TokenVerifier | None = None
        self._clock = clock
        self._monotonic = monotonic
        self._close_transport = close_transport
        self._rng = rng or random.Random()
        self._mode = transport.info.mode
        self._events = BrokerEvents(self._mode)
        self.store = store
        self._shared = (
            None
            if store is None
            else SharedStore(
                store, policy=self.policy, clock=clock, monotonic=monotonic, rng=self._rng
            )
        )
        self._flights = FlightRunner(self._run_traced, self._fail_flight)
        self._keeper: TaskGroup | None = None  # holds the shared store's task
        # The default agent's hot map and lock-free hits: the fast path of token()
        # reads only these (an empty map without a default agent).
        self._default: AgentState | None = self._agents.default
        self._hot = {} if self._default is None else self._default.cache.hot
        self._fast_hits = 0
        self._closed = False

    def __repr__(self) -> str:
        running = self._flights.tg is not None
        state = "closed" if self._closed else ("running" if running else "not started")
        cached = sum(len(agent.cache) for agent in self._agents)
        return (
            f"TokenBroker(client_id={self.client_id!r}, agents={len(self._agents)}, "
            f"mode={self._mode!r}, cached={cached}, {state})"
        )

    # --- life cycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._flights.tg is not None or self._closed:
            raise errors.BrokerClosedError("a TokenBroker can be entered only once")
        if self._verify and not self.transport.info.verifies_tokens:
            from ..verify import TokenVerifier

            self._verifier = TokenVerifier(
                self.transport,
                audience=self.audience,
                leeway=self._verify_leeway,
                clock=self._clock,
                monotonic=self._monotonic,
                # A replaying transport serves tokens whose signatures were redacted.
                claims_only=self.transport.info.claims_only,
            )
        if self._shared is not None:
            # The store lives in a task of its own, in a task group outside the
            # flights' one: it is entered and left in one task and one scope, and
            # closed only after every flight (and the token write it may still be
            # making) has ended, whoever closes the broker and however cancelled.
            keeper = anyio.create_task_group()
            await keeper.__aenter__()
            try:
                verify = None if self._verifier is None else self._verifier.verify
                await keeper.start(self._shared.keep, verify)
            except BaseException:
                keeper.cancel_scope.cancel()
                await keeper.__aexit__(None, None, None)
                raise
            self._keeper = keeper
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._flights.tg, self._flights.home = tg, LoopRef.current()
        if self._shared is not None:
            tg.start_soon(self._shared.listen, self._revoked_elsewhere)
        self._events.opened(self)
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
        It finishes even inside a cancelled scope (leaving ``async with`` under
        ``move_on_after``, say): the store and the transport are closed,
        within :data:`CLOSE_TIMEOUT` each.
        """
        if self._closed:
            return
        self._closed = True
        self._events.closed(self)
        tg, self._flights.tg = self._flights.tg, None
        keeper, self._keeper = self._keeper, None
        try:
            try:
                if tg is not None:
                    tg.cancel_scope.cancel()
                    await tg.__aexit__(None, None, None)
            finally:
                if keeper is not None and self._shared is not None:
                    self._shared.release(CLOSE_TIMEOUT)  # the store's own task closes it
                    await keeper.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                await self._release()

    async def _release(self) -> None:
        """The rest of closing, shielded: fail pending waiters, forget tokens, close."""
        try:
            with self._lock:
                pending = [f for agent in self._agents for f in agent.flights.values()]
            for flight in pending:
                self._complete(flight, error=errors.BrokerClosedError("the broker was closed"))
            with self._lock:
                for agent in self._agents:
                    agent.cache.clear()
                    agent.failures.clear()
                    agent.forget_grants()
        finally:
            if self._close_transport:
                with anyio.move_on_after(CLOSE_TIMEOUT):
                    await self.transport.aclose()

    # --- the public API ---------------------------------------------------------------

    @property
    def stats(self) -> BrokerStats:
        """A consistent snapshot of the counters, summed over every agent."""
        with self._lock:
            per_agent = [self._agent_stats(agent) for agent in self._agents]
        total = dict.fromkeys((*COUNTERS, "cached"), 0)
        for stats in per_agent:
            for name in total:
                total[name] += getattr(stats, name)
        if self._shared is not None:
            total.update(self._shared.counts)
        return BrokerStats(**total)

    def cache_hits(self) -> int:
        """Requests served from cache so far (what telemetry reads when it collects)."""
        return self.stats.hits

    def stats_for(self, client_id: str) -> BrokerStats:
        """The counters of one agent (all zero for an agent the broker has not served)."""
        agent = self._agents.find(client_id)
        if agent is None:
            return BrokerStats()
        with self._lock:
            return self._agent_stats(agent)

    @property
    def agent_ids(self) -> tuple[str, ...]:
        """Every agent this broker has served or was built for."""
        return self._agents.ids

    def agent(self, client_id: str) -> BrokerAgent:
        """A light view of the broker for one agent: ``token()``, ``invalidate()``, ``stats``."""
        from .view import BrokerAgent

        return BrokerAgent(self, self._agents.get(client_id))

    async def token(self, scopes: ScopesLike, agent: str | None = None) -> DelegationToken:
        """A valid token of ``agent`` (default: the broker's ``client_id``) covering ``scopes``.

        ``scopes`` is one scope, a space-separated string, or an iterable of
        scopes. Raises a :class:`~authsec_crewai.errors.TokenError` subclass
        when no such token can be had (``ScopeNotGrantedError`` when the
        delegation does not grant the scopes). Pass ``agent`` by keyword; it
        is not keyword-only because that costs the default agent's hot path.
        """
        if agent is None:
            # The fast path: the asked form straight to the entry that serves it.
            try:
                entry = (
                    self._hot.get(tuple(scopes))
                    if scopes.__class__ is list
                    else self._hot.get(scopes)
                )
            except TypeError:  # an unhashable collection (a set): the locked path
                entry = None
            if entry is not None and self._clock() < entry.serve_until:
                self._fast_hits += 1  # unlocked: may undercount when threads race here
                return entry.token
            default = self._default
            if default is None:
                raise self._no_default()
            return await self._serve(default, scopes)
        return await self._token_of(self._agents.get(agent), scopes)

    def cached_token(
        self, scopes: ScopesLike, *, agent: str | None = None
    ) -> DelegationToken | None:
        """The token for ``scopes`` if it can be served without waiting, else None.

        Never waits and never does I/O itself: an ADVISORY hit only schedules
        the background refresh on the broker's loop. Safe from any thread.
        """
        if agent is None:
            # The default agent's hit, inlined as in ``token``: SyncTokenBroker serves
            # every cached token through here, from any thread.
            try:
                entry = (
                    self._hot.get(tuple(scopes))
                    if scopes.__class__ is list
                    else self._hot.get(scopes)
                )
            except TypeError:
                entry = None
            if entry is not None and self._clock() < entry.serve_until:
                self._fast_hits += 1
                return entry.token
            default = self._default
            if default is None:
                raise self._no_default()
            return self._cached_locked(default, scopes)
        return self._cached_of(self._agents.get(agent), scopes)

    def invalidate(self, token: DelegationToken) -> bool:
        """Drop ``token`` from the cache if it is still cached; True if it was.

        A newer token cached in the meantime is left alone, so a caller holding
        an old token cannot throw away a fresh one. Flights still in the air
        for the token's agent may not cache what they bring back: they ask again.
        """
        return any([self._invalidate(agent, token) for agent in self._agents])

    def request_for(self, scopes: ScopesLike, *, agent: str | None = None) -> TokenRequest:
        """The canonical request (and cache key) for ``scopes`` from this broker."""
        state = self._default if agent is None else self._agents.get(agent)
        if state is None:
            raise self._no_default()
        return state.cache.request(state.client_id, scopes, self.audience, self._issuer)

    # --- agents -------------------------------------------------------------------------

    def _agent_stats(self, agent: AgentState) -> BrokerStats:
        """One agent's counters (lock held); the default agent's inlined fast path counts
        its hits on the broker itself."""
        return agent.stats(self._fast_hits if agent is self._default else 0)

    @staticmethod
    def _no_default() -> errors.ConfigurationError:
        return errors.ConfigurationError(
            "this broker has no default agent: name one with token(scopes, agent=client_id) "
            "or broker.agent(client_id), or build it with client_id=..."
        )

    def _hit(self, agent: AgentState, scopes: ScopesLike) -> DelegationToken | None:
        """The fast path for a named agent: its hot map, no lock (``token()`` and
        ``cached_token()`` inline the same lookup for the default agent)."""
        hot = agent.cache.hot
        try:
            entry = hot.get(tuple(scopes)) if scopes.__class__ is list else hot.get(scopes)
        except TypeError:  # an unhashable collection (a set): the locked path
            return None
        if entry is not None and self._clock() < entry.serve_until:
            agent.fast_hits += 1  # unlocked: may undercount when threads race here
            return entry.token
        return None

    async def _token_of(self, agent: AgentState, scopes: ScopesLike) -> DelegationToken:
        """``token()`` for a named agent."""
        hit = self._hit(agent, scopes)
        return hit if hit is not None else await self._serve(agent, scopes)

    def _cached_of(self, agent: AgentState, scopes: ScopesLike) -> DelegationToken | None:
        hit = self._hit(agent, scopes)
        return hit if hit is not None else self._cached_locked(agent, scopes)

    async def _serve(self, agent: AgentState, scopes: ScopesLike) -> DelegationToken:
        request = agent.cache.request(agent.client_id, scopes, self.audience, self._issuer)
        return await self._serve_or_wait(agent, request, scopes)

    def _cached_locked(self, agent: AgentState, scopes: ScopesLike) -> DelegationToken | None:
        """A cached token that needs the lock to serve (first seen, ADVISORY, MANDATORY)."""
        request = agent.cache.request(agent.client_id, scopes, self.audience, self._issuer)
        with self._lock:
            served = self._serve_locked(agent, request, scopes, self._clock(), self._monotonic())
        return None if served is None else self._served(agent, request, *served)

    def _invalidate(self, agent: AgentState, token: DelegationToken) -> bool:
        with self._lock:
            keys = agent.cache.drop_where(lambda entry: entry.token.value == token.value)
            if keys:
                # The application says this token is no good: what it said the
                # delegation grants is no longer trusted either, and a flight
                # started while it was cached may bring it back.
                agent.forget_grants()
                agent.fence()
        if keys:
            self._events.log(
                "info",
                "token.invalidated",
                {"client_id": agent.client_id, "fingerprint": token.fingerprint, "jti": token.jti},
            )
            if self._shared is not None:
                self._shared.announce(self._flights, keys[0].client_id, keys, token.fingerprint)
        return bool(keys)

    # --- one decision: serve from cache, refuse, or wait for a flight ------------------

    def _serve_locked(
        self, agent: AgentState, request: TokenRequest, asked: object, now: float, mono: float
    ) -> _Served | None:
        """A cached token that may be served now, and a background refresh to launch
        (lock held); None when the caller must wait for a fetch. The asked form is
        remembered with the entry, so its next hit takes the fast path."""
        found = agent.cache.find(request, now)
        if found is None:
            return None
        key, entry = found
        zone = entry.zone(now)
        if zone is Zone.MANDATORY and mono >= entry.confirmed_until:
            return None
        background: Flight | None = None
        if zone is Zone.ADVISORY and key not in agent.flights and mono >= entry.retry_at:
            background = self._new_flight(agent, key, background=True)
            agent.counts["background_refreshes"] += 1
            entry.serve_until = entry.mandatory_at  # hits need not look again until MANDATORY
        if zone is Zone.ADVISORY and entry.failures:
            agent.counts["stale_served"] += 1
        agent.counts["hits"] += 1
        agent.cache.alias(asked, entry)
        return entry.token, zone, background

    def _served(
        self,
        agent: AgentState,
        request: TokenRequest,
        token: DelegationToken,
        zone: Zone,
        background: Flight | None,
    ) -> DelegationToken:
        """After the lock: launch the background refresh, and log a hit that decided
        something (a refresh started, a re-confirmed MANDATORY token served)."""
        if background is not None:
            self._flights.launch(background)
        if background is not None or zone is Zone.MANDATORY:
            self._events.log(
                "debug",
                "token.cache_hit",
                {
                    "client_id": agent.client_id,
                    "fingerprint": token.fingerprint,
                    "jti": token.jti,
                    "scopes": sorted(request.scopes),
                    "zone": zone.value,
                },
            )
        return token

    async def _serve_or_wait(
        self, agent: AgentState, request: TokenRequest, asked: object
    ) -> DelegationToken:
        """Looks at the cache and joins (or starts) a flight in ONE critical section.

        Two sections would leave a gap in which another caller's flight lands:
        this caller would then start a second fetch for a token just cached. A
        flight that landed after a revocation or invalidation cached nothing;
        its waiters decide again (and then meet the revocation).
        """
        while True:
            refusal: errors.AuthSecError | None = None
            with self._lock:
                now, mono = self._clock(), self._monotonic()
                served = self._serve_locked(agent, request, asked, now, mono)
                if served is None:
                    refusal = self._refusal_locked(agent, request, now, mono)
                    if refusal is None:
                        flight, event, launch = self._join_locked(agent, request)
            if served is not None:
                return self._served(agent, request, *served)
            if refusal is not None:
                if isinstance(refusal, errors.ScopeNotGrantedError):
                    self._events.log(
                        "debug",
                        "token.refused",
                        {"client_id": agent.client_id, "missing": sorted(refusal.missing)},
                    )
                raise refusal
            if launch:
                self._flights.launch(flight)
            await event.wait()
            if flight.stale:
                continue
            token = flight.token
            self._events.served(flight.source, token is not None and token.covers(request.scopes))
            if flight.error is not None:
                raise flight.error
            assert token is not None
            if not token.covers(request.scopes):
                raise not_granted(token.permissions, request)
            return token

    def _join_locked(
        self, agent: AgentState, request: TokenRequest
    ) -> tuple[Flight, anyio.Event, bool]:
        """Join the request's flight, or start one (lock held, after ``_refusal_locked``):
        the flight, the event to wait on, and whether the caller must launch it."""
        home = self._flights.home
        assert home is not None  # checked by _refusal_locked
        flight = agent.flights.get(request)
        launch = flight is None
        if flight is None:
            flight = self._new_flight(agent, request, background=False)
        else:
            agent.counts["coalesced"] += 1
        agent.counts["misses"] += 1
        return flight, flight.join(home), launch

    def _refusal_locked(
        self, agent: AgentState, request: TokenRequest, now: float, mono: float
    ) -> errors.AuthSecError | None:
        """Why this request gets no fetch, if it gets none (lock held)."""
        refused = agent.refused_by_grants(request, now)
        if refused is not None:
            agent.counts["refused"] += 1
            return refused
        if not self._flights.running:
            return errors.BrokerClosedError(
                "the broker is not running; use `async with TokenBroker(...) as broker`"
            )
        return agent.failures.refusal(request, mono)

    # --- fetching -------------------------------------------------------------------------

    def _new_flight(self, agent: AgentState, request: TokenRequest, *, background: bool) -> Flight:
        """Register a flight (lock held); the caller then launches it."""
        flight = Flight(request, background, agent.epoch, self._events.trace_parent())
        agent.flights[request] = flight
        return flight

    async def _run_traced(self, flight: Flight) -> None:
        await self._events.within(flight.parent, self._run_flight, flight)

    def _fail_flight(self, flight: Flight, error: errors.AuthSecError) -> None:
        self._complete(flight, error=error)

    async def _run_flight(self, flight: Flight) -> None:
        """The one fetch of a flight; whatever happens, every waiter is woken."""
        try:
            self._events.log(
                "debug",
                "token.refresh.start",
                {
                    "client_id": flight.request.client_id,
                    "scopes": sorted(flight.request.scopes),
                    "background": flight.background,
                },
            )
            token = await self._obtain(flight)
        except errors.AuthSecError as exc:
            self._complete(flight, error=exc)
            if exc.terminal and self._shared is not None:
                await self._shared.revoke(flight.request.client_id, [flight.request], None)
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
            if not flight.done:
                flight.source = self._events.flight_source()
                self._complete(flight, token=token)

    async def _obtain(self, flight: Flight) -> DelegationToken:
        """Get a token for the flight: through the shared store when there is one. A
        token fetched here wakes the waiters before the store is written."""
        fetch = functools.partial(
            self._fetch, self._agents.get(flight.request.client_id), flight.request
        )
        if self._shared is None:
            return await fetch()

        def fetched(token: DelegationToken) -> bool:
            flight.source = "fetch"
            self._complete(flight, token=token)
            return not flight.stale

        return await self._shared.obtain(flight.request, fetch, fetched)

    async def _fetch(self, agent: AgentState, request: TokenRequest) -> DelegationToken:
        """Ask the transport, then verify what it gave."""
        with self._lock:
            agent.counts["fetches"] += 1
        token = await self._events.fetching(self.transport.fetch_token(request), request)
        if self._verifier is not None:
            await self._verifier.verify(token)
        return token

    def _complete(
        self,
        flight: Flight,
        *,
        token: DelegationToken | None = None,
        error: errors.AuthSecError | None = None,
    ) -> None:
        """Record the flight's outcome, wake every waiter once, and only then log."""
        with self._lock:
            if flight.done:
                return
            flight.done = True
            agent, key = self._agents.get(flight.request.client_id), flight.request
            if agent.flights.get(key) is flight:
                del agent.flights[key]
            log: outcomes.LogLine | None = None
            if token is not None and flight.epoch != agent.epoch:
                log = outcomes.fence_stale(agent, flight, token)
            elif token is not None:
                flight.token = token
                log = outcomes.cache_token(
                    agent, key, token, self.policy, self._rng, self._clock(), self._monotonic()
                )
            elif error is not None:
                flight.error = error
                log = outcomes.record_failure(
                    agent, flight, error, self.policy, self._rng, self._monotonic()
                )
            waiters, flight.waiters = flight.waiters, []
        flight.wake(self._flights.home, waiters)
        if log is not None:
            self._events.log(*log)

    # --- revocation across processes ------------------------------------------------------

    def _revoked_elsewhere(self, agent_digest: str, fingerprint: str | None) -> None:
        """Another process saw a revocation: drop this process's copies at once, and fence
        the agent's flights in the air."""
        from ..stores.base import agent_digest as digest_of

        dropped = 0
        with self._lock:
            for agent in self._agents:
                if digest_of(agent.client_id) != agent_digest:
                    continue
                keys = agent.cache.drop_where(
                    lambda entry: fingerprint is None or entry.token.fingerprint == fingerprint
                )
                if keys:
                    agent.forget_grants()
                agent.fence()
                dropped += len(keys)
        if dropped:
            self._events.log("info", "token.revoked_elsewhere", {"dropped": dropped})
