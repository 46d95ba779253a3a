"""Reading a token endpoint's answers: RFC 6749 §5.1 tokens and §5.2 errors.

An OAuth access token becomes a :class:`DelegationToken` with the smallest
mapping that keeps every field meaningful:

- ``value``: the access token (a JWT or an opaque string);
- ``permissions``: the answer's ``scope``, else the scopes asked for (RFC
  6749 §5.1: an omitted scope means "as requested");
- ``expires_at``: now + ``expires_in`` (a JWT's earlier ``exp`` wins);
  ``issued_at``: now, or a JWT's ``iat``;
- ``spiffe_id``: the subject: a JWT's ``sub``, else the client id (an opaque
  token's subject is the client acting as itself);
- ``audience``: the resources asked for (RFC 8707), else a JWT's ``aud``;
- ``jti``: a JWT's ``jti``; ``tenant_id``: None.

Errors map onto the library's one tree, with messages that say what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from .. import errors
from ..redact import scrub_secrets
from ..token import DelegationToken, TokenRequest
from ..wire import MAX_TOKEN_CHARS, decode_unverified

__all__ = ["TokenAnswer", "error_for_answer", "looks_like_jwt", "parse_token_answer"]

_ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}")  # RFC 6749 §5.2 charset
_REFRESH_CHARS = re.compile(r"[\x20-\x7e]{1,4096}")


class TokenAnswer:
    """A parsed answer: the token, and the rotated refresh token when one came with it."""

    __slots__ = ("refresh_token", "token")

    def __init__(self, token: DelegationToken, refresh_token: str | None) -> None:
        self.token = token
        self.refresh_token = refresh_token

    def __repr__(self) -> str:
        rotated = "set" if self.refresh_token else "none"
        return f"TokenAnswer({self.token!r}, refresh_token=<{rotated}>)"


def looks_like_jwt(value: str) -> bool:
    """A compact JWS (three parts, a JSON header): the only kind this client can verify."""
    return value.count(".") == 2 and value.startswith("eyJ")


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.isdigit():  # some servers quote it
        return float(value)
    return None


def parse_token_answer(
    body: Any,
    request: TokenRequest,
    resources: tuple[str, ...],
    *,
    now: float,
    lifetime_when_unstated: float,
) -> TokenAnswer:
    """The token of a 200 answer, checked; ``InvalidTokenResponseError`` when unusable."""
    if not isinstance(body, Mapping):
        raise errors.InvalidTokenResponseError("the token answer is not a JSON object")
    value = body.get("access_token")
    if not isinstance(value, str) or not value:
        raise errors.InvalidTokenResponseError("the token answer has no 'access_token'")
    if len(value) > MAX_TOKEN_CHARS or not value.isascii() or not value.isprintable():
        raise errors.InvalidTokenResponseError(
            "the access token is not printable ASCII of at most "
            f"{MAX_TOKEN_CHARS} characters; refusing it"
        )
    token_type = body.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = token_type if isinstance(token_type, str) and token_type.isalnum() else "?"
        raise errors.InvalidTokenResponseError(
            f"the token answer's token_type is {shown[:20]!r}, not 'Bearer' (DPoP and other "
            "sender-constrained tokens are not supported)"
        )
    claims: dict[str, Any] = {}
    if looks_like_jwt(value):
        try:
            _, claims = decode_unverified(value)
        except errors.InvalidTokenResponseError:
            claims = {}  # an opaque token that merely looks like one
    now_dt = datetime.fromtimestamp(now, UTC)
    expires_in = _seconds(body.get("expires_in"))
    expires_at = now_dt + timedelta(
        seconds=lifetime_when_unstated if expires_in is None else expires_in
    )
    exp = _seconds(claims.get("exp"))
    if exp is not None:
        expires_at = min(expires_at, datetime.fromtimestamp(exp, UTC))
    if expires_at <= now_dt:
        raise errors.InvalidTokenResponseError(
            "the server handed out an access token that has already expired; check the "
            "clocks of this machine and the server"
        )
    iat = _seconds(claims.get("iat"))
    issued_at = datetime.fromtimestamp(iat, UTC) if iat is not None and iat <= now + 60 else now_dt
    issued_at = min(issued_at, expires_at - timedelta(seconds=1))
    scope = body.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise errors.InvalidTokenResponseError("the token answer's 'scope' is not a string")
    permissions = frozenset(scope.split()) if scope else request.scopes
    subject = claims.get("sub")
    aud = claims.get("aud")
    audience = resources or (
        (aud,)
        if isinstance(aud, str)
        else tuple(a for a in aud if isinstance(a, str))
        if isinstance(aud, list)
        else ()
    )
    refresh = body.get("refresh_token")
    if refresh is not None and (
        not isinstance(refresh, str) or not _REFRESH_CHARS.fullmatch(refresh)
    ):
        raise errors.InvalidTokenResponseError("the token answer's refresh_token is unusable")
    jti = claims.get("jti")
    token = DelegationToken(
        value=value,
        permissions=permissions,
        expires_at=expires_at,
        issued_at=issued_at,
        spiffe_id=subject if isinstance(subject, str) and subject else request.client_id,
        client_id=request.client_id,
        tenant_id=None,
        jti=jti if isinstance(jti, str) and jti else None,
        audience=tuple(audience),
    )
    return TokenAnswer(token, refresh or None)


def _code_and_description(body: Any, secrets: Iterable[str]) -> tuple[str | None, str]:
    if not isinstance(body, Mapping):
        return None, ""
    code = body.get("error")
    code = code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None
    text = body.get("error_description")
    if not isinstance(text, str) or not text:
        return code, ""
    printable = "".join(ch if ch.isprintable() else " " for ch in text[:2048])
    return code, " (" + scrub_secrets(printable, secrets)[:200] + ")"


def error_for_answer(
    status: int,
    body: Any,
    *,
    server: str,
    grant: str,
    requested: frozenset[str],
    retry_after: float | None,
    secrets: Iterable[str],
) -> errors.TokenError:
    """The typed error for a token endpoint's non-200 answer (RFC 6749 §5.2, RFC 8707)."""
    secrets = tuple(secrets)
    code, said = _code_and_description(body, secrets)
    if status == 429:
        return errors.RateLimitedError(
            f"{server} rate-limited this client (429){said}", retry_after=retry_after
        )
    if status >= 500 or code == "temporarily_unavailable":
        return errors.ServerError(f"{server} answered {status}{said}; retrying may help")
    if code == "invalid_client" or (code is None and status == 401):
        return errors.ClientAuthenticationError(
            f"{server} did not accept this client's authentication (invalid_client{said}); "
            "check AUTHSEC_CLIENT_ID and AUTHSEC_CLIENT_SECRET or AUTHSEC_CLIENT_KEY "
            "(and AUTHSEC_CLIENT_KEY_ID: the kid the server registered)"
        )
    if code == "invalid_grant":
        if grant == "refresh_token":
            return errors.InvalidGrantError(
                f"{server} refused the refresh token (invalid_grant{said}): it expired, was "
                "revoked, or was already used, so the sign-in is over. Sign in again and set "
                "AUTHSEC_OAUTH_REFRESH_TOKEN to the new refresh token; not retried"
            )
        return errors.InvalidGrantError(
            f"{server} refused the {grant} grant (invalid_grant{said}); not retried"
        )
    if code == "invalid_scope":
        return errors.ScopeNotGrantedError(
            f"{server} does not grant this client the scopes {' '.join(sorted(requested))} "
            f"(invalid_scope{said}); ask for fewer, or have them granted to the client",
            missing=requested,
        )
    if code == "invalid_target":
        return errors.OAuthRequestError(
            f"{server} does not issue tokens for this resource (invalid_target{said}); check "
            "AUTHSEC_RESOURCE",
            error=code,
        )
    if code in ("unauthorized_client", "unsupported_grant_type"):
        return errors.OAuthRequestError(
            f"{server} does not let this client use the {grant} grant ({code}{said}); enable "
            "it for the client at the server, or configure another grant",
            error=code,
        )
    if code is not None:
        return errors.OAuthRequestError(
            f"{server} refused the token request ({code}{said})", error=code
        )
    return errors.InvalidTokenResponseError(
        f"{server} answered {status} without an OAuth error (is the issuer right?)"
    )
