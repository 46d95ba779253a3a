"""``OAuthAuthority``: the rules and the memory of a strict test OAuth 2.0 server.

The HTTP side (:mod:`authsec_crewai.testing.oauthserver`) only parses requests
and writes answers; every decision is made here, so a test can also call the
authority directly (to register clients, to sign a user in and hand out a
refresh token, to revoke, to read what was asked for).

It is as strict as the RFCs allow, because a client that only works against a
lenient server fails at the first strict one:

- client authentication (RFC 6749 §2.3): exactly one method per request, the
  one the client registered; ``client_secret_basic`` decoded as the RFC says
  (form-urlencoded id and secret); ``private_key_jwt`` assertions (RFC 7523
  §3) verified for real: RS256 signature against the registered public key,
  ``kid`` when the key has one, ``iss`` = ``sub`` = client id, ``aud`` = the
  token endpoint, ``exp`` in the future and at most five minutes ahead, and
  a ``jti`` never seen before;
- ``resource`` (RFC 8707): absolute, no fragment, a registered resource;
  the access token is then good at that resource only;
- refresh tokens rotate (RFC 9700 §4.14.2): each is spent by its first use,
  and presenting a spent one revokes the whole family (every refresh and
  access token descended from the same sign-in).

Thread-safe: the server thread and the test's thread share it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey

__all__ = [
    "ASSERTION_TYPE",
    "AUTH_METHODS",
    "MAX_ASSERTION_LIFETIME",
    "GrantRecord",
    "IssuedToken",
    "OAuthAuthority",
    "OAuthClient",
    "OAuthRefusal",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "none")
MAX_ASSERTION_LIFETIME = 300.0
"""An assertion's ``exp`` may be at most this many seconds ahead (AuthSec's rule)."""
_SKEW = 5.0


class OAuthRefusal(Exception):
    """An RFC 6749 §5.2 error answer: ``error`` code, description, HTTP status."""

    def __init__(self, error: str, description: str, *, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status


@dataclass
class OAuthClient:
    """A registered client. ``auth_method`` is its one ``token_endpoint_auth_method``."""

    client_id: str
    auth_method: str = "client_secret_basic"
    secret: str | None = field(default=None, repr=False)
    public_key: RSAKey | None = field(default=None, repr=False)
    scopes: frozenset[str] = frozenset({"read:records", "write:records"})
    grant_types: frozenset[str] = frozenset({"client_credentials", "refresh_token"})


@dataclass(frozen=True)
class IssuedToken:
    """An access token the authority handed out (what the resource checks)."""

    value: str = field(repr=False)
    client_id: str
    scopes: frozenset[str]
    resources: tuple[str, ...]
    expires_at: float
    family: str | None


@dataclass(frozen=True)
class GrantRecord:
    """One token request the authority answered with a token (for tests to assert)."""

    grant_type: str
    client_id: str
    auth_method: str
    scopes: frozenset[str]
    resources: tuple[str, ...]
    refresh_fingerprint: str | None = None


@dataclass
class _Refresh:
    client_id: str
    scopes: frozenset[str]
    resources: tuple[str, ...]
    family: str
    spent_at: float | None = None
    successor: str | None = None


def _fp(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:12]


class OAuthAuthority:
    """Clients, resources, issued tokens and refresh-token families of one issuer.

    ``token_format`` is ``"jwt"`` (RFC 9068 access tokens signed with
    :attr:`key`, published at ``jwks_uri``) or ``"opaque"`` (random strings the
    resource looks up here). ``path`` is the issuer's path under the server's
    origin (RFC 8414 issuers may have one: ``https://as.example/tenant-a``).
    ``clock`` is UNIX time.
    """

    def __init__(
        self,
        *,
        key: RSAKey | None = None,
        token_format: Literal["jwt", "opaque"] = "jwt",  # noqa: S107
        lifetime: float = 300.0,
        path: str = "",
        auth_methods: Iterable[str] = AUTH_METHODS,
        rotate_refresh_tokens: bool = True,
        reuse_grace: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if path and (not path.startswith("/") or path.endswith("/")):
            raise ValueError("path must start with '/' and not end with one, e.g. '/tenant-a'")
        self.key = key or RSAKey.generate_key(2048, parameters={"kid": "as-1"}, private=True)
        self.token_format = token_format
        self.lifetime = lifetime
        self.path = path
        self.auth_methods = tuple(auth_methods)
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.reuse_grace = reuse_grace
        """Seconds a spent refresh token may be presented again and answered with the
        same successor (a lost answer; Okta's grace period): 0 is strict RFC 9700."""
        self.answer_delay = 0.0
        """Seconds the token endpoint waits *after* deciding (and rotating) before it
        answers: the window in which a client that dies loses the rotated token."""
        self.clock = clock
        self.clients: dict[str, OAuthClient] = {}
        self.resources: dict[str, frozenset[str]] = {}
        """Protected-resource paths (under the origin) and the scope each requires."""
        self.grants: list[GrantRecord] = []
        self.refresh_presented: Counter[str] = Counter()
        """How often each refresh token (by fingerprint) was presented: more than once
        is the reuse that revokes a family."""
        self.revoked_families: set[str] = set()
        self._lock = threading.Lock()
        self._tokens: dict[str, IssuedToken] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._seen_jti: dict[str, float] = {}

    # --- set-up ---------------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        *,
        auth_method: str | None = None,
        secret: str | None = None,
        public_key: RSAKey | Mapping[str, Any] | None = None,
        scopes: Iterable[str] = ("read:records", "write:records"),
        grant_types: Iterable[str] = ("client_credentials", "refresh_token"),
    ) -> OAuthClient:
        """Register a client; its method follows from what it is given unless named."""
        key = RSAKey.import_key(dict(public_key)) if isinstance(public_key, Mapping) else public_key
        if key is not None and key.is_private:
            key = RSAKey.import_key(key.as_dict(private=False))
        method = auth_method or (
            "private_key_jwt" if key else ("client_secret_basic" if secret else "none")
        )
        if method not in AUTH_METHODS:
            raise ValueError(f"unknown auth method {method!r}")
        if method.startswith("client_secret") and not secret:
            raise ValueError(f"{method} needs a secret")
        if method == "private_key_jwt" and key is None:
            raise ValueError("private_key_jwt needs a public key")
        client = OAuthClient(
            client_id, method, secret, key, frozenset(scopes), frozenset(grant_types)
        )
        with self._lock:
            self.clients[client_id] = client
        return client

    def register_resource(self, path: str, *, scope: Iterable[str] = ()) -> None:
        """A protected resource at ``path`` on the server's origin (``/mcp``), which
        answers only tokens issued for it that hold every one of ``scope``."""
        if not path.startswith("/"):
            raise ValueError("a resource path starts with '/'")
        with self._lock:
            self.resources[path] = frozenset(scope)

    def issue_refresh_token(
        self, client_id: str, scopes: Iterable[str], *, resources: Iterable[str] = ()
    ) -> str:
        """What a user's browser sign-in ends with: the first refresh token of a new family."""
        value = "rt-" + secrets.token_urlsafe(24)
        with self._lock:
            self._refresh[value] = _Refresh(
                client_id, frozenset(scopes), tuple(resources), secrets.token_hex(8)
            )
        return value

    def forget_tokens(self) -> None:
        """Revoke every access and refresh token (a server restart that lost its state)."""
        with self._lock:
            self._tokens.clear()
            self._refresh.clear()

    # --- what the resource and the tests ask ------------------------------------------------

    def lookup(self, value: str) -> IssuedToken | None:
        """The live token ``value`` (issued here, unexpired, not revoked), else None."""
        with self._lock:
            token = self._tokens.get(value)
            if token is None or token.expires_at <= self.clock():
                return None
            if token.family is not None and token.family in self.revoked_families:
                return None
            return token

    def live_refresh_tokens(self, client_id: str) -> int:
        """Unspent refresh tokens of live families for ``client_id``."""
        with self._lock:
            return sum(
                1
                for r in self._refresh.values()
                if r.client_id == client_id
                and r.spent_at is None
                and r.family not in self.revoked_families
            )

    def jwks(self) -> dict[str, Any]:
        return dict(KeySet([self.key]).as_dict(private=False))

    # --- the token endpoint ------------------------------------------------------------------

    def authenticate(
        self,
        form: Mapping[str, str],
        basic: tuple[str, str] | None,
        token_endpoint: str,
    ) -> tuple[OAuthClient, str]:
        """The client and the method it authenticated with, or ``invalid_client``."""
        used = []
        if basic is not None:
            used.append("client_secret_basic")
        if "client_secret" in form:
            used.append("client_secret_post")
        if "client_assertion" in form or "client_assertion_type" in form:
            used.append("private_key_jwt")
        if len(used) > 1:
            raise OAuthRefusal(
                "invalid_request", f"more than one client authentication method: {used}"
            )
        method = used[0] if used else "none"
        if method == "client_secret_basic":
            assert basic is not None
            client_id, secret = basic
            if "client_id" in form and form["client_id"] != client_id:
                raise OAuthRefusal("invalid_request", "client_id differs from the Basic user")
        elif method == "private_key_jwt":
            client_id, secret = self._assertion_subject(form), ""
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        client = self.clients.get(client_id)
        if client is None:
            raise OAuthRefusal("invalid_client", "unknown client", status=401)
        if client.auth_method != method:
            raise OAuthRefusal(
                "invalid_client",
                f"this client authenticates with {client.auth_method}, not {method}",
                status=401,
            )
        if method.startswith("client_secret"):
            if not secrets.compare_digest(secret.encode(), (client.secret or "").encode()):
                raise OAuthRefusal("invalid_client", "wrong client secret", status=401)
        elif method == "private_key_jwt":
            self._verify_assertion(client, form, token_endpoint)
        return client, method

    def _assertion_subject(self, form: Mapping[str, str]) -> str:
        """The client an assertion claims to be (unverified: it names whose key checks it)."""
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthRefusal(
                "invalid_client", "client_assertion_type is not jwt-bearer", status=401
            )
        sub = _unverified_sub(form.get("client_assertion", ""))
        if not sub:
            raise OAuthRefusal("invalid_client", "client_assertion is not a JWT", status=401)
        return sub

    def _verify_assertion(
        self, client: OAuthClient, form: Mapping[str, str], token_endpoint: str
    ) -> None:
        assert client.public_key is not None
        try:
            token = jwt.decode(form["client_assertion"], client.public_key, algorithms=["RS256"])
        except (JoseError, ValueError) as exc:
            raise OAuthRefusal(
                "invalid_client", f"assertion signature: {type(exc).__name__}", status=401
            ) from None
        kid = client.public_key.kid
        if kid and token.header.get("kid") != kid:
            raise OAuthRefusal(
                "invalid_client", "assertion kid is not the registered key's", status=401
            )
        claims = token.claims
        now = self.clock()
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        exp = claims.get("exp")
        problems = [
            "iss is not the client id" if claims.get("iss") != client.client_id else "",
            "sub is not the client id" if claims.get("sub") != client.client_id else "",
            "aud is not the token endpoint" if token_endpoint not in auds else "",
            "no exp" if not isinstance(exp, int | float) else "",
            "no jti" if not isinstance(claims.get("jti"), str) or not claims["jti"] else "",
        ]
        if isinstance(exp, int | float):
            if exp <= now - _SKEW:
                problems.append("expired")
            if exp > now + MAX_ASSERTION_LIFETIME + _SKEW:
                problems.append("exp more than 5 minutes ahead")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + _SKEW:
            problems.append("not yet valid")
        if "client_id" in form and form["client_id"] != client.client_id:
            problems.append("client_id differs from the assertion's sub")
        problems = [p for p in problems if p]
        if problems:
            raise OAuthRefusal("invalid_client", "assertion: " + "; ".join(problems), status=401)
        jti = str(claims["jti"])
        with self._lock:
            self._seen_jti = {j: e for j, e in self._seen_jti.items() if e > now - _SKEW}
            if jti in self._seen_jti:
                raise OAuthRefusal("invalid_client", "assertion jti was used before", status=401)
            self._seen_jti[jti] = float(exp)  # type: ignore[arg-type]

    def grant(
        self,
        form: Mapping[str, str],
        resources: tuple[str, ...],
        *,
        client: OAuthClient,
        method: str,
        origin: str,
    ) -> dict[str, Any]:
        """Answer one authenticated token request (RFC 6749 §5.1), or raise a refusal."""
        grant_type = form.get("grant_type", "")
        if grant_type not in ("client_credentials", "refresh_token"):
            raise OAuthRefusal("unsupported_grant_type", f"grant_type {grant_type[:40]!r}")
        if grant_type not in client.grant_types:
            raise OAuthRefusal("unauthorized_client", f"this client may not use {grant_type}")
        if grant_type == "client_credentials" and method == "none":
            raise OAuthRefusal(
                "invalid_client", "client_credentials needs a confidential client", status=401
            )
        for resource in resources:
            self._check_resource(resource, origin)
        requested = frozenset(form["scope"].split()) if form.get("scope") else None
        if grant_type == "client_credentials":
            return self._client_credentials(client, method, requested, resources, origin)
        refresh = form.get("refresh_token", "")
        return self._refresh_grant(client, method, refresh, requested, resources, origin)

    def _check_resource(self, resource: str, origin: str) -> None:
        if "#" in resource or "://" not in resource:
            raise OAuthRefusal(
                "invalid_target", "resource must be an absolute URI without fragment"
            )
        if not resource.startswith(origin) or resource[len(origin) :] not in self.resources:
            raise OAuthRefusal("invalid_target", "no such resource at this server")

    def _client_credentials(
        self,
        client: OAuthClient,
        method: str,
        requested: frozenset[str] | None,
        resources: tuple[str, ...],
        origin: str,
    ) -> dict[str, Any]:
        scopes = client.scopes if requested is None else requested
        if not scopes <= client.scopes:
            raise OAuthRefusal("invalid_scope", f"not granted: {sorted(scopes - client.scopes)}")
        self._record(GrantRecord("client_credentials", client.client_id, method, scopes, resources))
        return self._answer(client.client_id, scopes, resources, origin, family=None)

    def _refresh_grant(
        self,
        client: OAuthClient,
        method: str,
        value: str,
        requested: frozenset[str] | None,
        resources: tuple[str, ...],
        origin: str,
    ) -> dict[str, Any]:
        with self._lock:
            self.refresh_presented[_fp(value)] += 1
            found = self._refresh.get(value)
            if found is None or found.family in self.revoked_families:
                raise OAuthRefusal("invalid_grant", "unknown, revoked or expired refresh token")
            if found.client_id != client.client_id:
                raise OAuthRefusal(
                    "invalid_grant", "the refresh token was issued to another client"
                )
            regrant = (
                found.spent_at is not None
                and found.successor is not None
                and self.clock() - found.spent_at <= self.reuse_grace
            )
            if found.spent_at is not None and not regrant:
                self.revoked_families.add(found.family)  # RFC 9700 §4.14.2: reuse is theft
                raise OAuthRefusal(
                    "invalid_grant", "refresh token reused: every token of its family is revoked"
                )
            scopes = found.scopes if requested is None else requested
            if not scopes <= found.scopes:
                beyond = sorted(scopes - found.scopes)
                raise OAuthRefusal("invalid_scope", f"beyond the grant: {beyond}")
            if found.resources and not set(resources) <= set(found.resources):
                raise OAuthRefusal("invalid_target", "beyond the resources of the grant")
            rotated = found.successor if regrant else None
            if self.rotate_refresh_tokens and not regrant:
                found.spent_at = self.clock()
                rotated = found.successor = "rt-" + secrets.token_urlsafe(24)
                self._refresh[rotated] = _Refresh(
                    client.client_id, found.scopes, found.resources, found.family
                )
        self._record(
            GrantRecord("refresh_token", client.client_id, method, scopes, resources, _fp(value))
        )
        answer = self._answer(client.client_id, scopes, resources, origin, family=found.family)
        if rotated is not None:
            answer["refresh_token"] = rotated
        return answer

    def _record(self, record: GrantRecord) -> None:
        with self._lock:
            self.grants.append(record)

    def _answer(
        self,
        client_id: str,
        scopes: frozenset[str],
        resources: tuple[str, ...],
        origin: str,
        *,
        family: str | None,
    ) -> dict[str, Any]:
        now = self.clock()
        exp = now + self.lifetime
        if self.token_format == "jwt":  # noqa: S105
            claims = {
                "iss": origin + self.path,
                "sub": client_id,
                "client_id": client_id,
                "aud": list(resources) if resources else client_id,
                "scope": " ".join(sorted(scopes)),
                "iat": int(now),
                "exp": int(exp),
                "jti": secrets.token_hex(12),
            }
            header = {"alg": "RS256", "typ": "at+jwt", "kid": self.key.kid}
            value = jwt.encode(header, claims, self.key)
            exp = float(int(exp))
        else:
            value = "at-" + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[value] = IssuedToken(value, client_id, scopes, resources, exp, family)
        return {
            "access_token": value,
            "token_type": "Bearer",
            "expires_in": int(self.lifetime),
            "scope": " ".join(sorted(scopes)),
        }


def _unverified_sub(assertion: str) -> str:
    """The ``sub`` of a compact JWT, unverified, or "" when it is not readable."""
    parts = assertion.split(".")
    if len(parts) != 3:
        return ""
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return ""
    sub = payload.get("sub") if isinstance(payload, dict) else None
    return sub if isinstance(sub, str) else ""
