"""How the record and replay transports describe requests and rebuild answers.

A request is recorded and matched in one shape (:func:`token_request`,
:func:`api_request`), so recording and replaying cannot disagree about it.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any

import httpx

from .. import cassettes as fmt
from ..cassettes import Interaction, Scrubber

if TYPE_CHECKING:
    from ..token import DelegationToken, TokenRequest
    from .base import TransportInfo

__all__ = [
    "api_request",
    "api_response",
    "looks_like_jwt",
    "opaque_stand_in",
    "token_body",
    "token_request",
    "token_source",
]


def token_request(request: TokenRequest, scrubber: Scrubber) -> dict[str, Any]:
    return {
        "audience": sorted(scrubber.text(a) for a in request.audience),
        "client_id": scrubber.text(request.client_id),
        "scopes": sorted(request.scopes),
    }


def api_request(request: httpx.Request, body: bytes, scrubber: Scrubber) -> dict[str, Any]:
    return {
        "method": request.method.upper(),
        "path": scrubber.text(request.url.path),
        "query": [
            [scrubber.text(k), scrubber.text(v)] for k, v in request.url.params.multi_items()
        ],
        "body": fmt.encode_body(body, scrubber),
    }


def token_body(token: DelegationToken) -> dict[str, Any]:
    """The answer the token was parsed from, in the server's field names.

    The transport protocol hands over a parsed token, not the raw answer; these
    are exactly the fields :func:`~authsec_crewai.wire.parse_token_body` reads,
    so replay parses back the same token (the value with its signature redacted).
    """
    body: dict[str, Any] = {
        "token": token.value if looks_like_jwt(token.value) else opaque_stand_in(token),
        "spiffe_id": token.spiffe_id,
        "permissions": sorted(token.permissions),
        "audience": list(token.audience),
        "expires_at": fmt.iso_utc(token.expires_at.timestamp()),
        "issued_at": fmt.iso_utc(token.issued_at.timestamp()),
        "client_id": token.client_id,
    }
    if token.tenant_id:
        body["tenant_id"] = token.tenant_id
    return body


def looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and value.startswith("eyJ")


def opaque_stand_in(token: DelegationToken) -> str:
    """What a cassette holds for an opaque access token: an unsigned JWT of its facts.

    An opaque token is a secret with no shape to redact, so it is never written;
    the stand-in carries what replay needs (subject, expiry, audience) and names
    the token only by its fingerprint.
    """
    header = {"alg": "none", "typ": "opaque-token-stand-in"}
    claims = {
        "sub": token.spiffe_id,
        "iat": int(token.issued_at.timestamp()),
        "exp": int(token.expires_at.timestamp()),
        "aud": list(token.audience),
        "opaque": token.fingerprint,
    }
    parts = [
        base64.urlsafe_b64encode(json.dumps(part, separators=(",", ":")).encode())
        .rstrip(b"=")
        .decode()
        for part in (header, claims)
    ]
    return f"{parts[0]}.{parts[1]}."


def token_source(info: TransportInfo) -> dict[str, Any] | None:
    """The declared facts a replay must repeat to be served as the recording was
    (an OAuth issuer, its resources, opaque client ids...); None for AuthSec's."""
    if info.issuer is None:
        return None
    return {
        "issuer": info.issuer,
        "audience": list(info.audience),
        "client_ids": info.client_ids,
        "whole_grant": info.whole_grant,
        "verifies_tokens": info.verifies_tokens,
    }


def api_response(item: Interaction, request: httpx.Request, scrubber: Scrubber) -> httpx.Response:
    if "error" in item:
        error = item["error"]
        cls = getattr(httpx, str(error.get("type", "")), None)
        if not (isinstance(cls, type) and issubclass(cls, httpx.TransportError)):
            cls = httpx.TransportError
        message = scrubber.restore_text(str(error.get("message", "recorded error")))
        raise cls(message, request=request)
    answer = item["response"]
    headers = [(k, scrubber.restore_text(v)) for k, v in answer.get("headers", {}).items()]
    return httpx.Response(
        answer["status"],
        headers=headers,
        content=fmt.decode_body(answer.get("body"), scrubber),
        request=request,
    )
