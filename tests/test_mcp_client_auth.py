"""The MCP SDK's streamable HTTP client with ``BrokerAuth``, against a real FastMCP server.

The server (:class:`MCPTestServer`) accepts only live tokens the test
authorization server issued for its own URL; the broker's OAuth transport
discovers that authorization server from the server's RFC 9728 metadata. A
session must survive the authorization server forgetting every token with
exactly one more token request, under asyncio and trio.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator

import httpx
import pytest
from joserfc.jwk import RSAKey
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from authsec_crewai import BrokerAuth
from authsec_crewai.broker import TokenBroker
from authsec_crewai.testing import MCPTestServer, OAuthAuthority
from authsec_crewai.transports import OAuthTransport

pytestmark = pytest.mark.anyio

AGENT = "agent-mcp"
SECRET = "mcp s3cret"
SCOPE = "mcp:tools"


@pytest.fixture
def mcp_server(as_key: RSAKey) -> Iterator[MCPTestServer]:
    authority = OAuthAuthority(key=as_key, path="/as")
    authority.register_client(AGENT, secret=SECRET, scopes=[SCOPE])
    authority.register_resource("/elsewhere", scope=[SCOPE])  # another resource, same AS
    with MCPTestServer(authority, scopes=[SCOPE]) as server:
        yield server


def _broker(server: MCPTestServer) -> TokenBroker:
    """A broker whose transport knows only the MCP server's URL: the issuer is discovered."""
    transport = OAuthTransport(resource=server.mcp_url, client_id=AGENT, client_secret=SECRET)
    return TokenBroker(transport, client_id=AGENT)


def _text(result: object) -> str:
    (block,) = result.content  # type: ignore[attr-defined]
    return str(block.text)


async def test_a_session_survives_the_authority_forgetting_every_token(
    mcp_server: MCPTestServer,
) -> None:
    async with _broker(mcp_server) as broker:
        client = httpx.AsyncClient(auth=BrokerAuth(broker, SCOPE), timeout=30)
        async with (
            client,
            streamable_http_client(mcp_server.mcp_url, http_client=client) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            names = {tool.name for tool in (await session.list_tools()).tools}
            who = json.loads(_text(await session.call_tool("whoami", {})))
            assert mcp_server.token_requests == 1
            token = await broker.token(SCOPE)

            mcp_server.forget_tokens()  # every token the session holds is now refused
            record = await session.call_tool("lookup_record", {"record_id": "r-7"})
            assert record.isError is False
            assert json.loads(_text(record))["reader"] == AGENT
            assert mcp_server.token_requests == 2  # exactly one more
            again = await session.call_tool("whoami", {})
            assert again.isError is False
            assert mcp_server.token_requests == 2  # and the new one is cached
    assert {"whoami", "lookup_record"} <= names
    assert who == {"client_id": AGENT, "scopes": [SCOPE]}
    assert token.audience == (mcp_server.mcp_url,)  # bound to the server's URL (RFC 8707)
    assert {c.client_id for c in mcp_server.calls} == {AGENT}
    fingerprints = [c.token_fingerprint for c in mcp_server.calls]
    assert fingerprints[0] == token.fingerprint and fingerprints[1] != token.fingerprint


async def test_the_deprecated_streamablehttp_client_takes_the_auth_directly(
    mcp_server: MCPTestServer,
) -> None:
    """``streamablehttp_client(url, auth=BrokerAuth(...))``, the 1.x spelling most code has."""
    from mcp.client.streamable_http import streamablehttp_client

    async with _broker(mcp_server) as broker:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            transport = streamablehttp_client(mcp_server.mcp_url, auth=BrokerAuth(broker, SCOPE))
        async with transport as (read, write, _), ClientSession(read, write) as session:
            await session.initialize()
            first = await session.call_tool("whoami", {})
            mcp_server.forget_tokens()
            second = await session.call_tool("whoami", {})
    assert first.isError is False and second.isError is False
    assert mcp_server.token_requests == 2


async def test_the_server_accepts_only_live_tokens_for_its_own_url(
    mcp_server: MCPTestServer,
) -> None:
    """What makes the tests above mean something: the server really refuses."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "probe", "version": "0"},
        },
    }
    headers = {"accept": "application/json, text/event-stream"}
    elsewhere = OAuthTransport(
        resource=mcp_server.url + "/elsewhere",
        issuer=mcp_server.issuer,
        client_id=AGENT,
        client_secret=SECRET,
    )
    async with (
        TokenBroker(elsewhere, client_id=AGENT) as other,
        _broker(mcp_server) as broker,
        httpx.AsyncClient() as client,
    ):
        bare = await client.post(mcp_server.mcp_url, json=initialize, headers=headers)
        wrong = (await other.token(SCOPE)).value
        misdirected = await client.post(
            mcp_server.mcp_url,
            json=initialize,
            headers={**headers, "authorization": f"Bearer {wrong}"},
        )
        right = (await broker.token(SCOPE)).value
        accepted = await client.post(
            mcp_server.mcp_url,
            json=initialize,
            headers={**headers, "authorization": f"Bearer {right}"},
        )
        mcp_server.forget_tokens()
        forgotten = await client.post(
            mcp_server.mcp_url,
            json=initialize,
            headers={**headers, "authorization": f"Bearer {right}"},
        )
    assert bare.status_code == 401
    challenge = bare.headers["www-authenticate"]
    metadata = f"{mcp_server.url}/.well-known/oauth-protected-resource/mcp"
    assert challenge.startswith("Bearer ") and f'resource_metadata="{metadata}"' in challenge
    assert misdirected.status_code == 401  # a live token, for another resource
    assert accepted.status_code == 200
    assert forgotten.status_code == 401
