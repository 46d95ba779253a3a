"""The ``Transport`` protocol: where tokens, key sets and API traffic come from.

Deliberately tiny (like httpx's ``AsyncBaseTransport``): policy such as caching,
single flight and refresh timing lives in the broker, so a transport only has
to answer one question at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx

from ..token import DelegationToken, TokenRequest

__all__ = ["KeySet", "Transport", "TransportInfo"]

KeySet = dict[str, Any]
"""A JWK set as JSON: ``{"keys": [{"kty": "RSA", ...}]}``."""


@dataclass(frozen=True, slots=True)
class TransportInfo:
    """What a transport declares about itself, so nothing has to guess.

    The broker, the fetcher, the recorder and the wiring read these fields and
    nothing else: a third-party transport that fills them in works everywhere.
    """

    mode: str
    """A short name for logs and results ("live", "mock", "replay", "record", or a
    third party's own). Never branched on: behaviour follows the fields below."""
    claims_only: bool = False
    """True when the tokens' signatures cannot be checked (a replay: recorded
    signatures are redacted). The broker then verifies claims only, and says so."""
    network_api: bool = False
    """True when :meth:`Transport.api` only opens sockets to the real protected API,
    so a caller may use its own connection pool on its own event loop instead."""
    base_url: str | None = None
    """The token server's origin, without credentials (for messages and cassettes)."""
    api_base_url: str | None = None
    """The protected-API origin this transport knows (a replay's recorded one)."""
    client_id: str | None = None
    """The agent this transport was recorded with, if it knows one."""
    clock: Callable[[], float] | None = None
    """The time its tokens live in (a replay's recording time), or None for wall time."""
    secrets: tuple[str, ...] = ()
    """Secrets it holds (an API token) that must be scrubbed from anything it reports
    or records. Never shown: ``repr`` hides them."""

    def __repr__(self) -> str:
        return (
            f"TransportInfo(mode={self.mode!r}, claims_only={self.claims_only}, "
            f"network_api={self.network_api}, base_url={self.base_url!r}, "
            f"api_base_url={self.api_base_url!r}, client_id={self.client_id!r}, "
            f"secrets=<{len(self.secrets)}>)"
        )


@runtime_checkable
class Transport(Protocol):
    """Gets delegation tokens and the keys that verify them; carries API calls.

    ``info`` declares what the rest of the library needs to know about it.
    """

    @property
    def info(self) -> TransportInfo:
        """What this transport is: its mode name and the facts callers rely on."""
        ...

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
