"""Record an OAuth session against the test server, replay it offline.

No client secret, assertion, refresh token or usable access token ever reaches
the cassette: JWT access tokens lose their signature, opaque ones are replaced
by a stand-in that names them only by fingerprint. The replay is served with
the recording's cache keys (issuer, resource) and client-id rule.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal
from urllib.parse import quote_plus

import httpx
import pytest
from joserfc.jwk import RSAKey
from oauthkit import AGENT_KEY_ID, BASIC_CLIENT, JWT_CLIENT, PUBLIC_CLIENT, SECRET, OAuthKit

from authsec_crewai.auth import BrokerAuth
from authsec_crewai.broker import TokenBroker
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.stores.chain import LocalRefreshChain
from authsec_crewai.testing import block_network
from authsec_crewai.token import DelegationToken
from authsec_crewai.transports import OAuthTransport, RecordingTransport, ReplayTransport
from authsec_crewai.wiring import build_broker

pytestmark = pytest.mark.anyio

SCOPE = "read:records"


async def _session(
    transport: OAuthTransport | ReplayTransport | RecordingTransport,
    oauth: OAuthKit,
    client_id: str,
) -> tuple[DelegationToken, httpx.Response]:
    clock = transport.clock if not isinstance(transport, OAuthTransport) else None
    kwargs = {"clock": clock} if clock is not None else {}
    async with TokenBroker(transport, client_id=client_id, **kwargs) as broker:  # type: ignore[arg-type]
        token = await broker.token(SCOPE)
        async with httpx.AsyncClient(
            transport=transport.api(), auth=BrokerAuth(broker, SCOPE)
        ) as client:
            answer = await client.get(oauth.resource)
    return token, answer


@pytest.mark.parametrize("token_format", ["jwt", "opaque"])
async def test_a_client_credentials_session_replays_with_no_secret_in_the_cassette(
    oauth: OAuthKit, tmp_path: Path, token_format: Literal["jwt", "opaque"]
) -> None:
    oauth.authority.token_format = token_format
    path = tmp_path / "oauth.json"
    live = OAuthTransport(
        issuer=oauth.issuer, resource=oauth.resource, client_id=BASIC_CLIENT, client_secret=SECRET
    )
    recorded, answer = await _session(RecordingTransport(live, path), oauth, BASIC_CLIENT)
    assert answer.status_code == 200
    text = path.read_text()
    basic = base64.b64encode(f"{quote_plus(BASIC_CLIENT)}:{quote_plus(SECRET)}".encode()).decode()
    for secret in (SECRET, quote_plus(SECRET), basic, recorded.value):
        assert secret not in text
    if token_format == "jwt":
        assert recorded.value.rsplit(".", 1)[0] in text  # header and claims, no signature

    requests = oauth.token_requests
    with block_network() as attempts:
        replay = ReplayTransport(path)
        assert replay.info.issuer == oauth.issuer and replay.info.client_ids == "opaque"
        replayed, again = await _session(replay, oauth, BASIC_CLIENT)
    assert attempts == [] and oauth.token_requests == requests
    assert again.status_code == 200 and again.json() == answer.json()
    assert replayed.permissions == recorded.permissions
    assert replayed.audience == (oauth.resource,)
    assert replayed.expires_at == recorded.expires_at.replace(microsecond=0)
    assert replayed.spiffe_id == recorded.spiffe_id and replayed.value != recorded.value


async def test_private_key_jwt_and_refresh_chain_sessions_leave_no_credential(
    oauth: OAuthKit, tmp_path: Path, client_key: RSAKey
) -> None:
    pem = client_key.as_pem(private=True).decode()
    path = tmp_path / "jwt.json"
    live = OAuthTransport(
        issuer=oauth.issuer,
        resource=oauth.resource,
        client_id=JWT_CLIENT,
        private_key=pem.encode(),
        key_id=AGENT_KEY_ID,
    )
    await _session(RecordingTransport(live, path), oauth, JWT_CLIENT)
    seed = oauth.authority.issue_refresh_token(PUBLIC_CLIENT, [SCOPE])
    chain = LocalRefreshChain(seed)
    refreshing = OAuthTransport(
        issuer=oauth.issuer, resource=oauth.resource, client_id=PUBLIC_CLIENT, refresh_chain=chain
    )
    chained = tmp_path / "chain.json"
    await _session(RecordingTransport(refreshing, chained), oauth, PUBLIC_CLIENT)
    text = path.read_text() + chained.read_text()
    for secret in (pem.splitlines()[1], seed, *chain.secrets(), "client_assertion"):
        assert secret not in text
    assert [g.auth_method for g in oauth.authority.grants] == ["private_key_jwt", "none"]


async def test_an_oauth_cassette_replays_from_settings_alone(
    oauth: OAuthKit, tmp_path: Path, clean_env: None
) -> None:
    path = tmp_path / "oauth.json"
    live = OAuthTransport(
        issuer=oauth.issuer, resource=oauth.resource, client_id=BASIC_CLIENT, client_secret=SECRET
    )
    recorded, _ = await _session(RecordingTransport(live, path), oauth, BASIC_CLIENT)
    settings = AuthSecSettings(mode="replay", cassette=path)
    with block_network() as attempts:
        async with build_broker(settings) as broker:
            assert broker.client_id == BASIC_CLIENT  # the recorded (opaque) client id
            replayed = await broker.token(SCOPE)
            request = broker.request_for(SCOPE)
    assert attempts == []
    assert replayed.permissions == recorded.permissions
    assert request.issuer == oauth.issuer and request.audience == (oauth.resource,)


async def test_an_oauth_session_records_and_replays_from_settings_alone(
    oauth: OAuthKit, tmp_path: Path, clean_env: None
) -> None:
    path = tmp_path / "recorded.json"
    recording = AuthSecSettings(
        mode="record",
        oauth_issuer=oauth.issuer,
        resource=oauth.resource,
        client_id=BASIC_CLIENT,  # opaque, not a UUID: recording an OAuth server takes it
        client_secret=SECRET,
        cassette=path,
    )
    async with build_broker(recording) as broker:
        assert broker.transport.info.client_ids == "opaque"
        recorded = await broker.token(SCOPE)
    assert oauth.token_requests == 1
    text = path.read_text()
    for secret in (SECRET, quote_plus(SECRET), recorded.value):
        assert secret not in text
    with block_network() as attempts:
        async with build_broker(AuthSecSettings(mode="replay", cassette=path)) as broker:
            replayed = await broker.token(SCOPE)
            assert broker.request_for(SCOPE).issuer == oauth.issuer
    assert attempts == [] and oauth.token_requests == 1
    assert replayed.permissions == recorded.permissions


def test_recording_an_oauth_server_needs_what_oauth_mode_needs(clean_env: None) -> None:
    from authsec_crewai import errors

    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_CLIENT_SECRET"):
        AuthSecSettings(
            mode="record", oauth_issuer="https://as.example", client_id="svc", cassette="c.json"
        )
    # Recording AuthSec itself still takes only its agents' UUIDs.
    with pytest.raises(errors.ConfigurationError, match="UUID"):
        AuthSecSettings(
            mode="record", base_url="https://authsec.example", client_id="svc", cassette="c.json"
        )
