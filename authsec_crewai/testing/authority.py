"""``MockAuthority``: an in-process stand-in for AuthSec's token store and keys.

It behaves like the real server (authsec-api.md): one active RS256 token per
agent, the same JWT on every call until it is re-delegated, 404 after a
revocation, 410 once when a delegation expires. The mock transport and the
mock server both read from it, so the two mock paths hand out identical tokens.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from joserfc import jwt
from joserfc.jwk import RSAKey

__all__ = ["DEFAULT_PERMISSIONS", "MockAuthority", "format_rfc3339_nanos"]

DEFAULT_PERMISSIONS = ("read:metrics", "read:records")
DEFAULT_AUDIENCE = ("authsec-api",)


def format_rfc3339_nanos(unix_seconds: float) -> str:
    """``2026-05-20T07:25:36.866214123Z``: the server's nanosecond format."""
    whole = int(unix_seconds)
    nanos = round((unix_seconds - whole) * 1e9) % 1_000_000_000
    stamp = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def _iso_seconds(unix_seconds: float) -> str:
    return datetime.fromtimestamp(int(unix_seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Delegation:
    body: dict[str, Any]
    exp: float
    revoked: bool = False
    expiry_reported: bool = False


class MockAuthority:
    """Signs and stores delegation tokens like the AuthSec server does.

    ``clock`` is UNIX time in seconds; tests pass the broker's fake clock so
    issued tokens and the broker agree on what "now" is. With ``auto_delegate``
    an agent that asks without a delegation (or after expiry) gets one, which is
    what a mock should do; revocations are always honoured.
    """

    def __init__(
        self,
        *,
        tenant_id: str | None = None,
        trust_domain: str = "example.org",
        ttl_seconds: float = 1800,
        permissions: Iterable[str] = DEFAULT_PERMISSIONS,
        audience: Iterable[str] = DEFAULT_AUDIENCE,
        agent_type: str = "crewai",
        auto_delegate: bool = True,
        clock: Callable[[], float] = time.time,
        key: RSAKey | None = None,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive")
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.trust_domain = trust_domain
        self.ttl_seconds = ttl_seconds
        self.permissions = tuple(permissions)
        self.audience = tuple(audience)
        self.agent_type = agent_type
        self.auto_delegate = auto_delegate
        self.clock = clock
        self.key = key or RSAKey.generate_key(2048, parameters={"kid": "default"}, private=True)
        self._lock = threading.Lock()
        self._store: dict[str, _Delegation] = {}
        self.issued = 0
        """How many tokens were signed (not how many times one was handed out)."""

    # --- keys ----------------------------------------------------------------------

    def key_set(self, tenant_id: str | None = None) -> dict[str, Any]:
        """The tenant's public JWK set, shaped like ``/jwt/bundle``."""
        public = self.key.as_dict(private=False)
        public.update({"use": "sig", "kid": "default", "alg": "RS256"})
        return {"keys": [public]}

    # --- administration ------------------------------------------------------------

    def delegate(
        self,
        client_id: str,
        *,
        permissions: Iterable[str] | None = None,
        audience: Iterable[str] | None = None,
        ttl_seconds: float | None = None,
        agent_type: str | None = None,
        user_id: str = "ada.lovelace",
    ) -> dict[str, Any]:
        """Issue (replace) the agent's stored token and return the 200 body."""
        now = self.clock()
        ttl = self.ttl_seconds if ttl_seconds is None else ttl_seconds
        if ttl <= 0:
            raise ValueError("ttl_seconds must be positive")
        perms = sorted(set(self.permissions if permissions is None else permissions))
        aud = list(self.audience if audience is None else audience)
        kind = agent_type or self.agent_type
        spiffe_id = (
            f"spiffe://{self.trust_domain}/tenants/{self.tenant_id}/agents/{kind}/{client_id}"
        )
        iat = int(now)
        exp_precise = now + ttl
        claims = {
            "iss": f"spiffe://{self.tenant_id}",
            "sub": spiffe_id,
            "aud": aud,
            "exp": int(exp_precise),
            "nbf": iat,
            "iat": iat,
            "jti": str(uuid.uuid4()),
            "tenant_id": self.tenant_id,
            "client_id": client_id,
            "agent_type": kind,
            "user_id": user_id,
            "email": f"{user_id}@example.org",
            "permissions": perms,
        }
        value = jwt.encode({"alg": "RS256", "typ": "JWT"}, claims, self.key, algorithms=["RS256"])
        body = {
            "token": value,
            "spiffe_id": spiffe_id,
            "permissions": perms,
            "audience": aud,
            "expires_at": format_rfc3339_nanos(exp_precise),
            "ttl_seconds": int(ttl),
            "client_id": client_id,
            "tenant_id": self.tenant_id,
            "status": "active",
            "issued_at": _iso_seconds(iat),
            "updated_at": _iso_seconds(iat),
        }
        with self._lock:
            self._store[client_id] = _Delegation(body=body, exp=float(int(exp_precise)))
            self.issued += 1
        return dict(body)

    def revoke(self, client_id: str) -> dict[str, Any]:
        """Revoke the agent's token: the next fetch answers 404."""
        with self._lock:
            stored = self._store.get(client_id)
            if stored is None or stored.revoked:
                return {"status": "not_found", "client_id": client_id}
            stored.revoked = True
        revoked_at = _iso_seconds(self.clock())
        return {"status": "revoked", "client_id": client_id, "revoked_at": revoked_at}

    # --- the agent's view ----------------------------------------------------------

    def token_answer(self, client_id: str) -> tuple[int, dict[str, Any]]:
        """What ``GET /delegation-token`` answers: ``(status, JSON body)``."""
        try:
            uuid.UUID(client_id)
        except ValueError:
            return 400, {"error": "invalid client_id", "details": "client_id must be a UUID"}
        now = self.clock()
        with self._lock:
            stored = self._store.get(client_id)
            if stored is not None and stored.revoked:
                return 404, {"error": "no active delegation", "details": "token revoked"}
            if stored is not None and now >= stored.exp:
                if not self.auto_delegate:
                    if stored.expiry_reported:
                        return 404, {"error": "no active delegation", "details": "expired"}
                    stored.expiry_reported = True
                    return 410, {"error": "delegation expired", "details": "re-delegate"}
                stored = None
            if stored is not None:
                return 200, dict(stored.body)
        if not self.auto_delegate:
            return 404, {"error": "no active delegation", "details": "never delegated"}
        return 200, self.delegate(client_id)
