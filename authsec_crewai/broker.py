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

import enum
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio

from . import errors
from ._loopref import LoopRef
from .logging import get_logger
from .redact import redact_text
from .token import DelegationToken, ScopesLike, TokenRequest

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from .transports.base import Transport
    from .verify import TokenVerifier

__all__ = ["BrokerStats", "RefreshPolicy", "TokenBroker", "Zone"]

_log = get_logger("authsec_crewai.broker")
_LogLine = tuple[str, str, dict[str, object]]
_MEMO_LIMIT = 1024


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
    5-minute token gets a 60 s advisory window, not a 15-minute one.
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
        if self.failure_memory < 0:
            raise ValueError("failure_memory must not be negative")

    def windows(self, lifetime: float) -> tuple[float, float]:
        """(advisory, mandatory) window lengths in seconds before expiry."""
        mandatory = min(lifetime * self.mandatory_fraction, self.mandatory_max)
        advisory = max(min(lifetime * self.advisory_fraction, self.advisory_max), mandatory)
        return advisory, mandatory

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Seconds before the next advisory attempt: exponential, half jittered."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2.0 ** max(0, failures - 1))
        return ceiling * (0.5 + rng.random() / 2)


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """A snapshot of the broker's counters.

    ``hits``: served from cache without waiting; ``misses``: had to wait for a
    fetch; ``fetches``: transport calls; ``coalesced``: waiters that joined a
    fetch already in flight; ``background_refreshes``: ADVISORY refreshes
    started; ``failures``: fetches that failed; ``stale_served``: ADVISORY
    tokens served after their refresh had failed.
    """

    hits: int = 0
    misses: int = 0
    fetches: int = 0
    coalesced: int = 0
    background_refreshes: int = 0
    failures: int = 0
    stale_served: int = 0


@dataclass(slots=True)
class _Entry:
    token: DelegationToken
    granted: bool  # the token covers the scopes of the key it is cached under
    advisory_at: float  # wall clock
    mandatory_at: float  # wall clock
    expires_at: float  # wall clock
    serve_until: float = 0.0  # wall clock: the lock-free fast path may serve until then
    # (0 for a token that does not grant the key's scopes: the slow path refuses)
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
class _Flight:
    request: TokenRequest
    background: bool
    home_event: anyio.Event | None = None  # one event for every waiter on the home loop
    waiters: list[_Waiter] = field(default_factory=list)  # waiters on other loops
    joined: int = 0  # callers waiting on this flight
    done: bool = False
    token: DelegationToken | None = None
    error: errors.AuthSecError | None = None


@dataclass(slots=True)
class _Remembered:
    error: errors.AuthSecError
    until: float  # monotonic


class TokenBroker:
    """Gets, caches and refreshes delegation tokens for one agent.

    Use it as ``async with TokenBroker(transport, client_id=...) as broker``;
    fetches and background refreshes belong to the broker and stop with it.
    ``clock`` (UNIX seconds) decides every expiry question; ``monotonic`` times
    back-offs and the failure memory. Both are injectable so tests and replays
    can move time without patching globals.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        client_id: str,
        audience: str | Iterable[str] = (),
        policy: RefreshPolicy | None = None,
        verify: bool = True,
        verify_leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        close_transport: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if not client_id:
            raise errors.ConfigurationError("client_id is required (set AUTHSEC_CLIENT_ID)")
        self.transport = transport
        self.client_id = client_id
        self.audience = (audience,) if isinstance(audience, str) else tuple(audience)
        self.policy = policy or RefreshPolicy()
        self._verify = verify
        self._verify_leeway = verify_leeway
        self._verifier: TokenVerifier | None = None
        self._clock = clock
        self._monotonic = monotonic
        self._close_transport = close_transport
        self._rng = rng or random.Random()
        self._mode = transport.info.mode

        self._lock = threading.Lock()
        self._cache: dict[TokenRequest, _Entry] = {}
        self._flights: dict[TokenRequest, _Flight] = {}
        self._remembered: dict[TokenRequest, _Remembered] = {}
        self._terminal: _Remembered | None = None  # the agent's delegation was withdrawn
        self._memo: dict[str, TokenRequest] = {}
        self._counts = dict.fromkeys(BrokerStats.__slots__, 0)
        self._fast_hits = 0

        self._tg: TaskGroup | None = None
        self._home: LoopRef | None = None
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("running" if self._tg else "not started")
        return (
            f"TokenBroker(client_id={self.client_id!r}, mode={self._mode!r}, "
            f"cached={len(self._cache)}, {state})"
        )

    # --- life cycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None or self._closed:
            raise errors.BrokerClosedError("a TokenBroker can be entered only once")
        if self._verify:
            from .verify import TokenVerifier

            self._verifier = TokenVerifier(
                self.transport,
                audience=self.audience,
                leeway=self._verify_leeway,
                clock=self._clock,
                # A replaying transport serves tokens whose signatures were redacted.
                claims_only=self.transport.info.claims_only,
            )
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg, self._home = tg, LoopRef.current()
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
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        with self._lock:
            pending = list(self._flights.values())
        for flight in pending:
            self._complete(flight, error=errors.BrokerClosedError("the broker was closed"))
        with self._lock:
            self._cache.clear()
            self._remembered.clear()
            self._terminal = None
        if self._close_transport:
            await self.transport.aclose()

    # --- the public API ---------------------------------------------------------------

    @property
    def stats(self) -> BrokerStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            counts = dict(self._counts)
        counts["hits"] += self._fast_hits
        return BrokerStats(**counts)

    async def token(self, scopes: ScopesLike) -> DelegationToken:
        """A valid token whose permissions cover ``scopes``.

        Raises a :class:`~authsec_crewai.errors.TokenError` subclass when no
        such token can be had (``ScopeNotGrantedError`` when the delegation
        does not grant the scopes).
        """
        try:  # inlined _request_fast: this is the hot path
            request = self._memo[scopes]  # type: ignore[index]
        except (KeyError, TypeError):
            request = self.request_for(scopes)
        # Fast path: a hit that needs neither the lock nor a wait.
        entry = self._cache.get(request)
        if entry is not None and self._clock() < entry.serve_until:
            self._fast_hits += 1  # unlocked: may undercount when threads race here
            return entry.token
        served = self._serve_cached(request)
        if served is not None:
            return served
        return await self._wait_for_fetch(request)

    def cached_token(self, scopes: ScopesLike) -> DelegationToken | None:
        """The token for ``scopes`` if it can be served without waiting, else None.

        Never waits and never does I/O itself: an ADVISORY hit only schedules
        the background refresh on the broker's loop. Safe from any thread.
        """
        request = self._request_fast(scopes)
        entry = self._cache.get(request)
        if entry is not None and self._clock() < entry.serve_until:
            self._fast_hits += 1
            return entry.token
        return self._serve_cached(request)

    def invalidate(self, token: DelegationToken) -> bool:
        """Drop ``token`` from the cache if it is still cached; True if it was.

        A newer token cached in the meantime is left alone, so a caller holding
        an old token cannot throw away a fresh one.
        """
        with self._lock:
            keys = [k for k, e in self._cache.items() if e.token.value == token.value]
            for key in keys:
                del self._cache[key]
        if keys:
            _log.info(
                "token.invalidated", fingerprint=token.fingerprint, jti=token.jti, mode=self._mode
            )
        return bool(keys)

    def _request_fast(self, scopes: ScopesLike) -> TokenRequest:
        try:
            return self._memo[scopes]  # type: ignore[index]
        except (KeyError, TypeError):  # not seen yet, or not a string (unhashable)
            return self.request_for(scopes)

    def request_for(self, scopes: ScopesLike) -> TokenRequest:
        """The canonical request (and cache key) for ``scopes`` from this broker."""
        if isinstance(scopes, str):
            memo = self._memo.get(scopes)
            if memo is not None:
                return memo
        request = TokenRequest.create(self.client_id, scopes, self.audience)
        if isinstance(scopes, str):
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[scopes] = request
        return request

    # --- serving from cache -------------------------------------------------------------

    def _find(self, request: TokenRequest, now: float) -> tuple[TokenRequest, _Entry] | None:
        """The exact entry, else any unexpired entry whose token covers the scopes."""
        entry = self._cache.get(request)
        if entry is not None and now < entry.expires_at:
            return request, entry
        best: tuple[TokenRequest, _Entry] | None = None
        for key, candidate in self._cache.items():
            if (
                key.client_id == request.client_id
                and key.audience == request.audience
                and candidate.token.covers(request.scopes)
                and now < candidate.mandatory_at
                and (best is None or candidate.expires_at > best[1].expires_at)
            ):
                best = key, candidate
        return best

    def _serve_cached(self, request: TokenRequest) -> DelegationToken | None:
        start_background: _Flight | None = None
        with self._lock:
            now, mono = self._clock(), self._monotonic()
            found = self._find(request, now)
            if found is None:
                return None
            key, entry = found
            zone = entry.zone(now)
            if zone is Zone.MANDATORY and mono >= entry.confirmed_until:
                return None
            if zone is Zone.ADVISORY and key not in self._flights and mono >= entry.retry_at:
                start_background = self._new_flight(key, background=True)
                self._counts["background_refreshes"] += 1
                if entry.granted:  # hits need not look again until MANDATORY
                    entry.serve_until = entry.mandatory_at
            if zone is Zone.ADVISORY and entry.failures:
                self._counts["stale_served"] += 1
            self._counts["hits"] += 1
            token, granted = entry.token, entry.granted or entry.token.covers(request.scopes)
        if start_background is not None:
            self._launch(start_background)
        if not granted:
            raise self._not_granted(token, request)
        _log.debug(
            "token.cache_hit",
            fingerprint=token.fingerprint,
            jti=token.jti,
            scopes=sorted(request.scopes),
            zone=zone.value,
            mode=self._mode,
        )
        return token

    # --- fetching -------------------------------------------------------------------------

    async def _wait_for_fetch(self, request: TokenRequest) -> DelegationToken:
        launch: _Flight | None = None
        with self._lock:
            if self._tg is None or self._home is None:
                raise errors.BrokerClosedError(
                    "the broker is not running; use `async with TokenBroker(...) as broker`"
                )
            mono = self._monotonic()
            for remembered in (self._terminal, self._remembered.get(request)):
                if remembered is not None and mono < remembered.until:
                    raise remembered.error
            flight = self._flights.get(request)
            if flight is None:
                flight = launch = self._new_flight(request, background=False)
            else:
                self._counts["coalesced"] += 1
            self._counts["misses"] += 1
            flight.joined += 1
            if self._home.is_current_thread():
                if flight.home_event is None:
                    flight.home_event = anyio.Event()
                event = flight.home_event
            else:
                event = anyio.Event()
                flight.waiters.append(_Waiter(event, LoopRef.current()))
        if launch is not None:
            self._launch(launch)
        await event.wait()
        if flight.error is not None:
            raise flight.error
        assert flight.token is not None
        if not flight.token.covers(request.scopes):
            raise self._not_granted(flight.token, request)
        return flight.token

    def _new_flight(self, request: TokenRequest, *, background: bool) -> _Flight:
        """Register a flight; the caller holds the lock and then calls ``_launch``."""
        flight = _Flight(request, background)
        self._flights[request] = flight
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
        """Runs on the home loop's thread, where the task group may be touched."""
        if self._tg is None:
            self._complete(flight, error=errors.BrokerClosedError("the broker was closed"))
        else:
            self._tg.start_soon(self._run_flight, flight)

    async def _run_flight(self, flight: _Flight) -> None:
        with self._lock:
            self._counts["fetches"] += 1
        scopes = sorted(flight.request.scopes)
        _log.debug(
            "token.refresh.start", scopes=scopes, background=flight.background, mode=self._mode
        )
        try:
            token = await self.transport.fetch_token(flight.request)
            if self._verifier is not None:
                await self._verifier.verify(token)
        except errors.AuthSecError as exc:
            self._complete(flight, error=exc)
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
            self._complete(flight, token=token)

    def _complete(
        self,
        flight: _Flight,
        *,
        token: DelegationToken | None = None,
        error: errors.AuthSecError | None = None,
    ) -> None:
        """Record the flight's outcome in the cache and wake every waiter once."""
        with self._lock:
            if flight.done:
                return
            flight.done, flight.token, flight.error = True, token, error
            key = flight.request
            if self._flights.get(key) is flight:
                del self._flights[key]
            log: _LogLine | None = None
            if token is not None:
                log = self._store(key, token)
            elif error is not None:
                log = self._record_failure(flight, error)
            waiters, flight.waiters = flight.waiters, []
        if log is not None:
            getattr(_log, log[0])(log[1], **log[2])
        home, shared = self._home, flight.home_event
        if shared is not None:
            if home is None or home.is_current_thread():
                shared.set()
            else:
                home.call_soon(shared.set)
        for waiter in waiters:
            waiter.loop.call_soon(waiter.event.set)

    def _store(self, key: TokenRequest, token: DelegationToken) -> _LogLine:
        """Cache a fetched token (lock held); returns the log line to emit."""
        mono, now = self._monotonic(), self._clock()
        self._remembered.pop(key, None)
        self._terminal = None
        current = self._cache.get(key)
        if current is not None and current.token.value == token.value:
            # The server re-confirmed the token it already gave: not churn. Keep
            # the schedule, and look again only after a while.
            recheck = max(self.policy.backoff_initial, 0.1 * token.expires_in(now))
            current.confirmed_until = current.retry_at = mono + recheck
            if current.granted:
                current.serve_until = min(
                    current.mandatory_at, max(current.advisory_at, now + recheck)
                )
            current.failures = 0
            return (
                "debug",
                "token.refresh.end",
                {
                    "fingerprint": token.fingerprint,
                    "jti": token.jti,
                    "changed": False,
                    "expires_in": round(token.expires_in(now)),
                    "mode": self._mode,
                },
            )
        # The server keeps one token per agent: the same JWT cached under another
        # scope set is not a new issue, so it is logged quietly.
        known = any(entry.token.value == token.value for entry in self._cache.values())
        advisory, mandatory = self.policy.windows(token.lifetime)
        jitter = self._rng.random() * self.policy.jitter_fraction * advisory
        exp = token.expires_at_ts
        advisory_at = exp - advisory - jitter
        granted = token.covers(key.scopes)
        self._cache[key] = _Entry(
            token=token,
            granted=granted,
            advisory_at=advisory_at,
            mandatory_at=exp - mandatory,
            expires_at=exp,
            serve_until=advisory_at if granted else 0.0,
        )
        return (
            "debug" if known else "info",
            "token.cached" if known else "token.issued",
            {
                "fingerprint": token.fingerprint,
                "jti": token.jti,
                "scopes": sorted(key.scopes),
                "expires_in": round(token.expires_in(now)),
                "mode": self._mode,
            },
        )

    def _record_failure(self, flight: _Flight, error: errors.AuthSecError) -> _LogLine:
        """Apply the failure policy (lock held); returns the log line to emit."""
        self._counts["failures"] += 1
        key, mono = flight.request, self._monotonic()
        dropped = 0
        if error.terminal:
            # The server withdrew the delegation: fail closed for every scope set.
            for cached in [k for k in self._cache if k.client_id == key.client_id]:
                del self._cache[cached]
                dropped += 1
            self._terminal = _Remembered(error, mono + self.policy.failure_memory)
        entry = self._cache.get(key)
        if flight.background and entry is not None:
            entry.failures += 1
            entry.retry_at = mono + self.policy.backoff(entry.failures, self._rng)
            if entry.granted:  # back to the counted, backed-off path
                entry.serve_until = entry.advisory_at
        if not flight.background or flight.joined:
            self._remembered[key] = _Remembered(error, mono + self.policy.failure_memory)
        return (
            "warning",
            "token.refresh.failed",
            {
                "error": error.kind,
                "message": str(error),
                "scopes": sorted(key.scopes),
                "background": flight.background,
                "dropped": dropped,
                "mode": self._mode,
            },
        )

    def _not_granted(
        self, token: DelegationToken, request: TokenRequest
    ) -> errors.ScopeNotGrantedError:
        missing = request.scopes - token.permissions
        return errors.ScopeNotGrantedError(
            f"the agent's delegation grants {', '.join(sorted(token.permissions)) or 'nothing'}"
            f", not {', '.join(sorted(missing))}; ask an administrator to delegate those "
            "permissions to this agent",
            missing=frozenset(missing),
        )
