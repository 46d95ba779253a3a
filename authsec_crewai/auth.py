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

import inspect
from collections.abc import AsyncGenerator, Generator, Iterator
from contextlib import contextmanager, suppress
from typing import Any, Final

import httpx

from . import telemetry
from .broker import TokenBroker
from .errors import AuthSecError, ConfigurationError
from .logging import ensure_http_log_filter
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

    def __init__(
        self,
        broker: TokenBroker | SyncTokenBroker,
        scopes: ScopesLike,
        *,
        agent: str | None = None,
    ) -> None:
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
        # The application's client will log through httpx/httpcore with the token
        # in its headers: the secure default applies to it as to the library's own.
        ensure_http_log_filter()
        self._sync = broker if isinstance(broker, SyncTokenBroker) else None
        self.broker = broker.broker if isinstance(broker, SyncTokenBroker) else broker
        self.mode = self.broker.transport.info.mode
        self.agent = agent
        """The agent whose tokens are sent (None: the broker's default agent), so one
        broker serves the clients of many agents, each with its own identity."""

    def __repr__(self) -> str:
        agent = "" if self.agent is None else f", agent={self.agent!r}"
        scopes = sorted(self.scopes)
        return f"{type(self).__name__}(scopes={scopes!r}{agent}, broker={self.broker!r})"

    def sync_auth_flow(self, request: Any) -> Generator[Any, Any, None]:
        sync = self._sync
        if sync is None:
            raise ConfigurationError(
                f"a sync client needs {type(self).__name__}(SyncTokenBroker(...), scopes); "
                "a TokenBroker serves async clients (AsyncClient)"
            )
        theirs = request.extensions.get("trace")
        sent = _SendTime(
            self, sync.token(self._scope_text, agent=self.agent), theirs, blocking=True
        )
        with _traced(request, sent.token, self.mode) as answer:
            response = yield _authorized(request, sent)
            answer.append(response.status_code)
        if response.status_code == 401:
            self.broker.invalidate(sent.token)
            sent = _SendTime(
                self, sync.token(self._scope_text, agent=self.agent), theirs, blocking=True
            )
            with _traced(request, sent.token, self.mode) as answer:
                response = yield _authorized(request, sent)
                answer.append(response.status_code)

    async def async_auth_flow(self, request: Any) -> AsyncGenerator[Any, Any]:
        theirs = request.extensions.get("trace")
        sent = _SendTime(self, await self.broker.token(self._scope_text, self.agent), theirs)
        with _traced(request, sent.token, self.mode) as answer:
            response = yield _authorized(request, sent)
            answer.append(response.status_code)
        if response.status_code == 401:
            self.broker.invalidate(sent.token)
            sent = _SendTime(self, await self.broker.token(self._scope_text, self.agent), theirs)
            with _traced(request, sent.token, self.mode) as answer:
                response = yield _authorized(request, sent)
                answer.append(response.status_code)


_HEADERS_WRITTEN: Final = "send_request_headers.started"
"""httpcore's (and httpcore2's) trace event just before a request's headers are written."""


class _SendTime:
    """The token of one attempt, chosen again when its headers are written.

    httpx runs the auth flow, and so takes the token, before the request waits
    for a connection, and that wait is not bounded by the pool timeout
    (httpcore re-queues a request that lost its connection with a fresh
    timeout each time): behind a busy pool, a token can expire in the queue,
    and so can the one its 401 retry took. httpcore's ``trace`` request
    extension calls this as the headers are about to be sent, on the
    connection the request finally got; the broker's current token then
    replaces the one taken earlier (a cache hit, or the refresh every caller
    shares). Transports that do not trace (in-process ones) send the token
    the flow took. ``token`` is the one actually sent: the flow drops that
    one on a 401. The application's own ``trace`` callback, if any, still
    sees every event.
    """

    __slots__ = ("auth", "blocking", "theirs", "token")

    def __init__(
        self, auth: BrokerAuthFlow, token: DelegationToken, theirs: Any, *, blocking: bool = False
    ) -> None:
        self.auth = auth
        self.token = token
        self.theirs = theirs
        self.blocking = blocking
        """A sync client's (httpcore then calls, never awaits, the extension)."""

    def __call__(self, event: str, info: dict[str, Any]) -> Any:
        """httpcore calls the extension, and awaits what it returns on async clients."""
        if not self.blocking or self.auth._sync is None:
            return self._atrace(event, info)
        if event.endswith(_HEADERS_WRITTEN):
            slot = self._slot(info)
            if slot is not None:
                with suppress(AuthSecError):  # no fresher token: send the one taken (then 401)
                    self._swap(
                        slot, self.auth._sync.token(self.auth._scope_text, agent=self.auth.agent)
                    )
        if self.theirs is not None:
            return self.theirs(event, info)
        return None

    async def _atrace(self, event: str, info: dict[str, Any]) -> None:
        if event.endswith(_HEADERS_WRITTEN):
            slot = self._slot(info)
            if slot is not None:
                with suppress(AuthSecError):
                    self._swap(
                        slot, await self.auth.broker.token(self.auth._scope_text, self.auth.agent)
                    )
        if self.theirs is not None:
            answer = self.theirs(event, info)
            if inspect.isawaitable(answer):
                await answer

    def _slot(self, info: dict[str, Any]) -> tuple[list[Any], int] | None:
        """Where the request's headers carry the token this flow attached, if they do.

        Only that credential is ever replaced: a request without it (a redirect
        to another origin, whose ``Authorization`` the client dropped) gets none,
        and the broker is not even asked.
        """
        headers = getattr(info.get("request"), "headers", None)
        if not isinstance(headers, list):
            return None
        taken = b"Bearer " + self.token.value.encode()
        for index, (name, value) in enumerate(headers):
            if name.lower() == b"authorization" and value == taken:
                return headers, index
        return None

    def _swap(self, slot: tuple[list[Any], int], fresh: DelegationToken) -> None:
        if fresh.value != self.token.value:
            headers, index = slot
            headers[index] = (headers[index][0], b"Bearer " + fresh.value.encode())
            self.token = fresh


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


def _authorized(request: Any, sent: _SendTime) -> Any:
    request.headers["Authorization"] = f"Bearer {sent.token.value}"
    request.extensions["trace"] = sent
    return request
