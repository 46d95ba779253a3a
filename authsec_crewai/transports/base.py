"""The ``Transport`` protocol: where tokens, key sets and API traffic come from.

Deliberately tiny (like httpx's ``AsyncBaseTransport``): policy such as caching,
single flight and refresh timing lives in the broker, so a transport only has
to answer one question at a time.

A transport also declares what it is, in :class:`TransportInfo`. The broker,
the fetcher, the tools, the recorder and the wiring read that and nothing
else: they never guess at attributes or branch on a class or a mode name. A
transport written against this module alone therefore works everywhere the
built-in ones do. To write one:

- ``info`` returns the same facts every time it is read (build it once);
- ``fetch_token`` makes one request to the token source and raises a
  :class:`~authsec_crewai.errors.TokenError` subclass on failure (the broker
  owns retries of a refresh, caching and single flight); pass the answer
  through :func:`authsec_crewai.wire.parse_token_body` when it has the
  server's shape;
- ``fetch_key_set`` returns the JWK set that signs its tokens, or None when
  there is none to check against (the verifier then says so);
- ``api`` returns the httpx transport that protected-API calls go through.
  When ``info.network_api`` is false it must serve callers on any event loop
  (it is in process: an app, a cassette); when true, it is a socket pool used
  only on the loop that owns the transport, and callers on other loops open
  pools of their own;
- ``aclose`` releases what it opened; it may be called once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

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
    """True when :meth:`Transport.api` only opens sockets to the real protected API:
    a caller on another event loop then opens a pool of its own on its loop instead,
    and a fetcher without a configured API origin refuses to guess one. False: the
    API is in process (a mock app, a cassette) and ``api()`` serves any event loop."""
    base_url: str | None = None
    """The token server's origin, without credentials (for messages and cassettes)."""
    api_base_url: str | None = None
    """The protected-API origin this transport knows (a replay's recorded one)."""
    client_id: str | None = None
    """The agent this transport speaks for (a replay's recorded one), if it knows one;
    the wiring asks as it when no client id is configured."""
    clock: Callable[[], float] | None = None
    """The time its tokens live in (a replay's recording time), or None for wall time."""
    secrets: tuple[str, ...] = ()
    """Secrets it holds (an API token) that must be scrubbed from anything it reports
    or records. Never shown: ``repr`` hides them."""
    issuer: str | None = None
    """Who issues its tokens (an OAuth issuer), when several could share one client id:
    part of every cache key, so one issuer's or tenant's token never serves another."""
    audience: tuple[str, ...] = ()
    """The audience (RFC 8707 resources) its tokens are for when the broker names none:
    the broker's default, so the resource is part of every cache key."""
    client_ids: Literal["uuid", "opaque"] = "uuid"
    """What a client id must look like: AuthSec agents are UUIDs; an OAuth client id
    is any non-empty string."""
    whole_grant: bool = True
    """True when a token's permissions are everything the agent is granted (AuthSec's
    delegation tokens), so the broker refuses a scope outside them without asking;
    False when a token holds only the scopes asked for (OAuth's ``scope``)."""
    verifies_tokens: bool = False
    """True when ``fetch_token`` verifies what it returns by its source's own rules
    (an OAuth access token against the issuer's ``jwks_uri``): the broker then adds
    no verifier of AuthSec's delegation-token claims."""

    def __repr__(self) -> str:
        return (
            f"TransportInfo(mode={self.mode!r}, claims_only={self.claims_only}, "
            f"network_api={self.network_api}, base_url={self.base_url!r}, "
            f"api_base_url={self.api_base_url!r}, client_id={self.client_id!r}, "
            f"issuer={self.issuer!r}, audience={self.audience!r}, client_ids={self.client_ids!r}, "
            f"whole_grant={self.whole_grant}, verifies_tokens={self.verifies_tokens}, "
            f"secrets=<{len(self.secrets)}>)"
        )


@runtime_checkable
class Transport(Protocol):
    """Gets delegation tokens and the keys that verify them; carries API calls.

    ``info`` declares what the rest of the library needs to know about it; the
    module docstring says what each member must do.
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
