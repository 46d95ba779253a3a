"""The ``TokenStore`` protocol and what every shared store needs: key names and sealing.

A store is deliberately dumb: it keeps opaque bytes under opaque names, grants
leases, and carries short event messages between processes. Everything that
knows about tokens (when one may be served, who fetches, what a revocation
means) lives in :mod:`authsec_crewai.stores.fleet`, so SQLite, Redis and the
in-process store cannot drift apart in policy.

Nothing a store holds names an agent or a scope in clear: key names are
SHA-256 digests of the cache key, and values are sealed with AES-GCM whose
associated data is that same cache key, so an entry copied to another agent's,
scope set's or tenant's name fails to open instead of being served.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import ConfigurationError
from ..token import DelegationToken, TokenRequest

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_TIMEOUT_SECONDS",
    "EntryRejected",
    "SealedCodec",
    "StoredEntry",
    "TokenStore",
    "agent_digest",
    "agent_identity",
    "cache_identity",
    "decode_key",
    "entry_name",
    "latest_name",
    "lease_name",
    "revocation_name",
]

DEFAULT_TIMEOUT_SECONDS = 0.5
"""Longest any single store operation may take before the store counts as down."""
DEFAULT_LEASE_SECONDS = 10.0
"""How long a fetch lease holds before another process may take over."""

_DOMAIN = b"authsec-crewai/store/v1\0"
_SEALED, _PLAIN = b"\x01", b"\x02"
_NONCE_BYTES = 12
_KEY_ID_BYTES = 4


@runtime_checkable
class TokenStore(Protocol):
    """Where a fleet of brokers shares tokens, leases and events.

    Names and values are opaque to the store. Every method may raise any
    exception when the backend fails; the fleet layer bounds each call with
    ``timeout`` and treats a failure as "no shared store for now", never as the
    caller's error. Stores are async context managers: the broker enters its
    store when it starts and leaves it when it closes.
    """

    timeout: float
    """Seconds a single operation may take before the store counts as unavailable."""
    lease_seconds: float
    """How long a fetch lease lasts; a holder that dies is replaced after this."""
    poll_interval: float
    """Longest a lease waiter sleeps between looks at the store."""
    codec: SealedCodec
    """Seals values at rest (or, when encryption is off on purpose, only frames them)."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def get(self, names: Sequence[str]) -> list[bytes | None]:
        """The values under ``names`` (None where absent or expired), in order."""
        ...

    async def put(self, name: str, value: bytes, ttl: float) -> None:
        """Keep ``value`` under ``name`` for ``ttl`` seconds."""
        ...

    async def delete(self, names: Sequence[str]) -> None:
        """Forget ``names``."""
        ...

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        """Take the lease ``name`` for ``owner`` if nobody holds it; True if taken."""
        ...

    async def release(self, name: str, owner: str) -> None:
        """Give the lease back, only if ``owner`` still holds it."""
        ...

    async def publish(self, message: str) -> None:
        """Send ``message`` to every process listening on this store."""
        ...

    async def listen(self, on_message: Callable[[str], None]) -> None:
        """Call ``on_message`` for each published message until cancelled.

        Returns or raises when the backend connection is lost; the caller
        reconnects with back-off.
        """
        ...


# --- names -----------------------------------------------------------------------------


def _issued_by(request: TokenRequest) -> list[str]:
    """The issuer's part of a key: nothing for AuthSec's one issuer (so the names of
    entries written before issuers were part of keys stay the same), else the issuer."""
    return [] if request.issuer is None else [request.issuer]


def cache_identity(request: TokenRequest) -> bytes:
    """The cache key as bytes (issuer, agent, audience, scopes): what a stored value is
    bound to, so a token of one issuer, tenant, client or resource never opens as another's."""
    return json.dumps(
        [request.client_id, sorted(request.audience), sorted(request.scopes), *_issued_by(request)],
        separators=(",", ":"),
    ).encode()


def agent_identity(request: TokenRequest) -> bytes:
    """The agent and audience without a scope set: what the agent's latest token is bound to."""
    return json.dumps(
        [request.client_id, sorted(request.audience), "*", *_issued_by(request)],
        separators=(",", ":"),
    ).encode()


def _digest(kind: bytes, data: bytes) -> str:
    return hashlib.sha256(_DOMAIN + kind + b"\0" + data).hexdigest()[:40]


def entry_name(identity: bytes) -> str:
    """Where the token for a cache key is kept."""
    return "t:" + _digest(b"entry", identity)


def latest_name(agent: bytes) -> str:
    """Where the agent's latest token is kept (it serves any scope set it covers)."""
    return "a:" + _digest(b"latest", agent)


def lease_name(identity: bytes) -> str:
    """The lease that elects one fetcher for a cache key."""
    return "l:" + _digest(b"lease", identity)


def agent_digest(client_id: str) -> str:
    """A name for an agent that does not reveal its client id."""
    return _digest(b"agent", client_id.encode())


def revocation_name(client_id: str) -> str:
    """When the agent's tokens were last revoked (entries written before are void)."""
    return "r:" + agent_digest(client_id)


# --- sealing ----------------------------------------------------------------------------


class EntryRejected(Exception):
    """A stored value that must not be served: tampered, foreign, stale or malformed."""


def decode_key(text: str, *, variable: str = "AUTHSEC_STORE_KEY") -> bytes:
    """A 32-byte AES key from its urlsafe base64 form, or a ConfigurationError."""
    try:
        key = base64.urlsafe_b64decode(text.strip() + "=" * (-len(text.strip()) % 4))
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigurationError(
            f"{variable} must be the urlsafe base64 form of 32 random bytes; make one with "
            "python -c 'import base64, os; "
            "print(base64.urlsafe_b64encode(os.urandom(32)).decode())'"
        )
    return key


class SealedCodec:
    """AES-256-GCM with the cache key as associated data; older keys still open.

    ``keys[0]`` seals; every key in ``keys`` may open, so a key can be rotated
    by deploying ``[new, old]`` first and dropping ``old`` once every entry
    sealed with it has expired (tokens live minutes). With ``keys=()`` values
    are only framed, never encrypted: that is a choice the configuration must
    state (``AUTHSEC_STORE_ENCRYPTION=off``), and a sealed value is then
    refused, as a framed one is refused when keys are set.
    """

    def __init__(self, keys: Sequence[bytes] = ()) -> None:
        for key in keys:
            if len(key) != 32:
                raise ConfigurationError("a store key must be 32 bytes (AES-256)")
        self._ciphers = {hashlib.sha256(key).digest()[:_KEY_ID_BYTES]: AESGCM(key) for key in keys}
        self._sealing = (
            (hashlib.sha256(keys[0]).digest()[:_KEY_ID_BYTES], AESGCM(keys[0])) if keys else None
        )

    @property
    def encrypts(self) -> bool:
        return self._sealing is not None

    def __repr__(self) -> str:
        return f"SealedCodec(keys={len(self._ciphers)}, encrypts={self.encrypts})"

    def seal(self, identity: bytes, plaintext: bytes) -> bytes:
        if self._sealing is None:
            return _PLAIN + hashlib.sha256(identity).digest() + plaintext
        key_id, cipher = self._sealing
        nonce = os.urandom(_NONCE_BYTES)
        return _SEALED + key_id + nonce + cipher.encrypt(nonce, plaintext, identity)

    def open(self, identity: bytes, blob: bytes) -> bytes:
        if self._sealing is None:
            if blob[:1] != _PLAIN:
                raise EntryRejected("a sealed entry, but store encryption is off")
            if blob[1:33] != hashlib.sha256(identity).digest():
                raise EntryRejected("an entry stored under another cache key")
            return blob[33:]
        if blob[:1] != _SEALED:
            raise EntryRejected("an entry that is not sealed")
        key_id = blob[1 : 1 + _KEY_ID_BYTES]
        nonce = blob[1 + _KEY_ID_BYTES : 1 + _KEY_ID_BYTES + _NONCE_BYTES]
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise EntryRejected("an entry sealed with a key this process does not have")
        try:
            return cipher.decrypt(nonce, blob[1 + _KEY_ID_BYTES + _NONCE_BYTES :], identity)
        except InvalidTag:
            raise EntryRejected("an entry that fails authentication (tampered or moved)") from None


# --- entries ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A token as the fleet keeps it, and when (by the writer's clock) it was written."""

    token: DelegationToken
    written_at: float

    def encode(self) -> bytes:
        t = self.token
        return json.dumps(
            {
                "w": self.written_at,
                "value": t.value,
                "permissions": sorted(t.permissions),
                "expires_at": t.expires_at.timestamp(),
                "issued_at": t.issued_at.timestamp(),
                "spiffe_id": t.spiffe_id,
                "client_id": t.client_id,
                "tenant_id": t.tenant_id,
                "jti": t.jti,
                "audience": list(t.audience),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> StoredEntry:
        try:
            raw: dict[str, Any] = json.loads(data)
            token = DelegationToken(
                value=str(raw["value"]),
                permissions=frozenset(str(p) for p in raw["permissions"]),
                expires_at=datetime.fromtimestamp(float(raw["expires_at"]), UTC),
                issued_at=datetime.fromtimestamp(float(raw["issued_at"]), UTC),
                spiffe_id=str(raw["spiffe_id"]),
                client_id=str(raw["client_id"]),
                tenant_id=None if raw["tenant_id"] is None else str(raw["tenant_id"]),
                jti=None if raw["jti"] is None else str(raw["jti"]),
                audience=tuple(str(a) for a in raw["audience"]),
            )
            return cls(token=token, written_at=float(raw["w"]))
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise EntryRejected(f"a malformed entry ({type(exc).__name__})") from None
