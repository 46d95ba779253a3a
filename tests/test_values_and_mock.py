"""Token values, the wire parser and MockTransport's tokens and fault knobs."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, datetime

import anyio
import pytest
from brokerkit import SIGNING_KEY, FakeClock
from joserfc import jwt
from joserfc.jwk import KeySet

from authsec_crewai import errors
from authsec_crewai.testing import MockAuthority
from authsec_crewai.testing.authority import format_rfc3339_nanos
from authsec_crewai.token import DelegationToken, TokenRequest, canonical_scopes
from authsec_crewai.transports import MockTransport
from authsec_crewai.wire import parse_rfc3339, parse_token_body

pytestmark = pytest.mark.anyio


def authority(clock: FakeClock, **options: object) -> MockAuthority:
    return MockAuthority(clock=clock, key=SIGNING_KEY, **options)  # type: ignore[arg-type]


def test_token_never_shows_its_value(client_id: str) -> None:
    body = authority(FakeClock()).delegate(client_id)
    token = parse_token_body(body, now=FakeClock()())
    for shown in (repr(token), str(token), f"{token}", f"{token!r}", repr([token])):
        assert token.value not in shown
        assert token.value.split(".")[2] not in shown
        assert token.fingerprint in shown
    with pytest.raises(dataclasses.FrozenInstanceError):
        token.value = "x"  # type: ignore[misc]
    assert token.redacted()["fingerprint"] == token.fingerprint
    assert token.value not in json.dumps(token.redacted())


def test_token_requires_aware_datetimes() -> None:
    naive = datetime(2030, 1, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        DelegationToken("v", frozenset(), naive, naive, "spiffe://x/y", "c")


def test_requests_are_canonical_cache_keys(client_id: str) -> None:
    a = TokenRequest.create(client_id, "read:records read:metrics", ["b", "a", "a"])
    b = TokenRequest.create(client_id, ["read:metrics", "read:records"], ("a", "b"))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a.scope_string == "read:metrics read:records"
    assert canonical_scopes({"x:y"}) == frozenset({"x:y"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-05-20T07:25:36.866214123Z", datetime(2026, 5, 20, 7, 25, 36, 866214, UTC)),
        ("2026-05-20T07:25:36Z", datetime(2026, 5, 20, 7, 25, 36, tzinfo=UTC)),
        ("2026-05-20T09:25:36.5+02:00", datetime(2026, 5, 20, 7, 25, 36, 500000, UTC)),
    ],
)
def test_rfc3339_with_nanoseconds(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize("bad", ["2026-05-20", "yesterday", "2026-05-20T07:25:36.1234567890Z"])
def test_rfc3339_refuses_what_it_cannot_read(bad: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339(bad)


def test_expiry_falls_back_to_ttl_then_expires_in(client_id: str) -> None:
    clock = FakeClock()
    body = authority(clock, ttl_seconds=600).delegate(client_id)
    del body["expires_at"]
    token = parse_token_body(body, now=clock())
    assert token.expires_in(clock()) == pytest.approx(600, abs=1)
    del body["ttl_seconds"]
    body["expires_in"] = 300
    assert parse_token_body(body, now=clock()).expires_in(clock()) == pytest.approx(300, abs=1)
    del body["expires_in"]
    with pytest.raises(errors.InvalidTokenResponseError, match="expires_at"):
        parse_token_body(body, now=clock())


def test_workspace_id_is_read_as_the_tenant(client_id: str) -> None:
    clock = FakeClock()
    body = authority(clock).delegate(client_id)
    body["workspace_id"] = body.pop("tenant_id")
    assert parse_token_body(body, now=clock()).tenant_id == body["workspace_id"]


async def test_mock_tokens_have_the_contracts_claims(client_id: str) -> None:
    clock = FakeClock()
    transport = MockTransport(authority=authority(clock, ttl_seconds=900))
    request = TokenRequest.create(client_id, "read:records", "authsec-api")
    token = await transport.fetch_token(request)
    key_set = KeySet.import_key_set(await transport.fetch_key_set(token.tenant_id))  # type: ignore[arg-type]
    decoded = jwt.decode(token.value, key_set, algorithms=["RS256"])
    assert decoded.header == {"alg": "RS256", "typ": "JWT"}  # no kid
    claims = decoded.claims
    assert claims["sub"] == token.spiffe_id
    assert claims["sub"].startswith(f"spiffe://example.org/tenants/{token.tenant_id}/agents/")
    assert claims["sub"].endswith(f"/crewai/{client_id}")
    assert claims["aud"] == ["authsec-api"]
    assert claims["exp"] - claims["iat"] == 900 and claims["nbf"] == claims["iat"]
    assert uuid.UUID(claims["jti"]) and token.jti == claims["jti"]
    assert set(claims["permissions"]) == token.permissions == {"read:metrics", "read:records"}
    assert token.expires_at == datetime.fromtimestamp(claims["exp"], UTC)


async def test_mock_signs_once_and_returns_the_stored_token(client_id: str) -> None:
    transport = MockTransport(authority=authority(FakeClock()))
    request = TokenRequest.create(client_id, "read:records")
    tokens = [await transport.fetch_token(request) for _ in range(20)]
    assert len({t.value for t in tokens}) == 1
    assert transport.authority.issued == 1
    assert transport.calls == 20


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (400, errors.InvalidClientIdError),
        (401, errors.AuthenticationError),
        (404, errors.NotDelegatedError),
        (410, errors.DelegationExpiredError),
        (429, errors.RateLimitedError),
        (500, errors.ServerError),
        ("timeout", errors.TransportTimeoutError),
    ],
)
async def test_mock_fail_next_injects_typed_failures(
    client_id: str, fault: int | str, error: type[errors.TokenError]
) -> None:
    transport = MockTransport(authority=authority(FakeClock()))
    request = TokenRequest.create(client_id, "read:records")
    transport.fail_next(2, fault)  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(error):
            await transport.fetch_token(request)
    assert (await transport.fetch_token(request)).client_id == client_id


async def test_mock_fail_rate_and_latency(client_id: str) -> None:
    transport = MockTransport(authority=authority(FakeClock()), seed=7, latency=0.001)
    transport.fail_rate(0.3, 503)
    request = TokenRequest.create(client_id, "read:records")
    failures = 0
    start = anyio.current_time()
    for _ in range(200):
        try:
            await transport.fetch_token(request)
        except errors.ServerError:
            failures += 1
    assert 30 < failures < 90
    assert anyio.current_time() - start >= 0.2
    with pytest.raises(ValueError, match="between 0 and 1"):
        transport.fail_rate(1.5)


async def test_mock_refuses_a_non_uuid_client_id() -> None:
    transport = MockTransport(authority=authority(FakeClock()))
    with pytest.raises(errors.InvalidClientIdError, match="AUTHSEC_CLIENT_ID"):
        await transport.fetch_token(TokenRequest.create("agent-7", "read:records"))


def test_nanosecond_expiry_round_trips() -> None:
    assert format_rfc3339_nanos(1779261936.866214123).startswith("2026-05-20T07:25:36.866214")
    assert parse_rfc3339(format_rfc3339_nanos(1779261936.5)).timestamp() == 1779261936.5
