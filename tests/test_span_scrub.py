"""Spans written by other code come out of ``ScrubbingSpanExporter`` with no credential.

A real OpenTelemetry SDK: one provider exports every span twice, raw to one
in-memory exporter and through the scrubbing wrapper to another, so each
scrubbed span is compared with what it was. Tokens sit where other code puts
them: a tool's arguments, an event with its result, a header list, a nested
value, a link, the status. Then the same through the OTLP/HTTP exporter to a
real collector on loopback, bytes on the wire searched.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from _server import LoopbackServer
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from authsec_crewai import _secrets
from authsec_crewai.otel_scrub import ScrubbingSpanExporter, scrub_span
from authsec_crewai.redact import mask_jwt
from authsec_crewai.testing import MockAuthority


@pytest.fixture(scope="module")
def jwt() -> str:
    """A real RS256 delegation token, as the broker would hold."""
    authority = MockAuthority()
    client_id = str(uuid.uuid4())
    return str(authority.delegate(client_id)["token"])


OPAQUE = "opaque-bearer-0123456789abcdef"  # follows "Bearer": caught by its shape
HELD = "held-secret-" + uuid.uuid4().hex  # shaped like nothing: only its value can catch it
APP_SECRET = "app-secret-" + uuid.uuid4().hex  # the application's own, given to the wrapper
BASIC = "dXNlcjpodW50ZXIy"


@dataclass
class Pair:
    raw: InMemorySpanExporter
    scrubbed: InMemorySpanExporter
    tracer: object


@pytest.fixture
def pair() -> Iterator[Pair]:
    raw, scrubbed = InMemorySpanExporter(), InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "crew"}))
    provider.add_span_processor(SimpleSpanProcessor(raw))
    provider.add_span_processor(
        SimpleSpanProcessor(ScrubbingSpanExporter(scrubbed, secrets=[APP_SECRET]))
    )
    _secrets.remember(HELD)
    try:
        yield Pair(raw, scrubbed, provider.get_tracer("some.agent.framework", "9.9"))
    finally:
        provider.shutdown()


def _write_spans(tracer: object, jwt: str) -> None:
    """What an agent framework's and an HTTP client's instrumentation record."""
    start = tracer.start_as_current_span  # type: ignore[attr-defined]
    with start("crew.kickoff", kind=SpanKind.INTERNAL) as parent:
        parent.set_attribute("crew.agents", 2)
        linked = parent.get_span_context()
    with start(
        "tool.call",
        kind=SpanKind.CLIENT,
        links=[Link(linked, {"why": f"retry with Bearer {OPAQUE}", "n": 1})],
    ) as span:
        span.set_attribute("tool.name", "authsec_secure_fetch")
        span.set_attribute("tool.input", json.dumps({"endpoint": "secure-vault/x", "token": jwt}))
        span.set_attribute("tool.retries", 3)
        span.set_attribute("tool.ratio", 0.5)
        span.set_attribute("tool.cached", False)
        span.set_attribute("tool.sizes", [1, 2, 3])
        span.set_attribute("http.request.header.authorization", [f"Bearer {OPAQUE}"])
        span.set_attribute("http.request.header.x_api_key", ["raw-api-key-value"])
        span.set_attribute("tool.args", ["secure-vault/x", f"auth={HELD}", f"basic Basic {BASIC}"])
        span.set_attribute("tool.context", {"user": "ada", "deep": {"creds": [jwt], "n": 7}})
        span.set_attribute("app.note", f"the app's own {APP_SECRET}")
        span.add_event("tool.result", {"output": f"got {jwt} back", "size": 12})
        span.add_event("plain", {"k": "v"})
        span.set_status(Status(StatusCode.ERROR, f"401 for token {jwt}"))


def _everywhere(span: ReadableSpan) -> str:
    return str(span.to_json()) + repr(dict(span.attributes or {}))


def test_other_codes_spans_come_out_scrubbed_and_otherwise_unchanged(pair: Pair, jwt: str) -> None:
    _write_spans(pair.tracer, jwt)
    raw, scrubbed = pair.raw.get_finished_spans(), pair.scrubbed.get_finished_spans()
    assert len(raw) == len(scrubbed) == 2
    raw_text = "".join(_everywhere(s) for s in raw)
    for secret in (jwt, OPAQUE, HELD, APP_SECRET, BASIC, "raw-api-key-value"):
        assert secret in raw_text  # the test can fail: the raw spans carry each one
    text = "".join(_everywhere(s) for s in scrubbed)
    for secret in (jwt, jwt.split(".")[2][:16], OPAQUE, HELD, APP_SECRET, BASIC):
        assert secret not in text
    assert "raw-api-key-value" not in text

    for before, after in zip(raw, scrubbed, strict=True):
        assert after.name == before.name
        assert after.context == before.context and after.parent == before.parent
        assert after.kind == before.kind
        assert (after.start_time, after.end_time) == (before.start_time, before.end_time)
        assert after.resource == before.resource
        assert after.instrumentation_scope == before.instrumentation_scope
        assert after.status.status_code == before.status.status_code
        assert [e.name for e in after.events] == [e.name for e in before.events]
        assert [e.timestamp for e in after.events] == [e.timestamp for e in before.events]
        assert [link.context for link in after.links] == [link.context for link in before.links]
        assert (after.dropped_attributes, after.dropped_events, after.dropped_links) == (
            before.dropped_attributes,
            before.dropped_events,
            before.dropped_links,
        )
        assert set(after.attributes or {}) == set(before.attributes or {})

    kickoff, call = scrubbed
    assert kickoff is raw[0]  # nothing to scrub: the very same span goes on
    attributes = dict(call.attributes or {})
    for name in ("tool.name", "tool.retries", "tool.ratio", "tool.cached", "tool.sizes"):
        assert attributes[name] == raw[1].attributes[name]  # type: ignore[index]
    assert json.loads(str(attributes["tool.input"]))["token"] == mask_jwt(jwt)  # correlatable
    assert attributes["http.request.header.authorization"] == ("[redacted]",)  # named secret
    assert attributes["http.request.header.x_api_key"] == ("[redacted]",)
    assert attributes["tool.args"] == (
        "secure-vault/x",
        "auth=[redacted]",
        "basic Basic [redacted]",
    )
    assert attributes["tool.context"] == {
        "user": "ada",
        "deep": {"creds": (mask_jwt(jwt),), "n": 7},
    }
    assert call.events[0].attributes == {"output": f"got {mask_jwt(jwt)} back", "size": 12}
    assert call.events[1] is raw[1].events[1]
    assert call.links[0].attributes == {"why": "retry with Bearer [redacted]", "n": 1}
    assert call.status.description == f"401 for token {mask_jwt(jwt)}"


def test_a_token_in_a_span_name_or_bytes_is_scrubbed_too(jwt: str) -> None:
    span = ReadableSpan(
        name=f"GET /cb?token={jwt}",
        attributes={"body": f"Authorization: Bearer {OPAQUE}".encode(), "blob": b"\xff\x00"},
    )
    scrubbed = scrub_span(span)
    assert jwt not in scrubbed.name and mask_jwt(jwt) in scrubbed.name
    assert scrubbed.attributes == {"body": b"Authorization: Bearer [redacted]", "blob": b"\xff\x00"}


def test_scrubbing_is_idempotent(pair: Pair, jwt: str) -> None:
    _write_spans(pair.tracer, jwt)
    for span in pair.scrubbed.get_finished_spans():
        assert scrub_span(span) is span


def test_the_wrapper_passes_results_flush_and_shutdown_through() -> None:
    inner = InMemorySpanExporter()
    wrapper = ScrubbingSpanExporter(inner, secrets=[APP_SECRET])
    assert APP_SECRET not in repr(wrapper)
    assert wrapper.export([ReadableSpan(name="x")]) is SpanExportResult.SUCCESS
    assert wrapper.force_flush() is True
    wrapper.shutdown()
    assert wrapper.export([ReadableSpan(name="x")]) is SpanExportResult.FAILURE  # inner is shut


# --- on the wire: the OTLP/HTTP exporter to a collector on loopback ----------------------


def test_the_otlp_exporter_sends_no_credential(loopback_server: LoopbackServer, jwt: str) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    received: list[bytes] = []

    async def traces(request: Request) -> Response:
        received.append(await request.body())
        return Response(b"", media_type="application/x-protobuf")

    loopback_server.app = Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
    try:
        for wrap in (False, True):
            exporter = OTLPSpanExporter(endpoint=f"{loopback_server.url}/v1/traces", timeout=10)
            provider = TracerProvider()
            provider.add_span_processor(
                SimpleSpanProcessor(ScrubbingSpanExporter(exporter) if wrap else exporter)
            )
            _secrets.remember(HELD)
            _write_spans(provider.get_tracer("some.agent.framework"), jwt)
            provider.shutdown()
    finally:
        loopback_server.app = None
    assert len(received) == 4  # two spans, raw then scrubbed
    raw, scrubbed = b"".join(received[:2]), b"".join(received[2:])
    assert jwt.encode() in raw and HELD.encode() in raw  # the test can fail
    for secret in (jwt, jwt.split(".")[2][:16], OPAQUE, HELD, BASIC):
        assert secret.encode() not in scrubbed
    assert mask_jwt(jwt).encode() in scrubbed and b"authsec_secure_fetch" in scrubbed
    assert base64.b64encode(jwt.encode()) not in scrubbed
