"""How the record and replay transports describe requests and rebuild answers.

A request is recorded and matched in one shape (:func:`token_request`,
:func:`api_request`), so recording and replaying cannot disagree about it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from .. import cassettes as fmt
from ..cassettes import Interaction, Scrubber

if TYPE_CHECKING:
    from ..token import DelegationToken, TokenRequest

__all__ = ["api_request", "api_response", "token_body", "token_request"]


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
        "token": token.value,
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
