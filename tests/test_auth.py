"""``BrokerAuth``: any httpx client, sync or async, against the mock AuthSec server and
vault over a real socket. A rotated signing key makes the vault refuse every
token issued before it (401): requests retry once with a fresh token, and the
refetches of many requests are one, counted at the server."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
from _server import MockServer
from joserfc.jwk import RSAKey

from authsec_crewai import errors
from authsec_crewai.auth import BrokerAuth
from authsec_crewai.broker import TokenBroker
from authsec_crewai.sync import SyncTokenBroker
from authsec_crewai.testing import TOKEN_PATH, Fault
from authsec_crewai.transports.live import LiveTransport
from authsec_crewai.transports.mock import MockTransport

RECORDS = "/secure-vault/records"
ROTATED_KEY = RSAKey.generate_key(2048, parameters={"kid": "default"}, private=True)


def live_broker(server: MockServer, client_id: str) -> TokenBroker:
    return TokenBroker(LiveTransport(server.url, retry_budget=0), client_id=client_id)


def rotate_keys(server: MockServer, client_id: str) -> None:
    """The authority signs with a new key and re-issues: the vault refuses older tokens."""
    server.authority.key = ROTATED_KEY
    server.authority.delegate(client_id)


def authorizations(server: MockServer) -> list[str]:
    return [r.headers["authorization"] for r in server.requests if r.path == RECORDS]


@pytest.mark.anyio
async def test_an_async_client_sends_the_brokers_token(
    authsec_server: MockServer, client_id: str
) -> None:
    async with (
        live_broker(authsec_server, client_id) as broker,
        httpx.AsyncClient(
            base_url=authsec_server.url, auth=BrokerAuth(broker, "read:records")
        ) as client,
    ):
        response = await client.get(RECORDS)
        token = broker.cached_token("read:records")
    assert response.status_code == 200 and response.json()["count"] == 6
    assert token is not None and authorizations(authsec_server) == [f"Bearer {token.value}"]


@pytest.mark.anyio
async def test_agent_sends_that_agents_token_from_the_same_broker(
    authsec_server: MockServer, client_id: str
) -> None:
    other = str(uuid.uuid4())
    async with (
        live_broker(authsec_server, client_id) as broker,
        httpx.AsyncClient(
            base_url=authsec_server.url, auth=BrokerAuth(broker, "read:records", agent=other)
        ) as theirs,
        httpx.AsyncClient(
            base_url=authsec_server.url, auth=BrokerAuth(broker, "read:records")
        ) as ours,
    ):
        assert (await theirs.get(RECORDS)).status_code == 200
        assert (await ours.get(RECORDS)).status_code == 200
        their_token = broker.cached_token("read:records", agent=other)
        our_token = broker.cached_token("read:records")
    assert their_token is not None and our_token is not None
    assert their_token.client_id == other and our_token.client_id == client_id
    assert authorizations(authsec_server) == [
        f"Bearer {their_token.value}",
        f"Bearer {our_token.value}",
    ]
    assert authsec_server.agent_counts[(other, RECORDS)] == 1
    assert repr(BrokerAuth(broker, "read:records", agent=other)).count(other) == 1


@dataclass(frozen=True)
class Flavour:
    """An HTTP client library and the BrokerAuth its clients accept."""

    http: ModuleType
    auth: type[Any]


def _httpx2() -> Flavour:
    import httpx2

    from authsec_crewai.integrations.httpx2 import BrokerAuth as Httpx2BrokerAuth

    return Flavour(httpx2, Httpx2BrokerAuth)


@pytest.fixture(params=["httpx", "httpx2"])
def flavour(request: pytest.FixtureRequest) -> Flavour:
    return Flavour(httpx, BrokerAuth) if request.param == "httpx" else _httpx2()


@pytest.mark.anyio
async def test_100_concurrent_requests_cold_then_on_a_refused_token(
    authsec_server: MockServer, client_id: str, flavour: Flavour
) -> None:
    """Cold: 100 requests at once cost 1 token request. Then the server refuses that
    token: each request refused is retried once, and all of them cost 1 more. A request
    whose headers are written after the first refusal came back carries the new token at
    once (BrokerAuth takes the broker's token again as the headers go out)."""
    http = flavour.http
    async with (
        live_broker(authsec_server, client_id) as broker,
        http.AsyncClient(
            base_url=authsec_server.url,
            auth=flavour.auth(broker, "read:records"),
            limits=http.Limits(max_connections=100),
            timeout=60,
        ) as client,
    ):
        statuses: list[int] = []

        async def call() -> None:
            statuses.append((await client.get(RECORDS)).status_code)

        async def burst() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(call)

        await burst()
        assert authsec_server.count(TOKEN_PATH) == 1 and statuses == [200] * 100
        old = broker.cached_token("read:records")
        rotate_keys(authsec_server, client_id)
        statuses.clear()
        await burst()
        new = broker.cached_token("read:records")
        stats = broker.stats
    assert statuses == [200] * 100
    assert authsec_server.count(TOKEN_PATH) == 2 == stats.fetches  # the first, and one refetch
    sent = authorizations(authsec_server)
    assert old is not None and new is not None and new.value != old.value
    refused = sent.count(f"Bearer {old.value}") - 100  # beyond the cold burst's
    assert 1 <= refused <= 100
    assert sent.count(f"Bearer {new.value}") == 100  # every request ends on the new token
    assert authsec_server.count(RECORDS) == 200 + refused  # each refusal retried once


def test_httpx2_refuses_an_httpx_auth_and_takes_its_twin() -> None:
    """Why the twin exists: httpx2 checks for its own Auth class."""
    httpx2 = _httpx2().http
    broker = TokenBroker(MockTransport(), client_id="0b7a8f3e-7d7e-4b7a-9a3e-1f2d3c4b5a69")
    with pytest.raises(TypeError, match="auth"):
        httpx2.AsyncClient(auth=BrokerAuth(broker, "read:records"))
    twin = _httpx2().auth(broker, "read:records")
    assert isinstance(twin, httpx2.Auth) and not isinstance(twin, httpx.Auth)
    assert "read:records" in repr(twin) and "eyJ" not in repr(twin)


@pytest.mark.anyio
async def test_a_second_401_is_returned_after_exactly_one_retry(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(Fault.http(401), count=5, path=RECORDS)
    async with (
        live_broker(authsec_server, client_id) as broker,
        httpx.AsyncClient(
            base_url=authsec_server.url, auth=BrokerAuth(broker, "read:records")
        ) as client,
    ):
        response = await client.get(RECORDS)
    assert response.status_code == 401
    assert authsec_server.count(RECORDS) == 2
    assert authsec_server.count(TOKEN_PATH) == 2  # the retry carried a freshly fetched token


def test_a_sync_client_with_a_sync_broker_from_many_threads(
    authsec_server: MockServer, client_id: str, flavour: Flavour
) -> None:
    transport = LiveTransport(authsec_server.url, retry_budget=0)
    with (
        SyncTokenBroker(transport, client_id=client_id) as broker,
        flavour.http.Client(
            base_url=authsec_server.url, auth=flavour.auth(broker, ["read:records"])
        ) as client,
    ):
        old = broker.token("read:records")
        rotate_keys(authsec_server, client_id)
        statuses: list[int] = []
        barrier = threading.Barrier(16)

        def call() -> None:
            barrier.wait()
            statuses.append(client.get(RECORDS).status_code)

        threads = [threading.Thread(target=call) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads)
    assert statuses == [200] * 16
    assert authsec_server.count(TOKEN_PATH) == 2  # however many threads were refused
    sent = authorizations(authsec_server)
    refused = sent.count(f"Bearer {old.value}")  # a late thread may start on the new token
    assert refused >= 1 and len(sent) == 16 + refused  # each refusal retried exactly once


@pytest.mark.anyio
async def test_the_retry_resends_the_request_body() -> None:
    bodies: list[tuple[str, bytes]] = []

    def api(request: httpx.Request) -> httpx.Response:
        bodies.append((request.headers["authorization"], request.read()))
        return httpx.Response(401 if len(bodies) == 1 else 200)

    async def chunks() -> Iterator[bytes]:  # a streamed body: read once by httpx
        yield b"part-1;"
        yield b"part-2"

    async with (
        TokenBroker(MockTransport(), client_id="0b7a8f3e-7d7e-4b7a-9a3e-1f2d3c4b5a69") as broker,
        httpx.AsyncClient(
            transport=httpx.MockTransport(api), auth=BrokerAuth(broker, "read:records")
        ) as client,
    ):
        response = await client.post("http://api.test/things", content=chunks())
        fetches = broker.stats.fetches
    assert response.status_code == 200
    assert [body for _, body in bodies] == [b"part-1;part-2"] * 2
    assert fetches == 2  # the token was fetched again for the retry


def test_a_sync_client_needs_a_sync_broker() -> None:
    broker = TokenBroker(MockTransport(), client_id="0b7a8f3e-7d7e-4b7a-9a3e-1f2d3c4b5a69")
    with (
        httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client,
        pytest.raises(errors.ConfigurationError, match="SyncTokenBroker"),
    ):
        client.get("http://api.test/", auth=BrokerAuth(broker, "read:records"))


def test_bad_arguments_are_configuration_errors() -> None:
    broker = TokenBroker(MockTransport(), client_id="0b7a8f3e-7d7e-4b7a-9a3e-1f2d3c4b5a69")
    with pytest.raises(errors.ConfigurationError, match="scopes"):
        BrokerAuth(broker, "")
    with pytest.raises(errors.ConfigurationError, match="TokenBroker"):
        BrokerAuth(object(), "read:records")  # type: ignore[arg-type]
    assert "read:records" in repr(BrokerAuth(broker, "read:records"))
