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

from .. import _secrets
from ..errors import ConfigurationError
from ..token import DelegationToken, TokenRequest
from .events import EventSigner

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_TIMEOUT_SECONDS",
    "KEY_CHECK_IDENTITY",
    "KEY_CHECK_NAME",
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
    "terminal_identity",
    "terminal_name",
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

    channel: str
    """Where this deployment's events travel; bound into every event's MAC, so an
    event captured from another deployment (another prefix, file or database)
    does not verify here."""

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

    async def renew(self, name: str, owner: str, ttl: float) -> bool:
        """Hold the lease ``ttl`` seconds more, only if ``owner`` still holds it."""
        ...

    async def release(self, name: str, owner: str) -> None:
        """Give the lease back, only if ``owner`` still holds it."""
        ...

    async def now(self) -> float:
        """The store's own clock, in seconds since the epoch (Redis ``TIME``; SQLite
        and memory: this host's). Every process stamps entries on this one clock,
        so processes whose own clocks disagree still agree on what is newer."""
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


def _slot(identity: bytes) -> str:
    """The agent's hash tag: every name of one agent lands in one Redis Cluster slot,
    so the entry, the agent's latest token, its revocation mark and its shared
    terminal answer are read in one ``MGET``."""
    client_id = json.loads(identity)[0]
    return "{" + agent_digest(str(client_id))[:16] + "}"


def entry_name(identity: bytes) -> str:
    """Where the token for a cache key is kept."""
    return f"t:{_slot(identity)}{_digest(b'entry', identity)}"


def latest_name(agent: bytes) -> str:
    """Where the agent's latest token is kept (it serves any scope set it covers)."""
    return f"a:{_slot(agent)}{_digest(b'latest', agent)}"


def lease_name(identity: bytes) -> str:
    """The lease that elects one fetcher for a cache key."""
    return f"l:{_slot(identity)}{_digest(b'lease', identity)}"


def agent_digest(client_id: str) -> str:
    """A name for an agent that does not reveal its client id."""
    return _digest(b"agent", client_id.encode())


def _agent_slot(client_id: str) -> str:
    return "{" + agent_digest(client_id)[:16] + "}"


def revocation_name(client_id: str) -> str:
    """The agent's revocation generation: entries written under an older one are void."""
    return f"r:{_agent_slot(client_id)}"


def terminal_name(client_id: str) -> str:
    """The server's terminal answer for the agent (not delegated, expired), shared for
    a while so the fleet does not ask again from every process."""
    return f"x:{_agent_slot(client_id)}"


def terminal_identity(client_id: str) -> bytes:
    """What a shared terminal answer is sealed to (its AAD)."""
    return json.dumps([client_id, "terminal"], separators=(",", ":")).encode()


KEY_CHECK_NAME = "k:check"
"""A value every process seals and opens at start: a process whose key opens no one
else's says so at once, instead of silently fetching on its own."""
KEY_CHECK_IDENTITY = b"authsec-crewai/store/key-check"


# --- sealing ----------------------------------------------------------------------------


class EntryRejected(Exception):
    """A stored value that must not be served: tampered, foreign, stale or malformed.

    ``foreign`` says it was sealed under a key (or an encryption choice) this
    process does not share: another process's, not garbage. It is left alone,
    because deleting it would let two processes with different keys destroy each
    other's entries, and the mismatch is reported instead.
    """

    def __init__(self, reason: str, *, foreign: bool = False) -> None:
        super().__init__(reason)
        self.foreign = foreign


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
    _secrets.remember(text.strip())
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
        self._keys = tuple(keys)
        self._ciphers = {hashlib.sha256(key).digest()[:_KEY_ID_BYTES]: AESGCM(key) for key in keys}
        self._sealing = (
            (hashlib.sha256(keys[0]).digest()[:_KEY_ID_BYTES], AESGCM(keys[0])) if keys else None
        )

    @property
    def encrypts(self) -> bool:
        return self._sealing is not None

    def __repr__(self) -> str:
        return f"SealedCodec(keys={len(self._ciphers)}, encrypts={self.encrypts})"

    def event_signer(self, channel: str) -> EventSigner:
        """Signs and checks the fleet's events on ``channel`` under these keys."""
        return EventSigner(self._keys, channel)

    def seal(self, identity: bytes, plaintext: bytes) -> bytes:
        if self._sealing is None:
            return _PLAIN + hashlib.sha256(identity).digest() + plaintext
        key_id, cipher = self._sealing
        nonce = os.urandom(_NONCE_BYTES)
        return _SEALED + key_id + nonce + cipher.encrypt(nonce, plaintext, identity)

    def refusal(self, blob: bytes) -> str | None:
        """Why :meth:`open` would refuse ``blob`` under any cache key, or None if it may not.

        For a health check (``authsec-crewai doctor``), which reads stored values
        without the cache keys they are bound to: a value sealed with a key this
        process does not have is found without opening it.
        """
        if self._sealing is None:
            return None if blob[:1] == _PLAIN else "a sealed entry, but store encryption is off"
        if blob[:1] != _SEALED:
            return "an entry that is not sealed"
        if blob[1 : 1 + _KEY_ID_BYTES] not in self._ciphers:
            return "an entry sealed with a key this process does not have"
        return None

    def open(self, identity: bytes, blob: bytes) -> bytes:
        if self._sealing is None:
            if blob[:1] != _PLAIN:
                raise EntryRejected("a sealed entry, but store encryption is off", foreign=True)
            if blob[1:33] != hashlib.sha256(identity).digest():
                raise EntryRejected("an entry stored under another cache key")
            return blob[33:]
        if blob[:1] != _SEALED:
            raise EntryRejected("an entry that is not sealed", foreign=blob[:1] == _PLAIN)
        key_id = blob[1 : 1 + _KEY_ID_BYTES]
        nonce = blob[1 + _KEY_ID_BYTES : 1 + _KEY_ID_BYTES + _NONCE_BYTES]
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise EntryRejected(
                "an entry sealed with a key this process does not have", foreign=True
            )
        try:
            return cipher.decrypt(nonce, blob[1 + _KEY_ID_BYTES + _NONCE_BYTES :], identity)
        except InvalidTag:
            raise EntryRejected("an entry that fails authentication (tampered or moved)") from None


# --- entries ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A token as the fleet keeps it: when it was written (by the store's clock) and
    under which revocation generation of its agent (``""``: none yet)."""

    token: DelegationToken
    written_at: float
    generation: str = ""

    def encode(self) -> bytes:
        t = self.token
        return json.dumps(
            {
                "w": self.written_at,
                "g": self.generation,
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
            _secrets.remember(token.value)  # a token another process shared is held here too
            return cls(token=token, written_at=float(raw["w"]), generation=str(raw["g"]))
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise EntryRejected(f"a malformed entry ({type(exc).__name__})") from None
