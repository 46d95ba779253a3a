"""Immutable values: what is asked for (``TokenRequest``) and what is handed out
(``DelegationToken``).

A token's raw value is reachable only through ``.value``: ``str()``, ``repr()``
and equality-free debugging output show its fingerprint instead, so a token
that ends up in a log line or an f-string does not leak.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .redact import fingerprint as _fingerprint

__all__ = ["DelegationToken", "ScopesLike", "TokenRequest", "canonical_scopes"]

ScopesLike = str | Iterable[str]

# RFC 6749 scope-token characters: printable ASCII except space, '"' and '\'.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")


def canonical_scopes(scopes: ScopesLike) -> frozenset[str]:
    """One scope, a space-separated string, or an iterable of scopes -> a set.

    Raises ``ValueError`` for an empty or malformed scope, so a typo never turns
    into a request for "no scope at all".
    """
    items = (
        scopes.split()
        if isinstance(scopes, str)
        else [part for item in scopes for part in str(item).split()]
    )
    if not items:
        raise ValueError("at least one scope is required, e.g. 'read:records'")
    for item in items:
        if not _SCOPE_TOKEN.fullmatch(item):
            raise ValueError(f"malformed scope {item[:40]!r}: expected e.g. 'read:records'")
    return frozenset(items)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """What a caller asks the broker for; also the broker's cache key."""

    client_id: str
    scopes: frozenset[str]
    audience: tuple[str, ...] = ()
    issuer: str | None = None
    """Who issues the token, when the transport declares it (an OAuth issuer): two
    issuers (or tenants) may know the same client id, and must not share tokens."""
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Requests are cache keys looked up on every call: hash them once.
        object.__setattr__(
            self, "_hash", hash((self.client_id, self.scopes, self.audience, self.issuer))
        )

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def create(
        cls,
        client_id: str,
        scopes: ScopesLike,
        audience: str | Iterable[str] = (),
        *,
        issuer: str | None = None,
    ) -> TokenRequest:
        aud = (audience,) if isinstance(audience, str) else tuple(audience)
        return cls(client_id, canonical_scopes(scopes), tuple(sorted(set(aud))), issuer)

    @property
    def scope_string(self) -> str:
        """The scopes space-separated in a stable order (the wire form)."""
        return " ".join(sorted(self.scopes))


@dataclass(frozen=True, slots=True)
class DelegationToken:
    """A delegation token and the facts the server told about it.

    ``value`` is the raw JWT; everything else is safe to log.
    """

    value: str = field(repr=False)
    permissions: frozenset[str]
    expires_at: datetime
    issued_at: datetime
    spiffe_id: str
    client_id: str
    tenant_id: str | None = None
    jti: str | None = None
    audience: tuple[str, ...] = ()
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        if self.expires_at.tzinfo is None or self.issued_at.tzinfo is None:
            raise ValueError("token datetimes must be timezone-aware (UTC)")
        object.__setattr__(self, "fingerprint", _fingerprint(self.value))

    def __repr__(self) -> str:
        return (
            f"DelegationToken(fingerprint={self.fingerprint!r}, jti={self.jti!r}, "
            f"permissions={sorted(self.permissions)!r}, spiffe_id={self.spiffe_id!r}, "
            f"expires_at={self.expires_at.isoformat()!r})"
        )

    __str__ = __repr__

    @property
    def expires_at_ts(self) -> float:
        """Expiry as UNIX seconds."""
        return self.expires_at.timestamp()

    @property
    def lifetime(self) -> float:
        """Seconds between issue and expiry (at least one)."""
        return max(1.0, self.expires_at.timestamp() - self.issued_at.timestamp())

    def expires_in(self, now: float) -> float:
        """Seconds left at UNIX time ``now`` (negative once expired)."""
        return self.expires_at.timestamp() - now

    def covers(self, scopes: frozenset[str]) -> bool:
        """True when the token's permissions include every one of ``scopes``."""
        return scopes <= self.permissions

    def redacted(self) -> dict[str, Any]:
        """The token's facts without its value: for logs, CLIs and tool output."""
        return {
            "fingerprint": self.fingerprint,
            "jti": self.jti,
            "permissions": sorted(self.permissions),
            "spiffe_id": self.spiffe_id,
            "client_id": self.client_id,
            "tenant_id": self.tenant_id,
            "audience": list(self.audience),
            "issued_at": self.issued_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }
