"""The CrewAI tools outside a crew: schema, wiring, shared brokers, concurrency, JSON results.

Crews themselves are in test_crew.py; here the tools are called the ways CrewAI
and applications call them (``run``, ``_run``, ``arun``, ``_arun``), from
threads and from asyncio and trio event loops.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Any, cast

import anyio
import httpx
import pytest
import sniffio
import trio
from _server import MockServer
from crewkit import crewai_env, shared_brokers_closed  # noqa: F401 (autouse fixtures)

from authsec_crewai import errors
from authsec_crewai.broker import TokenBroker
from authsec_crewai.settings import DEMO_CLIENT_ID, AuthSecSettings
from authsec_crewai.sync import SyncTokenBroker
from authsec_crewai.testing import TOKEN_PATH, Fault
from authsec_crewai.tools import (
    DEFAULT_TOOL_NAME,
    AsyncAuthSecSecureFetchTool,
    AuthSecSecureFetchTool,
    cache_successes,
    close_shared_brokers,
)
from authsec_crewai.transports import MockTransport

TOOLS = [AuthSecSecureFetchTool, AsyncAuthSecSecureFetchTool]
RECORDS = "/secure-vault/records"


def mock_settings(**values: Any) -> AuthSecSettings:
    return AuthSecSettings(mode="mock", **values)


def live_settings(server: MockServer, client_id: str, **values: Any) -> AuthSecSettings:
    values.setdefault("retry_budget", 0)
    return AuthSecSettings(mode="live", base_url=server.url, client_id=client_id, **values)


def parsed(text: Any) -> dict[str, Any]:
    assert isinstance(text, str), f"a tool result must be text, got {type(text).__name__}"
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


# --- what the model sees ------------------------------------------------------------------------


@pytest.mark.parametrize("tool_cls", TOOLS)
def test_name_arguments_env_vars_and_description(tool_cls: type[AuthSecSecureFetchTool]) -> None:
    tool = tool_cls(settings=mock_settings())
    assert tool.name == DEFAULT_TOOL_NAME == "authsec_secure_vault_fetcher"
    assert list(tool.args_schema.model_fields) == ["endpoint", "scope", "params"]
    names = {var.name for var in tool.env_vars}
    assert {"AUTHSEC_BASE_URL", "AUTHSEC_CLIENT_ID", "AUTHSEC_AGENT_CLIENT_ID"} <= names
    assert all(not var.required for var in tool.env_vars)
    for text in ("secure-vault/records", "read:records", "resource:action", "retryable"):
        assert text in tool.description
    renamed = tool_cls(settings=mock_settings(), name="vault", description="Custom.")
    assert (renamed.name, renamed.description) == ("vault", "Custom.")


def test_configured_allowlists_are_in_the_description() -> None:
    settings = mock_settings(
        allowed_scopes="read:records", allowed_endpoints="secure-vault/records"
    )
    description = AuthSecSecureFetchTool(settings=settings).description
    assert "Allowed scopes: read:records." in description
    assert "Allowed endpoint prefixes: 'secure-vault/records'." in description


def test_the_schema_lets_strict_function_calling_send_params() -> None:
    from crewai.utilities.agent_utils import convert_tools_to_openai_schema

    schemas, functions, _ = convert_tools_to_openai_schema(
        [AuthSecSecureFetchTool(settings=mock_settings())]
    )
    parameters = schemas[0]["function"]["parameters"]
    items = parameters["properties"]["params"]["anyOf"][0]["items"]
    assert set(items["properties"]) == {"name", "value"}  # not an empty object
    assert set(parameters["required"]) >= {"endpoint", "scope"}
    assert DEFAULT_TOOL_NAME in functions


def test_params_may_be_an_object_or_name_value_pairs() -> None:
    tool = AuthSecSecureFetchTool(settings=mock_settings())
    for params in ({"page": 2}, [{"name": "page", "value": 2}], None):
        result = parsed(
            tool.run(endpoint="secure-vault/records", scope="read:records", params=params)
        )
        assert result["status"] == "ok", result


# --- wiring and sharing -------------------------------------------------------------------------


def test_tools_configured_alike_share_one_broker() -> None:
    a = AuthSecSecureFetchTool(settings=mock_settings())
    b = AsyncAuthSecSecureFetchTool(settings=mock_settings())
    narrower = AuthSecSecureFetchTool(settings=mock_settings(allowed_scopes="read:records"))
    other_agent = AuthSecSecureFetchTool(
        settings=mock_settings(client_id="0b4c1a7e-1d1a-4f3e-9a51-2f7c7c7d6a10")
    )
    assert a.broker is b.broker is narrower.broker  # per-tool policy does not split the cache
    assert other_agent.broker is a.broker  # one broker serves every agent...
    assert (a.client_id, other_agent.client_id) == (  # ...each tool acting as its own
        DEMO_CLIENT_ID,
        "0b4c1a7e-1d1a-4f3e-9a51-2f7c7c7d6a10",
    )
    copy = a.model_copy()  # (deep copies of any crewai BaseTool fail on its own lock)
    assert copy.broker is a.broker


def test_tools_on_different_shared_stores_do_not_share_a_broker(tmp_path: Any) -> None:
    """A tool configured for another token store must not get the first tool's store."""
    key = base64.urlsafe_b64encode(bytes(range(32))).decode()
    other_key = base64.urlsafe_b64encode(bytes(range(1, 33))).decode()
    sqlite = {"store": f"sqlite:///{tmp_path / 'tokens.db'}", "store_key": key}
    in_memory = AuthSecSecureFetchTool(settings=mock_settings())
    shared = AuthSecSecureFetchTool(settings=mock_settings(**sqlite))
    same_store = AuthSecSecureFetchTool(settings=mock_settings(**sqlite))
    rekeyed = {**sqlite, "store_key": other_key}
    other_key_tool = AuthSecSecureFetchTool(settings=mock_settings(**rekeyed))
    assert shared.broker is same_store.broker
    assert shared.broker is not in_memory.broker
    assert other_key_tool.broker is not shared.broker


def test_broker_and_transport_can_be_wired_by_hand(client_id: str) -> None:
    transport = MockTransport()
    by_transport = AuthSecSecureFetchTool(settings=mock_settings(), transport=transport)
    again = AsyncAuthSecSecureFetchTool(settings=mock_settings(), transport=transport)
    assert by_transport.broker is again.broker and by_transport.broker.transport is transport
    with SyncTokenBroker(MockTransport(), client_id=client_id) as sync_broker:
        tool = AuthSecSecureFetchTool(broker=sync_broker)
        assert tool.broker is sync_broker.broker
        assert parsed(tool._run("secure-vault/metrics", "read:metrics"))["status"] == "ok"
    with pytest.raises(errors.ConfigurationError, match="not both"):
        AuthSecSecureFetchTool(broker=sync_broker, transport=transport)


def test_a_broken_configuration_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHSEC_MODE", "live")
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_BASE_URL"):
        AuthSecSecureFetchTool()
    monkeypatch.setenv("AUTHSEC_MODE", "mock")
    assert AuthSecSecureFetchTool().settings.resolved_mode == "mock"


@pytest.mark.parametrize("tool_cls", [AuthSecSecureFetchTool, AsyncAuthSecSecureFetchTool])
def test_a_replay_tool_without_its_cassette_fails_at_construction(
    tool_cls: type[AuthSecSecureFetchTool], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "cassettes" / "briefing.json"
    monkeypatch.setenv("AUTHSEC_MODE", "replay")
    monkeypatch.setenv("AUTHSEC_CASSETTE", str(missing))
    with pytest.raises(errors.ConfigurationError, match="does not exist") as caught:
        tool_cls()
    assert str(missing) in str(caught.value) and "authsec-crewai record" in str(caught.value)
    with pytest.raises(errors.ConfigurationError, match="does not exist"):
        tool_cls(settings=AuthSecSettings(mode="replay", cassette=missing))


def test_closing_shared_brokers_stops_their_threads_and_tools_recover() -> None:
    tool = AsyncAuthSecSecureFetchTool(settings=mock_settings())
    first = tool.broker
    assert any(t.name == "authsec-crewai-broker" for t in threading.enumerate())
    close_shared_brokers()
    assert not any(t.name == "authsec-crewai-broker" for t in threading.enumerate())
    assert parsed(tool._run("secure-vault/records", "read:records"))["status"] == "ok"
    assert tool.broker is not first


# --- results are JSON; failures are returned ----------------------------------------------------


@pytest.mark.parametrize("tool_cls", TOOLS)
def test_results_and_refusals_are_json(tool_cls: type[AuthSecSecureFetchTool]) -> None:
    transport = MockTransport()
    tool = tool_cls(
        settings=mock_settings(allowed_scopes="read:records read:metrics read:audit"),
        transport=transport,
    )
    ok = parsed(tool.run(endpoint="secure-vault/records", scope="read:records"))
    assert ok["status"] == "ok" and ok["endpoint"] == "secure-vault/records"
    assert ok["scope"] == "read:records" and ok["data"]["count"] == 6
    cases = {
        ("http://evil.example/x", "read:records"): "endpoint_refused",
        ("secure-vault/records", "admin:all"): "scope_refused",
        ("secure-vault/audit-log", "read:audit"): "insufficient_scope",
        ("secure-vault/incidents", "read:records"): "insufficient_scope",  # the API's 403
        ("secure-vault/missing", "read:records"): "api_error",
    }
    for (endpoint, scope), kind in cases.items():
        result = parsed(tool.run(endpoint=endpoint, scope=scope))
        assert result == {
            "status": "error",
            "error": kind,
            "message": result["message"],
            "retryable": False,
        }, result
        assert len(result["message"]) > 20
    assert transport.calls == 1  # {read:records}; read:audit is outside what the token grants


def test_only_successes_are_cached_by_crewai() -> None:
    tool = AuthSecSecureFetchTool(settings=mock_settings())
    ok = tool._run("secure-vault/records", "read:records")
    refused = tool._run("..", "read:records")
    assert tool.cache_function is cache_successes
    assert cache_successes({}, ok) and not cache_successes({}, refused)


@pytest.mark.parametrize("tool_cls", TOOLS)
def test_live_failures_are_errors_never_mock_data(
    tool_cls: type[AuthSecSecureFetchTool], client_id: str
) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    down = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    settings = AuthSecSettings(mode="live", base_url=down, client_id=client_id, retry_budget=0)
    tool = tool_cls(settings=settings)
    for _ in range(3):
        text = tool._run("secure-vault/records", "read:records")
        result = parsed(text)
        # nothing ever listened there: a wrong URL, said at once and not worth retrying
        assert result["status"] == "error" and result["error"] == "unreachable"
        assert result["retryable"] is False and "data" not in result
        assert "Amara" not in text and "clearance" not in text


def test_a_500_from_the_api_is_a_retryable_error(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(Fault.http(500), path=RECORDS)
    tool = AuthSecSecureFetchTool(settings=live_settings(authsec_server, client_id))
    result = parsed(tool._run("secure-vault/records", "read:records"))
    assert (result["error"], result["retryable"]) == ("api_error", True)
    assert "Amara" not in json.dumps(result)
    assert parsed(tool._run("secure-vault/records", "read:records"))["status"] == "ok"


class EchoingTransport(MockTransport):
    """Mock tokens, and a protected API that echoes the credentials back."""

    def api(self) -> httpx.AsyncBaseTransport:
        def echo(request: httpx.Request) -> httpx.Response:
            auth = request.headers["authorization"]
            status = int(request.url.params.get("status", "200"))
            body = {"you_sent": auth, "token": auth.split()[1], "details": auth}
            return httpx.Response(status, json=body, headers={"location": f"/x?{auth}"})

        return httpx.MockTransport(echo)


@pytest.mark.parametrize("tool_cls", TOOLS)
def test_no_token_in_any_result_error_or_repr(tool_cls: type[AuthSecSecureFetchTool]) -> None:
    transport = EchoingTransport()
    tool = tool_cls(settings=mock_settings(), transport=transport)
    outputs = [tool._run("echo", "read:records")]
    for status in ("401", "403", "404", "302", "500"):
        outputs.append(tool._run("echo", "read:records", {"status": status}))
    token = tool.broker.cached_token("read:records")
    assert token is not None
    assert parsed(outputs[0])["data"]["token"] == f"jwt:{token.fingerprint}"
    assert [parsed(o)["status"] for o in outputs] == ["ok"] + ["error"] * 5
    everything = "\n".join([*outputs, repr(tool), str(tool), tool.model_dump_json()])
    assert token.value not in everything
    assert token.value.split(".")[1] not in everything


# --- callers: threads, event loops, asyncio and trio --------------------------------------------


@pytest.mark.anyio
async def test_the_sync_tool_works_inside_a_running_event_loop() -> None:
    tool = AsyncAuthSecSecureFetchTool(settings=mock_settings())
    text = tool.run(endpoint="secure-vault/metrics", scope="read:metrics")  # not a coroutine
    assert parsed(text)["data"]["quarter"] == "2026-Q2"
    assert (
        parsed(await tool.arun(endpoint="secure-vault/metrics", scope="read:metrics"))["status"]
        == "ok"
    )


@pytest.mark.anyio
async def test_1000_concurrent_async_calls_make_one_token_request() -> None:
    transport = MockTransport(latency=0.05)
    tool = AsyncAuthSecSecureFetchTool(settings=mock_settings(), transport=transport)
    results: list[dict[str, Any]] = []

    async def one(index: int) -> None:
        endpoint = "secure-vault/records" if index % 2 else "secure-vault/metrics"
        scope = "read:records" if index % 2 else "read:metrics"
        results.append(parsed(await tool._arun(endpoint, scope, {"i": index})))

    async with anyio.create_task_group() as tg:
        for index in range(1000):
            tg.start_soon(one, index)
    assert len(results) == 1000 and all(r["status"] == "ok" for r in results)
    assert transport.calls <= 2  # one per scope set at most, and usually one in all
    assert tool.broker.stats.fetches == transport.calls


def test_async_calls_from_many_event_loops_share_one_fetch() -> None:
    transport = MockTransport(latency=0.2)
    tool = AsyncAuthSecSecureFetchTool(settings=mock_settings(), transport=transport)
    statuses: list[str] = []
    barrier = threading.Barrier(6)

    async def calls() -> None:
        barrier.wait()
        for _ in range(25):
            statuses.append(
                parsed(await tool._arun("secure-vault/records", "read:records"))["status"]
            )

    def on_asyncio() -> None:
        asyncio.run(calls())

    def on_trio() -> None:
        trio.run(calls)

    threads = [threading.Thread(target=f) for f in (on_asyncio, on_trio) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == ["ok"] * 150
    assert transport.calls == 1


@pytest.mark.anyio
async def test_a_cancelled_async_call_returns_at_once_and_harms_nothing() -> None:
    transport = MockTransport(latency=1.0)
    tool = AsyncAuthSecSecureFetchTool(settings=mock_settings(), transport=transport)
    started = time.monotonic()
    with anyio.move_on_after(0.1):
        await tool._arun("secure-vault/records", "read:records")
    assert time.monotonic() - started < 0.5
    result = parsed(await tool._arun("secure-vault/records", "read:records"))
    assert result["status"] == "ok" and transport.calls == 1  # the shared fetch went on


def test_sync_calls_from_64_threads_make_one_token_request(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(Fault.slow(0.2))
    tool = AuthSecSecureFetchTool(settings=live_settings(authsec_server, client_id))
    barrier = threading.Barrier(64)
    statuses: list[str] = []

    def call(index: int) -> None:
        barrier.wait()
        statuses.append(
            parsed(tool._run("secure-vault/records", "read:records", {"i": index}))["status"]
        )

    threads = [threading.Thread(target=call, args=(i,)) for i in range(64)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == ["ok"] * 64
    assert authsec_server.count(TOKEN_PATH) == 1
    assert authsec_server.count(RECORDS) == 64


@pytest.mark.anyio
async def test_the_async_tool_in_live_mode(authsec_server: MockServer, client_id: str) -> None:
    tool = AsyncAuthSecSecureFetchTool(settings=live_settings(authsec_server, client_id))
    result = parsed(await tool._arun("secure-vault/metrics", "read:metrics"))
    assert result["data"]["active_users"] == 182_340
    assert authsec_server.count("/secure-vault/metrics") == 1


def test_live_async_calls_use_their_own_loops_pool_and_one_broker(
    authsec_server: MockServer, client_id: str
) -> None:
    """Async callers on any loop reach the API over that loop's own pool (no
    hop to the broker's thread), while every token still comes from one fetch."""
    authsec_server.faults.add(Fault.slow(0.2))  # the token fetch overlaps every caller
    tool = AsyncAuthSecSecureFetchTool(settings=live_settings(authsec_server, client_id))
    shared_fetcher = tool._binding.get()[1]
    statuses: list[str] = []
    fetchers: set[int] = set()
    finished_loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []
    barrier = threading.Barrier(4)

    async def calls() -> None:
        barrier.wait()
        local = tool._binding.fetcher_on_this_loop()
        assert local is not None and local is not shared_fetcher
        assert tool._binding.fetcher_on_this_loop() is local  # one per loop
        fetchers.add(id(local))
        if sniffio.current_async_library() == "asyncio":
            finished_loops.append(weakref.ref(asyncio.get_running_loop()))
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(one)

    async def one() -> None:
        statuses.append(parsed(await tool._arun("secure-vault/records", "read:records"))["status"])

    threads = [
        threading.Thread(target=anyio.run, args=(calls,), kwargs={"backend": backend})
        for backend in ("asyncio", "trio", "asyncio", "trio")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == ["ok"] * 200
    assert len(fetchers) == 4
    assert authsec_server.count(TOKEN_PATH) == 1
    assert authsec_server.count(RECORDS) == 200
    gc.collect()
    assert all(ref() is not None for ref in finished_loops)  # their pools hold them
    anyio.run(one)  # a new loop arrives: the finished loops' pools are dropped
    gc.collect()
    assert len(finished_loops) == 2 and all(ref() is None for ref in finished_loops)
    assert statuses == ["ok"] * 201


def test_mock_mode_async_calls_take_the_live_path_and_keep_to_the_mock_api() -> None:
    """Mock mode runs the code live mode runs: each loop calls through a fetcher of its
    own on the one shared broker, with no hop to the broker's thread. Only the API
    transport differs, as the transport declares: the mock app, in process."""
    transport = MockTransport(latency=0.2)  # the token fetch overlaps every caller
    tool = AsyncAuthSecSecureFetchTool(settings=mock_settings(), transport=transport)
    broker_thread = tool._binding.get()[0]
    statuses: list[str] = []
    threads_seen: set[int] = set()
    fetchers: set[int] = set()

    async def calls() -> None:
        fetchers.add(id(tool._binding.fetcher_on_this_loop()))
        async with anyio.create_task_group() as tg:
            for _ in range(25):
                tg.start_soon(one)

    async def one() -> None:
        statuses.append(parsed(await tool._arun("secure-vault/records", "read:records"))["status"])
        threads_seen.add(threading.get_ident())

    threads = [
        threading.Thread(target=anyio.run, args=(calls,), kwargs={"backend": backend})
        for backend in ("asyncio", "trio")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == ["ok"] * 50
    assert len(fetchers) == 2  # one per loop
    assert threads_seen == {thread.ident for thread in threads}  # never the broker's thread
    assert broker_thread.broker.stats.fetches == transport.calls == 1
    assert cast(Any, transport.api()).app.state.counts[RECORDS] == 50


@pytest.mark.anyio
async def test_a_users_own_running_broker(client_id: str) -> None:
    async with TokenBroker(MockTransport(), client_id=client_id) as broker:
        tool = AsyncAuthSecSecureFetchTool(broker=broker, settings=mock_settings())
        results = [
            parsed(await tool._arun("secure-vault/records", "read:records")) for _ in range(3)
        ]
        assert [r["status"] for r in results] == ["ok"] * 3
        assert broker.stats.fetches == 1
    closed = parsed(await tool._arun("secure-vault/metrics", "read:metrics"))
    assert closed["status"] == "error" and closed["error"] == "broker_closed"
