"""Several agents, several identities: the mock knows them, the settings name them.

The mock authority gives each client id its own delegation and permissions,
as the AuthSec server does; ``AUTHSEC_AGENTS`` maps CrewAI roles to client ids
and is validated like every other setting. (The tools and crews that use them
are tested in ``test_crew_agents.py``.)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from _server import LoopbackServer, MockServer
from joserfc import jwt
from joserfc.jwk import RSAKey

from authsec_crewai import errors
from authsec_crewai.settings import AuthSecSettings, role_key
from authsec_crewai.testing import TOKEN_PATH, MockAuthority, MockFaults, create_app
from authsec_crewai.testing.mockserver import ADMIN_PREFIX
from authsec_crewai.token import TokenRequest
from authsec_crewai.transports import LiveTransport, MockTransport
from authsec_crewai.wiring import client_id_for

ANALYST = "a1a1a1a1-0000-4000-8000-00000000a001"
WRITER = "b2b2b2b2-0000-4000-8000-00000000b002"
STRANGER = "c3c3c3c3-0000-4000-8000-00000000c003"
AGENTS = {ANALYST: ["read:records", "read:metrics"], WRITER: ["read:metrics"]}


@pytest.fixture(autouse=True)
def _clean(clean_env: None) -> None:
    """No AUTHSEC_* variable or .env file from the machine running the tests."""


# --- the mock authority: one delegation per agent ------------------------------------------------


def _claims(body: dict[str, object], key: RSAKey) -> dict[str, object]:
    return dict(jwt.decode(str(body["token"]), key, algorithms=["RS256"]).claims)


def test_each_listed_agent_gets_its_own_permissions_and_identity(rsa_key: RSAKey) -> None:
    authority = MockAuthority(key=rsa_key, agents=AGENTS, permissions=["read:incidents"])
    answers = {cid: authority.token_answer(cid) for cid in (ANALYST, WRITER, STRANGER)}
    assert {cid: status for cid, (status, _) in answers.items()} == dict.fromkeys(answers, 200)
    analyst, writer, stranger = (answers[cid][1] for cid in (ANALYST, WRITER, STRANGER))
    assert analyst["permissions"] == ["read:metrics", "read:records"]
    assert writer["permissions"] == ["read:metrics"]
    assert stranger["permissions"] == ["read:incidents"]  # the default for ids not listed
    for client_id, body in ((ANALYST, analyst), (WRITER, writer)):
        claims = _claims(body, rsa_key)
        assert claims["client_id"] == body["client_id"] == client_id
        assert str(claims["sub"]).endswith(f"/{client_id}")
        assert claims["permissions"] == body["permissions"]
    assert len({analyst["token"], writer["token"], stranger["token"]}) == 3
    assert authority.issued == 3


def test_refuse_unknown_agents_answers_404_like_an_undelegated_agent(rsa_key: RSAKey) -> None:
    authority = MockAuthority(key=rsa_key, agents=AGENTS, unknown_agents="refuse")
    assert authority.token_answer(ANALYST)[0] == 200
    status, body = authority.token_answer(STRANGER)
    assert (status, body["details"]) == (404, "never delegated")
    assert authority.issued == 1
    # An administrator may still delegate any agent by hand; then it has a token.
    authority.delegate(STRANGER, permissions=["read:audit"])
    status, body = authority.token_answer(STRANGER)
    assert (status, body["permissions"]) == (200, ["read:audit"])


def test_revoking_one_agent_leaves_the_others_alone(rsa_key: RSAKey) -> None:
    authority = MockAuthority(key=rsa_key, agents=AGENTS)
    writer_token = authority.token_answer(WRITER)[1]["token"]
    authority.token_answer(ANALYST)
    assert authority.revoke(ANALYST)["status"] == "revoked"
    assert authority.token_answer(ANALYST)[0] == 404
    status, body = authority.token_answer(WRITER)
    assert (status, body["token"]) == (200, writer_token)


def test_a_listed_agent_is_redelegated_with_its_own_permissions_after_expiry(
    rsa_key: RSAKey,
) -> None:
    now = [1_800_000_000.0]
    authority = MockAuthority(
        key=rsa_key, agents=AGENTS, unknown_agents="refuse", ttl_seconds=60, clock=lambda: now[0]
    )
    first = authority.token_answer(WRITER)[1]
    now[0] += 61
    status, second = authority.token_answer(WRITER)
    assert status == 200 and second["token"] != first["token"]
    assert second["permissions"] == ["read:metrics"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"agents": {"analyst": ["read:records"]}}, "'analyst' is not a UUID"),
        ({"agents": {ANALYST: "read:records"}}, "must be a list of permission strings"),
        ({"agents": {ANALYST: [3]}}, "must be a list of permission strings"),
        ({"permissions": "read:records"}, "permissions must be a list"),
        ({"unknown_agents": "ignore"}, "unknown_agents must be 'delegate' or 'refuse'"),
    ],
)
def test_agent_configuration_mistakes_are_named(
    rsa_key: RSAKey, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MockAuthority(key=rsa_key, **options)  # type: ignore[arg-type]


def test_mock_transport_takes_agents_but_not_beside_an_authority(rsa_key: RSAKey) -> None:
    transport = MockTransport(agents={WRITER: ["read:metrics"]})
    assert transport.authority.permissions_for(WRITER) == ("read:metrics",)
    with pytest.raises(ValueError, match="not beside it"):
        MockTransport(authority=MockAuthority(key=rsa_key), agents=AGENTS)


# --- the mock server: per-agent answers, counted per agent ---------------------------------------


@pytest.fixture
def agents_server(loopback_server: LoopbackServer, rsa_key: RSAKey) -> Iterator[MockServer]:
    """The mock server on loopback with an analyst and a writer; other ids are refused."""
    authority = MockAuthority(key=rsa_key, agents=AGENTS, unknown_agents="refuse")
    faults = MockFaults()
    app = create_app(authority, faults=faults)
    loopback_server.app = app
    try:
        yield MockServer(url=loopback_server.url, app=app, authority=authority, faults=faults)
    finally:
        loopback_server.app = None


@pytest.fixture
async def http(agents_server: MockServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=agents_server.url) as client:
        yield client


@pytest.mark.anyio
async def test_the_server_counts_token_requests_and_vault_calls_per_agent(
    agents_server: MockServer, http: httpx.AsyncClient
) -> None:
    tokens = {}
    for client_id in (ANALYST, WRITER):
        answer = await http.get(TOKEN_PATH, params={"client_id": client_id})
        assert answer.status_code == 200
        tokens[client_id] = answer.json()["token"]
    refused = await http.get(TOKEN_PATH, params={"client_id": STRANGER})
    assert refused.status_code == 404

    def bearer(client_id: str) -> dict[str, str]:
        return {"authorization": f"Bearer {tokens[client_id]}"}

    assert (await http.get("/secure-vault/records", headers=bearer(ANALYST))).status_code == 200
    assert (await http.get("/secure-vault/metrics", headers=bearer(WRITER))).status_code == 200
    assert (await http.get("/secure-vault/records", headers=bearer(WRITER))).status_code == 403
    assert (await http.get("/secure-vault/records")).status_code == 401  # nobody: not counted

    counts = agents_server.agent_counts
    assert counts == {
        (ANALYST, TOKEN_PATH): 1,
        (WRITER, TOKEN_PATH): 1,
        (STRANGER, TOKEN_PATH): 1,
        (ANALYST, "/secure-vault/records"): 1,
        (WRITER, "/secure-vault/metrics"): 1,
        (WRITER, "/secure-vault/records"): 1,
    }
    by_agent = (await http.get("/_mock/agents")).json()
    assert by_agent[WRITER] == {
        TOKEN_PATH: 1,
        "/secure-vault/metrics": 1,
        "/secure-vault/records": 1,
    }


@pytest.mark.anyio
async def test_admin_delegation_of_a_new_agent_over_http(
    agents_server: MockServer, http: httpx.AsyncClient
) -> None:
    assert (await http.get(TOKEN_PATH, params={"client_id": STRANGER})).status_code == 404
    issued = await http.post(
        f"{ADMIN_PREFIX}/{STRANGER}/delegate-token", json={"permissions": ["read:incidents"]}
    )
    assert issued.status_code == 200
    # Without permissions in the body a listed agent keeps its own.
    again = await http.post(f"{ADMIN_PREFIX}/{WRITER}/delegate-token", json={})
    assert again.json()["permissions"] == ["read:metrics"]
    transport = LiveTransport(agents_server.url, retry_budget=0)
    try:
        token = await transport.fetch_token(TokenRequest.create(STRANGER, "read:incidents"))
    finally:
        await transport.aclose()
    assert token.permissions == frozenset({"read:incidents"})
    assert token.client_id == STRANGER


# --- AUTHSEC_AGENTS -------------------------------------------------------------------------------


def test_agents_from_the_environment_as_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHSEC_AGENTS", f" Secure vault  analyst = {ANALYST} ,writer={WRITER},")
    settings = AuthSecSettings()
    assert settings.agents == {"Secure vault analyst": ANALYST, "writer": WRITER}
    assert settings.client_id_for_role("secure VAULT analyst") == ANALYST
    assert settings.client_id_for_role("Writer") == WRITER
    assert settings.client_id_for_role("editor") is None


def test_agents_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    roles = {"Analyst, senior": ANALYST, "Writer = editor": WRITER}  # JSON allows , and =
    monkeypatch.setenv("AUTHSEC_AGENTS", json.dumps(roles))
    assert AuthSecSettings().agents == roles


def test_agents_unset_or_empty_is_no_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AuthSecSettings().agents == {}
    monkeypatch.setenv("AUTHSEC_AGENTS", "  ")
    assert AuthSecSettings().agents == {}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("analyst", "entry 'analyst' is not role=client-id"),
        (f"analyst={ANALYST},writer", "entry 'writer' is not role=client-id"),
        ("analyst=not-a-uuid", "the client id of role 'analyst' must be the agent's UUID"),
        (f"={ANALYST}", "an agent role is empty"),
        (f"Analyst={ANALYST},analyst ={WRITER}", "roles 'Analyst' and 'analyst' are the same"),
        ('{"analyst": ', "looks like JSON but is not valid JSON"),
        ('{"analyst": 7}', "the client id of role 'analyst' must be the agent's UUID"),
        ('["analyst"]', "not role=client-id"),
    ],
)
def test_agents_errors_name_the_variable_and_the_role(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("AUTHSEC_AGENTS", value)
    with pytest.raises(errors.ConfigurationError) as info:
        AuthSecSettings()
    text = str(info.value)
    assert "AUTHSEC_AGENTS: " in text
    assert message in text


def test_a_json_value_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_AGENTS: must map agent roles"):
        AuthSecSettings(agents=7)


def test_agents_and_a_server_make_auto_live_without_a_single_client_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Several agents' ids are a live configuration: never a quiet mock."""
    monkeypatch.setenv("AUTHSEC_BASE_URL", "https://authsec.example.com")
    monkeypatch.setenv("AUTHSEC_AGENTS", f"analyst={ANALYST}")
    settings = AuthSecSettings()
    assert settings.resolved_mode == "live"
    with pytest.raises(errors.ConfigurationError, match="only the agents in AUTHSEC_AGENTS"):
        client_id_for(settings)  # an agent not listed has no identity


def test_live_with_neither_client_id_nor_agents_names_both() -> None:
    with pytest.raises(errors.ConfigurationError) as info:
        AuthSecSettings(mode="live", base_url="https://authsec.example.com")
    assert "AUTHSEC_CLIENT_ID is not set" in str(info.value)
    assert "AUTHSEC_AGENTS" in str(info.value)


def test_role_key_ignores_case_and_spacing() -> None:
    assert role_key("  Secure\tVault   ANALYST ") == role_key("secure vault analyst")
    assert role_key("analyst") != role_key("analysts")


def test_uuid_client_ids_of_agents_are_kept_as_written() -> None:
    upper = str(uuid.uuid4()).upper()
    assert AuthSecSettings(agents={"analyst": upper}).agents == {"analyst": upper}


# --- the audit trail names the agent --------------------------------------------------------------


@pytest.mark.anyio
async def test_every_fetch_log_event_names_the_agent(rsa_key: RSAKey) -> None:
    from structlog.testing import capture_logs

    from authsec_crewai.broker import TokenBroker
    from authsec_crewai.fetch import SecureFetcher

    transport = MockTransport(authority=MockAuthority(key=rsa_key, agents=AGENTS))
    async with TokenBroker(transport, client_id=WRITER) as broker:
        fetcher = SecureFetcher(broker, api_transport=transport.api())
        with capture_logs() as logs:
            await fetcher.fetch("secure-vault/metrics", "read:metrics")
            with pytest.raises(errors.InsufficientScopeError):
                await fetcher.fetch("secure-vault/records", "read:records")
            with pytest.raises(errors.EndpointRefusedError):
                await fetcher.fetch("../etc/passwd", "read:metrics")
            with pytest.raises(errors.ProtectedApiError):
                await fetcher.fetch("secure-vault/nothing-here", "read:metrics")
    fetch_events = [e for e in logs if str(e["event"]).startswith("fetch.")]
    assert {e["event"] for e in fetch_events} >= {"fetch.ok", "fetch.refused", "fetch.failed"}
    assert all(e["client_id"] == WRITER for e in fetch_events), fetch_events
