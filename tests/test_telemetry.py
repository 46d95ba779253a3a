"""OpenTelemetry: metrics that agree with the transport's own count, spans under the
caller's span, and no token in any attribute. Measured with the SDK's in-memory
reader and exporter, wired through ``telemetry.instrument``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from brokerkit import FakeClock, broker, mock
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from authsec_crewai import errors, telemetry
from authsec_crewai.broker import TokenBroker
from authsec_crewai.sync import SyncTokenBroker
from authsec_crewai.token import DelegationToken
from authsec_crewai.transports.mock import MockTransport
from authsec_crewai.wiring import build_fetcher


@dataclass
class Otel:
    reader: InMemoryMetricReader
    exporter: InMemorySpanExporter
    tracer: Any

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found.extend(metric.data.data_points)
        return found

    def requests(self) -> Counter[tuple[str, str, str]]:
        return Counter(
            {
                (p.attributes["mode"], p.attributes["source"], p.attributes["outcome"]): p.value
                for p in self.points(telemetry.REQUESTS_COUNTER)
            }
        )

    def fetches(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for point in self.points(telemetry.FETCH_HISTOGRAM):
            counts[point.attributes["outcome"]] += point.count
        return counts

    def spans(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Otel]:
    # The crew tests quiet crewai with OTEL_SDK_DISABLED, which the SDK's providers obey.
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.instrument(meter_provider=meters, tracer_provider=tracers)
    try:
        yield Otel(reader, exporter, tracers.get_tracer("test"))
    finally:
        telemetry.instrument()  # back to the global (no-op) providers
        meters.shutdown()
        tracers.shutdown()


def _no_token_anywhere(otel: Otel, *tokens: DelegationToken) -> None:
    """Every attribute of every span and metric point, as text: no token or part of one."""
    texts = [json.dumps(dict(s.attributes or {})) for s in otel.exporter.get_finished_spans()]
    data = otel.reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                texts += [json.dumps(dict(p.attributes or {})) for p in metric.data.data_points]
    dump = "\n".join(texts)
    assert dump  # something was recorded, or this proves nothing
    for token in tokens:
        assert token.value not in dump
        for part in token.value.split(".")[1:]:
            assert part not in dump


@pytest.mark.anyio
async def test_fetch_count_in_the_metrics_equals_the_transports_calls(
    otel: Otel, client_id: str
) -> None:
    clock = FakeClock()
    transport = mock(clock, ttl=1000.0, latency=0.02)
    before_requests, before_fetches = otel.requests(), otel.fetches()
    async with broker(transport, client_id, clock) as b:
        tokens: list[DelegationToken] = []

        async def ask() -> None:
            tokens.append(await b.token("read:records"))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(ask)
        for _ in range(20):
            await b.token("read:records")  # lock-free hits
        clock.advance(2000)  # expired: the next caller waits for a fetch, which fails
        transport.fail_next(1, 503)
        with pytest.raises(errors.AuthSecError):
            await b.token("read:records")
        stats = b.stats
    requests = otel.requests() - before_requests
    fetches = otel.fetches() - before_fetches
    assert transport.calls == 2 == sum(fetches.values())
    assert fetches == Counter({"ok": 1, "error": 1})
    assert requests[("mock", "fetch", "ok")] == 50 == stats.misses - 1
    assert requests[("mock", "fetch", "error")] == 1
    assert requests[("mock", "cache", "ok")] == 20 == stats.hits
    _no_token_anywhere(otel, tokens[0])


@pytest.mark.anyio
async def test_hits_of_a_running_broker_are_read_at_each_collection(
    otel: Otel, client_id: str
) -> None:
    clock = FakeClock()
    async with broker(mock(clock), client_id, clock) as b:
        await b.token("read:records")
        start = otel.requests()[("mock", "cache", "ok")]
        for _ in range(7):
            await b.token("read:records")
        middle = otel.requests()[("mock", "cache", "ok")]
        for _ in range(5):
            await b.token("read:records")
    end = otel.requests()[("mock", "cache", "ok")]  # folded in when the broker closed
    assert (middle - start, end - middle) == (7, 5)


@pytest.mark.anyio
async def test_spans_are_children_of_the_callers_span_and_carry_no_token(
    otel: Otel, client_id: str
) -> None:
    async with broker_for(MockTransport(), client_id) as b:
        fetcher = build_fetcher(b)
        with otel.tracer.start_as_current_span("app.request") as parent:
            result = await fetcher.fetch("secure-vault/records", "read:records")
        token = b.cached_token("read:records")
    assert token is not None
    (fetch,) = otel.spans("authsec.token.fetch")
    (call,) = otel.spans("authsec.api.call")
    trace_id = parent.get_span_context().trace_id
    for span in (fetch, call):
        assert span.parent is not None and span.parent.span_id == parent.get_span_context().span_id
        assert span.context.trace_id == trace_id
        assert span.attributes["authsec.token.fingerprint"] == result.fingerprint
        assert span.attributes["authsec.token.jti"] == result.jti
        assert span.attributes["authsec.mode"] == "mock"
    assert call.attributes["http.response.status_code"] == 200
    assert call.attributes["url.path"] == "secure-vault/records"
    assert fetch.attributes["authsec.scopes"] == ("read:records",)
    (lifetime,) = otel.points(telemetry.LIFETIME_HISTOGRAM)
    assert lifetime.count == 1 and 1700 < lifetime.sum <= 1800  # the mock issues 30 minutes
    _no_token_anywhere(otel, token)


@pytest.mark.anyio
async def test_failures_are_marked_on_their_spans(otel: Otel, client_id: str) -> None:
    async with broker_for(MockTransport(), client_id) as b:
        with pytest.raises(errors.ProtectedApiError):
            await build_fetcher(b).fetch("secure-vault/nowhere", "read:records")
    failing = MockTransport()
    failing.fail_next(1, 503)
    async with broker_for(failing, client_id) as b:
        with pytest.raises(errors.AuthSecError):
            await b.token("read:records")
    (call,) = otel.spans("authsec.api.call")
    assert call.attributes["http.response.status_code"] == 404
    assert call.status.status_code.name == "ERROR"
    failed = [s for s in otel.spans("authsec.token.fetch") if s.status.status_code.name == "ERROR"]
    assert len(failed) == 1 and failed[0].attributes["error.type"]


def test_a_fetch_asked_for_from_another_thread_is_traced_under_that_threads_span(
    otel: Otel, client_id: str
) -> None:
    """The fetch runs on the broker's own loop thread; its parent is still the asker."""
    parents: list[Any] = []
    with SyncTokenBroker(MockTransport(), client_id=client_id) as sync:

        def worker() -> None:
            with otel.tracer.start_as_current_span("crew.tool") as span:
                parents.append(span.get_span_context())
                sync.token("read:records")

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(30)
        assert not thread.is_alive()
    (fetch,) = otel.spans("authsec.token.fetch")
    assert fetch.parent is not None and fetch.parent.span_id == parents[0].span_id


def broker_for(transport: MockTransport, client_id: str) -> TokenBroker:
    return TokenBroker(transport, client_id=client_id)


def test_an_application_without_opentelemetry_never_imports_it() -> None:
    """No SDK can be configured without importing the API: then the hooks cost a lookup."""
    script = """
import sys, uuid, anyio
from authsec_crewai.broker import TokenBroker
from authsec_crewai.wiring import build_fetcher
from authsec_crewai.sync import SyncTokenBroker
from authsec_crewai.transports.mock import MockTransport

async def main():
    async with TokenBroker(MockTransport(), client_id=str(uuid.uuid4())) as broker:
        await build_fetcher(broker).fetch("secure-vault/records", "read:records")

anyio.run(main)
with SyncTokenBroker(MockTransport(), client_id=str(uuid.uuid4())) as sync:
    sync.token("read:records")
print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


@pytest.mark.anyio
async def test_broker_auth_requests_are_api_call_spans(otel: Otel, client_id: str) -> None:
    import httpx

    from authsec_crewai.auth import BrokerAuth

    answers = iter([401, 200])
    api = httpx.MockTransport(lambda request: httpx.Response(next(answers)))
    async with (
        broker_for(MockTransport(), client_id) as b,
        httpx.AsyncClient(transport=api, auth=BrokerAuth(b, "read:records")) as client,
    ):
        with otel.tracer.start_as_current_span("app.request") as parent:
            await client.get("http://api.test/secure-vault/records")
        token = b.cached_token("read:records")
    assert token is not None
    calls = otel.spans("authsec.api.call")
    assert [c.attributes["http.response.status_code"] for c in calls] == [401, 200]
    for call in calls:
        assert call.parent is not None
        assert call.parent.span_id == parent.get_span_context().span_id
        assert call.attributes["url.path"] == "/secure-vault/records"
    _no_token_anywhere(otel, token)


@pytest.mark.anyio
async def test_a_token_from_a_shared_store_counts_as_store_not_as_a_fetch(
    otel: Otel, client_id: str, tmp_path: Any
) -> None:
    import os

    from authsec_crewai.stores import SQLiteStore

    key = os.urandom(32)
    transport = MockTransport()
    before_requests, before_fetches = otel.requests(), otel.fetches()
    for _ in range(2):  # two processes' brokers, one store file: the second reads it
        store = SQLiteStore(tmp_path / "tokens.db", keys=[key])
        broker = TokenBroker(transport, client_id=client_id, store=store, close_transport=False)
        async with broker:
            await broker.token("read:records")
    requests = otel.requests() - before_requests
    assert transport.calls == 1 == sum((otel.fetches() - before_fetches).values())
    assert requests[("mock", "fetch", "ok")] == 1
    assert requests[("mock", "store", "ok")] == 1


@pytest.mark.anyio
async def test_spans_name_the_agent_and_metrics_do_not(otel: Otel) -> None:
    """A trace says which agent fetched and called what; a metric series per agent would
    grow without bound with the number of agents, so metrics never name one."""
    analyst, writer, failing = (str(uuid.uuid4()) for _ in range(3))
    transport = MockTransport()
    transport.authority.delegate(writer, permissions=["read:metrics"])
    async with TokenBroker(transport) as b:
        await build_fetcher(b, agent=analyst).fetch("secure-vault/records", "read:records")
        await build_fetcher(b, agent=writer).fetch("secure-vault/metrics", "read:metrics")
        transport.fail_next(1, 503)
        with pytest.raises(errors.AuthSecError):
            await b.token("read:records", agent=failing)
    fetches = otel.spans("authsec.token.fetch")
    calls = otel.spans("authsec.api.call")
    assert Counter(s.attributes["authsec.agent.client_id"] for s in fetches) == {
        analyst: 1,
        writer: 1,
        failing: 1,
    }
    assert sorted((s.attributes["authsec.agent.client_id"], s.attributes["url.path"])
                  for s in calls) == sorted([(analyst, "secure-vault/records"),
                                             (writer, "secure-vault/metrics")])  # fmt: skip
    failed = [s for s in fetches if s.status.status_code.name == "ERROR"]
    assert [s.attributes["authsec.agent.client_id"] for s in failed] == [failing]
    for name in (telemetry.REQUESTS_COUNTER, telemetry.FETCH_HISTOGRAM):
        for point in otel.points(name):
            assert "authsec.agent.client_id" not in point.attributes
            assert analyst not in json.dumps(dict(point.attributes))


@pytest.mark.anyio
async def test_broker_auth_spans_name_the_transports_declared_mode(
    otel: Otel, client_id: str
) -> None:
    """The mode comes from the transport's declared info, never from its class name."""
    import httpx

    from authsec_crewai.auth import BrokerAuth

    api = httpx.MockTransport(lambda request: httpx.Response(200))
    async with (
        broker_for(MockTransport(), client_id) as b,
        httpx.AsyncClient(transport=api, auth=BrokerAuth(b, "read:records")) as client,
    ):
        await client.get("http://api.test/secure-vault/records")
    (call,) = otel.spans("authsec.api.call")
    assert call.attributes is not None
    assert call.attributes["authsec.mode"] == MockTransport().info.mode == "mock"
