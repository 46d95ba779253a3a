"""A rotating refresh-token chain, spent exactly once per turn by a whole fleet.

Conforming servers rotate refresh tokens (RFC 9700 §4.14.2): every refresh
answers a new one and spends the old, and a spent one presented again is
taken for theft and revokes the whole family, so two processes refreshing
with the same token lock the user out. The chain therefore lives in the
fleet's shared store (sealed, bound to its name), and a process spends it
only like this:

1. take the chain's lease (``acquire``; a dead holder's lease runs out);
2. re-read the chain under the lease (someone may have rotated it since);
3. write "being spent by me since t" into the chain, then send the grant,
   which must end while the lease holds;
4. write the rotated token into the chain *before* the answer is used;
5. release the lease.

The chain is seeded once from configuration: a seed is adopted only if the
chain has never seen it (its fingerprint is kept), so a process started
later with the same, long-spent seed joins the chain instead of spending the
seed again, and a new sign-in (a new seed) replaces a dead chain.

``invalid_grant`` ends the chain: it is written down as ended, and every
later spend anywhere in the fleet raises the same clearly worded error
without asking the server again (presenting dead tokens in a loop is how an
account gets locked). The chain comes back only with a new seed.

The crash window. A process killed after the server rotated the token but
before step 4 leaves the store holding the spent token, marked "being
spent". The next holder sees the mark, warns, and spends the token anyway:
if the grant never reached the server, or the server allows a short reuse
interval for a lost answer (Okta's grace period, Auth0's reuse interval),
the chain goes on; otherwise the server answers ``invalid_grant`` and the
error says the chain was lost in an interrupted refresh, so the loss is
never silent. Nothing client-side can close this window: only the server
knows whether it rotated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import anyio

from .. import errors
from ..logging import get_logger
from ..redact import fingerprint
from .base import EntryRejected, TokenStore

__all__ = ["DEFAULT_CHAIN_TTL", "ChainState", "LocalRefreshChain", "SharedRefreshChain"]

T = TypeVar("T")
_log = get_logger("authsec_crewai.stores.chain")
_DOMAIN = b"authsec-crewai/chain/v1\0"
DEFAULT_CHAIN_TTL = 90 * 24 * 3600.0
"""How long an untouched chain is kept in the store (longer than refresh tokens live)."""
_SURELY_UNSPENT = (
    errors.RateLimitedError,
    errors.ClientAuthenticationError,
    errors.OAuthRequestError,
    errors.ScopeNotGrantedError,
    errors.UnreachableError,
)
"""Failures after which the server surely did not rotate: the "being spent" mark goes."""


class _Answer(Protocol):
    """What a spend needs from an answer: its rotated refresh token, if any."""

    @property
    def refresh_token(self) -> str | None: ...


A = TypeVar("A", bound=_Answer)


def _now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class ChainState:
    """The chain as stored: the current token and what the fleet knows about it."""

    token: str = field(repr=False)
    generation: int = 0
    seeds: tuple[str, ...] = ()
    """Fingerprints of every seed this chain adopted (an old seed is never re-adopted)."""
    spending: tuple[str, float] | None = None
    """(owner, since): a grant with ``token`` was sent and its answer not yet written."""
    ended: str | None = None
    """Why the chain is over (``invalid_grant``): every spend raises this at once."""

    def encode(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "generation": self.generation,
                "seeds": list(self.seeds),
                "spending": list(self.spending) if self.spending else None,
                "ended": self.ended,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> ChainState:
        try:
            raw: dict[str, Any] = json.loads(data)
            spending = raw["spending"]
            return cls(
                token=str(raw["token"]),
                generation=int(raw["generation"]),
                seeds=tuple(str(s) for s in raw["seeds"]),
                spending=(str(spending[0]), float(spending[1])) if spending else None,
                ended=None if raw["ended"] is None else str(raw["ended"]),
            )
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise EntryRejected(f"a malformed refresh chain ({type(exc).__name__})") from None


def _ended_error(why: str) -> errors.InvalidGrantError:
    return errors.InvalidGrantError(
        f"the refresh-token chain is over ({why}); sign in again and set "
        "AUTHSEC_OAUTH_REFRESH_TOKEN to the new refresh token (not retried)"
    )


def _lost_in_crash(exc: errors.InvalidGrantError, since: float) -> errors.InvalidGrantError:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
    return errors.InvalidGrantError(
        f"{exc} - the refresh token was being spent by a process that stopped at {when} "
        "before it could keep the rotated one: the chain was lost in that interrupted refresh"
    )


class LocalRefreshChain:
    """A chain that lives in this process only (no shared store): one spend at a time."""

    def __init__(self, seed: str) -> None:
        if not seed:
            raise errors.ConfigurationError("a refresh-token chain needs a refresh token")
        self._token = seed
        self._ended: str | None = None
        self._lock: anyio.Lock | None = None

    def __repr__(self) -> str:
        return f"LocalRefreshChain(token=<{fingerprint(self._token)}>, ended={self._ended!r})"

    def secrets(self) -> tuple[str, ...]:
        return (self._token,)

    async def spend(self, grant: Callable[[str], Awaitable[A]]) -> A:
        if self._lock is None:
            self._lock = anyio.Lock()
        async with self._lock:
            if self._ended is not None:
                raise _ended_error(self._ended)
            try:
                answer = await grant(self._token)
            except errors.InvalidGrantError:
                self._ended = f"the server answered invalid_grant at {_now_text()}"
                raise
            if answer.refresh_token:
                self._token = answer.refresh_token
            return answer


class SharedRefreshChain:
    """A chain kept sealed in a :class:`~authsec_crewai.stores.TokenStore` for a fleet.

    ``seed`` is the configured refresh token; ``issuer`` and ``client_id``
    name the chain (one per client of one issuer). ``lease_seconds`` must
    outlive one grant, retries included (the transport's deadline): the wiring
    sets it so. The store is entered and left by the broker that shares it.
    """

    def __init__(
        self,
        seed: str,
        store: TokenStore,
        *,
        issuer: str,
        client_id: str,
        lease_seconds: float = 45.0,
        wait_seconds: float | None = None,
        ttl: float = DEFAULT_CHAIN_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not seed:
            raise errors.ConfigurationError("a refresh-token chain needs a refresh token")
        self._seed = seed
        self._seed_fp = fingerprint(seed)
        self.store = store
        identity = json.dumps(["refresh-chain", issuer, client_id], separators=(",", ":"))
        self._identity = identity.encode()
        digest = hashlib.sha256(_DOMAIN + self._identity).hexdigest()[:40]
        self._name, self._lease = "c:" + digest, "cl:" + digest
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds if wait_seconds is not None else 2 * lease_seconds
        self.ttl = ttl
        self._clock = clock
        self._known = seed  # the newest token this process has seen (for scrubbing)
        self._unsaved: ChainState | None = None  # a rotation the store failed to keep
        self._lock: anyio.Lock | None = None

    def __repr__(self) -> str:
        return f"SharedRefreshChain(name={self._name!r}, token=<{fingerprint(self._known)}>)"

    def secrets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self._seed, self._known)))

    # --- the store, each call bounded ------------------------------------------------------

    async def _bounded(self, call: Awaitable[T], what: str) -> T:
        try:
            with anyio.fail_after(self.store.timeout):
                return await call
        except Exception as exc:
            raise errors.TransportError(
                f"the shared store failed while {what} ({type(exc).__name__}); the refresh "
                "token is not spent without it (spending it unshared could revoke the sign-in "
                "for the whole fleet)"
            ) from None

    async def read(self) -> ChainState | None:
        """The chain as the store holds it now (None before its first spend)."""
        (blob,) = await self._bounded(self.store.get([self._name]), "reading the refresh chain")
        if blob is None:
            return None
        try:
            return ChainState.decode(self.store.codec.open(self._identity, blob))
        except EntryRejected as exc:
            raise errors.TransportError(
                f"the refresh chain in the shared store cannot be opened ({exc}); check that "
                "AUTHSEC_STORE_KEY is the fleet's key"
            ) from None

    async def _write(self, state: ChainState) -> None:
        blob = self.store.codec.seal(self._identity, state.encode())
        await self._bounded(self.store.put(self._name, blob, self.ttl), "keeping the refresh chain")
        self._known = state.token

    async def _take_lease(self, owner: str) -> None:
        give_up = anyio.current_time() + self.wait_seconds
        while True:
            taken = await self._bounded(
                self.store.acquire(self._lease, owner, self.lease_seconds),
                "taking the refresh chain's lease",
            )
            if taken:
                return
            if anyio.current_time() >= give_up:
                raise errors.TransportError(
                    f"another process has held the refresh chain's lease for over "
                    f"{self.wait_seconds:g}s; try again"
                )
            await anyio.sleep(self.store.poll_interval)

    # --- spending --------------------------------------------------------------------------

    def _current(self, stored: ChainState | None) -> ChainState:
        """The chain to spend: a newer rotation this process holds that the store did
        not keep; else the stored chain, unless the configured seed is one the chain
        has never seen (first use, or a new sign-in), which is then adopted."""
        unsaved = self._unsaved
        if unsaved is not None and (stored is None or stored.generation < unsaved.generation):
            return unsaved
        if stored is None:
            return ChainState(self._seed, 0, (self._seed_fp,))
        if self._seed_fp not in stored.seeds:
            return ChainState(self._seed, stored.generation + 1, (*stored.seeds, self._seed_fp))
        return stored

    async def spend(self, grant: Callable[[str], Awaitable[A]]) -> A:
        """``grant(refresh_token)`` exactly once for the fleet's current token."""
        if self._lock is None:
            self._lock = anyio.Lock()
        owner = secrets.token_hex(8)
        async with self._lock:
            await self._take_lease(owner)
            try:
                return await self._spend_leased(grant, owner)
            finally:
                # Shielded: a cancelled caller still gives the lease back (else it runs out).
                with anyio.CancelScope(shield=True), contextlib.suppress(errors.TransportError):
                    await self._bounded(
                        self.store.release(self._lease, owner), "releasing the lease"
                    )

    async def _spend_leased(self, grant: Callable[[str], Awaitable[A]], owner: str) -> A:
        state = self._current(await self.read())
        if state.ended is not None:
            raise _ended_error(state.ended)
        interrupted = state.spending
        if interrupted is not None:
            _log.warning(
                "authsec.oauth.chain.interrupted",
                since=interrupted[1],
                generation=state.generation,
                hint="a process stopped while spending the refresh token; spending it again "
                "(the server decides whether the chain survived)",
            )
        await self._write(replace(state, spending=(owner, self._clock())))
        try:
            # The grant must end while the lease holds, or a second process could spend
            # the same token: what is left of the lease bounds it.
            with anyio.fail_after(max(1.0, self.lease_seconds - 2 * self.store.timeout - 1.0)):
                answer = await grant(state.token)
        except TimeoutError:
            raise errors.TransportTimeoutError(
                f"the refresh grant did not finish within the chain's {self.lease_seconds:g}s "
                "lease; whether the server rotated the token is unknown (the next spend "
                "finds out)"
            ) from None
        except errors.InvalidGrantError as exc:
            why = f"the server answered invalid_grant at {_now_text()}"
            error = exc
            if interrupted is not None:
                error = _lost_in_crash(exc, interrupted[1])
                why += " after an interrupted refresh"
            await self._write(replace(state, spending=None, ended=why))
            raise error from None
        except _SURELY_UNSPENT:
            await self._write(replace(state, spending=None))
            raise
        rotated = ChainState(answer.refresh_token or state.token, state.generation + 1, state.seeds)
        try:
            await self._write(rotated)
            self._unsaved = None
        except errors.TransportError:
            # Kept in this process and written first by its next spend. Until then a
            # process reading the store would spend the old token: say so loudly.
            self._unsaved, self._known = rotated, rotated.token
            _log.error(
                "authsec.oauth.chain.unsaved",
                generation=rotated.generation,
                hint="the shared store did not keep the rotated refresh token; until it "
                "does, another process spending the chain revokes it",
            )
        return answer
