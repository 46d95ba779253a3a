"""The test OAuth authorization server of one test, on the session's loopback server.

Its fixtures are registered for every test by ``pytest_plugins`` in conftest.py:

    def test_x(oauth):                      # fresh authority, served on 127.0.0.1
        oauth.issuer, oauth.token_endpoint, oauth.resource   # "/mcp", registered
        oauth.authority.grants              # what the server answered with a token
        oauth.faults.add(oauth_error("invalid_grant"), path=TOKEN_ENDPOINT)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from joserfc.jwk import RSAKey
from starlette.applications import Starlette

from authsec_crewai.testing import LoopbackServer, MockFaults, OAuthAuthority, create_oauth_app
from authsec_crewai.testing.oauthserver import TOKEN_ENDPOINT

__all__ = [
    "AGENT_KEY_ID",
    "BASIC_CLIENT",
    "JWT_CLIENT",
    "POST_CLIENT",
    "PUBLIC_CLIENT",
    "SECRET",
    "OAuthKit",
    "as_key",
    "client_key",
    "oauth",
]

SECRET = "s3cret with space+plus:colon%"
BASIC_CLIENT = "agent-basic"
POST_CLIENT = "agent-post"
JWT_CLIENT = "agent-jwt@example.com"
PUBLIC_CLIENT = "agent-public"
AGENT_KEY_ID = "agent-key-1"
RESOURCE_PATH = "/mcp"
SCOPES = ("read:records", "write:records")


@dataclass
class OAuthKit:
    url: str
    app: Starlette
    authority: OAuthAuthority
    faults: MockFaults

    @property
    def issuer(self) -> str:
        return self.url + self.authority.path

    @property
    def token_endpoint(self) -> str:
        return self.issuer + TOKEN_ENDPOINT

    @property
    def resource(self) -> str:
        return self.url + RESOURCE_PATH

    @property
    def counts(self) -> Counter[str]:
        counts: Counter[str] = self.app.state.counts
        return counts

    @property
    def token_requests(self) -> int:
        return self.counts[self.authority.path + TOKEN_ENDPOINT]


@pytest.fixture(scope="session")
def as_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "as-1"}, private=True)


@pytest.fixture(scope="session")
def client_key() -> RSAKey:
    """The private key of the private_key_jwt client (its public half is registered)."""
    return RSAKey.generate_key(2048, parameters={"kid": AGENT_KEY_ID}, private=True)


def register_clients(authority: OAuthAuthority, key: RSAKey) -> None:
    authority.register_client(BASIC_CLIENT, secret=SECRET, scopes=SCOPES)
    authority.register_client(
        POST_CLIENT, auth_method="client_secret_post", secret=SECRET, scopes=SCOPES
    )
    authority.register_client(JWT_CLIENT, public_key=key, scopes=SCOPES)
    authority.register_client(PUBLIC_CLIENT, scopes=SCOPES, grant_types=("refresh_token",))
    authority.register_resource(RESOURCE_PATH, scope=["read:records"])


@pytest.fixture
def oauth(
    loopback_server: LoopbackServer, as_key: RSAKey, client_key: RSAKey
) -> Iterator[OAuthKit]:
    authority = OAuthAuthority(key=as_key)
    register_clients(authority, client_key)
    faults = MockFaults()
    app = create_oauth_app(authority, faults=faults)
    loopback_server.app = app
    try:
        yield OAuthKit(url=loopback_server.url, app=app, authority=authority, faults=faults)
    finally:
        faults.clear()
        loopback_server.app = None
