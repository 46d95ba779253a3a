"""Single flight across processes: read the store, else lease, fetch, write, wake the rest.

The broker's own cache stays the hot path; this layer runs only when a
broker's flight would call the transport. For one cache key it

1. reads the shared entry (with the agent's revocation generation and any
   shared terminal answer) and serves it if it opens under this key, was
   written under the agent's current generation, is newer than what this
   process last served, is still usable, and passes the broker's verifier;
2. otherwise takes the key's lease; the holder fetches (renewing the lease
   while the fetch runs), writes the token with an expiry no later than the
   token's own and announces it; the others wait for the announcement or a
   short poll, and take the lease over if its holder died.

Time: entries are stamped on the store's clock (Redis ``TIME``, the host's
for SQLite), never on a process's own, so a process whose clock is off still
agrees with the rest about what is newer. Revocation needs no clock at all: a
revocation (a terminal answer, or ``invalidate()`` after the API's 401) gives
the agent a new random generation, so every entry of the agent written
before, whatever its scope set, is void; the entries are deleted and every
listening process is told to drop its in-memory copies. A terminal answer
(not delegated, delegation expired) is also kept for a while, sealed, so the
other processes raise it instead of asking AuthSec again.

Events are authenticated (:mod:`.events`); an event that does not verify is
dropped and counted, never acted on. Entries sealed under a key this process
does not have are left alone and the mismatch is reported loudly.

A store that fails or is slow is not an outage: each operation is bounded by
the store's timeout, a failure switches this process to fetching on its own
(one warning per outage), and the store is tried again after a back-off.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from .. import errors
from ..logging import get_logger
from ..redact import redact_text
from ..token import DelegationToken, TokenRequest
from .base import (
    KEY_CHECK_IDENTITY,
    KEY_CHECK_NAME,
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
    terminal_identity,
    terminal_name,
)
from .events import EventRejected

__all__ = ["DEFAULT_TERMINAL_SECONDS", "Fleet", "StoreUnavailable"]

T = TypeVar("T")
Fetch = Callable[[], Awaitable[DelegationToken]]
Fetched = Callable[[DelegationToken], bool]
Accept = Callable[[DelegationToken, float], bool]
Verify = Callable[[DelegationToken], Awaitable[None]]
OnRevoked = Callable[[str, str | None], None]

_log = get_logger("authsec_crewai.stores")
_MARK_SECONDS = 24 * 3600.0  # a revocation generation outlives every token written before it
_FUTURE_SKEW = 60.0  # an entry "written" further ahead (store time) than this is not believed
_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 30.0
_LISTEN_BACKOFF_MAX = 2.0  # pub/sub reconnects quickly: missed revocations matter
_CALIBRATE_EVERY = 30.0  # seconds between two readings of the store's clock
_ECHO_SECONDS = 1.0  # a revocation this soon after raising a shared answer is its echo
_REPORT_EVERY = 60.0  # a repeated warning (key mismatch, dropped events) at most this often
DEFAULT_TERMINAL_SECONDS = 30.0
"""How long a terminal answer is shared: the fleet asks AuthSec about a revoked agent
about once per this many seconds, instead of once per second per process."""
_SHARED_TERMINALS: dict[str, type[errors.TokenError]] = {
    cls.kind: cls for cls in (errors.NotDelegatedError, errors.DelegationExpiredError)
}
"""Answers about the agent itself, the same for every process (a 401 is about one
process's API token, a 404 without AuthSec's body about its URL: not shared)."""


class StoreUnavailable(Exception):
    """The shared store failed or timed out; the caller proceeds without it."""


@dataclass
class _Found:
    """What one read of the store found for a key."""

    token: DelegationToken | None = None
    generation: str = ""
    foreign: set[str] = field(default_factory=set)  # names holding another key's entries


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
        terminal_seconds: float = DEFAULT_TERMINAL_SECONDS,
    ) -> None:
        self.store = store
        self.origin = secrets.token_hex(8)
        self.counts = {"store_hits": 0, "store_errors": 0, "lease_waits": 0}
        self.events_dropped: dict[str, int] = {}  # reason -> how many
        self.key_mismatches = 0
        self.terminal_seconds = terminal_seconds
        self._verify = verify
        self._clock = clock
        self._monotonic = monotonic
        self._rng = rng or random.Random()
        self._events = store.codec.event_signer(store.channel)
        self._offset = 0.0  # the store's clock minus this process's
        self._calibrate_at = -math.inf
        self._seen: dict[str, float] = {}  # entry name -> written_at of what was last served
        self._ready: dict[str, anyio.Event] = {}  # entry name -> woken when it is announced
        self._echoes: dict[str, float] = {}  # agent -> when this process raised its shared answer
        self._reported: dict[str, float] = {}  # warning -> when it was last logged
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
        written_at)`` says whether a stored token may still be served
        (``written_at`` on this process's clock); ``fetched(token)`` hears of a
        token this process fetched before it is written, so the process's own
        waiters never wait on the store; it answers False when the token must
        not be shared (a revocation came in while it was fetched). Errors of
        ``fetch`` propagate, and so does a terminal answer another process got
        and shared; errors of the store never do.
        """
        if not self._available():
            return await fetch()
        identity = cache_identity(request)
        name, lease = entry_name(identity), lease_name(identity)
        owner = secrets.token_hex(16)
        started = self._monotonic()
        # Waiters give up only on a stuck store: a live holder renews its lease, a
        # dead one's lease runs out and a waiter takes it over.
        patience = 4 * self.store.lease_seconds + self.store.timeout
        poll = min(0.01, self.store.poll_interval)
        waited, found = False, _Found()
        try:
            while True:
                # Register before looking, so an announcement in between is not lost.
                ready = self._ready.setdefault(name, anyio.Event())
                found = await self._read(request, identity, name, accept)
                if found.token is not None:
                    return found.token
                try:
                    taken = await self._op(
                        self.store.acquire(lease, owner, self.store.lease_seconds)
                    )
                except StoreUnavailable:
                    # The lease may have been taken all the same (a reply lost, a
                    # write committed after the timeout): give it back, or every
                    # other process would wait it out.
                    with anyio.CancelScope(shield=True):
                        await self._attempt(self.store.release(lease, owner))
                    raise
                if taken:
                    break
                if not waited:
                    waited = True
                    self.counts["lease_waits"] += 1
                if self._monotonic() - started > patience:
                    _log.warning("store.lease_stuck", waited=round(patience, 3))
                    return await self._fetch(request, fetch)
                with anyio.move_on_after(poll):
                    await ready.wait()
                poll = min(poll * 2, self.store.poll_interval)
        except StoreUnavailable:
            return await fetch()
        try:
            # A holder may have written and released just before the lease was free.
            with contextlib.suppress(StoreUnavailable):
                found = await self._read(request, identity, name, accept)
            if found.token is not None:
                return found.token
            token = await self._fetch_holding(lease, owner, request, fetch)
            if fetched is not None and not fetched(token):
                return token  # fenced by a revocation: not worth sharing
            # The callers have their token: a broker closing now must not lose
            # the write the rest of the fleet waits for (it is bounded anyway).
            with anyio.CancelScope(shield=True):
                await self._write(request, name, token, found)
            return token
        finally:
            with anyio.CancelScope(shield=True):
                await self._attempt(self.store.release(lease, owner))

    async def _fetch(self, request: TokenRequest, fetch: Fetch) -> DelegationToken:
        """Call the transport; a terminal answer about the agent is shared."""
        try:
            return await fetch()
        except errors.TokenError as exc:
            if exc.kind in _SHARED_TERMINALS:
                await self._share_terminal(request.client_id, exc)
            raise

    async def _fetch_holding(
        self, lease: str, owner: str, request: TokenRequest, fetch: Fetch
    ) -> DelegationToken:
        """Fetch while renewing the lease: a slow fetch (the transport's retry budget
        is longer than a lease) keeps it, a dead holder's runs out."""
        failure: Exception | None = None
        token: DelegationToken | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._keep_lease, lease, owner)
            try:
                token = await self._fetch(request, fetch)
            except Exception as exc:  # re-raised below, outside the task group
                failure = exc
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        assert token is not None
        return token

    async def _keep_lease(self, lease: str, owner: str) -> None:
        while True:
            await anyio.sleep(self.store.lease_seconds / 3)
            try:
                if not await self._op(self.store.renew(lease, owner, self.store.lease_seconds)):
                    return  # taken over: nothing left to keep
            except StoreUnavailable:
                return

    async def _read(
        self, request: TokenRequest, identity: bytes, name: str, accept: Accept
    ) -> _Found:
        """The entry for the key, else the agent's latest token if it covers the scopes."""
        offset = await self._store_offset()
        agent = agent_identity(request)
        latest = latest_name(agent)
        exact, wider, mark, terminal = await self._op(
            self.store.get(
                [name, latest, revocation_name(request.client_id), terminal_name(request.client_id)]
            )
        )
        found = _Found(generation=(mark or b"").decode("ascii", "replace"))
        if terminal is not None:
            await self._raise_shared_terminal(request.client_id, terminal)
        for found_identity, found_name, blob in ((identity, name, exact), (agent, latest, wider)):
            if blob is None:
                continue
            entry = await self._open(request, found_identity, found_name, blob, found, offset)
            if entry is None or (found_name == latest and not entry.token.covers(request.scopes)):
                continue
            if entry.written_at <= self._seen.get(name, -math.inf):
                continue  # what this process already had: not a refresh
            if not accept(entry.token, entry.written_at - offset):
                continue
            self._seen[name] = entry.written_at
            self.counts["store_hits"] += 1
            found.token = entry.token
            return found
        return found

    async def _open(
        self,
        request: TokenRequest,
        identity: bytes,
        name: str,
        blob: bytes,
        found: _Found,
        offset: float,
    ) -> StoredEntry | None:
        """The entry if it may be served at all; a poisoned one is deleted, another
        key's is left alone (and reported)."""
        try:
            entry = StoredEntry.decode(self.store.codec.open(identity, blob))
            self._check(entry, request, found.generation, offset)
            if self._verify is not None:
                await self._verify(entry.token)
        except EntryRejected as exc:
            if exc.foreign:
                found.foreign.add(name)
                self._key_mismatch("an entry")
                return None
            await self._reject(name, str(exc))
            return None
        except Exception as exc:  # the verifier's TokenVerificationError
            await self._reject(name, type(exc).__name__)
            return None
        return entry

    async def _reject(self, name: str, reason: str) -> None:
        _log.warning("store.entry_rejected", reason=redact_text(reason)[:200])
        await self._attempt(self.store.delete([name]))

    def _check(
        self, entry: StoredEntry, request: TokenRequest, generation: str, offset: float
    ) -> None:
        now, token = self._clock(), entry.token
        if token.client_id != request.client_id:
            raise EntryRejected("an entry for another agent")
        if now >= token.expires_at_ts:
            raise EntryRejected("an expired token")
        if entry.written_at > now + offset + _FUTURE_SKEW:
            raise EntryRejected("an entry written in the future")
        if entry.generation != generation:
            raise EntryRejected("a token written before the agent was revoked")

    async def _write(
        self, request: TokenRequest, name: str, token: DelegationToken, found: _Found
    ) -> None:
        """Share a fetched token (expiring with it) and wake the waiters; best effort.

        It is kept under its key and as the agent's latest token, which serves
        any scope set it covers, under the generation read before the fetch: a
        revocation in between voids it. A name holding another key's entry is
        not overwritten.
        """
        ttl = token.expires_at_ts - self._clock()
        if ttl <= 0:
            return
        try:
            written_at = self._clock() + await self._store_offset()
        except StoreUnavailable:
            return
        plain = StoredEntry(token, written_at, found.generation).encode()
        codec, agent = self.store.codec, agent_identity(request)
        latest = latest_name(agent)
        if name not in found.foreign:
            if not await self._attempt(
                self.store.put(name, codec.seal(cache_identity(request), plain), ttl)
            ):
                return
            self._seen[name] = written_at
        if latest not in found.foreign:
            await self._attempt(self.store.put(latest, codec.seal(agent, plain), ttl))
        await self._attempt(self.store.publish(self._events.seal("ready", [name], written_at)))

    # --- terminal answers --------------------------------------------------------------

    async def _share_terminal(self, client_id: str, exc: errors.TokenError) -> None:
        """Keep the server's terminal answer for the fleet, sealed, for a while."""
        plain = json.dumps({"kind": exc.kind, "message": str(exc)}).encode()
        sealed = self.store.codec.seal(terminal_identity(client_id), plain)
        await self._attempt(self.store.put(terminal_name(client_id), sealed, self.terminal_seconds))

    async def _raise_shared_terminal(self, client_id: str, blob: bytes) -> None:
        """Raise the terminal answer another process got, if it is one of ours."""
        try:
            raw = json.loads(self.store.codec.open(terminal_identity(client_id), blob))
            kind, message = str(raw["kind"]), str(raw["message"])
            cls = _SHARED_TERMINALS[kind]
        except EntryRejected as exc:
            if exc.foreign:
                self._key_mismatch("a shared answer")
            else:
                await self._reject(terminal_name(client_id), str(exc))
            return
        except (ValueError, KeyError, TypeError):
            await self._reject(terminal_name(client_id), "a malformed shared answer")
            return
        self._echoes[client_id] = self._monotonic()  # the revocation that follows is not news
        raise cls(
            f"{message} (answered to another process of the fleet; shared for "
            f"{self.terminal_seconds:g}s)"
        )

    # --- revocation --------------------------------------------------------------------

    async def revoke(
        self, client_id: str, requests: Iterable[TokenRequest], fingerprint: str | None
    ) -> None:
        """Give the agent a new generation (voiding all its entries), delete the
        entries at hand, tell every other process."""
        requests = list(requests)
        raised_at = self._echoes.pop(client_id, -math.inf)
        if fingerprint is None and self._monotonic() - raised_at < _ECHO_SECONDS:
            return  # the broker answering the shared terminal answer: the fleet knows
        names = [entry_name(cache_identity(request)) for request in requests]
        names += sorted({latest_name(agent_identity(request)) for request in requests})
        generation = secrets.token_hex(8).encode()
        # Best effort: in an outage (logged once) other processes learn from the server.
        if not await self._attempt(
            self.store.put(revocation_name(client_id), generation, _MARK_SECONDS)
        ):
            return
        if names:
            await self._attempt(self.store.delete(names))
        args = [self.origin, agent_digest(client_id), fingerprint or "-"]
        try:
            now = self._clock() + await self._store_offset()
        except StoreUnavailable:
            return
        await self._attempt(self.store.publish(self._events.seal("revoke", args, now)))

    async def listen(self, on_revoked: OnRevoked) -> None:
        """Deliver other processes' revocations (and wake lease waiters) until cancelled."""
        attempt = 0

        def on_message(message: object) -> None:
            try:
                event = self._events.open(message, self._clock() + self._offset)
            except EventRejected as exc:
                self._event_dropped(exc.reason)
                return
            if event.kind == "ready":
                ready = self._ready.pop(event.args[0], None)
                if ready is not None:
                    ready.set()
            elif event.kind == "revoke":
                origin, agent, fingerprint = event.args
                if origin != self.origin:
                    on_revoked(agent, None if fingerprint == "-" else fingerprint)

        await self._check_key()
        while True:
            began = self._monotonic()
            try:
                await self._store_offset()
                await self.store.listen(on_message)
            except Exception as exc:
                self._failed(exc, back_off=False)  # the next operation decides about outages
            if self._monotonic() - began > _LISTEN_BACKOFF_MAX:
                attempt = 0
            attempt += 1
            await anyio.sleep(min(_LISTEN_BACKOFF_MAX, 0.05 * 2**attempt))

    # --- keys, clocks, reports ---------------------------------------------------------

    async def _check_key(self) -> None:
        """At start: does this process's key open what the others sealed?"""
        codec = self.store.codec
        try:
            (blob,) = await self._op(self.store.get([KEY_CHECK_NAME]))
        except StoreUnavailable:
            return
        if blob is not None:
            try:
                codec.open(KEY_CHECK_IDENTITY, blob)
            except EntryRejected as exc:
                if exc.foreign:
                    self._key_mismatch("the store's key check")
                    return  # theirs stays: overwriting it would hide the mismatch from them
        # Sealed with the current sealing key, so a rotation's old key can be dropped.
        await self._attempt(
            self.store.put(KEY_CHECK_NAME, codec.seal(KEY_CHECK_IDENTITY, b"ok"), _MARK_SECONDS)
        )

    async def _store_offset(self) -> float:
        """The store's clock minus this process's, read again every half minute."""
        if self._monotonic() >= self._calibrate_at:
            before = self._clock()
            store_now = await self._op(self.store.now())
            after = self._clock()
            self._offset = store_now - (before + after) / 2
            self._calibrate_at = self._monotonic() + _CALIBRATE_EVERY
        return self._offset

    def _key_mismatch(self, where: str) -> None:
        self.key_mismatches += 1
        if self._due("key_mismatch"):
            _log.error(
                "store.key_mismatch",
                found_in=where,
                message=(
                    "another process of this fleet uses a different AUTHSEC_STORE_KEY (or "
                    "AUTHSEC_STORE_ENCRYPTION): its entries and events are not shared with "
                    "this process, which fetches on its own and leaves them alone. Give "
                    "every process the same key ('new,old' during a rotation)."
                ),
            )

    def _event_dropped(self, reason: str) -> None:
        self.events_dropped[reason] = self.events_dropped.get(reason, 0) + 1
        if reason == "key mismatch":
            self._key_mismatch("an event")
        elif self._due("event_dropped"):
            _log.warning("store.event_dropped", reason=reason)

    def _due(self, report: str) -> bool:
        now = self._monotonic()
        if now - self._reported.get(report, -math.inf) < _REPORT_EVERY:
            return False
        self._reported[report] = now
        return True

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
