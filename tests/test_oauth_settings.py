"""AUTHSEC_MODE=oauth: settings read and checked once, secrets never shown, and
``build_broker(AuthSecSettings())`` building all of it against the test server."""

from __future__ import annotations

from pathlib import Path

import pytest
from joserfc.jwk import RSAKey
from oauthkit import AGENT_KEY_ID, BASIC_CLIENT, JWT_CLIENT, PUBLIC_CLIENT, SECRET, OAuthKit
from structlog.testing import capture_logs

from authsec_crewai import errors
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.stores.chain import LocalRefreshChain
from authsec_crewai.transports import OAuthTransport
from authsec_crewai.wiring import build_broker

pytestmark = pytest.mark.usefixtures("clean_env")


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        monkeypatch.setenv(f"AUTHSEC_{name.upper()}", value)


def test_an_opaque_client_id_is_accepted_in_oauth_mode_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _env(monkeypatch, client_id="agent-1@example.com", oauth_issuer="https://as.example")
    with pytest.raises(errors.ConfigurationError, match="UUID"):
        AuthSecSettings(mode="live", base_url="https://authsec.example")
    _env(monkeypatch, mode="oauth", client_secret="shh")
    settings = AuthSecSettings()
    assert settings.resolved_mode == "oauth" and settings.client_id == "agent-1@example.com"


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"client_secret": "s"}, "AUTHSEC_CLIENT_ID"),
        ({"client_id": "a", "client_secret": "s"}, "AUTHSEC_OAUTH_ISSUER"),
        ({"client_id": "a", "oauth_issuer": "https://as.example"}, "AUTHSEC_CLIENT_SECRET"),
        (
            {"client_id": "a", "client_secret": "s", "oauth_issuer": "ftp://as.example"},
            "AUTHSEC_OAUTH_ISSUER",
        ),
    ],
)
def test_missing_or_wrong_oauth_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, str], named: str
) -> None:
    _env(monkeypatch, mode="oauth", **values)
    with pytest.raises(errors.ConfigurationError, match=named):
        AuthSecSettings()


def test_secrets_come_from_values_or_files_and_are_never_shown(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, client_key: RSAKey
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-a-file\n")
    key_file = tmp_path / "agent.pem"
    key_file.write_bytes(client_key.as_pem(private=True))
    _env(
        monkeypatch,
        mode="oauth",
        client_id="a",
        oauth_issuer="https://as.example",
        client_secret=f"file:{secret_file}",
        client_key=str(key_file),
        oauth_refresh_token="/looks-like-a-path-but-is-a-value",
    )
    settings = AuthSecSettings()
    secret, pem, refresh = settings.oauth_secrets()
    assert secret == "from-a-file"
    assert pem is not None and pem.startswith("-----BEGIN")
    assert refresh == "/looks-like-a-path-but-is-a-value"
    shown = repr(settings) + str(settings) + str(settings.model_dump())
    for value in ("from-a-file", pem.splitlines()[1], refresh):
        assert value not in shown


def test_a_key_that_is_not_pem_is_refused_without_quoting_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bad = tmp_path / "agent.pem"
    bad.write_text("secret-material-not-pem")
    _env(monkeypatch, mode="oauth", client_id="a", oauth_issuer="https://as.example")
    _env(monkeypatch, client_key=str(bad))
    with pytest.raises(errors.ConfigurationError) as caught:
        AuthSecSettings()
    assert "AUTHSEC_CLIENT_KEY" in str(caught.value)
    assert "secret-material" not in str(caught.value)
    _env(monkeypatch, client_key=str(tmp_path / "missing.pem"))
    with pytest.raises(errors.ConfigurationError, match="cannot read"):
        AuthSecSettings()


@pytest.mark.anyio
async def test_build_broker_builds_client_credentials_with_private_key_jwt(
    monkeypatch: pytest.MonkeyPatch, oauth: OAuthKit, client_key: RSAKey, tmp_path: Path
) -> None:
    key_file = tmp_path / "agent.pem"
    key_file.write_bytes(client_key.as_pem(private=True))
    _env(
        monkeypatch,
        mode="oauth",
        client_id=JWT_CLIENT,
        resource=oauth.resource,  # the issuer is discovered from it (RFC 9728)
        client_key=str(key_file),
        client_key_id=AGENT_KEY_ID,
    )
    settings = AuthSecSettings()
    assert settings.api_base_url == oauth.resource
    with capture_logs() as logs:
        async with build_broker(settings) as broker:
            assert isinstance(broker.transport, OAuthTransport)
            token = await broker.token("read:records")
    assert token.audience == (oauth.resource,)
    assert [g.auth_method for g in oauth.authority.grants] == ["private_key_jwt"]
    assert client_key.as_pem(private=True).decode().splitlines()[1] not in str(logs)


@pytest.mark.anyio
async def test_build_broker_spends_a_refresh_token_chain_once_per_turn(
    monkeypatch: pytest.MonkeyPatch, oauth: OAuthKit
) -> None:
    seed = oauth.authority.issue_refresh_token(PUBLIC_CLIENT, ["read:records"])
    _env(
        monkeypatch,
        mode="oauth",
        client_id=PUBLIC_CLIENT,
        oauth_issuer=oauth.issuer,
        oauth_refresh_token=seed,
    )
    async with build_broker(AuthSecSettings()) as broker:
        transport = broker.transport
        assert isinstance(transport, OAuthTransport)
        assert isinstance(transport._chain, LocalRefreshChain)
        first = await broker.token("read:records")
        broker.invalidate(first)
        second = await broker.token("read:records")
        assert seed not in repr(transport) + repr(transport.info)
    assert first.fingerprint != second.fingerprint
    assert [g.grant_type for g in oauth.authority.grants] == ["refresh_token"] * 2
    assert set(oauth.authority.refresh_presented.values()) == {1}


@pytest.mark.anyio
async def test_basic_secret_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, oauth: OAuthKit
) -> None:
    _env(
        monkeypatch,
        mode="oauth",
        client_id=BASIC_CLIENT,
        oauth_issuer=oauth.issuer,
        resource=oauth.resource,
        client_secret=SECRET,
    )
    async with build_broker(AuthSecSettings()) as broker:
        await broker.token("read:records")
    assert oauth.authority.grants[0].auth_method == "client_secret_basic"


@pytest.mark.anyio
async def test_a_confidential_client_authenticates_its_refresh_grants(
    monkeypatch: pytest.MonkeyPatch, oauth: OAuthKit
) -> None:
    seed = oauth.authority.issue_refresh_token(BASIC_CLIENT, ["read:records"])
    _env(
        monkeypatch,
        mode="oauth",
        client_id=BASIC_CLIENT,
        oauth_issuer=oauth.issuer,
        client_secret=SECRET,
        oauth_refresh_token=seed,
    )
    async with build_broker(AuthSecSettings()) as broker:
        await broker.token("read:records")
    (grant,) = oauth.authority.grants
    assert (grant.grant_type, grant.auth_method) == ("refresh_token", "client_secret_basic")
