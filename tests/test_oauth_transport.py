"""OAuthTransport against the strict test authorization server over a real socket.

Discovery, the three client authentication methods, resource-bound tokens,
JWT and opaque access tokens, §5.2 errors mapped onto the error tree, and the
broker serving it all, under asyncio and trio.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from oauthkit import (
    AGENT_KEY_ID,
    BASIC_CLIENT,
    JWT_CLIENT,
    POST_CLIENT,
    SECRET,
    OAuthKit,
    register_clients,
)
from structlog.testing import capture_logs

from authsec_crewai import errors
from authsec_crewai.broker import TokenBroker
from authsec_crewai.stores import SQLiteStore
from authsec_crewai.testing import (
    Fault,
    LoopbackServer,
    MockFaults,
    OAuthAuthority,
    create_oauth_app,
    oauth_error,
)
from authsec_crewai.testing.oauthserver import AS_METADATA_PATH, TOKEN_ENDPOINT
from authsec_crewai.token import TokenRequest
from authsec_crewai.transports import OAuthTransport

pytestmark = pytest.mark.anyio

SCOPE = "read:records"


def _transport(oauth: OAuthKit, **kwargs: Any) -> OAuthTransport:
    kwargs.setdefault("issuer", oauth.issuer)
    kwargs.setdefault("resource", oauth.resource)
    kwargs.setdefault("client_id", BASIC_CLIENT)
    if kwargs["client_id"] in (BASIC_CLIENT, POST_CLIENT):
        kwargs.setdefault("client_secret", SECRET)
    kwargs.setdefault("backoff", 0.01)
    kwargs.setdefault("max_backoff", 0.02)
    kwargs.setdefault("timeout", 5.0)
    return OAuthTransport(**kwargs)


def _request(client_id: str = BASIC_CLIENT, scopes: str = SCOPE) -> TokenRequest:
    return TokenRequest.create(client_id, scopes)


async def test_client_credentials_with_scope_and_resource_from_discovery(oauth: OAuthKit) -> None:
    transport = _transport(oauth)
    try:
        tokens = [await transport.fetch_token(_request()) for _ in range(3)]
    finally:
        await transport.aclose()
    token = tokens[0]
    assert token.permissions == {SCOPE}
    assert token.audience == (oauth.resource,)
    assert token.spiffe_id == BASIC_CLIENT and token.client_id == BASIC_CLIENT
    assert token.jti and token.lifetime == pytest.approx(300, abs=2)
    grant = oauth.authority.grants[0]
    assert (grant.grant_type, grant.auth_method) == ("client_credentials", "client_secret_basic")
    assert grant.scopes == {SCOPE} and grant.resources == (oauth.resource,)
    # Metadata is read once, never per token.
    assert oauth.counts[AS_METADATA_PATH] == 1 and oauth.token_requests == 3
    # The token works at its resource.
    async with httpx.AsyncClient() as client:
        answer = await client.get(
            oauth.resource, headers={"authorization": f"Bearer {token.value}"}
        )
    assert answer.status_code == 200


async def test_the_issuer_is_discovered_from_the_resource(oauth: OAuthKit) -> None:
    transport = _transport(oauth, issuer=None)
    try:
        with capture_logs() as logs:
            token = await transport.fetch_token(_request())
            await transport.fetch_token(_request())
    finally:
        await transport.aclose()
    # A secret now goes where the resource says: said once, so it can be pinned.
    assert [e["event"] for e in logs].count("authsec.oauth.issuer_from_resource") == 1
    assert token.audience == (oauth.resource,)
    assert oauth.counts["/.well-known/oauth-protected-resource/mcp"] == 1
    assert oauth.counts[AS_METADATA_PATH] == 1


async def test_concurrent_first_fetches_discover_once(oauth: OAuthKit) -> None:
    transport = _transport(oauth)
    try:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(transport.fetch_token, _request())
    finally:
        await transport.aclose()
    assert oauth.counts[AS_METADATA_PATH] == 1 and oauth.token_requests == 20


async def test_client_secret_post_when_that_is_what_the_server_offers(
    loopback_server: LoopbackServer, as_key: RSAKey, client_key: RSAKey
) -> None:
    authority = OAuthAuthority(key=as_key, auth_methods=["client_secret_post"])
    register_clients(authority, client_key)
    loopback_server.app = create_oauth_app(authority)
    try:
        transport = OAuthTransport(
            issuer=loopback_server.url, client_id=POST_CLIENT, client_secret=SECRET
        )
        try:
            await transport.fetch_token(_request(POST_CLIENT))
        finally:
            await transport.aclose()
        # The basic client cannot: the server offers only post, and it is registered basic.
        refused = OAuthTransport(
            issuer=loopback_server.url, client_id=BASIC_CLIENT, client_secret=SECRET
        )
        try:
            with pytest.raises(errors.ClientAuthenticationError) as caught:
                await refused.fetch_token(_request())
        finally:
            await refused.aclose()
    finally:
        loopback_server.app = None
    assert [g.auth_method for g in authority.grants] == ["client_secret_post"]
    assert SECRET not in str(caught.value)


async def test_private_key_jwt_every_assertion_verifies_retries_included(
    oauth: OAuthKit, client_key: RSAKey, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pem = client_key.as_pem(private=True)
    path = tmp_path / "agent.pem"
    path.write_bytes(pem)
    oauth.faults.add(Fault.http(503), count=2, path=TOKEN_ENDPOINT)
    caplog.set_level(logging.DEBUG, logger="authsec_crewai")
    transport = _transport(oauth, client_id=JWT_CLIENT, private_key=path, key_id=AGENT_KEY_ID)
    try:
        with capture_logs() as logs:
            for _ in range(4):
                await transport.fetch_token(_request(JWT_CLIENT))
    finally:
        await transport.aclose()
    # 2 refused by the fault, then 4 grants: each retry carried a fresh jti (a reused one
    # is refused), each verified for signature, kid, iss, sub, aud and lifetime.
    assert oauth.token_requests == 6
    assert [g.auth_method for g in oauth.authority.grants] == ["private_key_jwt"] * 4
    shown = repr(transport) + repr(transport.info) + str(logs) + caplog.text
    key_body = b"".join(pem.splitlines()[1:-1]).decode()
    assert key_body[:40] not in shown and "PRIVATE KEY" not in shown


async def test_a_wrong_key_or_kid_is_invalid_client_with_a_useful_message(
    oauth: OAuthKit,
) -> None:
    stranger = RSAKey.generate_key(2048, private=True)
    transport = _transport(oauth, client_id=JWT_CLIENT, private_key=stranger, key_id=AGENT_KEY_ID)
    try:
        with pytest.raises(errors.ClientAuthenticationError) as caught:
            await transport.fetch_token(_request(JWT_CLIENT))
    finally:
        await transport.aclose()
    assert caught.value.terminal and isinstance(caught.value, errors.ConfigurationError)
    assert "AUTHSEC_CLIENT_KEY" in str(caught.value)
    assert oauth.token_requests == 1  # not retried


@pytest.mark.parametrize(
    ("fault", "error", "hint"),
    [
        (oauth_error("invalid_grant"), errors.InvalidGrantError, "invalid_grant"),
        (oauth_error("invalid_scope"), errors.ScopeNotGrantedError, "invalid_scope"),
        (oauth_error("invalid_target"), errors.OAuthRequestError, "AUTHSEC_RESOURCE"),
        (oauth_error("unauthorized_client"), errors.OAuthRequestError, "grant"),
        (oauth_error("invalid_client", status=401), errors.ClientAuthenticationError, "CLIENT"),
        (Fault.raw("<html>no</html>", status=400), errors.InvalidTokenResponseError, "issuer"),
    ],
)
async def test_rfc6749_errors_map_onto_the_tree_and_are_not_retried(
    oauth: OAuthKit, fault: Fault, error: type[Exception], hint: str
) -> None:
    oauth.faults.add(fault, path=TOKEN_ENDPOINT)
    transport = _transport(oauth)
    try:
        with pytest.raises(error) as caught:
            await transport.fetch_token(_request())
    finally:
        await transport.aclose()
    assert hint in str(caught.value)
    assert oauth.token_requests == 1


async def test_rate_limits_and_outages_are_retried(oauth: OAuthKit) -> None:
    oauth.faults.add(Fault.http(429, retry_after=0), path=TOKEN_ENDPOINT)
    oauth.faults.add(Fault.http(503), path=TOKEN_ENDPOINT)
    transport = _transport(oauth)
    try:
        await transport.fetch_token(_request())
    finally:
        await transport.aclose()
    assert oauth.token_requests == 3


async def test_an_echoed_secret_or_token_never_reaches_a_message(oauth: OAuthKit) -> None:
    echo = Fault.echoing(
        '{"error": "invalid_request", "error_description": "you sent {authorization}"}',
        status=400,
    )
    oauth.faults.add(echo, path=TOKEN_ENDPOINT)
    transport = _transport(oauth)
    try:
        with pytest.raises(errors.OAuthRequestError) as caught:
            await transport.fetch_token(_request())
    finally:
        await transport.aclose()
    basic = transport._creds.basic_credential()
    assert basic and basic not in str(caught.value)
    assert "invalid_request" in str(caught.value)


async def test_metadata_naming_another_issuer_is_refused(oauth: OAuthKit) -> None:
    forged = {"issuer": "https://evil.example", "token_endpoint": "https://evil.example/token"}
    oauth.faults.add(Fault.json(forged), path=AS_METADATA_PATH)
    transport = _transport(oauth)
    try:
        with pytest.raises(errors.ConfigurationError, match="mix-up"):
            await transport.fetch_token(_request())
    finally:
        await transport.aclose()
    assert oauth.token_requests == 0  # the secret never went anywhere


async def test_a_plain_http_token_endpoint_elsewhere_is_refused(oauth: OAuthKit) -> None:
    forged = {"issuer": oauth.issuer, "token_endpoint": "http://collector.example/token"}
    oauth.faults.add(Fault.json(forged), path=AS_METADATA_PATH)
    transport = _transport(oauth)
    try:
        with pytest.raises(errors.InvalidTokenResponseError, match="in clear"):
            await transport.fetch_token(_request())
    finally:
        await transport.aclose()


async def test_a_forged_jwt_access_token_is_never_used(oauth: OAuthKit) -> None:
    forger = RSAKey.generate_key(2048, parameters={"kid": "as-1"}, private=True)
    claims = {"iss": oauth.issuer, "sub": BASIC_CLIENT, "aud": oauth.resource, "exp": 4102444800}
    forged = jwt.encode({"alg": "RS256", "kid": "as-1"}, claims, forger)
    answer = {"access_token": forged, "token_type": "Bearer", "expires_in": 300}
    oauth.faults.add(Fault.json(answer), path=TOKEN_ENDPOINT)
    transport = _transport(oauth)
    try:
        with pytest.raises(errors.TokenVerificationError):
            await transport.fetch_token(_request())
    finally:
        await transport.aclose()


async def test_a_jwt_for_another_resource_is_refused(oauth: OAuthKit) -> None:
    claims = {
        "iss": oauth.issuer,
        "sub": BASIC_CLIENT,
        "aud": "https://other.example/api",
        "exp": 4102444800,
    }
    token = jwt.encode({"alg": "RS256", "kid": "as-1"}, claims, oauth.authority.key)
    answer = {"access_token": token, "token_type": "Bearer", "expires_in": 300}
    oauth.faults.add(Fault.json(answer), path=TOKEN_ENDPOINT)
    transport = _transport(oauth)
    try:
        with pytest.raises(errors.TokenVerificationError, match="aud"):
            await transport.fetch_token(_request())
    finally:
        await transport.aclose()


async def test_opaque_tokens_expire_from_expires_in_and_hold_the_answers_scope(
    loopback_server: LoopbackServer, as_key: RSAKey, client_key: RSAKey
) -> None:
    authority = OAuthAuthority(key=as_key, token_format="opaque", lifetime=120)
    register_clients(authority, client_key)
    loopback_server.app = create_oauth_app(authority)
    try:
        transport = OAuthTransport(
            issuer=loopback_server.url, client_id=BASIC_CLIENT, client_secret=SECRET
        )
        try:
            token = await transport.fetch_token(_request(scopes="read:records write:records"))
        finally:
            await transport.aclose()
    finally:
        loopback_server.app = None
    assert token.value.startswith("at-") and token.jti is None
    assert token.spiffe_id == BASIC_CLIENT
    assert token.permissions == {"read:records", "write:records"}
    assert token.lifetime == pytest.approx(120, abs=2)


async def test_the_broker_serves_an_opaque_client_id_with_one_grant_for_a_crowd(
    oauth: OAuthKit,
) -> None:
    async with TokenBroker(_transport(oauth), client_id=BASIC_CLIENT) as broker:
        tokens = []

        async def ask() -> None:
            tokens.append(await broker.token(SCOPE))

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(ask)
        assert broker.audience == (oauth.resource,)
        request = broker.request_for(SCOPE)
    assert len({t.fingerprint for t in tokens}) == 1
    assert oauth.token_requests == 1
    assert request.issuer == oauth.issuer and request.audience == (oauth.resource,)


async def test_a_token_for_resource_a_is_never_served_for_resource_b(
    oauth: OAuthKit, tmp_path: Path
) -> None:
    oauth.authority.register_resource("/other", scope=[SCOPE])
    other = oauth.url + "/other"
    key = b"k" * 32
    path = tmp_path / "tokens.db"
    tokens = {}
    for resource in (oauth.resource, other):
        store = SQLiteStore(path, keys=[key])
        transport = _transport(oauth, resource=resource)
        async with TokenBroker(transport, client_id=BASIC_CLIENT, store=store) as broker:
            tokens[resource] = await broker.token(SCOPE)
    assert oauth.token_requests == 2
    assert [g.resources for g in oauth.authority.grants] == [(oauth.resource,), (other,)]
    a, b = tokens[oauth.resource], tokens[other]
    assert a.fingerprint != b.fingerprint and b.audience == (other,)
    async with httpx.AsyncClient() as client:
        at_b = await client.get(other, headers={"authorization": f"Bearer {a.value}"})
    assert at_b.status_code == 401
    # Nothing in the store is in clear: no token, no secret, no client id.
    stored = b"".join([await anyio.Path(p).read_bytes() for p in tmp_path.iterdir()])  # noqa: ASYNC240
    for secret in (a.value, b.value, SECRET, BASIC_CLIENT, oauth.resource):
        assert secret.encode() not in stored


async def test_two_issuers_with_one_client_id_do_not_share_a_store_entry(
    loopback_server: LoopbackServer, as_key: RSAKey, client_key: RSAKey, tmp_path: Path
) -> None:
    tenants = [OAuthAuthority(key=as_key, path=p) for p in ("/tenant-a", "/tenant-b")]
    for authority in tenants:
        register_clients(authority, client_key)
    app = create_oauth_app(*tenants, faults=MockFaults())
    loopback_server.app = app
    seen = []
    try:
        for authority in tenants:
            store = SQLiteStore(tmp_path / "tokens.db", keys=[b"k" * 32])
            transport = OAuthTransport(
                issuer=loopback_server.url + authority.path,
                client_id=BASIC_CLIENT,
                client_secret=SECRET,
            )
            async with TokenBroker(transport, client_id=BASIC_CLIENT, store=store) as broker:
                seen.append(await broker.token(SCOPE))
    finally:
        loopback_server.app = None
    assert [len(a.grants) for a in tenants] == [1, 1]
    assert seen[0].fingerprint != seen[1].fingerprint


async def test_a_narrow_token_does_not_make_the_broker_refuse_other_scopes(
    oauth: OAuthKit,
) -> None:
    """An OAuth token holds only the scopes asked for, not the client's whole grant."""
    async with TokenBroker(_transport(oauth), client_id=BASIC_CLIENT) as broker:
        read = await broker.token("read:records")
        write = await broker.token("write:records")
        with pytest.raises(errors.ScopeNotGrantedError):
            await broker.token("admin:everything")
    assert read.permissions == {"read:records"} and write.permissions == {"write:records"}
    assert [g.scopes for g in oauth.authority.grants] == [{"read:records"}, {"write:records"}]


async def test_a_broker_agent_cannot_borrow_another_clients_credentials(
    oauth: OAuthKit,
) -> None:
    async with TokenBroker(_transport(oauth), client_id=BASIC_CLIENT) as broker:
        with pytest.raises(errors.ConfigurationError, match="authenticates as"):
            await broker.token(SCOPE, agent="someone-else")
        with pytest.raises(errors.ConfigurationError, match="printable"):
            await broker.token(SCOPE, agent="evil\nclient")
    assert oauth.token_requests == 0


def test_the_oauth_transport_imports_nothing_heavy() -> None:
    """Authlib is only benchmarked against; httpx2, crewai and coredis stay unloaded."""
    code = (
        "import sys, authsec_crewai, authsec_crewai.transports.oauth, authsec_crewai.stores.chain;"
        "print(sorted(m for m in ('authlib', 'crewai', 'httpx2', 'coredis') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ({"token_type": "Bearer", "expires_in": 60}, "no 'access_token'"),
        ({"access_token": "abc", "token_type": "DPoP", "expires_in": 60}, "not 'Bearer'"),
        ({"access_token": "abc", "token_type": "Bearer", "expires_in": -5}, "already expired"),
        ({"access_token": "a\x00b", "token_type": "Bearer", "expires_in": 60}, "printable"),
        ({"access_token": "x" * 20000, "token_type": "Bearer", "expires_in": 60}, "at most"),
        ({"access_token": "abc", "token_type": "Bearer", "scope": ["read"]}, "not a string"),
        (
            {"access_token": "abc", "token_type": "Bearer", "refresh_token": {"x": 1}},
            "refresh_token",
        ),
    ],
)
async def test_hostile_token_answers_are_refused(
    oauth: OAuthKit, answer: dict[str, Any], match: str
) -> None:
    oauth.faults.add(Fault.json(answer), path=TOKEN_ENDPOINT)
    transport = _transport(oauth)
    try:
        with pytest.raises(errors.InvalidTokenResponseError, match=match):
            await transport.fetch_token(_request())
    finally:
        await transport.aclose()


async def test_an_error_description_echoing_the_secret_is_scrubbed(oauth: OAuthKit) -> None:
    echo = {"error": "invalid_scope", "error_description": f"secret was {SECRET}"}
    oauth.faults.add(Fault.json(echo, status=400), path=TOKEN_ENDPOINT)
    transport = _transport(oauth, client_id=POST_CLIENT, auth_method="client_secret_post")
    try:
        with pytest.raises(errors.ScopeNotGrantedError) as caught:
            await transport.fetch_token(_request(POST_CLIENT))
    finally:
        await transport.aclose()
    assert SECRET not in str(caught.value) and "[redacted]" in str(caught.value)


async def test_oversized_and_dripping_token_answers_are_bounded(oauth: OAuthKit) -> None:
    oauth.faults.add(Fault.oversized(2 * 1024 * 1024), path=TOKEN_ENDPOINT)
    oauth.faults.add(Fault.dripping(0.05), path=TOKEN_ENDPOINT)
    transport = _transport(oauth, timeout=0.5, retry_budget=0)
    try:
        with pytest.raises(errors.InvalidTokenResponseError, match="larger than"):
            await transport.fetch_token(_request())
        with anyio.fail_after(5), pytest.raises(errors.TransportTimeoutError):
            await transport.fetch_token(_request())
    finally:
        await transport.aclose()


async def test_a_cancelled_caller_does_not_cancel_the_shared_grant(oauth: OAuthKit) -> None:
    oauth.faults.add(Fault.slow(0.5), path=TOKEN_ENDPOINT)
    async with TokenBroker(_transport(oauth), client_id=BASIC_CLIENT) as broker:
        got = []

        async def patient() -> None:
            got.append(await broker.token(SCOPE))

        async with anyio.create_task_group() as tg:
            with anyio.move_on_after(0.1):
                await broker.token(SCOPE)  # gives up while the grant is in flight
            tg.start_soon(patient)
    assert len(got) == 1 and oauth.token_requests == 1


async def test_discovery_falls_back_to_openid_connect_where_okta_and_keycloak_serve_it(
    loopback_server: LoopbackServer, as_key: RSAKey, client_key: RSAKey
) -> None:
    authority = OAuthAuthority(key=as_key, path="/realms/agents")
    register_clients(authority, client_key)
    faults = MockFaults()
    faults.add(Fault.json({"error": "not_found"}, status=404), path=AS_METADATA_PATH)
    app = create_oauth_app(authority, faults=faults)
    loopback_server.app = app
    try:
        transport = OAuthTransport(
            issuer=loopback_server.url + "/realms/agents",
            client_id=BASIC_CLIENT,
            client_secret=SECRET,
        )
        try:
            await transport.fetch_token(_request())
        finally:
            await transport.aclose()
    finally:
        loopback_server.app = None
    counts = app.state.counts
    assert counts[AS_METADATA_PATH + "/realms/agents"] == 1  # RFC 8414 first: absent
    assert counts["/.well-known/openid-configuration/realms/agents"] == 1  # inserted: absent
    assert counts["/realms/agents/.well-known/openid-configuration"] == 1  # appended: found
    assert len(authority.grants) == 1


async def test_an_issuer_without_metadata_is_a_configuration_error(oauth: OAuthKit) -> None:
    transport = _transport(oauth, issuer=oauth.url + "/nobody-here")
    try:
        with pytest.raises(errors.ConfigurationError, match="publishes no"):
            await transport.fetch_token(_request())
    finally:
        await transport.aclose()
    assert oauth.token_requests == 0


async def test_a_resource_without_well_known_metadata_is_found_from_its_401(
    oauth: OAuthKit,
) -> None:
    well_known = "/.well-known/oauth-protected-resource/mcp"
    oauth.faults.add(Fault.json({"error": "not_found"}, status=404), path=well_known)
    transport = _transport(oauth, issuer=None)
    try:
        token = await transport.fetch_token(_request())
    finally:
        await transport.aclose()
    assert token.audience == (oauth.resource,)
    # The well-known URL first (absent), then the resource's own 401 challenge, whose
    # resource_metadata points at the document.
    assert oauth.counts["/mcp"] == 1 and oauth.counts[well_known] == 2
