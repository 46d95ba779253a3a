"""``BrokerAuth`` must not hand out tokens that expire while the request waits in the
client's queue.

httpx runs the auth flow (and so takes the token) before the request waits for
a connection. 250 requests queued behind a 4-connection pool to an API that
takes 30 ms each (a queue of about 2 s), just before a short token's expiry,
against the mock AuthSec server and vault on a real loopback socket: the vault
refuses expired tokens. The client's pool, connect and write timeouts bound how
long a request may still wait; the token handed to it must outlive that, and a
401 retry must not fail the same way.
"""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
import httpx
import pytest
from _server import MockServer
from joserfc.jwk import RSAKey

from authsec_crewai.auth import BrokerAuth
from authsec_crewai.broker import TokenBroker
from authsec_crewai.testing import TOKEN_PATH, Fault
from authsec_crewai.transports.live import LiveTransport

RECORDS = "/secure-vault/records"
LIFETIME = 30  # seconds: every token the authority issues lives this long; well past the
# 7 s a request may wait, so a loaded machine (the server answering late) has slack
TIMEOUT = httpx.Timeout(10.0, pool=6.0, connect=0.5, write=0.5)  # may wait 7 s more
REQUESTS = 250
ROTATED_KEY = RSAKey.generate_key(2048, parameters={"kid": "default"}, private=True)


def near_expiry(server: MockServer, client_id: str) -> float:
    """Delegate a token of LIFETIME seconds with 1 to 2 of them left; its ``exp``."""
    authority = server.authority
    authority.ttl_seconds = LIFETIME
    expires = math.floor(time.time()) + 2
    real = authority.clock
    authority.clock = lambda: float(expires - LIFETIME)
    try:
        authority.delegate(client_id)
    finally:
        authority.clock = real
    return float(expires)


def mint_per_request(server: MockServer, client_id: str) -> None:
    """The server mints a new token on every request (authsec-api.md allows it; OAuth
    servers do it): a refresh then brings a longer-lived token."""
    authority = server.authority
    authority.token_answer = lambda asked: (200, authority.delegate(asked))  # type: ignore[method-assign]


async def burst(client: httpx.AsyncClient) -> list[int | str]:
    outcomes: list[int | str] = []

    async def call() -> None:
        try:
            outcomes.append((await client.get(RECORDS)).status_code)
        except httpx.HTTPError as exc:  # a pool timeout would show here, not as a 401
            outcomes.append(type(exc).__name__)

    async with anyio.create_task_group() as tg:
        for _ in range(REQUESTS):
            tg.start_soon(call)
    return outcomes


async def run_queue(server: MockServer, client_id: str, *, minting: bool) -> dict[str, Any]:
    expires = near_expiry(server, client_id)
    server.faults.add(Fault.slow(0.03), count=10 * REQUESTS, path=RECORDS)  # a busy API
    transport = LiveTransport(server.url, retry_budget=0)
    answered: list[int] = []  # every response, a refused first attempt's included

    async def seen(response: httpx.Response) -> None:
        answered.append(response.status_code)

    async with (
        TokenBroker(transport, client_id=client_id) as broker,
        httpx.AsyncClient(
            base_url=server.url,
            auth=BrokerAuth(broker, "read:records"),
            limits=httpx.Limits(max_connections=4),
            timeout=TIMEOUT,
            event_hooks={"response": [seen]},
        ) as client,
    ):
        old = await broker.token("read:records")
        assert old.expires_at_ts == expires and 0 < old.expires_in(time.time()) <= 2
        if minting:
            mint_per_request(server, client_id)
        started = time.monotonic()
        outcomes = await burst(client)
        lifetimes = math.ceil((time.monotonic() - started) / LIFETIME) + 1
    return {
        "outcomes": outcomes,
        "sent": server.count(RECORDS),
        "refused": answered.count(401),
        "token_requests": server.count(TOKEN_PATH),
        "lifetimes": lifetimes,  # how many tokens' lives the burst spanned, at most
    }


@pytest.mark.anyio
async def test_a_server_that_mints_tokens_never_sees_one_expire_in_the_queue(
    authsec_server: MockServer, client_id: str
) -> None:
    """A refresh brings a token that outlives the wait: no request is refused."""
    seen = await run_queue(authsec_server, client_id, minting=True)
    assert seen["outcomes"] == [200] * REQUESTS
    assert seen["sent"] == REQUESTS and seen["refused"] == 0  # not one 401, not one retry
    # The first, then one refresh per token life the burst spans, shared by all requests.
    assert 2 <= seen["token_requests"] <= 1 + seen["lifetimes"]


@pytest.mark.anyio
async def test_with_one_token_per_agent_each_refused_request_is_retried_once_and_passes(
    authsec_server: MockServer, client_id: str
) -> None:
    """AuthSec hands out the agent's one token until it expires: a refresh before then
    brings the same short token, so requests that wait past its expiry are refused. Each
    is retried once, with a token that outlives the retry's own wait."""
    seen = await run_queue(authsec_server, client_id, minting=False)
    assert seen["outcomes"] == [200] * REQUESTS  # a retry refused again would show as 401
    assert seen["sent"] == REQUESTS + seen["refused"]  # each refusal retried exactly once
    # Never a fetch per request or per 401: per token life, an advisory refresh and a few
    # re-confirmations in its last seconds (each at most once a second), then the next.
    assert seen["token_requests"] <= 1 + 5 * seen["lifetimes"]


# --- the send-time token, in every client -----------------------------------------------------


def _flavours() -> list[Any]:
    import httpx2

    from authsec_crewai.integrations.httpx2 import BrokerAuth as Httpx2BrokerAuth

    return [
        pytest.param((httpx, BrokerAuth), id="httpx"),
        pytest.param((httpx2, Httpx2BrokerAuth), id="httpx2"),
    ]


def _rotating_trace(server: MockServer, client_id: str, broker: Any, events: list[str]) -> Any:
    """An application's trace callback that, while the connection opens (after the auth
    flow took its token, before the headers go out), has the server refuse that token and
    the broker drop it: the request must still go out once, with the new token."""

    def trace(event: str, info: dict[str, Any]) -> None:
        events.append(event)
        if event.endswith("connect_tcp.started"):
            taken = broker.cached_token("read:records")
            server.authority.key = ROTATED_KEY
            server.authority.delegate(client_id)
            broker.invalidate(taken)

    return trace


@pytest.mark.parametrize("flavour", _flavours())
def test_a_sync_client_sends_the_token_current_when_its_headers_go_out(
    authsec_server: MockServer, client_id: str, flavour: Any
) -> None:
    from authsec_crewai.sync import SyncTokenBroker

    http, auth = flavour
    events: list[str] = []
    transport = LiveTransport(authsec_server.url, retry_budget=0)
    with (
        SyncTokenBroker(transport, client_id=client_id) as broker,
        http.Client(base_url=authsec_server.url, auth=auth(broker, "read:records")) as client,
    ):
        old = broker.token("read:records")
        trace = _rotating_trace(authsec_server, client_id, broker, events)
        response = client.get(RECORDS, extensions={"trace": trace})
        new = broker.cached_token("read:records")
    assert response.status_code == 200
    assert authsec_server.count(RECORDS) == 1  # no 401, no retry
    assert new is not None and new.value != old.value
    sent = [r.headers["authorization"] for r in authsec_server.requests if r.path == RECORDS]
    assert sent == [f"Bearer {new.value}"]
    assert any(e.endswith("send_request_headers.started") for e in events)  # theirs ran too


@pytest.mark.anyio
@pytest.mark.parametrize("flavour", _flavours())
async def test_an_async_client_sends_the_token_current_when_its_headers_go_out(
    authsec_server: MockServer, client_id: str, flavour: Any
) -> None:
    http, auth = flavour
    events: list[str] = []
    async with (
        TokenBroker(LiveTransport(authsec_server.url, retry_budget=0), client_id=client_id) as b,
        http.AsyncClient(base_url=authsec_server.url, auth=auth(b, "read:records")) as client,
    ):
        old = await b.token("read:records")
        trace = _rotating_trace(authsec_server, client_id, b, events)

        async def async_trace(event: str, info: dict[str, Any]) -> None:
            trace(event, info)

        response = await client.get(RECORDS, extensions={"trace": async_trace})
        new = b.cached_token("read:records")
    assert response.status_code == 200
    assert authsec_server.count(RECORDS) == 1 and authsec_server.count(TOKEN_PATH) == 2
    assert new is not None and new.value != old.value
    sent = [r.headers["authorization"] for r in authsec_server.requests if r.path == RECORDS]
    assert sent == [f"Bearer {new.value}"]
    assert any(e.endswith("send_request_headers.started") for e in events)


@pytest.mark.anyio
@pytest.mark.parametrize("flavour", _flavours())
async def test_a_redirect_to_another_origin_never_gets_the_token_back(
    authsec_server: MockServer, client_id: str, flavour: Any
) -> None:
    """The send-time token only ever replaces the credential the flow itself attached:
    a cross-origin redirect, whose Authorization header the client dropped, stays
    without one, even though the trace rides along on the redirected request."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, RedirectResponse
    from starlette.routing import Route

    from authsec_crewai.testing import LoopbackServer

    seen: list[dict[str, str]] = []

    async def elsewhere(request: Request) -> JSONResponse:
        seen.append(dict(request.headers))
        return JSONResponse({"ok": True})

    other = LoopbackServer(Starlette(routes=[Route("/{path:path}", elsewhere)])).start()
    try:

        async def away(request: Request) -> RedirectResponse:
            return RedirectResponse(f"{other.url}/stolen", status_code=302)

        authsec_server.app.router.routes.insert(0, Route("/away", away))
        http, auth = flavour
        async with (
            TokenBroker(
                LiveTransport(authsec_server.url, retry_budget=0), client_id=client_id
            ) as b,
            http.AsyncClient(
                base_url=authsec_server.url, auth=auth(b, "read:records"), follow_redirects=True
            ) as client,
        ):
            await b.token("read:records")
            connections: list[str] = []

            async def trace(event: str, info: dict[str, Any]) -> None:
                if event.endswith("connect_tcp.started"):
                    connections.append(event)
                    if len(connections) == 2:  # the redirect's: the broker's token changes
                        authsec_server.authority.key = ROTATED_KEY
                        authsec_server.authority.delegate(client_id)
                        b.invalidate(b.cached_token("read:records"))

            response = await client.get("/away", extensions={"trace": trace})
            # The redirect carries no credential of ours: the broker was not even asked.
            assert len(connections) == 2 and authsec_server.count(TOKEN_PATH) == 1
    finally:
        other.stop()
    assert response.status_code == 200 and len(seen) == 1
    assert "authorization" not in seen[0]
    assert not any("eyJ" in value for value in seen[0].values())
