"""One agent's cached tokens: entries and their zones, the covering search, the hot map.

AuthSec hands an agent ONE token whatever scopes it asks for, so after a crew's
first call most lookups are for scopes that the cached token covers but was not
fetched under, asked as a string, a tuple, a frozenset or a list. Every one of
those hits should cost what the exact hit costs. So besides its entries (keyed
by the canonical :class:`~authsec_crewai.token.TokenRequest`), the cache keeps
two maps keyed by the form the caller asked in (:func:`memo_key`):

- ``requests``: the asked form -> its canonical request (no parsing per call);
- ``hot``: the asked form -> the entry that serves it, exact or covering. The
  broker's lock-free fast path reads only this map and the entry's
  ``serve_until``.

Both are bounded (a scope string may be a language model's invention) and an
entry leaves ``hot`` whenever it leaves the cache or is replaced: it is
*retired* (``serve_until`` = -inf), so a fast-path reader still holding it
falls through to the locked path instead of serving a dropped token.

Everything here runs under the broker's lock, except reading ``hot`` and
``requests`` (single dictionary operations, atomic under the GIL).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import _secrets
from ..policy import RefreshPolicy, Zone
from ..token import DelegationToken, ScopesLike, TokenRequest

__all__ = ["CACHE_LIMIT", "MEMO_LIMIT", "Entry", "TokenCache", "memo_key"]

MEMO_LIMIT = 1024
"""Asked forms remembered per agent, with their request and their serving entry
(both maps are cleared when full)."""
CACHE_LIMIT = 256
"""Distinct scope sets cached per agent (the oldest entry makes room)."""

_Facts = tuple[str, str, dict[str, object]]  # (level, event, fields) for the broker to log


@dataclass(slots=True, eq=False)
class Entry:
    """A cached token and the times that decide how it is served."""

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


def memo_key(scopes: object) -> object | None:
    """The form ``scopes`` is remembered under, or None when it is not remembered.

    A string is itself; a tuple or frozenset of strings is itself; a list of
    strings is its tuple (the fast path looks lists up the same way). Anything
    else (a set, other element types) is not remembered: ``(1,) == (1.0,)``
    would otherwise let one input be served what another's text means.
    """
    kind = type(scopes)
    if kind is str:
        return scopes
    if kind is tuple or kind is frozenset or kind is list:
        items: Iterable[object] = scopes  # type: ignore[assignment]
        if not all(type(item) is str for item in items):
            return None
        return tuple(items) if kind is list else scopes
    return None


class TokenCache:
    """One agent's entries, and the two maps that put every hit on the fast path."""

    __slots__ = ("entries", "hot", "requests")

    def __init__(self) -> None:
        self.entries: dict[TokenRequest, Entry] = {}
        self.hot: dict[object, Entry] = {}
        self.requests: dict[object, TokenRequest] = {}

    def __len__(self) -> int:
        return len(self.entries)

    # --- requests -------------------------------------------------------------------------

    def request(
        self,
        client_id: str,
        scopes: ScopesLike,
        audience: tuple[str, ...],
        issuer: str | None = None,
    ) -> TokenRequest:
        """The canonical request for ``scopes`` (remembered per asked form; no lock needed).

        ``audience`` and ``issuer`` are the broker's, fixed for its life: they
        need not be part of the remembered form."""
        key = memo_key(scopes)
        if key is not None:
            found = self.requests.get(key)
            if found is not None:
                return found
        request = TokenRequest.create(client_id, scopes, audience, issuer=issuer)
        if key is not None:
            if len(self.requests) >= MEMO_LIMIT:
                self.requests.clear()
            self.requests[key] = request
        return request

    # --- lookups --------------------------------------------------------------------------

    def find(self, request: TokenRequest, now: float) -> tuple[TokenRequest, Entry] | None:
        """The exact entry, else the longest-lived unexpired entry whose token covers the
        scopes (before its MANDATORY zone: a covering token is never waited for)."""
        entry = self.entries.get(request)
        if entry is not None and now < entry.expires_at:
            return request, entry
        best: tuple[TokenRequest, Entry] | None = None
        for key, candidate in self.entries.items():
            if (
                key.audience == request.audience
                and candidate.token.covers(request.scopes)
                and now < candidate.mandatory_at
                and (best is None or candidate.expires_at > best[1].expires_at)
            ):
                best = key, candidate
        return best

    def alias(self, asked: object, entry: Entry) -> None:
        """Serve ``asked`` from ``entry`` on the fast path from now on (bounded)."""
        key = memo_key(asked)
        if key is None:
            return
        hot = self.hot
        if len(hot) >= MEMO_LIMIT and key not in hot:
            hot.clear()
        hot[key] = entry

    def holds(self, value: str) -> bool:
        """True when some entry holds the token ``value`` (under any scope set)."""
        return any(entry.token.value == value for entry in self.entries.values())

    # --- changes --------------------------------------------------------------------------

    def store(
        self,
        key: TokenRequest,
        token: DelegationToken,
        policy: RefreshPolicy,
        rng: random.Random,
        now: float,
        mono: float,
    ) -> _Facts:
        """Cache a fetched token under ``key``; what to log about it.

        The token covers ``key``'s scopes (the caller checked). A token the
        server re-confirmed is not churn: its schedule stays, and it is looked
        at again only after a while. The same JWT cached under another scope
        set is not a new issue either (AuthSec keeps one token per agent).
        Every cached token is a secret every sink masks by value, whatever
        source (an opaque OAuth token looks like nothing) it came from.
        """
        _secrets.remember(token.value)
        facts: dict[str, object] = {"fingerprint": token.fingerprint, "jti": token.jti}
        current = self.entries.get(key)
        if current is not None and current.token.value == token.value:
            recheck = max(policy.backoff_initial, 0.1 * token.expires_in(now))
            current.confirmed_until = current.retry_at = mono + recheck
            current.serve_until = min(current.mandatory_at, max(current.advisory_at, now + recheck))
            current.failures = 0
            facts.update(changed=False, expires_in=round(token.expires_in(now)))
            return "debug", "token.refresh.end", facts
        known = self.holds(token.value)
        exp = token.expires_at_ts
        advisory, mandatory = policy.windows(token.lifetime)
        advisory_at = exp - advisory - rng.random() * policy.jitter_fraction * advisory
        if current is not None:
            self._retire(current)
        elif len(self.entries) >= CACHE_LIMIT:
            self.drop(next(iter(self.entries)))  # the oldest entry makes room
        self.entries[key] = Entry(
            token=token,
            advisory_at=advisory_at,
            mandatory_at=exp - mandatory,
            expires_at=exp,
            serve_until=advisory_at,
        )
        facts.update(scopes=sorted(key.scopes), expires_in=round(token.expires_in(now)))
        if known:
            return "debug", "token.cached", facts
        return "info", "token.issued", facts

    def drop(self, key: TokenRequest) -> Entry | None:
        """Remove the entry under ``key`` (if any) and retire it."""
        entry = self.entries.pop(key, None)
        if entry is not None:
            self._retire(entry)
        return entry

    def drop_where(self, doomed: Callable[[Entry], bool]) -> list[TokenRequest]:
        """Remove every entry ``doomed`` says so of; their keys."""
        keys = [key for key, entry in self.entries.items() if doomed(entry)]
        for key in keys:
            self.drop(key)
        return keys

    def clear(self) -> int:
        """Remove every entry; how many there were."""
        count = len(self.entries)
        for entry in self.entries.values():
            entry.serve_until = -math.inf
        self.entries.clear()
        self.hot.clear()
        return count

    def _retire(self, entry: Entry) -> None:
        """No fast-path hit serves ``entry`` again, and no asked form points to it."""
        entry.serve_until = -math.inf
        hot = self.hot
        for asked in [asked for asked, served in hot.items() if served is entry]:
            del hot[asked]
