"""RecordingTransport and ReplayTransport: record a real session over a loopback
socket, replay it with the server stopped and the network blocked, on asyncio and
trio, an hour of wall time later; record modes; redaction end to end; settings
and CLI wiring."""

from __future__ import annotations

import base64
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from brokerkit import loops_calling, run_threads
from cassettekit import API_TOKEN, problems_in, scan_written_cassettes  # noqa: F401
from click.testing import CliRunner
from joserfc.jwk import RSAKey
from structlog.testing import capture_logs

from authsec_crewai import errors
from authsec_crewai.broker import TokenBroker
from authsec_crewai.cassettes import load
from authsec_crewai.cli import main
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.testing import (
    LoopbackServer,
    MockAuthority,
    MockFaults,
    NetworkBlockedError,
    block_network,
    create_app,
)
from authsec_crewai.token import DelegationToken, TokenRequest
from authsec_crewai.transports import (
    KeySet,
    LiveTransport,
    MockTransport,
    RecordingTransport,
    ReplayTransport,
    TransportInfo,
    open_cassette_transport,
)
from authsec_crewai.verify import TokenVerifier
from authsec_crewai.wiring import build_broker, build_fetcher, build_transport

HOUR = 3600.0
ROOT = Path(__file__).resolve().parents[1]


def an_hour_ago() -> float:
    return time.time() - HOUR


pytestmark = pytest.mark.usefixtures("clean_env")


def _bearer(token: DelegationToken) -> dict[str, str]:
    return {"authorization": f"Bearer {token.value}"}


async def vault_session(
    transport: Any, clock: Any, client_id: str, base_url: str
) -> dict[str, Any]:
    """What a crew's tools do: tokens from the broker, then protected-API calls with them.

    Everything observable goes into the result, so a replay can be compared to
    the recording as a whole.
    """
    async with TokenBroker(transport, client_id=client_id, clock=clock) as broker:
        records = await broker.token("read:records")
        metrics = await broker.token("read:metrics")  # served by the same token
        calls = [
            ("/secure-vault/records", records, None),
            ("/secure-vault/metrics", metrics, {"window": "7d", "unit": "eur"}),
            ("/secure-vault/records", records, None),  # identical to the first
            ("/secure-vault/incidents", records, None),  # not granted: 403
        ]
        answers = []
        async with httpx.AsyncClient(transport=transport.api(), base_url=base_url) as client:
            for path, token, params in calls:
                response = await client.get(path, params=params, headers=_bearer(token))
                answers.append(
                    (response.status_code, response.headers.get("content-type"), response.json())
                )
        stats = broker.stats
    return {
        "jti": records.jti,
        "same_token": records is metrics,
        "permissions": sorted(records.permissions),
        "spiffe_id": records.spiffe_id,
        "tenant_id": records.tenant_id,
        "expires_at": records.expires_at,
        "answers": answers,
        "fetches": stats.fetches,
    }


@pytest.fixture
def stale_authority(rsa_key: RSAKey, client_id: str) -> MockAuthority:
    """The AuthSec server of a session recorded an hour ago: its 30-minute tokens
    have long expired by the time the test replays them."""
    authority = MockAuthority(key=rsa_key, clock=an_hour_ago, ttl_seconds=1800)
    authority.delegate(client_id)
    return authority


async def record_over_loopback(
    path: Path, authority: MockAuthority, client_id: str, **options: Any
) -> tuple[dict[str, Any], str]:
    """Record :func:`vault_session` through LiveTransport against a real socket, on the
    test's event loop (asyncio or trio); the server is stopped when this returns.
    Returns (result, the server's URL)."""
    with LoopbackServer(create_app(authority, api_token=API_TOKEN)) as server:
        live = LiveTransport(server.url, api_token=API_TOKEN, clock=an_hour_ago)
        recording = RecordingTransport(live, path, clock=an_hour_ago, **options)
        result = await vault_session(recording, recording.clock, client_id, server.url)
    return result, server.url


# --- the headline: record once, replay forever ---------------------------------------------------


@pytest.mark.anyio
async def test_a_session_replays_identically_offline_an_hour_later(
    tmp_path: Path, stale_authority: MockAuthority, client_id: str, rsa_key: RSAKey
) -> None:
    path = tmp_path / "vault.json"
    recorded, url = await record_over_loopback(path, stale_authority, client_id, record_mode="all")
    assert [status for status, _, _ in recorded["answers"]] == [200, 200, 200, 403]
    assert recorded["same_token"] and recorded["fetches"] == 1
    assert recorded["expires_at"].timestamp() < time.time() - 1000  # expired in real time

    with block_network(), capture_logs() as logs:
        with pytest.raises(httpx.ConnectError):  # the server is gone, and the network too
            async with httpx.AsyncClient() as client:
                await client.get(url)
        replay = ReplayTransport(path)
        replayed = await vault_session(replay, replay.clock, client_id, url)

    assert replayed == recorded
    opened = [entry for entry in logs if entry["event"] == "cassette.replay.open"]
    assert opened and opened[0]["verification"] == "claims-only"
    text = path.read_text(encoding="utf-8")
    assert problems_in(text) == []
    assert API_TOKEN not in text and '"authorization":' not in text.lower()


@pytest.mark.anyio
async def test_replayed_tokens_need_the_cassette_clock_and_claims_only_verification(
    tmp_path: Path, stale_authority: MockAuthority, client_id: str
) -> None:
    path = tmp_path / "vault.json"
    await record_over_loopback(path, stale_authority, client_id, record_mode="all")
    request = TokenRequest.create(client_id, "read:records")

    # On today's wall clock the recorded token is simply expired.
    async with TokenBroker(ReplayTransport(path), client_id=client_id) as broker:
        with pytest.raises(errors.TokenVerificationError, match="expired at"):
            await broker.token("read:records")

    # On the cassette's clock it is valid, and every claim is still checked ...
    replay = ReplayTransport(path)
    assert abs(replay.clock() - load(path).recorded_at) < 5
    assert replay.info.claims_only and replay.verification == "claims-only"
    token = await replay.fetch_token(request)
    assert token.value.endswith(".REDACTED")
    await TokenVerifier(replay, clock=replay.clock, claims_only=True).verify(token)
    wrong_audience = TokenVerifier(replay, clock=replay.clock, claims_only=True, audience="x")
    with pytest.raises(errors.TokenVerificationError, match="audience"):
        await wrong_audience.verify(token)
    # ... but the signature is gone, so it can never pass a signature check again.
    with pytest.raises(errors.TokenVerificationError, match="not signed by any key"):
        await TokenVerifier(replay, clock=replay.clock).verify(token)


@pytest.mark.anyio
async def test_secure_fetcher_results_replay_identically(
    tmp_path: Path, stale_authority: MockAuthority, client_id: str
) -> None:

    path = tmp_path / "fetcher.json"

    async def session(transport: Any, url: str) -> list[dict[str, Any]]:
        settings = AuthSecSettings(api_base_url=url, _env_file=None)
        async with TokenBroker(transport, client_id=client_id, clock=transport.clock) as broker:
            fetcher = build_fetcher(broker, settings)
            results = []
            for endpoint, scope in [
                ("secure-vault/records", "read:records"),
                ("secure-vault/metrics", "read:metrics"),
                ("secure-vault/records", "read:records"),
            ]:
                outcome = await fetcher.fetch(endpoint, scope)
                results.append(outcome.to_dict())
        return results

    with LoopbackServer(create_app(stale_authority, api_token=API_TOKEN)) as server:
        live = LiveTransport(server.url, api_token=API_TOKEN, clock=an_hour_ago)
        recorded = await session(RecordingTransport(live, path, clock=an_hour_ago), server.url)
    url = server.url
    assert all(item["status"] == "ok" for item in recorded)
    with block_network():
        replayed = await session(ReplayTransport(path), url)
    assert replayed == recorded


# --- matching ------------------------------------------------------------------------------------


class CountingApi:
    """A transport whose protected API answers 1, 2, 3, ... to identical requests,
    and echoes the bearer token back in its body and a header."""

    def __init__(self, authority: MockAuthority | None = None) -> None:
        self.mock = MockTransport(authority=authority)
        self.hits = 0

    @property
    def info(self) -> TransportInfo:
        return TransportInfo(mode="mock")

    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        return await self.mock.fetch_token(request)

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        return await self.mock.fetch_key_set(tenant_id)

    def api(self) -> httpx.AsyncBaseTransport:
        return httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.hits += 1
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        return httpx.Response(
            200,
            json={"n": self.hits, "echo": token},
            headers={"set-cookie": "session=s3cr3t-cookie", "x-echo": f"Bearer {token}"},
        )

    async def aclose(self) -> None:
        await self.mock.aclose()


async def _get_n(transport: Any, path: str = "/count", token: str = "t") -> int:
    async with httpx.AsyncClient(transport=transport.api(), base_url="http://api.test") as client:
        response = await client.get(path, headers={"authorization": f"Bearer {token}"})
    return int(response.json()["n"])


@pytest.mark.anyio
async def test_identical_api_requests_replay_in_recorded_order(tmp_path: Path) -> None:
    path = tmp_path / "count.json"
    recording = RecordingTransport(CountingApi(), path)
    assert [await _get_n(recording) for _ in range(3)] == [1, 2, 3]
    await recording.aclose()

    replay = ReplayTransport(path)
    # The token differs on every call: matching never looks at it.
    assert [await _get_n(replay, token=f"other-{i}") for i in range(5)] == [1, 2, 3, 3, 3]
    strict = ReplayTransport(path, allow_playback_repeats=False)
    assert [await _get_n(strict) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(errors.CassetteError, match=r"recorded 3 time\(s\)"):
        await _get_n(strict)


@pytest.mark.anyio
async def test_identical_token_fetches_replay_in_recorded_order(
    tmp_path: Path, rsa_key: RSAKey, client_id: str
) -> None:
    authority = MockAuthority(key=rsa_key)
    path = tmp_path / "redelegated.json"
    recording = RecordingTransport(MockTransport(authority=authority), path)
    request = TokenRequest.create(client_id, "read:records")
    first = await recording.fetch_token(request)
    authority.delegate(client_id)  # an administrator re-delegates: a new token
    second = await recording.fetch_token(request)
    authority.revoke(client_id)
    with pytest.raises(errors.NotDelegatedError):
        await recording.fetch_token(request)
    await recording.aclose()
    assert first.jti != second.jti

    replay = ReplayTransport(path)
    assert (await replay.fetch_token(request)).jti == first.jti
    assert (await replay.fetch_token(request)).jti == second.jti
    with pytest.raises(errors.NotDelegatedError, match="404"):
        await replay.fetch_token(request)
    with pytest.raises(errors.NotDelegatedError):  # repeats the last answer
        await replay.fetch_token(request)


@pytest.mark.anyio
async def test_an_unmatched_request_names_the_closest_recorded_one(
    tmp_path: Path, stale_authority: MockAuthority, client_id: str
) -> None:
    path = tmp_path / "vault.json"
    await record_over_loopback(path, stale_authority, client_id, record_mode="all")
    replay = ReplayTransport(path)
    with pytest.raises(errors.CassetteError) as caught:
        await _get_n(replay, "/secure-vault/recordz")
    message = str(caught.value)
    assert message.startswith(f"cassette {path}: GET /secure-vault/recordz is not in the cassette")
    assert "closest recorded request is GET /secure-vault/records (it differs in path)" in message

    async with TokenBroker(replay, client_id=client_id, clock=replay.clock) as broker:
        with pytest.raises(errors.CassetteError) as caught:
            await broker.token("read:incidents")
    assert f"token for client {client_id} with scopes read:incidents is not" in str(caught.value)
    assert "with scopes read:records (it differs in scopes)" in str(caught.value)


@pytest.mark.anyio
async def test_strict_unused_fails_on_close_but_not_for_key_sets(
    tmp_path: Path, stale_authority: MockAuthority, client_id: str
) -> None:
    path = tmp_path / "vault.json"
    await record_over_loopback(path, stale_authority, client_id, record_mode="all")
    assert load(path).counts()["key_set"] == 1
    replay = ReplayTransport(path, strict_unused=True)
    await replay.fetch_token(TokenRequest.create(client_id, "read:records"))
    with pytest.raises(errors.CassetteError, match=r"4 recorded interaction\(s\) were never used"):
        await replay.aclose()
    await replay.aclose()  # reported once

    everything = ReplayTransport(path, strict_unused=True)
    await vault_session(everything, everything.clock, client_id, "http://anywhere.test")
    await everything.aclose()  # the key set was never asked for: claims-only replay


# --- record modes --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_record_mode_none_needs_the_cassette(tmp_path: Path) -> None:
    with pytest.raises(errors.CassetteError, match="does not exist, and record mode 'none'"):
        open_cassette_transport(MockTransport(), tmp_path / "missing.json", record_mode="none")
    with pytest.raises(errors.ConfigurationError, match="record_mode must be one of"):
        open_cassette_transport(MockTransport(), tmp_path / "x.json", record_mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(errors.ConfigurationError, match="once, new_episodes or all"):
        RecordingTransport(MockTransport(), tmp_path / "x.json", record_mode="none")


@pytest.mark.anyio
async def test_record_mode_once_records_then_replays_only(tmp_path: Path) -> None:
    path = tmp_path / "once.json"
    built: list[CountingApi] = []

    def inner() -> CountingApi:
        built.append(CountingApi())
        return built[-1]

    first = open_cassette_transport(inner, path, record_mode="once")
    assert isinstance(first, RecordingTransport) and len(built) == 1
    assert first.info.mode == "record" and not first.info.claims_only
    assert await _get_n(first) == 1
    await first.aclose()

    again = open_cassette_transport(inner, path, record_mode="once")
    assert isinstance(again, ReplayTransport) and len(built) == 1  # no inner transport built
    assert again.info.mode == "replay" and again.info.claims_only
    assert await _get_n(again) == 1
    with pytest.raises(errors.CassetteError, match="GET /other is not in the cassette"):
        await _get_n(again, "/other")
    await again.aclose()
    given = CountingApi()
    again_none = open_cassette_transport(given, path, record_mode="none")
    assert isinstance(again_none, ReplayTransport)
    assert await _get_n(again_none) == 1
    assert given.hits == 0 and built[0].hits == 1


@pytest.mark.anyio
async def test_record_mode_new_episodes_replays_old_and_records_new(
    tmp_path: Path, client_id: str
) -> None:
    path = tmp_path / "episodes.json"
    first = RecordingTransport(CountingApi(), path, record_mode="new_episodes")
    assert await _get_n(first, "/a") == 1
    await first.fetch_token(TokenRequest.create(client_id, "read:records"))
    await first.aclose()
    before = load(path)

    inner = CountingApi()
    second = RecordingTransport(inner, path, record_mode="new_episodes")
    assert await _get_n(second, "/a") == 1  # replayed from the cassette
    assert inner.hits == 0
    assert await _get_n(second, "/b") == 1  # recorded from the inner transport
    assert inner.hits == 1
    await second.aclose()
    after = load(path)
    paths = [item["request"]["path"] for item in after.interactions if item["kind"] == "api"]
    assert paths == ["/a", "/b"]
    # No new token fetch: the old tokens and their timeline are kept.
    assert after.recorded_at == before.recorded_at
    assert after.counts()["token"] == 1

    third = RecordingTransport(CountingApi(), path, record_mode="new_episodes")
    await third.fetch_token(TokenRequest.create(client_id, "read:records"))
    await third.aclose()
    latest = load(path)
    assert latest.recorded_at > before.recorded_at  # a new token channel, a new timeline
    assert latest.counts() == {"token": 1, "key_set": 0, "api": 2}


@pytest.mark.anyio
async def test_record_mode_all_replaces_the_cassette(tmp_path: Path) -> None:
    path = tmp_path / "all.json"
    for expected in (1, 1):
        recording = RecordingTransport(CountingApi(), path, record_mode="all")
        assert await _get_n(recording, "/x") == expected
        await recording.aclose()
    assert load(path).counts()["api"] == 1


@pytest.mark.anyio
async def test_one_cassette_is_recorded_by_one_session_unless_shared(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    one = RecordingTransport(CountingApi(), path, record_mode="all")
    with pytest.raises(errors.CassetteError, match="already being recorded"):
        RecordingTransport(CountingApi(), path, record_mode="all")
    await one.aclose()
    forgotten = RecordingTransport(CountingApi(), path, record_mode="all")
    del forgotten  # dropped without closing: its session no longer blocks the file
    gc.collect()
    await RecordingTransport(CountingApi(), path, record_mode="all").aclose()

    shared = tmp_path / "crew.json"
    a = RecordingTransport(CountingApi(), shared, record_mode="all", shared=True)
    b = RecordingTransport(CountingApi(), shared, record_mode="all", shared=True)
    await _get_n(a, "/from-a")
    await _get_n(b, "/from-b")
    await a.aclose()
    await b.aclose()
    c = RecordingTransport(CountingApi(), shared, record_mode="all", shared=True)  # later, same run
    await _get_n(c, "/from-c")
    await c.aclose()
    paths = [item["request"]["path"] for item in load(shared).interactions]
    assert paths == ["/from-a", "/from-b", "/from-c"]


# --- what never reaches a cassette ---------------------------------------------------------------


def _jwt_claims_in(text: str) -> list[str]:
    import re

    return [
        base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)).decode()
        for p in re.findall(r"eyJ[\w-]+\.([\w-]+)\.REDACTED", text)
    ]


@pytest.mark.anyio
async def test_tokens_cookies_and_the_api_token_never_reach_the_file(
    tmp_path: Path, client_id: str
) -> None:
    path = tmp_path / "echo.json"
    recording = RecordingTransport(CountingApi(), path, secrets=[API_TOKEN])
    async with TokenBroker(recording, client_id=client_id, clock=recording.clock) as broker:
        token = await broker.token("read:records")
        async with httpx.AsyncClient(transport=recording.api(), base_url="http://api.test") as c:
            live = await c.get("/echo", headers=_bearer(token), params={"k": API_TOKEN})
    assert live.json()["echo"] == token.value  # the code under test saw the real answer
    assert live.headers["set-cookie"] == "session=s3cr3t-cookie"

    text = path.read_text(encoding="utf-8")
    assert token.value not in text and token.value.rsplit(".", 1)[1] not in text
    assert "s3cr3t-cookie" not in text and "set-cookie" not in text
    assert API_TOKEN not in text
    assert problems_in(text) == []
    replayed = await _get_n(ReplayTransport(path), "/echo?k=REDACTED", token="x")
    assert replayed == 1


@pytest.mark.anyio
async def test_placeholders_keep_an_identifier_out_and_bring_it_back(
    tmp_path: Path, client_id: str
) -> None:
    stand_in = "11111111-2222-4333-8444-555555555555"
    placeholders = {client_id: stand_in}
    path = tmp_path / "placeholders.json"
    recording = RecordingTransport(MockTransport(), path, placeholders=placeholders)
    async with TokenBroker(recording, client_id=client_id, clock=recording.clock) as broker:
        original = await broker.token("read:records")
    text = path.read_text(encoding="utf-8")
    assert client_id not in text and stand_in in text
    assert all(client_id not in claims and stand_in in claims for claims in _jwt_claims_in(text))

    replay = ReplayTransport(path, placeholders=placeholders)
    assert replay.client_id == client_id
    async with TokenBroker(replay, client_id=client_id, clock=replay.clock) as broker:
        again = await broker.token("read:records")
    assert again.client_id == client_id and again.spiffe_id == original.spiffe_id
    assert again.jti == original.jti


@pytest.mark.anyio
async def test_scrub_hooks_change_or_drop_interactions(tmp_path: Path, client_id: str) -> None:
    def hide_counts(item: dict[str, Any]) -> dict[str, Any] | None:
        if item["kind"] == "key_set":
            return None
        if item["kind"] == "api":
            item["response"]["body"]["json"]["n"] = 0
        return item

    path = tmp_path / "hooked.json"
    recording = RecordingTransport(CountingApi(), path, scrub=hide_counts)
    async with TokenBroker(recording, client_id=client_id, clock=recording.clock) as broker:
        await broker.token("read:records")
        assert await _get_n(recording) == 1
    assert load(path).counts() == {"token": 1, "key_set": 0, "api": 1}
    assert await _get_n(ReplayTransport(path)) == 0

    broken = RecordingTransport(CountingApi(), tmp_path / "broken.json", scrub=[lambda i: {}])
    with pytest.raises(errors.CassetteError, match="scrub hook returned an interaction"):
        await _get_n(broken)


@pytest.mark.anyio
async def test_the_writer_refuses_a_file_with_a_secret(tmp_path: Path) -> None:
    def leak(item: dict[str, Any]) -> dict[str, Any]:
        item["response"]["headers"]["authorization"] = "hand-added"
        return item

    path = tmp_path / "leaky.json"
    recording = RecordingTransport(CountingApi(), path, scrub=leak)
    await _get_n(recording)
    with pytest.raises(errors.CassetteError, match=r"refusing to write cassette .*'authorization'"):
        await recording.aclose()
    assert not path.exists()


@pytest.mark.anyio
async def test_recorded_api_transport_errors_replay_as_the_same_error(tmp_path: Path) -> None:
    class Refusing(CountingApi):
        def api(self) -> httpx.AsyncBaseTransport:
            def refuse(request: httpx.Request) -> httpx.Response:
                raise httpx.ConnectError("connection refused", request=request)

            return httpx.MockTransport(refuse)

    path = tmp_path / "refused.json"
    recording = RecordingTransport(Refusing(), path)
    with pytest.raises(httpx.ConnectError):
        await _get_n(recording)
    await recording.aclose()
    with pytest.raises(httpx.ConnectError, match="connection refused"):
        await _get_n(ReplayTransport(path))


# --- network guard -------------------------------------------------------------------------------


def test_block_network_refuses_tcp_and_lookups_and_then_lets_go() -> None:
    import socket

    with block_network("testing") as attempts:
        with pytest.raises(NetworkBlockedError, match=r"connection to .* refused: testing"):
            socket.create_connection(("127.0.0.1", 9), timeout=1)
        with pytest.raises(NetworkBlockedError, match=r"looking up host 'example\.com'"):
            socket.getaddrinfo("example.com", 443)
        assert socket.getaddrinfo("127.0.0.1", 80)  # a literal needs no network
        a, b = socket.socketpair()  # event loops' self-pipes still work
        a.close()
        b.close()
    assert len(attempts) == 2
    assert socket.socket.connect is not None and "_netguard" not in repr(socket.socket.connect)


# --- settings and CLI wiring ---------------------------------------------------------------------


def test_record_mode_records_the_mock_when_nothing_is_configured(tmp_path: Path) -> None:
    transport = build_transport(AuthSecSettings(mode="record", cassette=tmp_path / "c.json"))
    assert isinstance(transport, RecordingTransport)
    assert isinstance(transport.inner, MockTransport)
    assert transport.record_mode == "all" and transport.info.mode == "record"
    transport.close()


def test_record_mode_records_the_live_server_when_configured(tmp_path: Path) -> None:
    settings = AuthSecSettings(
        mode="record",
        cassette=tmp_path / "c.json",
        base_url="https://authsec.example.com",
        client_id="00000000-0000-4000-8000-00000000abcd",
        api_token=API_TOKEN,
    )
    transport = build_transport(settings)
    assert isinstance(transport, RecordingTransport)
    assert isinstance(transport.inner, LiveTransport)
    assert API_TOKEN in transport.info.secrets  # proven absent before every write
    transport.close()


@pytest.mark.anyio
async def test_settings_record_then_replay(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    async with build_broker(AuthSecSettings(mode="record", cassette=path)) as broker:
        recorded = await broker.token("read:records")
    broker = build_broker(AuthSecSettings(mode="replay", cassette=path))
    assert isinstance(broker.transport, ReplayTransport)
    async with broker:
        replayed = await broker.token("read:records")
    assert replayed.jti == recorded.jti and replayed.client_id == recorded.client_id


@pytest.mark.anyio
async def test_settings_replay_runs_on_the_cassettes_clock(
    tmp_path: Path, stale_authority: MockAuthority, client_id: str
) -> None:
    """Recorded an hour ago with 30-minute tokens: only a broker on the cassette's
    clock accepts them (on wall time they expired long ago)."""
    path = tmp_path / "old.json"
    recording = RecordingTransport(
        MockTransport(authority=stale_authority), path, clock=an_hour_ago
    )
    recorded = await recording.fetch_token(TokenRequest.create(client_id, "read:records"))
    await recording.aclose()
    assert recorded.expires_at.timestamp() < time.time()
    async with build_broker(AuthSecSettings(mode="replay", cassette=path)) as broker:
        replayed = await broker.token("read:records")
    assert replayed.jti == recorded.jti


def test_authsec_crewai_record_runs_a_command_and_replay_reproduces_it(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text(
        "import anyio\n"
        "from authsec_crewai import AuthSecSettings\n"
        "from authsec_crewai.wiring import build_broker\n"
        "async def main():\n"
        "    async with build_broker(AuthSecSettings()) as broker:\n"
        "        print((await broker.token('read:records')).jti)\n"
        "anyio.run(main)\n",
        encoding="utf-8",
    )
    cassette = tmp_path / "cassettes" / "app.json"
    result = CliRunner().invoke(
        main, ["record", "-o", str(cassette), "--", sys.executable, str(script)]
    )
    assert result.exit_code == 0, result.output
    assert "recorded 2 interaction(s) (1 token, 1 key_set, 0 api)" in result.output
    assert "records the MOCK server" in result.output
    recorded_jti = load(cassette).interactions[0]["response"]["body"]["token"]
    env = {**os.environ, "AUTHSEC_MODE": "replay", "AUTHSEC_CASSETTE": str(cassette)}
    replayed = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, check=True
    )
    claims = recorded_jti.split(".")[1]
    jti = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["jti"]
    assert replayed.stdout.strip().splitlines()[-1] == jti  # (log lines go to stdout too)


def test_authsec_crewai_record_passes_the_exit_status_on(tmp_path: Path) -> None:
    out = tmp_path / "nothing.json"
    result = CliRunner().invoke(
        main, ["record", "-o", str(out), "--", sys.executable, "-c", "raise SystemExit(3)"]
    )
    assert result.exit_code == 3
    assert "was not written" in result.output
    missing = CliRunner().invoke(main, ["record", "-o", str(out), "--", "no-such-command-xyz"])
    assert missing.exit_code == 2
    assert "\nerror: cannot run 'no-such-command-xyz'" in missing.output


# --- the async tool: the production path in record and replay ---------------------------------


def _tool_calls_on_many_loops(tool: Any) -> list[Any]:
    """Async calls on an asyncio and a trio loop at once, and sync calls from threads:
    what an application with several loops and CrewAI's worker threads does."""
    results: list[Any] = []

    async def one() -> None:
        for _ in range(3):  # reuse the loop's connections while the other loop uses its own
            results.append(json.loads(await tool._arun("secure-vault/records", "read:records")))

    def sync_call() -> None:
        results.append(json.loads(tool._run("secure-vault/records", "read:records")))

    run_threads(*loops_calling(one), *[sync_call] * 3)
    return results


def test_async_tools_record_a_live_server_and_replay_it_from_any_loop(
    tmp_path: Path, rsa_key: RSAKey, client_id: str
) -> None:
    """Recording a live server from several loops at once: each loop reaches the
    server over a pool of its own (a socket pool belongs to one loop). Replaying
    runs the same async path offline, with the network blocked."""
    from authsec_crewai.tools import AsyncAuthSecSecureFetchTool, close_shared_brokers

    path = tmp_path / "tools.json"
    authority = MockAuthority(key=rsa_key)
    authority.delegate(client_id)
    with LoopbackServer(create_app(authority, faults=MockFaults(latency=0.02))) as server:
        settings = AuthSecSettings(
            mode="record", base_url=server.url, client_id=client_id, cassette=path
        )
        recorded = _tool_calls_on_many_loops(AsyncAuthSecSecureFetchTool(settings=settings))
        close_shared_brokers()  # writes the cassette
        counts = dict(cast(Any, server.app).state.counts)
    assert [r["status"] for r in recorded] == ["ok"] * 63, recorded
    assert counts["/secure-vault/records"] == 63
    assert len([i for i in load(path).interactions if i["kind"] == "api"]) == 63

    replay = AuthSecSettings(mode="replay", cassette=path, client_id=client_id)
    with block_network("replaying") as attempts:
        replayed = _tool_calls_on_many_loops(AsyncAuthSecSecureFetchTool(settings=replay))
        close_shared_brokers()
    assert attempts == []
    assert replayed == recorded
