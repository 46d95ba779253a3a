"""Shared fixtures. Every async test runs under asyncio and trio (anyio plugin)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from authsec_crewai import wiring

pytest_plugins = ["oauthkit"]  # the test OAuth server's fixtures (tests/oauthkit.py)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(autouse=True)
def structlog_restored() -> Iterator[None]:
    """Every test leaves structlog as it found it: the CLI and the examples configure
    it globally, as an application should, and a later test capturing logs must not
    inherit that."""
    was_configured, saved = structlog.is_configured(), structlog.get_config()
    yield
    structlog.configure(**saved)
    if not was_configured:  # the library's events go back to stdlib logging
        structlog.reset_defaults()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AUTHSEC_* variable and no .env file from the machine running the tests (the
    test runs in its own empty directory), and mock mode's once-per-process warning
    armed again."""
    for name in list(os.environ):
        if name.upper().startswith("AUTHSEC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(wiring, "_auto_mock_warned", type(wiring._auto_mock_warned)())


@pytest.fixture
def otel_sdk_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OpenTelemetry SDK records: the crew tests quiet crewai with
    OTEL_SDK_DISABLED for the whole process, which the SDK's providers obey."""
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)


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

from _server import LoopbackServer, MockServer  # noqa: E402
from joserfc.jwk import RSAKey  # noqa: E402

from authsec_crewai.testing import (  # noqa: E402
    MockAuthority,
    MockFaults,
    create_app,
)


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


from _redis import (  # noqa: E402
    RedisClusterServers,
    RedisSentinelServers,
    RedisServer,
    require_redis_server,
)


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A fresh redis-server for this test; skips (fails in CI) when it is not installed."""
    binary = require_redis_server()
    server = RedisServer(binary, Path(tmp_path_factory.mktemp("redis"))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A fresh 3-master Redis Cluster; skips (fails in CI) when redis is not installed."""
    cluster = RedisClusterServers(Path(tmp_path_factory.mktemp("cluster"))).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinelServers]:
    """A master, a replica and a Sentinel; skips (fails in CI) when one is not installed."""
    servers = RedisSentinelServers(Path(tmp_path_factory.mktemp("sentinel"))).start()
    try:
        yield servers
    finally:
        servers.stop()
