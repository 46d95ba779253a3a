"""``BrokerAuth``: delegated tokens for any httpx client, in one argument.

``httpx.Auth`` is the ecosystem's hook for credentials: MCP's OAuth client,
LangChain's MCP adapters and most API SDKs built on httpx take one. So::

    async with httpx.AsyncClient(auth=BrokerAuth(broker, "read:records")) as client:
        await client.get("https://api.example.com/secure-vault/records")

    with httpx.Client(auth=BrokerAuth(sync_broker, "read:records")) as client:
        client.get("https://api.example.com/secure-vault/records")

Each request carries the broker's token for the scopes. A 401 means the API no
longer accepts that token (revoked, keys rotated): the token is dropped from
the broker's cache (only if it is still the cached one) and the request is
sent once more with a fresh token. Many requests failing on the same token
share the broker's single flight, so they cause one fetch, not one each.

Unlike :class:`~authsec_crewai.fetch.SecureFetcher`, this class does not
guard where requests go: the application, not an agent, chose the client's
URLs. Point the client at the API the token is for (``base_url=``), and
keep redirects off (httpx's default), so the token goes nowhere else.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from . import telemetry
from .broker import TokenBroker
from .errors import ConfigurationError
from .sync import SyncTokenBroker
from .token import DelegationToken, ScopesLike, canonical_scopes

__all__ = ["BrokerAuth", "BrokerAuthFlow"]


class BrokerAuthFlow:
    """What ``BrokerAuth`` does, for any client with httpx's ``Auth`` protocol.

    httpx and httpx2 each check ``isinstance(auth, <their own> Auth)``, so one
    class cannot serve both; each subclasses this and its client's ``Auth``
    (:class:`BrokerAuth` for httpx, and
    :class:`authsec_crewai.integrations.httpx2.BrokerAuth` for httpx2), and the
    flows here only use what the two request and response types share.
    """

    requires_request_body = True

    def __init__(self, broker: TokenBroker | SyncTokenBroker, scopes: ScopesLike) -> None:
        if not isinstance(broker, TokenBroker | SyncTokenBroker):
            raise ConfigurationError(
                f"{type(self).__name__} needs a TokenBroker or SyncTokenBroker, "
                f"not {type(broker).__name__}"
            )
        try:
            self.scopes = canonical_scopes(scopes)
        except ValueError as exc:
            raise ConfigurationError(f"{type(self).__name__} scopes: {exc}") from None
        # One string: the broker remembers the request it maps to (no per-call parsing).
        self._scope_text = " ".join(sorted(self.scopes))
        self._sync = broker if isinstance(broker, SyncTokenBroker) else None
        self.broker = broker.broker if isinstance(broker, SyncTokenBroker) else broker
        self.mode = str(
            getattr(self.broker.transport, "mode", type(self.broker.transport).__name__)
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scopes={sorted(self.scopes)!r}, broker={self.broker!r})"

    def sync_auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        if self._sync is None:
            raise ConfigurationError(
                f"a sync client needs {type(self).__name__}(SyncTokenBroker(...), scopes); "
                "a TokenBroker serves async clients (AsyncClient)"
            )
        token = self._sync.token(self._scope_text)
        with _traced(request, token, self.mode) as answer:
            response = yield _authorized(request, token)
            answer.append(response.status_code)
        if response.status_code == 401:
            self.broker.invalidate(token)
            token = self._sync.token(self._scope_text)
            with _traced(request, token, self.mode) as answer:
                response = yield _authorized(request, token)
                answer.append(response.status_code)

    async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
        token = await self.broker.token(self._scope_text)
        with _traced(request, token, self.mode) as answer:
            response = yield _authorized(request, token)
            answer.append(response.status_code)
        if response.status_code == 401:
            self.broker.invalidate(token)
            token = await self.broker.token(self._scope_text)
            with _traced(request, token, self.mode) as answer:
                response = yield _authorized(request, token)
                answer.append(response.status_code)


class BrokerAuth(BrokerAuthFlow, httpx.Auth):
    """Attach the broker's token for ``scopes``; on a 401, refetch and retry once.

    ``broker`` is a :class:`TokenBroker` (async clients only) or a
    :class:`SyncTokenBroker` (sync and async clients). The request body is
    read before sending (``requires_request_body``), so the retry can resend
    it. For httpx2 clients, use :class:`authsec_crewai.integrations.httpx2.BrokerAuth`.
    """


@contextmanager
def _traced(request: Any, token: DelegationToken, mode: str) -> Iterator[list[int]]:
    """An ``authsec.api.call`` span around one exchange; the block appends the status."""
    span = telemetry.api_span(request.method, request.url.path, token, mode)
    status: list[int] = []
    try:
        yield status
    except BaseException as exc:  # the client gave up on the exchange (a network error)
        telemetry.api_ended(span, error=exc)
        raise
    telemetry.api_ended(span, status[0] if status else None)


def _authorized(request: Any, token: DelegationToken) -> Any:
    request.headers["Authorization"] = f"Bearer {token.value}"
    return request
