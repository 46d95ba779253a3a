"""What the secure defaults cost, side by side with what they guard, in one run.

(a) span export: finished spans of an HTTP client's shape (ten attributes, one
    event, no secret in them: the common case) encoded as the OTLP exporter
    encodes them, through ``ScrubbingSpanExporter`` versus directly, with 8
    and with 1,024 exact (opaque, not JWT-shaped) secrets held by the process;
(b) httpcore's DEBUG header lines through the redacting filter versus the
    same lines with no filter, to a handler writing to memory.

Best of several rounds, the two sides interleaved.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from authsec_crewai import _secrets
from authsec_crewai.logging import RedactingFilter
from authsec_crewai.otel_scrub import ScrubbingSpanExporter

SPANS = 2_000
LINES = 20_000
ROUNDS = 7


def best(run: Callable[[], None]) -> float:
    times = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def http_spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("opentelemetry.instrumentation.httpx")
    for n in range(SPANS):
        with tracer.start_as_current_span("GET") as span:
            span.set_attributes(
                {
                    "http.request.method": "GET",
                    "url.full": f"https://api.example.com/secure-vault/records?page={n}",
                    "url.scheme": "https",
                    "server.address": "api.example.com",
                    "server.port": 443,
                    "network.protocol.version": "1.1",
                    "http.response.status_code": 200,
                    "user_agent.original": "authsec-crewai/0.2.0",
                    "http.request.header.accept": ["application/json"],
                    "http.response.header.content_type": ["application/json"],
                }
            )
            span.add_event("http.response", {"bytes": 1024})
    return list(exporter.get_finished_spans())


def hold(count: int) -> None:
    _secrets._held = OrderedDict()
    _secrets._index = None
    for _ in range(count):
        _secrets.remember(f"held-secret-{uuid.uuid4().hex}")


class OtlpEncoding(SpanExporter):
    """The OTLP exporter's own work before the network: protobuf encoding of the batch."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encode_spans(spans).SerializeToString()
        return SpanExportResult.SUCCESS


def spans_table() -> None:
    spans = http_spans()
    print("(a) span export (OTLP encoding), per span")
    print("| secrets held | scrubbed us | direct us | ratio |")
    print("|---|---|---|---|")
    direct = OtlpEncoding()
    for count in (8, 1024):
        hold(count)
        wrapper = ScrubbingSpanExporter(direct)
        direct_s, scrub_s = 1e9, 1e9
        for _ in range(3):  # interleaved
            direct_s = min(direct_s, best(lambda: direct.export(spans)))
            scrub_s = min(scrub_s, best(lambda w=wrapper: w.export(spans)))  # type: ignore[misc]
        print(
            f"| {count} | {scrub_s / SPANS * 1e6:.1f} | {direct_s / SPANS * 1e6:.1f} | "
            f"{scrub_s / direct_s:.2f}x |"
        )


def logs_table() -> None:
    line = (
        "receive_response_headers.complete return_value=(b'HTTP/1.1', 200, b'OK', "
        "[(b'date', b'Thu, 03 Dec 2026 08:00:00 GMT'), (b'content-type', b'application/json'), "
        "(b'content-length', b'1556')])"
    )
    logger = logging.getLogger("bench.httpcore.http11")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    handler = logging.StreamHandler(io.StringIO())
    logger.addHandler(handler)
    redacting = RedactingFilter()

    def emit() -> None:
        handler.stream = io.StringIO()
        for _ in range(LINES):
            logger.debug(line)

    print("\n(b) httpcore DEBUG lines to a handler, per line")
    print("| secrets held | filtered us | unfiltered us | ratio |")
    print("|---|---|---|---|")
    for count in (8, 1024):
        hold(count)
        plain_s, filtered_s = 1e9, 1e9
        for _ in range(3):
            logger.filters[:] = []
            plain_s = min(plain_s, best(emit))
            logger.addFilter(redacting)
            filtered_s = min(filtered_s, best(emit))
        logger.filters[:] = []
        print(
            f"| {count} | {filtered_s / LINES * 1e6:.1f} | {plain_s / LINES * 1e6:.1f} | "
            f"{filtered_s / plain_s:.2f}x |"
        )


if __name__ == "__main__":
    spans_table()
    logs_table()
