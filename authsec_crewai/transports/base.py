"""The ``Transport`` protocol: where tokens, key sets and API traffic come from.

Deliberately tiny (like httpx's ``AsyncBaseTransport``): policy such as caching,
single flight and refresh timing lives in the broker, so a transport only has
to answer one question at a time.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import httpx

from ..token import DelegationToken, TokenRequest

__all__ = ["KeySet", "Transport"]

KeySet = dict[str, Any]
"""A JWK set as JSON: ``{"keys": [{"kty": "RSA", ...}]}``."""


@runtime_checkable
class Transport(Protocol):
    """Gets delegation tokens and the keys that verify them; carries API calls."""

    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        """One call to the token source. Raises a ``TokenError`` subclass on failure."""
        ...

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        """The public keys that sign this source's tokens, or None if unknown."""
        ...

    def api(self) -> httpx.AsyncBaseTransport:
        """The httpx transport that protected-API calls in this mode go through."""
        ...

    async def aclose(self) -> None:
        """Release connections and files."""
        ...
