"""Shared fixtures. Every async test runs under asyncio and trio (anyio plugin)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client_id() -> str:
    return str(uuid.uuid4())


# --- a real AuthSec mock over a loopback socket (tests/_server.py) -------------------------
#
#   def test_x(authsec_server):               # fresh app + authority for this test
#       LiveTransport(authsec_server.url)      # talk to it over a real socket
#       authsec_server.faults.add(Fault.http(503), count=2)
#       authsec_server.count(TOKEN_PATH)       # requests that reached the server
#       authsec_server.authority.revoke(client_id)
#
# Mount your own app with `loopback_server.app = create_app(...)` (the `authsec_server`
# fixture unmounts it at teardown), or build a fresh `mock_authority` with options.

from collections.abc import Iterator  # noqa: E402

from _server import LoopbackServer, MockServer  # noqa: E402
from joserfc.jwk import RSAKey  # noqa: E402

from authsec_crewai.authority import MockAuthority  # noqa: E402
from authsec_crewai.mockserver import MockFaults, create_app  # noqa: E402


@pytest.fixture(scope="session")
def rsa_key() -> RSAKey:
    """One RSA-2048 signing key for the session (generating one costs ~50 ms)."""
    return RSAKey.generate_key(2048, parameters={"kid": "default"}, private=True)


@pytest.fixture(scope="session")
def loopback_server() -> Iterator[LoopbackServer]:
    """uvicorn on 127.0.0.1:<free port> for the whole session; mount apps on `.app`."""
    with LoopbackServer() as server:
        yield server


@pytest.fixture
def mock_authority(rsa_key: RSAKey) -> MockAuthority:
    """A fresh token store (new tenant id) signing with the session key."""
    return MockAuthority(key=rsa_key)


@pytest.fixture
def authsec_server(
    loopback_server: LoopbackServer, mock_authority: MockAuthority
) -> Iterator[MockServer]:
    """The mock AuthSec + vault app for this test, served on the loopback server."""
    faults = MockFaults()
    app = create_app(mock_authority, faults=faults)
    loopback_server.app = app
    try:
        yield MockServer(url=loopback_server.url, app=app, authority=mock_authority, faults=faults)
    finally:
        faults.clear()
        loopback_server.app = None


# --- a real redis-server on a free loopback port (tests/_redis.py) -------------------------

from pathlib import Path  # noqa: E402

from _redis import RedisServer, require_redis_server  # noqa: E402


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh redis-server for this test; skips (fails in CI) when it is not installed."""
    binary = require_redis_server()
    server = RedisServer(binary, Path(tmp_path_factory.mktemp("redis"))).start()
    try:
        yield server
    finally:
        server.stop()
