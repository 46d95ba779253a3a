"""Shared fixtures. Every async test runs under asyncio and trio (anyio plugin)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clean_authsec_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AUTHSEC_* variable and no .env from the machine running the tests, the
    auto-mock warning not yet said in this process, structlog's defaults."""
    import structlog

    from authsec_crewai import wiring

    for name in list(os.environ):
        if name.upper().startswith("AUTHSEC_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(wiring, "_auto_mock_warned", type(wiring._auto_mock_warned)())
    structlog.reset_defaults()


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
