"""The mock AuthSec + secure-vault app: contract, vault authorisation, fault knobs.

Most tests run the app in process through ``httpx.ASGITransport`` (the path
MockTransport uses); the fault and counter tests also go over the loopback
socket, where a dropped connection is a real one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from _server import MockServer
from joserfc import jwt
from joserfc.jwk import RSAKey

from authsec_crewai.testing import (
    BUNDLE_PATH,
    TOKEN_PATH,
    VAULT_RESOURCES,
    Fault,
    MockAuthority,
    MockFaults,
    create_app,
)
from authsec_crewai.transports import MockTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def now() -> list[float]:
    return [1_800_000_000.0]


@pytest.fixture
def authority(rsa_key: RSAKey, now: list[float]) -> MockAuthority:
    return MockAuthority(key=rsa_key, clock=lambda: now[0])


@pytest.fixture
def faults() -> MockFaults:
    return MockFaults()


@pytest.fixture
async def client(authority: MockAuthority, faults: MockFaults) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(authority, faults=faults)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://authsec.test") as c:
        c.app = app  # type: ignore[attr-defined]
        yield c


def _bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


async def _token(client: httpx.AsyncClient, client_id: str) -> str:
    answer = await client.get(TOKEN_PATH, params={"client_id": client_id})
    assert answer.status_code == 200, answer.text
    value: str = answer.json()["token"]
    return value


# --- the AuthSec contract ---------------------------------------------------------------------


async def test_delegation_token_answer_has_the_contract_fields(
    client: httpx.AsyncClient, client_id: str, authority: MockAuthority
) -> None:
    answer = await client.get(TOKEN_PATH, params={"client_id": client_id})
    assert answer.status_code == 200
    body = answer.json()
    fields = {"token", "spiffe_id", "permissions", "audience", "expires_at", "ttl_seconds",
              "client_id", "tenant_id", "status", "issued_at"}  # fmt: skip
    assert set(body) >= fields
    assert body["tenant_id"] == authority.tenant_id
    assert body["expires_at"].endswith("Z") and len(body["expires_at"].split(".")[1]) == 10
    again = await client.get(TOKEN_PATH, headers={"x-client-id": client_id})
    assert again.json()["token"] == body["token"]  # one stored token per agent


@pytest.mark.parametrize("params", [{}, {"client_id": "not-a-uuid"}])
async def test_missing_or_malformed_client_ids_are_400(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    answer = await client.get(TOKEN_PATH, params=params)
    assert answer.status_code == 400
    assert set(answer.json()) == {"error", "details"}


async def test_api_token_is_required_when_configured(
    authority: MockAuthority, client_id: str
) -> None:
    app = create_app(authority, api_token="api-token-123")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://authsec.test"
    ) as c:
        params = {"client_id": client_id}
        assert (await c.get(TOKEN_PATH, params=params)).status_code == 401
        wrong = await c.get(TOKEN_PATH, params=params, headers=_bearer("api-token-124"))
        assert wrong.status_code == 401
        right = await c.get(TOKEN_PATH, params=params, headers=_bearer("api-token-123"))
        assert right.status_code == 200


async def test_revoke_then_404_and_redelegate(client: httpx.AsyncClient, client_id: str) -> None:
    first = await _token(client, client_id)
    admin = f"/authsec/uflow/admin/agents/{client_id}"
    revoked = await client.post(f"{admin}/revoke-token")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert (await client.get(TOKEN_PATH, params={"client_id": client_id})).status_code == 404
    assert (await client.post(f"{admin}/revoke-token")).status_code == 404
    delegated = await client.post(
        f"{admin}/delegate-token",
        json={"agent_type": "crewai", "audience": "billing-api", "ttl_seconds": 120},
    )
    assert delegated.status_code == 200
    assert delegated.json()["audience"] == ["billing-api"]
    second = await _token(client, client_id)
    assert second != first


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"ttl_seconds": "forever"}',
        b'{"ttl_seconds": -5}',
        b'{"permissions": "read:records"}',
        b'{"audience": [1]}',
        b'{"agent_type": 7}',
    ],
)
async def test_delegate_validates_its_body(
    client: httpx.AsyncClient, client_id: str, body: bytes
) -> None:
    answer = await client.post(
        f"/authsec/uflow/admin/agents/{client_id}/delegate-token",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert answer.status_code == 400
    assert "error" in answer.json()


async def test_delegate_refuses_a_non_uuid_agent(client: httpx.AsyncClient) -> None:
    answer = await client.post("/authsec/uflow/admin/agents/agent-7/delegate-token", json={})
    assert answer.status_code == 400


async def test_bundle_and_jwks_publish_different_keys(
    client: httpx.AsyncClient, authority: MockAuthority
) -> None:
    bundle = await client.get(BUNDLE_PATH, params={"tenant_id": authority.tenant_id})
    assert bundle.status_code == 200
    assert bundle.json() == authority.key_set()
    assert (await client.get(BUNDLE_PATH)).status_code == 400
    assert (await client.get(BUNDLE_PATH, params={"tenant_id": "other"})).status_code == 404
    jwks = (await client.get("/.well-known/jwks.json")).json()
    assert jwks["keys"][0]["n"] != bundle.json()["keys"][0]["n"]
    assert "d" not in jwks["keys"][0]
    again = (await client.get("/.well-known/jwks.json")).json()
    assert again == jwks  # generated once per app


# --- the protected vault API -------------------------------------------------------------------


async def test_vault_answers_200_with_realistic_data(
    client: httpx.AsyncClient, client_id: str
) -> None:
    token = await _token(client, client_id)
    records = await client.get("/secure-vault/records", headers=_bearer(token))
    assert records.status_code == 200
    people = records.json()["records"]
    assert {"name", "department", "clearance"} <= set(people[0])
    metrics = (await client.get("/secure-vault/metrics", headers=_bearer(token))).json()
    assert {"revenue_target_usd", "active_users", "infrastructure_status"} <= set(metrics)


async def test_vault_without_a_token_is_401_with_a_challenge(client: httpx.AsyncClient) -> None:
    for headers in ({}, {"authorization": "Basic dXNlcjpwdw=="}, {"authorization": "Bearer "}):
        answer = await client.get("/secure-vault/records", headers=headers)
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"] == 'Bearer realm="secure-vault"'


async def test_vault_refuses_bad_tokens_with_invalid_token(
    client: httpx.AsyncClient, client_id: str, authority: MockAuthority
) -> None:
    token = await _token(client, client_id)
    other = RSAKey.generate_key(2048, private=True)
    claims = jwt.decode(token, authority.key).claims
    forged = jwt.encode({"alg": "RS256", "typ": "JWT"}, claims, other, algorithms=["RS256"])
    for value in (forged, token[:-5], "garbage", token + "x"):
        answer = await client.get("/secure-vault/records", headers=_bearer(value))
        assert answer.status_code == 401, value[:20]
        challenge = answer.headers["www-authenticate"]
        assert 'error="invalid_token"' in challenge
        assert value not in challenge and value not in answer.text


async def test_vault_refuses_an_expired_token_by_the_authority_clock(
    client: httpx.AsyncClient, client_id: str, now: list[float], authority: MockAuthority
) -> None:
    token = await _token(client, client_id)
    now[0] += authority.ttl_seconds + 1
    answer = await client.get("/secure-vault/records", headers=_bearer(token))
    assert answer.status_code == 401
    assert "expired" in answer.headers["www-authenticate"]


async def test_vault_403_when_the_permission_is_missing(
    client: httpx.AsyncClient, client_id: str
) -> None:
    token = await _token(client, client_id)  # read:metrics read:records
    for name in ("incidents", "audit-log"):
        answer = await client.get(f"/secure-vault/{name}", headers=_bearer(token))
        assert answer.status_code == 403
        needed = VAULT_RESOURCES[name][0]
        assert f'scope="{needed}"' in answer.headers["www-authenticate"]
        assert answer.json()["error"] == "insufficient_scope"


async def test_every_vault_resource_opens_with_its_permission(
    client: httpx.AsyncClient, client_id: str, authority: MockAuthority
) -> None:
    authority.delegate(client_id, permissions=[p for p, _ in VAULT_RESOURCES.values()])
    token = await _token(client, client_id)
    for name in VAULT_RESOURCES:
        answer = await client.get(f"/secure-vault/{name}", headers=_bearer(token))
        assert answer.status_code == 200, name
    missing = await client.get("/secure-vault/payroll", headers=_bearer(token))
    assert missing.status_code == 404
    assert (await client.post("/secure-vault/records", headers=_bearer(token))).status_code == 405


async def test_vault_checks_the_audience_when_configured(
    authority: MockAuthority, client_id: str
) -> None:
    app = create_app(authority, api_audience="billing-api")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://authsec.test"
    ) as c:
        token = await _token(c, client_id)  # audience authsec-api
        answer = await c.get("/secure-vault/records", headers=_bearer(token))
        assert answer.status_code == 401
        assert "audience" in answer.headers["www-authenticate"]


async def test_mock_transport_api_serves_the_vault_in_process(client_id: str) -> None:
    from authsec_crewai.token import TokenRequest

    transport = MockTransport()
    try:
        token = await transport.fetch_token(TokenRequest.create(client_id, "read:metrics"))
        async with httpx.AsyncClient(transport=transport.api(), base_url="http://vault") as c:
            answer = await c.get("/secure-vault/metrics", headers=_bearer(token.value))
    finally:
        await transport.aclose()
    assert answer.status_code == 200


# --- faults and counters -----------------------------------------------------------------------


async def test_faults_replace_the_next_answers_in_order(
    client: httpx.AsyncClient, faults: MockFaults, client_id: str
) -> None:
    faults.add(Fault.http(429, retry_after=3))
    faults.add(Fault.http(503), count=2)
    statuses = []
    for _ in range(4):
        answer = await client.get(TOKEN_PATH, params={"client_id": client_id})
        statuses.append((answer.status_code, answer.headers.get("retry-after")))
    assert statuses == [(429, "3"), (503, None), (503, None), (200, None)]
    assert faults.pending == 0
    assert client.app.state.counts[TOKEN_PATH] == 4  # type: ignore[attr-defined]


async def test_faults_only_hit_their_path(
    client: httpx.AsyncClient, faults: MockFaults, authority: MockAuthority
) -> None:
    faults.add(Fault.http(500))  # the token endpoint by default
    bundle = await client.get(BUNDLE_PATH, params={"tenant_id": authority.tenant_id})
    assert bundle.status_code == 200
    assert faults.pending == 1
    faults.add(Fault.http(502), path=None)
    faults.clear()
    assert faults.pending == 0


async def test_in_process_drop_looks_like_a_dropped_connection(
    client: httpx.AsyncClient, faults: MockFaults, client_id: str
) -> None:
    faults.add(Fault.dropped())
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get(TOKEN_PATH, params={"client_id": client_id})


async def test_drop_over_a_socket_closes_the_connection(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(Fault.dropped())
    async with httpx.AsyncClient(base_url=authsec_server.url) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get(TOKEN_PATH, params={"client_id": client_id})
        ok = await c.get(TOKEN_PATH, params={"client_id": client_id})
    assert ok.status_code == 200
    assert authsec_server.count(TOKEN_PATH) == 2


async def test_faults_are_controllable_over_http(
    authsec_server: MockServer, client_id: str
) -> None:
    async with httpx.AsyncClient(base_url=authsec_server.url) as c:
        set_up = await c.post("/_mock/faults", json={"status": 503, "count": 2})
        assert set_up.json() == {"pending": 2, "latency": 0.0}
        await c.post("/_mock/faults", json={"status": 429, "retry_after": 1})
        got = [(await c.get(TOKEN_PATH, params={"client_id": client_id})).status_code
               for _ in range(4)]  # fmt: skip
        assert got == [503, 503, 429, 200]
        assert (await c.post("/_mock/faults", json={"status": 500})).json()["pending"] == 1
        assert (await c.delete("/_mock/faults")).json() == {"pending": 0}
        assert (await c.post("/_mock/faults", json=["nope"])).status_code == 400
        assert (await c.post("/_mock/faults", json={"status": "x"})).status_code == 400
        counts = (await c.get("/_mock/counts")).json()
    assert counts[TOKEN_PATH] == 4
    assert authsec_server.faults.pending == 0


async def test_latency_is_added_to_every_answer(
    client: httpx.AsyncClient, faults: MockFaults, client_id: str
) -> None:
    import anyio

    faults.latency = 0.05
    started = anyio.current_time()
    await client.get(TOKEN_PATH, params={"client_id": client_id})
    assert anyio.current_time() - started >= 0.05


def test_fault_round_trips_through_a_dict() -> None:
    for fault in (
        Fault.http(429, retry_after="Wed, 21 Oct 2026 07:28:00 GMT"),
        Fault.raw(b'{"tok', status=200),
        Fault.oversized(1024, declare_length=True),
        Fault.dropped(),
        Fault.slow(0.5),
    ):
        assert Fault.from_dict(fault.to_dict()) == fault


def test_faults_need_a_positive_count() -> None:
    with pytest.raises(ValueError, match="count"):
        MockFaults().add(Fault.http(500), count=0)
