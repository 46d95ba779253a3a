"""Single flight across processes: read the store, else lease, fetch, write, wake the rest.

The broker's own cache stays the hot path; this layer runs only when a
broker's flight would call the transport. For one cache key it

1. reads the shared entry (and the agent's revocation mark) and serves it if
   it opens under this key, is newer than what this process last served, is
   still usable, and passes the broker's verifier;
2. otherwise takes the key's lease; the holder fetches, writes the token with
   an expiry no later than the token's own and announces it; the others wait
   for the announcement or a short poll, bounded by the lease, and take the
   lease over if its holder died.

Revocations (a terminal answer, or ``invalidate()`` after the API's 401) mark
the agent revoked in the store, delete the entry and are announced to every
listening process, which drops its in-memory copies.

A store that fails or is slow is not an outage: each operation is bounded by
the store's timeout, a failure switches this process to fetching on its own
(one warning per outage), and the store is tried again after a back-off.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import anyio

from ..logging import get_logger
from ..redact import redact_text
from ..token import DelegationToken, TokenRequest
from .base import (
    EntryRejected,
    StoredEntry,
    TokenStore,
    agent_digest,
    agent_identity,
    cache_identity,
    entry_name,
    latest_name,
    lease_name,
    revocation_name,
)

__all__ = ["Fleet", "StoreUnavailable"]

T = TypeVar("T")
Fetch = Callable[[], Awaitable[DelegationToken]]
Fetched = Callable[[DelegationToken], bool]
Accept = Callable[[DelegationToken, float], bool]
Verify = Callable[[DelegationToken], Awaitable[None]]
OnRevoked = Callable[[str, str | None], None]

_log = get_logger("authsec_crewai.stores")
_MARK_SECONDS = 24 * 3600.0  # a revocation mark outlives every token written before it
_FUTURE_SKEW = 60.0  # an entry "written" further ahead than this is not believed
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 30.0
_LISTEN_BACKOFF_MAX = 2.0  # pub/sub reconnects quickly: missed revocations matter


class StoreUnavailable(Exception):
    """The shared store failed or timed out; the caller proceeds without it."""


class Fleet:
    """One broker's view of a shared store (used only on the broker's event loop)."""

    def __init__(
        self,
        store: TokenStore,
        *,
        verify: Verify | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.origin = secrets.token_hex(8)
        self.counts = {"store_hits": 0, "store_errors": 0, "lease_waits": 0}
        self._verify = verify
        self._clock = clock
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self._seen: dict[str, float] = {}  # entry name -> written_at of what was last served
        self._ready: dict[str, anyio.Event] = {}  # entry name -> woken when it is announced
        self._down = False
        self._failures = 0
        self._retry_at = 0.0

    # --- fetching ----------------------------------------------------------------------

    async def fetch_shared(
        self,
        request: TokenRequest,
        fetch: Fetch,
        accept: Accept,
        fetched: Fetched | None = None,
    ) -> DelegationToken:
        """A token for ``request``: from the store, or fetched once for the fleet.

        ``fetch`` calls the transport (and verifies); ``accept(token,
        written_at)`` says whether a stored token may still be served;
        ``fetched(token)`` hears of a token this process fetched before it is
        written, so the process's own waiters never wait on the store; it
        answers False when the token must not be shared (a revocation came in
        while it was fetched). Errors
        of ``fetch`` propagate; errors of the store never do.
        """
        if not self._available():
            return await fetch()
        identity = cache_identity(request)
        name, lease = entry_name(identity), lease_name(identity)
        owner = secrets.token_hex(16)
        started = self._monotonic()
        patience = 2 * self.store.lease_seconds + self.store.timeout
        poll = min(0.01, self.store.poll_interval)
        waited = False
        try:
            while True:
                # Register before looking, so an announcement in between is not lost.
                ready = self._ready.setdefault(name, anyio.Event())
                token = await self._read(request, identity, name, accept)
                if token is not None:
                    return token
                if await self._op(self.store.acquire(lease, owner, self.store.lease_seconds)):
                    break
                if not waited:
                    waited = True
                    self.counts["lease_waits"] += 1
                if self._monotonic() - started > patience:
                    _log.warning("store.lease_stuck", waited=round(patience, 3))
                    return await fetch()
                with anyio.move_on_after(poll):
                    await ready.wait()
                poll = min(poll * 2, self.store.poll_interval)
        except StoreUnavailable:
            return await fetch()
        try:
            try:  # a holder may have written and released just before the lease was free
                token = await self._read(request, identity, name, accept)
            except StoreUnavailable:
                token = None
            if token is None:
                token = await fetch()
                if fetched is not None and not fetched(token):
                    return token  # fenced by a revocation: not worth sharing
                # The callers have their token: a broker closing now must not lose
                # the write the rest of the fleet waits for (it is bounded anyway).
                with anyio.CancelScope(shield=True):
                    await self._write(request, name, token)
            return token
        finally:
            with anyio.CancelScope(shield=True):
                await self._attempt(self.store.release(lease, owner))

    async def _read(
        self, request: TokenRequest, identity: bytes, name: str, accept: Accept
    ) -> DelegationToken | None:
        """The entry for the key, else the agent's latest token if it covers the scopes."""
        agent = agent_identity(request)
        latest = latest_name(agent)
        exact, wider, mark = await self._op(
            self.store.get([name, latest, revocation_name(request.client_id)])
        )
        for found_identity, found_name, blob in ((identity, name, exact), (agent, latest, wider)):
            if blob is None:
                continue
            entry = await self._open(request, found_identity, found_name, blob, mark)
            if entry is None or (found_name == latest and not entry.token.covers(request.scopes)):
                continue
            if entry.written_at <= self._seen.get(name, -math.inf):
                continue  # what this process already had: not a refresh
            if not accept(entry.token, entry.written_at):
                continue
            self._seen[name] = entry.written_at
            self.counts["store_hits"] += 1
            return entry.token
        return None

    async def _open(
        self, request: TokenRequest, identity: bytes, name: str, blob: bytes, mark: bytes | None
    ) -> StoredEntry | None:
        """The entry if it may be served at all; a poisoned one is deleted."""
        try:
            entry = StoredEntry.decode(self.store.codec.open(identity, blob))
            self._check(entry, request, mark)
            if self._verify is not None:
                await self._verify(entry.token)
        except Exception as exc:  # EntryRejected, or the verifier's TokenVerificationError
            reason = str(exc) if isinstance(exc, EntryRejected) else type(exc).__name__
            _log.warning("store.entry_rejected", reason=redact_text(reason)[:200])
            await self._attempt(self.store.delete([name]))
            return None
        return entry

    def _check(self, entry: StoredEntry, request: TokenRequest, mark: bytes | None) -> None:
        now, token = self._clock(), entry.token
        if token.client_id != request.client_id:
            raise EntryRejected("an entry for another agent")
        if now >= token.expires_at_ts:
            raise EntryRejected("an expired token")
        if entry.written_at > now + _FUTURE_SKEW:
            raise EntryRejected("an entry written in the future")
        if mark is not None:
            try:
                revoked_at = float(mark)
            except ValueError:
                revoked_at = math.inf  # an unreadable mark fails closed
            if entry.written_at <= revoked_at:
                raise EntryRejected("a token written before the agent was revoked")

    async def _write(self, request: TokenRequest, name: str, token: DelegationToken) -> None:
        """Share a fetched token (expiring with it) and wake the waiters; best effort.

        It is kept under its key and as the agent's latest token, which serves
        any scope set it covers.
        """
        now = self._clock()
        ttl = token.expires_at_ts - now
        if ttl <= 0:
            return
        plain = StoredEntry(token, now).encode()
        codec, agent = self.store.codec, agent_identity(request)
        if await self._attempt(
            self.store.put(name, codec.seal(cache_identity(request), plain), ttl)
        ):
            self._seen[name] = now
            await self._attempt(self.store.put(latest_name(agent), codec.seal(agent, plain), ttl))
            await self._attempt(self.store.publish(f"ready {name}"))

    # --- revocation --------------------------------------------------------------------

    async def revoke(
        self, client_id: str, requests: Iterable[TokenRequest], fingerprint: str | None
    ) -> None:
        """Mark the agent revoked, delete the entries, tell every other process."""
        requests = list(requests)
        names = [entry_name(cache_identity(request)) for request in requests]
        names += sorted({latest_name(agent_identity(request)) for request in requests})
        mark = repr(self._clock()).encode()
        # Best effort: in an outage (logged once) other processes learn from the server.
        if not await self._attempt(self.store.put(revocation_name(client_id), mark, _MARK_SECONDS)):
            return
        if names:
            await self._attempt(self.store.delete(names))
        message = f"revoke {self.origin} {agent_digest(client_id)} {fingerprint or '-'}"
        await self._attempt(self.store.publish(message))

    async def listen(self, on_revoked: OnRevoked) -> None:
        """Deliver other processes' revocations (and wake lease waiters) until cancelled."""
        attempt = 0

        def on_message(message: str) -> None:
            kind, _, rest = message.partition(" ")
            if kind == "ready":
                event = self._ready.pop(rest, None)
                if event is not None:
                    event.set()
            elif kind == "revoke":
                origin, agent, fingerprint = ([*rest.split(" "), "", ""])[:3]
                if origin != self.origin and agent:
                    on_revoked(agent, None if fingerprint in ("-", "") else fingerprint)

        while True:
            began = self._monotonic()
            try:
                await self.store.listen(on_message)
            except Exception as exc:
                self._failed(exc, back_off=False)  # the next operation decides about outages
            if self._monotonic() - began > _LISTEN_BACKOFF_MAX:
                attempt = 0
            attempt += 1
            await anyio.sleep(min(_LISTEN_BACKOFF_MAX, 0.05 * 2**attempt))

    # --- outages -----------------------------------------------------------------------

    def _available(self) -> bool:
        return not self._down or self._monotonic() >= self._retry_at

    async def _op(self, operation: Awaitable[T]) -> T:
        try:
            with anyio.fail_after(self.store.timeout):
                result = await operation
        except Exception as exc:
            self._failed(exc)
            raise StoreUnavailable(type(exc).__name__) from exc
        if self._down:
            self._down, self._failures = False, 0
            _log.info("store.recovered", store=type(self.store).__name__)
        return result

    async def _attempt(self, operation: Awaitable[object]) -> bool:
        """Run a store operation whose failure changes nothing for the caller."""
        try:
            await self._op(operation)
        except StoreUnavailable:
            return False
        return True

    def _failed(self, exc: BaseException, *, back_off: bool = True) -> None:
        self.counts["store_errors"] += 1
        delay = 0.0
        if back_off:
            self._failures += 1
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._failures - 1))
            delay *= 0.5 + self._rng.random() / 2
            self._retry_at = self._monotonic() + delay
        if not self._down:
            self._down = True
            _log.warning(
                "store.unavailable",
                store=type(self.store).__name__,
                error=type(exc).__name__,
                message=redact_text(str(exc))[:200],
                retry_in=round(delay, 3),
            )
