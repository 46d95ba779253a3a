"""The AuthSec wire contract: its paths, one parser for the delegation-token
answer and one mapping from HTTP statuses to typed errors.

The live transport asks these paths and the mock server serves them, so the two
cannot drift apart on where the contract lives. Every transport (live, mock,
replay) turns what the server said into a
``DelegationToken`` through :func:`parse_token_body`, so the modes cannot drift
apart in how they read the contract.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc.errors import JoseError
from joserfc.jws import extract_compact

from . import _secrets, errors
from .redact import scrub_secrets
from .token import DelegationToken

__all__ = [
    "ADMIN_PREFIX",
    "BUNDLE_PATH",
    "JWKS_PATH",
    "MAX_TOKEN_CHARS",
    "TOKEN_PATH",
    "decode_unverified",
    "error_for_status",
    "parse_rfc3339",
    "parse_token_body",
]

TOKEN_PATH = "/authsec/uflow/sdk/delegation-token"  # noqa: S105 (a path, not a secret)
"""``GET``: the agent's delegation token (authsec-api.md, section 1)."""
BUNDLE_PATH = "/authsec/spiresvc/v1/jwt/bundle"
"""``GET``: the tenant's JWK set that signs delegation tokens (section 3)."""
JWKS_PATH = "/.well-known/jwks.json"
"""A different key set that does NOT sign delegation tokens (section 3)."""
ADMIN_PREFIX = "/authsec/uflow/admin/agents"
"""``POST {prefix}/{client_id}/delegate-token`` and ``.../revoke-token`` (section 4)."""

MAX_TOKEN_CHARS = 16_384
"""A delegation token is ~1 KB; anything far larger is refused unread."""

_RFC3339 = re.compile(
    r"(?P<base>\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2})"
    r"(?:\.(?P<frac>\d{1,9}))?"
    r"(?P<tz>[Zz]|[+-]\d{2}:\d{2})"
)


_TIMESTAMP_CHARS = re.compile(r"[0-9TtZz:.+\- ]{1,40}")


def _quoted_timestamp(text: str) -> str:
    """``text`` quoted for a message if it could be a mistyped timestamp; anything
    else (a server may put anything there, a token included) is not repeated."""
    if _TIMESTAMP_CHARS.fullmatch(text):
        return repr(text)
    return "(not shown: it does not look like a timestamp)"


def parse_rfc3339(text: str) -> datetime:
    """Parse RFC 3339 with up to nanosecond fractions into an aware UTC datetime.

    Python 3.11's ``fromisoformat`` refuses more than six fraction digits; the
    extra digits are below a microsecond and are dropped, not rounded up.
    """
    match = _RFC3339.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not an RFC 3339 timestamp: {_quoted_timestamp(text)}")
    frac = (match["frac"] or "")[:6].ljust(6, "0")
    tz = "+00:00" if match["tz"] in ("Z", "z") else match["tz"]
    parsed = datetime.fromisoformat(f"{match['base'].replace(' ', 'T')}.{frac}{tz}")
    return parsed.astimezone(UTC)


def decode_unverified(value: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWT, without checking the signature.

    Used to read facts (``jti``, ``iat``) the body does not carry; trust comes
    from :mod:`authsec_crewai.verify`, never from this function.
    """
    if len(value) > MAX_TOKEN_CHARS:
        raise errors.InvalidTokenResponseError(
            f"the token is {len(value)} characters long; refusing anything over {MAX_TOKEN_CHARS}"
        )
    if value.count(".") != 2:
        raise errors.InvalidTokenResponseError("the 'token' field is not a compact JWT")
    try:
        compact = extract_compact(value.encode("ascii"))
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeError) as exc:
        raise errors.InvalidTokenResponseError("the 'token' field is not a readable JWT") from exc
    header = dict(compact.headers())
    if not isinstance(claims, dict):
        raise errors.InvalidTokenResponseError("the token's claims are not a JSON object")
    return header, claims


def _timestamp(claims: Mapping[str, Any], name: str) -> datetime | None:
    value = claims.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    return None


def _expiry(body: Mapping[str, Any], now: datetime) -> datetime:
    raw = body.get("expires_at")
    if isinstance(raw, str) and raw:
        try:
            return parse_rfc3339(raw)
        except ValueError as exc:
            raise errors.InvalidTokenResponseError(
                f"'expires_at' is not an RFC 3339 timestamp: {_quoted_timestamp(raw)}"
            ) from exc
    for name in ("ttl_seconds", "expires_in"):
        seconds = body.get(name)
        if isinstance(seconds, int | float) and not isinstance(seconds, bool):
            return now + timedelta(seconds=float(seconds))
    raise errors.InvalidTokenResponseError(
        "the answer has no usable 'expires_at', 'ttl_seconds' or 'expires_in'"
    )


def _string_list(value: Any, field: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise errors.InvalidTokenResponseError(f"'{field}' must be a list of strings")


def parse_token_body(body: Any, *, now: float) -> DelegationToken:
    """Turn a delegation-token answer (already JSON-decoded) into a token.

    ``now`` is UNIX time from the broker's clock: an answer that is already
    expired by that clock is refused rather than cached.
    """
    if not isinstance(body, Mapping):
        raise errors.InvalidTokenResponseError("the answer is not a JSON object")
    value = body.get("token")
    if not isinstance(value, str) or not value:
        raise errors.InvalidTokenResponseError("the answer has no 'token' field")
    _secrets.remember(value)  # every token the process is handed: masked by value everywhere
    _, claims = decode_unverified(value)
    now_dt = datetime.fromtimestamp(now, UTC)
    issued_raw = body.get("issued_at")
    try:
        issued_at = (
            parse_rfc3339(issued_raw)
            if isinstance(issued_raw, str) and issued_raw
            else _timestamp(claims, "iat") or now_dt
        )
    except ValueError as exc:
        raise errors.InvalidTokenResponseError("'issued_at' is not an RFC 3339 timestamp") from exc
    expires_at = _expiry(body, now_dt)
    jwt_exp = _timestamp(claims, "exp")
    if jwt_exp is not None and jwt_exp < expires_at:
        expires_at = jwt_exp  # the signed claim wins over a rounded-up body field
    if expires_at <= now_dt:
        raise errors.InvalidTokenResponseError(
            f"the server handed out a token that expired at {expires_at.isoformat()}; "
            "check the clocks of this machine and the server"
        )
    permissions = _string_list(
        body.get("permissions", claims.get("permissions", [])), "permissions"
    )
    audience = _string_list(body.get("audience", claims.get("aud", [])), "audience")
    spiffe_id = body.get("spiffe_id") or claims.get("sub")
    client_id = body.get("client_id") or claims.get("client_id")
    tenant_id = body.get("tenant_id") or body.get("workspace_id") or claims.get("tenant_id")
    jti = claims.get("jti")
    for name, item in (("spiffe_id", spiffe_id), ("client_id", client_id)):
        if not isinstance(item, str) or not item:
            raise errors.InvalidTokenResponseError(f"the answer has no usable '{name}'")
    return DelegationToken(
        value=value,
        permissions=frozenset(permissions),
        expires_at=expires_at,
        issued_at=issued_at,
        spiffe_id=str(spiffe_id),
        client_id=str(client_id),
        tenant_id=str(tenant_id) if tenant_id else None,
        jti=str(jti) if jti else None,
        audience=tuple(audience),
    )


def _server_detail(body: Any, secrets: Iterable[str]) -> str:
    """The server's ``error``/``details`` text, secrets masked first, then cut short
    (cutting first could leave a token's header-and-claims prefix unmasked)."""
    if isinstance(body, Mapping):
        parts = [
            scrub_secrets(_printable(str(body.get(k))), secrets)[:200]
            for k in ("error", "details")
            if body.get(k)
        ]
        if parts:
            return ": " + " - ".join(parts)
    return ""


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text[:4096])


def _is_contract_error(body: Any) -> bool:
    """Whether ``body`` is AuthSec's own JSON error (``{"error": "..."}``)."""
    return isinstance(body, Mapping) and isinstance(body.get("error"), str) and bool(body["error"])


def error_for_status(
    status: int,
    body: Any = None,
    *,
    retry_after: float | None = None,
    url: str | None = None,
    secrets: Iterable[str] = (),
) -> errors.TokenError:
    """The typed error for a non-200 answer of the delegation-token endpoint.

    ``body`` is the decoded JSON answer (None if it was not JSON); ``url`` the
    endpoint asked, named when the answer suggests the URL itself is wrong;
    ``secrets`` the values to mask if the server echoes them (the API token).
    """
    detail = _server_detail(body, secrets)
    if status == 400:
        return errors.InvalidClientIdError(
            f"AuthSec refused the client id (400{detail}); set AUTHSEC_CLIENT_ID "
            "to the agent's UUID"
        )
    if status == 401:
        return errors.AuthenticationError(
            f"AuthSec refused the API token (401{detail}); set AUTHSEC_API_TOKEN "
            "to a valid API token"
        )
    if status == 404 and not _is_contract_error(body):
        where = f" {url}" if url else ""
        return errors.EndpointNotFoundError(
            f"the token endpoint{where} answered 404 without AuthSec's JSON error: "
            "this is not AuthSec's delegation endpoint (check AUTHSEC_BASE_URL for a "
            "typo or a proxy in the way); cached tokens are dropped until it answers"
        )
    if status == 404:
        return errors.NotDelegatedError(
            f"AuthSec has no active delegation for this agent (404{detail}): it was "
            "never delegated or was revoked; ask an administrator to delegate a token "
            "to this agent"
        )
    if status == 410:
        return errors.DelegationExpiredError(
            f"the agent's delegation expired (410{detail}); ask an administrator to "
            "delegate a new token"
        )
    if status == 429:
        return errors.RateLimitedError(
            f"AuthSec rate-limited this client (429{detail})", retry_after=retry_after
        )
    if status >= 500:
        return errors.ServerError(f"AuthSec answered {status}{detail}")
    return errors.InvalidTokenResponseError(f"AuthSec answered unexpected status {status}{detail}")
