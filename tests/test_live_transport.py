"""LiveTransport against the mock AuthSec server over a real loopback socket.

No httpx mocking: every request goes through uvicorn, and the server's request
counters prove how many reached it (retries included).
"""

from __future__ import annotations

import json
import socket
import time
from email.utils import formatdate
from typing import Any

import httpx
import pytest
from _server import MockServer

from authsec_crewai import errors
from authsec_crewai.testing import BUNDLE_PATH, TOKEN_PATH, Fault, create_app
from authsec_crewai.testing.authority import format_rfc3339_nanos
from authsec_crewai.token import TokenRequest
from authsec_crewai.transports import MockTransport
from authsec_crewai.transports.live import LiveTransport, parse_retry_after
from authsec_crewai.verify import TokenVerifier, rsa_keys, verify_bearer

pytestmark = pytest.mark.anyio

SCOPES = ("read:records", "read:metrics")


class Sleeps:
    """Records the waits the retry loop asks for, without waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _transport(server: MockServer, **kwargs: Any) -> LiveTransport:
    kwargs.setdefault("backoff", 0.01)
    kwargs.setdefault("max_backoff", 0.02)
    kwargs.setdefault("timeout", 5.0)
    return LiveTransport(server.url, **kwargs)


def _request(client_id: str) -> TokenRequest:
    return TokenRequest.create(client_id, SCOPES)


# --- the happy path ---------------------------------------------------------------------------


async def test_fetch_token_sends_the_contract_request_and_parses_the_answer(
    authsec_server: MockServer, client_id: str
) -> None:
    transport = _transport(authsec_server)
    try:
        token = await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    stored = authsec_server.authority.token_answer(client_id)[1]
    assert token.value == stored["token"]
    assert token.permissions == frozenset(stored["permissions"])
    assert token.tenant_id == authsec_server.authority.tenant_id
    assert token.client_id == client_id
    assert token.spiffe_id == stored["spiffe_id"]
    assert token.audience == ("authsec-api",)
    assert authsec_server.count(TOKEN_PATH) == 1
    sent = authsec_server.requests[-1]
    assert sent.query == {"client_id": client_id, "scope": "read:metrics read:records"}
    assert sent.headers["x-client-id"] == client_id
    assert "authorization" not in sent.headers
    assert sent.headers["user-agent"].startswith("authsec-crewai/")


async def test_nanosecond_expires_at_and_workspace_id_are_read(
    authsec_server: MockServer, client_id: str
) -> None:
    body = authsec_server.authority.delegate(client_id)
    workspace = body.pop("tenant_id")
    body["workspace_id"] = workspace
    exp = json.loads(_payload(body["token"]))["exp"]
    body["expires_at"] = format_rfc3339_nanos(exp - 60 + 0.123456789)  # before the JWT's exp
    authsec_server.faults.add(Fault.json(body))
    transport = _transport(authsec_server)
    try:
        token = await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert token.tenant_id == workspace
    assert token.expires_at.timestamp() == pytest.approx(exp - 60 + 0.123456, abs=1e-6)
    assert token.expires_at.microsecond == 123456


def _payload(value: str) -> bytes:
    import base64

    part = value.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


async def test_the_api_token_is_sent_when_configured(
    loopback_server: Any, authsec_server: MockServer, client_id: str
) -> None:
    loopback_server.app = create_app(authsec_server.authority, api_token="s3cret-api-token")
    good = _transport(authsec_server, api_token="s3cret-api-token")
    bad = _transport(authsec_server, api_token="wrong-token")
    none = _transport(authsec_server)
    try:
        assert (await good.fetch_token(_request(client_id))).client_id == client_id
        for transport in (bad, none):
            with pytest.raises(errors.AuthenticationError, match="AUTHSEC_API_TOKEN"):
                await transport.fetch_token(_request(client_id))
    finally:
        for transport in (good, bad, none):
            await transport.aclose()
    assert "s3cret" not in repr(good)
    assert "<set>" in repr(good)
    assert loopback_server.app.state.counts[TOKEN_PATH] == 3  # 401 is never retried


async def test_mock_and_live_transports_hand_out_equal_tokens(
    authsec_server: MockServer, client_id: str
) -> None:
    mock = MockTransport(authority=authsec_server.authority)
    live = _transport(authsec_server)
    try:
        from_live = await live.fetch_token(_request(client_id))
        from_mock = await mock.fetch_token(_request(client_id))
    finally:
        await live.aclose()
        await mock.aclose()
    assert from_live == from_mock
    assert from_live.redacted() == from_mock.redacted()
    assert authsec_server.authority.issued == 1


# --- status codes ------------------------------------------------------------------------------

STATUS_CASES = [
    (400, errors.InvalidClientIdError, "AUTHSEC_CLIENT_ID"),
    (401, errors.AuthenticationError, "AUTHSEC_API_TOKEN"),
    (404, errors.NotDelegatedError, "administrator"),
    (410, errors.DelegationExpiredError, "delegate a new token"),
    (418, errors.InvalidTokenResponseError, "unexpected status 418"),
    (302, errors.InvalidTokenResponseError, "unexpected status 302"),
]


@pytest.mark.parametrize(("status", "error", "hint"), STATUS_CASES)
async def test_terminal_statuses_become_typed_errors_without_retries(
    authsec_server: MockServer, client_id: str, status: int, error: type[Exception], hint: str
) -> None:
    authsec_server.faults.add(Fault.http(status), count=5)
    transport = _transport(authsec_server)
    try:
        with pytest.raises(error, match=hint):
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert authsec_server.count(TOKEN_PATH) == 1


async def test_a_non_uuid_client_id_is_a_400_from_the_server(authsec_server: MockServer) -> None:
    transport = _transport(authsec_server)
    try:
        with pytest.raises(errors.InvalidClientIdError) as caught:
            await transport.fetch_token(_request("agent-7"))
    finally:
        await transport.aclose()
    assert isinstance(caught.value, errors.ConfigurationError)
    assert "client_id must be a UUID" in str(caught.value)


async def test_revocation_through_the_admin_endpoint_is_a_not_delegated_error(
    authsec_server: MockServer, client_id: str
) -> None:
    transport = _transport(authsec_server)
    admin = f"{authsec_server.url}/authsec/uflow/admin/agents/{client_id}"
    try:
        await transport.fetch_token(_request(client_id))
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"{admin}/revoke-token")
        assert answer.status_code == 200
        assert answer.json()["status"] == "revoked"
        with pytest.raises(errors.NotDelegatedError, match="revoked") as caught:
            await transport.fetch_token(_request(client_id))
        assert caught.value.terminal
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"{admin}/delegate-token",
                json={"agent_type": "crewai", "audience": ["authsec-api"], "ttl_seconds": 600,
                      "permissions": ["read:incidents"]},
            )  # fmt: skip
        assert answer.status_code == 200
        redelegated = await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert redelegated.permissions == frozenset({"read:incidents"})
    assert redelegated.lifetime == pytest.approx(600, abs=1)


# --- retries -----------------------------------------------------------------------------------


async def test_429_then_200_gives_one_token_after_two_requests(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(Fault.http(429))
    transport = _transport(authsec_server)
    try:
        token = await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert token.client_id == client_id
    assert authsec_server.count(TOKEN_PATH) == 2


@pytest.mark.parametrize("fault", [Fault.http(500), Fault.http(502), Fault.http(503),
                                   Fault.dropped()])  # fmt: skip
async def test_transient_faults_are_retried_within_the_budget(
    authsec_server: MockServer, client_id: str, fault: Fault
) -> None:
    authsec_server.faults.add(fault, count=3)
    transport = _transport(authsec_server, max_attempts=6)
    try:
        token = await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert token.client_id == client_id
    assert authsec_server.count(TOKEN_PATH) == 4


async def test_max_attempts_bounds_the_requests(authsec_server: MockServer, client_id: str) -> None:
    authsec_server.faults.add(Fault.http(500), count=10)
    transport = _transport(authsec_server, max_attempts=3)
    try:
        with pytest.raises(errors.ServerError, match="500"):
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert authsec_server.count(TOKEN_PATH) == 3


async def test_the_retry_budget_bounds_the_time(authsec_server: MockServer, client_id: str) -> None:
    authsec_server.faults.add(Fault.http(503), count=1000)
    transport = _transport(
        authsec_server, retry_budget=0.4, backoff=0.05, max_backoff=0.1, max_attempts=1000
    )
    started = time.monotonic()
    try:
        with pytest.raises(errors.ServerError, match="503"):
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert time.monotonic() - started < 0.4 + 0.5  # the budget, plus one request's time
    assert 2 <= authsec_server.count(TOKEN_PATH) < 1000


async def test_retry_after_seconds_is_honoured(authsec_server: MockServer, client_id: str) -> None:
    authsec_server.faults.add(Fault.http(429, retry_after=7))
    sleeps = Sleeps()
    transport = _transport(authsec_server, sleep=sleeps)
    try:
        await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert sleeps.waits == [7.0]
    assert authsec_server.count(TOKEN_PATH) == 2


async def test_retry_after_http_date_is_honoured(
    authsec_server: MockServer, client_id: str
) -> None:
    now = float(int(time.time()))
    authsec_server.faults.add(Fault.http(429, retry_after=formatdate(now + 12, usegmt=True)))
    sleeps = Sleeps()
    transport = _transport(authsec_server, sleep=sleeps, clock=lambda: now)
    try:
        await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert sleeps.waits == [12.0]


async def test_a_retry_after_beyond_the_budget_gives_up_at_once(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(Fault.http(429, retry_after=3600), count=5)
    sleeps = Sleeps()
    transport = _transport(authsec_server, sleep=sleeps, retry_budget=30)
    try:
        with pytest.raises(errors.RateLimitedError) as caught:
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert caught.value.retry_after == 3600
    assert caught.value.retryable
    assert sleeps.waits == []
    assert authsec_server.count(TOKEN_PATH) == 1


async def test_429_without_retry_after_backs_off_with_jitter(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(Fault.http(429), count=4)
    sleeps = Sleeps()
    transport = _transport(authsec_server, sleep=sleeps, backoff=1.0, max_backoff=4.0)
    try:
        await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert len(sleeps.waits) == 4
    for attempt, wait in enumerate(sleeps.waits, start=1):
        assert 0 <= wait <= min(4.0, 2 ** (attempt - 1))


async def test_timeouts_are_retried_then_typed(authsec_server: MockServer, client_id: str) -> None:
    authsec_server.faults.add(Fault.slow(1.0), count=2)
    transport = _transport(authsec_server, timeout=0.2, max_attempts=2)
    try:
        with pytest.raises(errors.TransportTimeoutError, match=r"within 0\.2s"):
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert authsec_server.count(TOKEN_PATH) == 2


async def test_an_unreachable_server_is_a_transport_error(client_id: str) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = LiveTransport(
        f"http://127.0.0.1:{port}", retry_budget=0.2, backoff=0.01, max_backoff=0.02
    )
    try:
        with pytest.raises(errors.TransportError, match="could not talk to AuthSec") as caught:
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert "AUTHSEC_BASE_URL" in str(caught.value)


# --- bad bodies --------------------------------------------------------------------------------


def _bad_bodies(server: MockServer, client_id: str) -> dict[str, tuple[Fault, str]]:
    good = server.authority.delegate(client_id)
    expired = {**good, "expires_at": "2001-01-01T00:00:00.000000001Z"}
    text = json.dumps(good)
    return {
        "non-JSON": (Fault.raw("<html>Bad gateway</html>", content_type="text/html"), "not JSON"),
        "truncated JSON": (Fault.raw(text[: len(text) // 2]), "not JSON"),
        "JSON without token": (Fault.json({"status": "active"}), "no 'token'"),
        "JSON array": (Fault.json([good]), "not a JSON object"),
        "token not a JWT": (Fault.json({**good, "token": "opaque-token"}), "not a compact JWT"),
        "expires_at in the past": (Fault.json(expired), "expired"),
        "10 MB chunked": (Fault.oversized(10 * 1024 * 1024), "larger than"),
        "10 MB with Content-Length": (
            Fault.oversized(10 * 1024 * 1024, declare_length=True),
            "larger than",
        ),
    }


BAD_BODY_NAMES = [
    "non-JSON",
    "truncated JSON",
    "JSON without token",
    "JSON array",
    "token not a JWT",
    "expires_at in the past",
    "10 MB chunked",
    "10 MB with Content-Length",
]


@pytest.mark.parametrize("name", BAD_BODY_NAMES)
async def test_bad_bodies_are_typed_errors_not_crashes(
    authsec_server: MockServer, client_id: str, name: str
) -> None:
    fault, reason = _bad_bodies(authsec_server, client_id)[name]
    authsec_server.faults.add(fault)
    transport = _transport(authsec_server)
    try:
        with pytest.raises(errors.InvalidTokenResponseError, match=reason):
            await transport.fetch_token(_request(client_id))
        # the transport is still usable afterwards
        assert (await transport.fetch_token(_request(client_id))).client_id == client_id
    finally:
        await transport.aclose()
    assert authsec_server.count(TOKEN_PATH) == 2  # a bad body is not retried


async def test_a_huge_error_body_does_not_hide_the_status(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(Fault(status=404, oversize=5 * 1024 * 1024, declare_length=False))
    transport = _transport(authsec_server)
    try:
        # unread, the body is not AuthSec's JSON error: a 404 from something else
        with pytest.raises(errors.EndpointNotFoundError, match="404"):
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()


# --- key sets ----------------------------------------------------------------------------------


async def test_fetch_key_set_always_asks_the_server(authsec_server: MockServer) -> None:
    transport = _transport(authsec_server)
    tenant = authsec_server.authority.tenant_id
    try:
        first = await transport.fetch_key_set(tenant)
        second = await transport.fetch_key_set(tenant)
        assert await transport.fetch_key_set(None) is None
        with pytest.raises(errors.TokenVerificationError, match="404"):
            await transport.fetch_key_set("another-tenant")
    finally:
        await transport.aclose()
    assert first == second == authsec_server.authority.key_set()
    assert authsec_server.count(BUNDLE_PATH) == 3


async def test_key_set_fetches_are_retried_too(authsec_server: MockServer) -> None:
    authsec_server.faults.add(Fault.http(503), count=2, path=BUNDLE_PATH)
    transport = _transport(authsec_server)
    try:
        key_set = await transport.fetch_key_set(authsec_server.authority.tenant_id)
    finally:
        await transport.aclose()
    assert key_set == authsec_server.authority.key_set()
    assert authsec_server.count(BUNDLE_PATH) == 3


async def test_a_malformed_key_set_is_refused(authsec_server: MockServer) -> None:
    authsec_server.faults.add(Fault.json({"keys": "nope"}), path=BUNDLE_PATH)
    transport = _transport(authsec_server)
    try:
        with pytest.raises(errors.InvalidTokenResponseError, match="JWK set"):
            await transport.fetch_key_set(authsec_server.authority.tenant_id)
    finally:
        await transport.aclose()


async def test_live_tokens_verify_with_the_bundle_but_not_with_jwks_json(
    authsec_server: MockServer, client_id: str
) -> None:
    transport = _transport(authsec_server)
    try:
        token = await transport.fetch_token(_request(client_id))
        await TokenVerifier(transport, audience=["authsec-api"]).verify(token)
        async with httpx.AsyncClient(base_url=authsec_server.url) as client:
            jwks = (await client.get("/.well-known/jwks.json")).json()
    finally:
        await transport.aclose()
    assert len(rsa_keys(jwks)) == 1
    with pytest.raises(errors.TokenVerificationError, match="not signed"):
        verify_bearer(token.value, jwks, now=time.time())


async def test_the_verifier_re_reads_a_rotated_key_set_over_http(
    authsec_server: MockServer, client_id: str, rsa_key: Any
) -> None:
    from joserfc.jwk import RSAKey

    transport = _transport(authsec_server)
    verifier = TokenVerifier(transport)
    try:
        await verifier.verify(await transport.fetch_token(_request(client_id)))
        authsec_server.authority.key = RSAKey.generate_key(2048, private=True)
        authsec_server.authority.delegate(client_id)
        await verifier.verify(await transport.fetch_token(_request(client_id)))
    finally:
        await transport.aclose()
    assert authsec_server.count(BUNDLE_PATH) == 2


# --- configuration -----------------------------------------------------------------------------


def test_repr_never_shows_the_api_token() -> None:
    transport = LiveTransport("https://authsec.example.com/", api_token="very-secret-value")
    assert transport.base_url == "https://authsec.example.com"
    assert "very-secret-value" not in repr(transport)
    assert "very-secret-value" not in str(vars(transport).get("base_url"))


async def test_api_is_one_shared_transport_closed_by_aclose() -> None:
    transport = LiveTransport("https://authsec.example.com")
    api = transport.api()
    assert transport.api() is api
    assert isinstance(api, httpx.AsyncHTTPTransport)
    await transport.aclose()
    assert transport.api() is not api
    await transport.aclose()


async def test_a_client_passed_in_is_used_and_not_closed(
    authsec_server: MockServer, client_id: str
) -> None:
    async with httpx.AsyncClient() as client:
        transport = LiveTransport(authsec_server.url, client=client)
        await transport.fetch_token(_request(client_id))
        await transport.aclose()
        assert not client.is_closed


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", 5.0),
        ("0", 0.0),
        (" 2.5 ", 2.5),
        ("-1", None),
        ("nan", None),
        ("soon", None),
        ("", None),
        (None, None),
        (formatdate(1_000_030, usegmt=True), 30.0),
        (formatdate(999_000, usegmt=True), 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=1_000_000) == expected


# --- the broker over the live transport ---------------------------------------------------------


async def test_a_thousand_concurrent_callers_cause_one_request_at_the_server(
    authsec_server: MockServer, client_id: str
) -> None:
    import anyio

    from authsec_crewai.broker import TokenBroker

    authsec_server.faults.latency = 0.05  # keep the one fetch in flight while callers pile up
    tokens = []

    async def caller(broker: TokenBroker) -> None:
        tokens.append(await broker.token("read:records"))

    async with TokenBroker(_transport(authsec_server), client_id=client_id) as broker:
        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(caller, broker)
        stats = broker.stats
    assert len(tokens) == 1000
    assert len({t.value for t in tokens}) == 1
    assert authsec_server.count(TOKEN_PATH) == 1
    assert authsec_server.count(BUNDLE_PATH) == 1  # verified once, with one key-set read
    assert stats.fetches == 1


async def test_after_a_revoke_the_next_refresh_drops_the_token_and_callers_fail(
    authsec_server: MockServer, client_id: str
) -> None:
    from authsec_crewai.broker import RefreshPolicy, TokenBroker

    now = [time.time()]
    authsec_server.authority.clock = lambda: now[0]
    transport = _transport(authsec_server, clock=lambda: now[0])
    policy = RefreshPolicy(jitter_fraction=0.0, failure_memory=0.0)
    async with TokenBroker(
        transport, client_id=client_id, audience="authsec-api", policy=policy,
        clock=lambda: now[0],
    ) as broker:  # fmt: skip
        token = await broker.token("read:records")
        assert (await broker.token("read:records")).value == token.value  # cached
        async with httpx.AsyncClient(base_url=authsec_server.url) as admin:
            revoked = await admin.post(f"/authsec/uflow/admin/agents/{client_id}/revoke-token")
        assert revoked.status_code == 200
        assert broker.cached_token("read:records") is not None  # nothing asked yet
        now[0] = token.expires_at_ts - 10  # inside the mandatory window: must refresh
        for _ in range(3):
            with pytest.raises(errors.NotDelegatedError, match="administrator"):
                await broker.token("read:records")
        assert broker.cached_token("read:records") is None
        assert broker.stats.failures >= 1
    assert authsec_server.count(TOKEN_PATH) >= 2


async def test_invalidate_makes_the_broker_ask_the_server_again(
    authsec_server: MockServer, client_id: str
) -> None:
    from authsec_crewai.broker import TokenBroker

    async with TokenBroker(_transport(authsec_server), client_id=client_id) as broker:
        first = await broker.token("read:records")
        assert broker.invalidate(first)
        assert not broker.invalidate(first)
        second = await broker.token("read:records")
    assert second.jti == first.jti  # the server hands out its one stored token again
    assert authsec_server.count(TOKEN_PATH) == 2
