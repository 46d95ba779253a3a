"""The wiring (settings -> transport, broker, fetcher) and the declared transport contract.

A transport defined in this file, written only against the documented
``Transport`` protocol, is driven through the broker, the fetcher, both tools,
the wiring and the recorder: nothing may need more from a transport than its
``info``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
import threading
import time
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _server import MockServer
from brokerkit import loops_calling, run_threads
from joserfc.jwk import RSAKey
from structlog.testing import capture_logs

from authsec_crewai import AuthSecSettings, SecureFetcher, TokenBroker, errors, wiring
from authsec_crewai.settings import DEMO_CLIENT_ID
from authsec_crewai.testing import MockAuthority
from authsec_crewai.token import DelegationToken, TokenRequest
from authsec_crewai.transports import (
    KeySet,
    LiveTransport,
    MockTransport,
    RecordingTransport,
    Transport,
    TransportInfo,
    open_cassette_transport,
)
from authsec_crewai.wire import TOKEN_PATH, parse_token_body

CLIENT = "0b4c1a7e-1d1a-4f3e-9a51-2f7c7c7d6a10"
RECORDED_CLIENT = "6f1d2c3b-4a59-4e6f-8a7b-9c0d1e2f3a4b"
RECORDS = "/secure-vault/records"
HOUR = 3600.0


@pytest.fixture(autouse=True)
def _clean(clean_env: None) -> Iterator[None]:
    """No AUTHSEC_* from the machine; shared tool brokers closed afterwards."""
    yield
    if "authsec_crewai.tools" in sys.modules:
        sys.modules["authsec_crewai.tools"].close_shared_brokers()


def make(**values: Any) -> AuthSecSettings:
    return AuthSecSettings(**values)


# --- a third-party transport: only the documented protocol ---------------------------------------


class AcmeTransport:
    """Tokens from an authority of its own, an in-process API, its own name and clock.

    Everything the library may know about it is in ``info``; it has no ``mode``,
    ``clock`` or ``client_id`` attribute for anyone to guess at.
    """

    def __init__(
        self,
        authority: MockAuthority,
        *,
        network_api: bool = False,
        api_base_url: str | None = "https://api.acme.test/v1",
        client_id: str | None = RECORDED_CLIENT,
        offset: float = 0.0,
    ) -> None:
        self._authority = authority
        self._offset = offset
        self.token_calls = 0
        self.api_calls = 0
        self.api_requests: list[httpx.Request] = []
        self._lock = threading.Lock()
        self._info = TransportInfo(
            mode="acme",
            network_api=network_api,
            api_base_url=api_base_url,
            client_id=client_id,
            clock=self._now if offset else None,
            secrets=("acme-secret-api-key",),
        )

    def _now(self) -> float:
        return time.time() + self._offset

    @property
    def info(self) -> TransportInfo:
        return self._info

    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        with self._lock:
            self.token_calls += 1
        await anyio.sleep(0.05)  # every concurrent caller overlaps the one fetch
        status, body = self._authority.token_answer(request.client_id)
        assert status == 200, body
        return parse_token_body(body, now=self._info.clock() if self._info.clock else time.time())

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        return self._authority.key_set(tenant_id)

    def api(self) -> httpx.AsyncBaseTransport:
        with self._lock:
            self.api_calls += 1
        return httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.api_requests.append(request)
        return httpx.Response(200, json={"path": request.url.path, "acme": True})

    async def aclose(self) -> None:
        return None


def test_the_third_party_transport_satisfies_the_protocol(mock_authority: MockAuthority) -> None:
    assert isinstance(AcmeTransport(mock_authority), Transport)
    assert not hasattr(AcmeTransport(mock_authority), "mode")
    assert "acme-secret-api-key" not in repr(AcmeTransport(mock_authority).info)


@pytest.mark.anyio
async def test_a_third_party_transport_through_the_wiring_broker_and_fetcher(
    rsa_key: RSAKey,
) -> None:
    """Its declared client id, clock, name and API origin are what the library uses:
    its tokens live an hour in the past, and verify on its declared clock."""
    authority = MockAuthority(key=rsa_key, clock=lambda: time.time() - HOUR)
    transport = AcmeTransport(authority, offset=-HOUR)
    broker = wiring.build_broker(make(mode="mock"), transport)
    assert broker.client_id == RECORDED_CLIENT  # nothing configured: the declared agent
    assert "mode='acme'" in repr(broker)
    with capture_logs() as logs:
        async with broker:
            fetcher = wiring.build_fetcher(broker, make(mode="mock"))
            assert fetcher.api_base_url == "https://api.acme.test/v1"
            result = await fetcher.fetch("secure-vault/records", "read:records")
            token = await broker.token("read:records")
    assert result.data == {"path": "/v1/secure-vault/records", "acme": True}
    assert transport.token_calls == 1 and transport.api_calls == 1
    # The broker's clock is the declared one: an hour behind, so is the token's issue time.
    assert abs(token.issued_at.timestamp() - (time.time() - HOUR)) < 60
    assert {e.get("mode") for e in logs if "mode" in e} == {"acme"}


@pytest.mark.anyio
async def test_a_configured_client_id_wins_over_the_declared_one(
    mock_authority: MockAuthority,
) -> None:
    broker = wiring.build_broker(make(mode="mock", client_id=CLIENT), AcmeTransport(mock_authority))
    assert broker.client_id == CLIENT


def test_a_network_api_without_an_origin_is_refused(mock_authority: MockAuthority) -> None:
    transport = AcmeTransport(mock_authority, network_api=True, api_base_url=None)
    broker = wiring.build_broker(make(mode="mock"), transport)
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_API_BASE_URL"):
        wiring.build_fetcher(broker)
    in_process = AcmeTransport(mock_authority, api_base_url=None)
    fetcher = wiring.build_fetcher(wiring.build_broker(make(mode="mock"), in_process))
    assert fetcher.api_base_url.endswith(".invalid")  # never resolvable


@pytest.mark.anyio
async def test_a_fetcher_on_a_broker_alone_sends_through_the_brokers_transport(
    mock_authority: MockAuthority,
) -> None:
    """``SecureFetcher(broker)``: the broker's transport knows where its API is."""
    transport = AcmeTransport(mock_authority)
    async with wiring.build_broker(make(mode="mock"), transport) as broker:
        result = await SecureFetcher(broker).fetch("secure-vault/records", "read:records")
    assert result.status_code == 200
    assert transport.api_calls == 1 and transport.token_calls == 1


def test_a_fetcher_is_told_where_its_traffic_goes(mock_authority: MockAuthority) -> None:
    broker = wiring.build_broker(make(mode="mock"), AcmeTransport(mock_authority))
    with pytest.raises(errors.ConfigurationError, match="exactly one of api_transport"):
        SecureFetcher(
            broker,
            api_transport=broker.transport.api(),
            client=httpx.AsyncClient(),
        )


def test_both_tools_on_a_third_party_transport_from_any_loop(
    mock_authority: MockAuthority,
) -> None:
    """Sync calls from threads and async calls on asyncio and trio loops: one token
    fetch, every API call through the transport's own in-process ``api()``."""
    from authsec_crewai.tools import AsyncAuthSecSecureFetchTool

    transport = AcmeTransport(mock_authority)
    tool = AsyncAuthSecSecureFetchTool(settings=make(mode="mock"), transport=transport)
    statuses: list[str] = []

    async def one() -> None:
        statuses.append(
            json.loads(await tool._arun("secure-vault/records", "read:records"))["status"]
        )

    def sync_call() -> None:
        statuses.append(json.loads(tool._run("secure-vault/records", "read:records"))["status"])

    run_threads(*loops_calling(one, concurrent=20), *[sync_call] * 5)
    assert statuses == ["ok"] * 45
    assert transport.token_calls == 1
    assert len(transport.api_requests) == 45
    assert tool.broker.client_id == RECORDED_CLIENT


def test_a_third_party_network_api_gets_a_pool_per_loop(
    authsec_server: MockServer, client_id: str
) -> None:
    """Async callers never go through the ``api()`` of a transport that declares a
    network API: each loop talks to the real server over a pool of its own."""
    from authsec_crewai.tools import AsyncAuthSecSecureFetchTool

    transport = AcmeTransport(
        authsec_server.authority, network_api=True, api_base_url=authsec_server.url
    )
    tool = AsyncAuthSecSecureFetchTool(
        settings=make(mode="mock", client_id=client_id), transport=transport
    )
    results: list[str] = []

    async def calls() -> None:
        for _ in range(3):
            results.append(await tool._arun("secure-vault/records", "read:records"))

    for backend in ("asyncio", "trio"):
        anyio.run(calls, backend=backend)
    assert all('"status": "ok"' in r for r in results), results
    assert authsec_server.count(RECORDS) == 6
    assert authsec_server.count(TOKEN_PATH) == 0  # tokens came from the transport itself
    assert transport.api_requests == [] and transport.token_calls == 1


@pytest.mark.anyio
async def test_recording_a_third_party_transport_uses_what_it_declares(
    mock_authority: MockAuthority, tmp_path: Path
) -> None:
    from authsec_crewai.cassettes import load

    path = tmp_path / "acme.json"
    recording = RecordingTransport(AcmeTransport(mock_authority), path, record_mode="all")
    assert recording.info.mode == "record" and not recording.info.network_api
    assert "acme-secret-api-key" in recording.info.secrets  # proven absent before writing
    broker = wiring.build_broker(make(mode="mock"), recording)
    async with broker:
        fetcher = wiring.build_fetcher(broker)
        await fetcher.fetch("secure-vault/records", "read:records")
    assert load(path).settings["mode"] == "acme"


# --- the client id: one rule ---------------------------------------------------------------------


def test_client_id_for_follows_one_rule(
    monkeypatch: pytest.MonkeyPatch, mock_authority: MockAuthority
) -> None:
    declared = AcmeTransport(mock_authority)
    anonymous = AcmeTransport(mock_authority, client_id=None)
    assert wiring.client_id_for(make(mode="mock")) == DEMO_CLIENT_ID
    assert wiring.client_id_for(make(mode="mock"), anonymous) == DEMO_CLIENT_ID
    assert wiring.client_id_for(make(mode="mock"), declared) == RECORDED_CLIENT
    assert wiring.client_id_for(make(mode="mock", client_id=CLIENT), declared) == CLIENT
    assert wiring.client_id_for(make(mode="replay", cassette="c.json")) == DEMO_CLIENT_ID
    monkeypatch.setenv("AUTHSEC_AGENT_CLIENT_ID", CLIENT)  # the existing SDKs' name
    assert wiring.client_id_for(make(mode="mock"), declared) == CLIENT
    live = make(base_url="https://authsec.example.com")
    assert wiring.client_id_for(live) == CLIENT and live.resolved_mode == "live"
    uuid.UUID(DEMO_CLIENT_ID)


# --- one URL rule --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://authsec.example.com",
        "authsec.example.com",
        "https://",
        "https://admin:hunter2@authsec.example.com",
        "https://@authsec.example.com",
        "https://authsec.example.com/?tenant=1",
        "https://authsec.example.com/?",
        "https://authsec.example.com/#x",
        "https://authsec.example.com:99999",
        "https://authsec.example.com/a\\b",
        "https://authsec.example.com/a b",
        "https://authsec.example.com/\x7f",
    ],
)
def test_settings_live_transport_and_fetcher_refuse_the_same_urls(url: str) -> None:
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_BASE_URL") as caught:
        make(base_url=url)
    assert "hunter2" not in str(caught.value)
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_BASE_URL") as caught:
        LiveTransport(url)
    assert "hunter2" not in str(caught.value)
    broker = TokenBroker(MockTransport(), client_id=DEMO_CLIENT_ID)
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_API_BASE_URL") as caught:
        SecureFetcher(broker, api_transport=broker.transport.api(), api_base_url=url)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://authsec.example.com/", "https://authsec.example.com"),
        (" http://127.0.0.1:8080/api/ ", "http://127.0.0.1:8080/api"),
    ],
)
def test_settings_live_transport_and_fetcher_accept_the_same_urls(url: str, expected: str) -> None:
    assert make(base_url=url).base_url == expected
    assert LiveTransport(url).base_url == expected
    broker = TokenBroker(MockTransport(), client_id=DEMO_CLIENT_ID)
    fetcher = SecureFetcher(broker, api_transport=broker.transport.api(), api_base_url=url)
    assert fetcher.api_base_url == expected


# --- the old import path -------------------------------------------------------------------------


def test_the_factories_moved_here_and_the_old_names_still_work() -> None:
    from authsec_crewai import settings

    for name in ("build_broker", "build_transport", "refresh_policy"):
        with pytest.warns(DeprecationWarning, match=f"authsec_crewai.wiring.{name}"):
            assert getattr(settings, name) is getattr(wiring, name)
    with pytest.raises(AttributeError):
        settings.build_fetcher  # noqa: B018 - never lived there

    from authsec_crewai.transports.mock import MockTransport

    assert isinstance(wiring.build_transport(make(mode="mock")), MockTransport)


def test_build_transport_live_passes_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import authsec_crewai.transports.live as live

    seen: dict[str, Any] = {}

    class Recorder:
        def __init__(self, base_url: str, **kwargs: Any) -> None:
            seen.update(kwargs, base_url=base_url)

    monkeypatch.setattr(live, "LiveTransport", Recorder)
    s = make(
        base_url="https://authsec.example.com/",
        client_id=CLIENT,
        api_token="api-token-value",
        timeout=4,
        retry_budget=12,
    )
    assert isinstance(wiring.build_transport(s), Recorder)
    assert seen == {
        "base_url": "https://authsec.example.com",
        "api_token": "api-token-value",
        "timeout": 4.0,
        "retry_budget": 12.0,
    }


def test_build_transport_live_builds_the_real_transport() -> None:
    from authsec_crewai.transports.live import LiveTransport

    transport = wiring.build_transport(
        make(base_url="https://authsec.example.com", client_id=CLIENT)
    )
    assert isinstance(transport, LiveTransport)


@pytest.mark.parametrize("mode", ["record", "replay"])
def test_record_and_replay_say_not_available_until_the_module_exists(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        if name == "authsec_crewai.transports.replay":
            return None
        return real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    s = make(mode=mode, base_url="https://authsec.example.com", client_id=CLIENT, cassette="c.json")
    with pytest.raises(errors.ConfigurationError, match="not available yet"):
        wiring.build_transport(s)


def test_record_and_replay_light_up_when_the_module_exists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "authsec_crewai.transports.replay"
    fake = types.ModuleType(name)
    fake.__spec__ = importlib.machinery.ModuleSpec(name, None)

    class RecordingTransport:
        def __init__(self, inner: Any, cassette: Path, **options: Any) -> None:
            self.inner, self.cassette = inner, cassette

    def open_cassette_transport(inner: Any, cassette: Path, **options: Any) -> RecordingTransport:
        return RecordingTransport(inner, cassette, **options)

    class ReplayTransport:
        def __init__(self, cassette: Path) -> None:
            self.cassette = cassette

    fake.open_cassette_transport = open_cassette_transport  # type: ignore[attr-defined]
    fake.ReplayTransport = ReplayTransport  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, name, fake)
    base = {"base_url": "https://authsec.example.com", "client_id": CLIENT, "cassette": "c.json"}
    recording = wiring.build_transport(make(mode="record", **base))
    assert isinstance(recording, RecordingTransport)
    assert recording.cassette == Path("c.json")
    assert type(recording.inner).__name__ == "LiveTransport"
    replaying = wiring.build_transport(make(mode="replay", cassette="c.json"))
    assert isinstance(replaying, ReplayTransport)


def test_refresh_policy_carries_every_number() -> None:
    s = make(
        refresh_advisory_fraction=0.3,
        refresh_advisory_max=600,
        refresh_mandatory_fraction=0.1,
        refresh_mandatory_max=120,
        refresh_jitter_fraction=0.5,
        failure_memory=2,
        backoff_initial=0.5,
        backoff_max=30,
    )
    policy = wiring.refresh_policy(s)
    assert (policy.advisory_fraction, policy.advisory_max) == (0.3, 600)
    assert (policy.mandatory_fraction, policy.mandatory_max) == (0.1, 120)
    assert policy.jitter_fraction == 0.5
    assert (policy.failure_memory, policy.backoff_initial, policy.backoff_max) == (2, 0.5, 30)


def test_build_broker_passes_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import authsec_crewai.broker as broker_module

    seen: dict[str, Any] = {}

    class Recorder:
        def __init__(self, transport: Any, **kwargs: Any) -> None:
            seen.update(kwargs, transport=transport)

    monkeypatch.setattr(broker_module, "TokenBroker", Recorder)
    transport = MockTransport()
    s = make(mode="mock", audience=["authsec-api"], verify=False, verify_leeway=5)
    wiring.build_broker(s, transport)
    assert seen["transport"] is transport
    assert seen["client_id"] == DEMO_CLIENT_ID
    assert tuple(seen["audience"]) == ("authsec-api",)
    assert seen["verify"] is False and seen["verify_leeway"] == 5
    assert seen["policy"] == wiring.refresh_policy(s)


@pytest.mark.anyio
async def test_build_broker_mock_end_to_end() -> None:
    async with wiring.build_broker(make(mode="mock")) as broker:
        token = await broker.token("read:records")
    assert token.client_id == DEMO_CLIENT_ID
    assert "read:records" in token.permissions


# --- what the built-in transports declare ---------------------------------------------------------


@pytest.mark.anyio
async def test_the_built_in_transports_declare_what_the_library_relies_on(
    tmp_path: Path,
) -> None:
    live = LiveTransport("https://authsec.example.com/", api_token="the-api-token")
    assert live.info == TransportInfo(
        mode="live",
        network_api=True,
        base_url="https://authsec.example.com",
        secrets=("the-api-token",),
    )
    assert "the-api-token" not in repr(live.info)
    assert MockTransport().info == TransportInfo(mode="mock")

    path = tmp_path / "session.json"
    recording = RecordingTransport(live, path, record_mode="all")
    info = recording.info
    assert (info.mode, info.network_api, info.claims_only) == ("record", False, False)
    assert info.base_url == "https://authsec.example.com"
    assert "the-api-token" in info.secrets
    await recording.aclose()  # writes an (empty) session
    replaying = open_cassette_transport(MockTransport(), path, record_mode="none")
    assert (replaying.info.mode, replaying.info.claims_only) == ("replay", True)
    assert replaying.info.clock is not None and not replaying.info.network_api
    await replaying.aclose()


@pytest.mark.anyio
async def test_build_fetcher_takes_a_sync_token_broker(authsec_server: MockServer) -> None:
    """A SyncTokenBroker stands for the broker it runs: the fetcher is awaited on the
    caller's loop (asyncio or trio) and its tokens come from that one broker."""
    from authsec_crewai import SyncTokenBroker
    from authsec_crewai.testing import TOKEN_PATH

    settings = AuthSecSettings(mode="live", base_url=authsec_server.url, client_id=DEMO_CLIENT_ID)
    with SyncTokenBroker(wiring.build_transport(settings), client_id=DEMO_CLIENT_ID) as sync:
        fetcher = wiring.build_fetcher(sync, settings)
        assert fetcher.broker is sync.broker
        first = await fetcher.fetch("secure-vault/records", "read:records")
        second = await fetcher.fetch("secure-vault/metrics", "read:metrics")
        assert sync.token("read:records").permissions >= {"read:records"}
    assert first.data["count"] == 6 and second.status_code == 200
    assert authsec_server.count(TOKEN_PATH) == 1  # one broker: the sync callers' cache too
