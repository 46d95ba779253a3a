"""``doctor --canary``: a canary token through every sink the library writes, then a search.

The canary is a real delegation token (and a canary API token) from a mock
AuthSec server started on loopback for the run, never the configured one. A
server that echoes credentials back does its worst: the token endpoint
answers once with the raw API token in a header, the vault echoes the bearer
token in a ``WWW-Authenticate`` header and in its JSON answer, and refuses
one call with the token in its error. Through that run:

- **logs**: every stdlib record at DEBUG (the library's events, httpx's and
  httpcore's header lines), as an application's handler would get them;
- **spans**: the library's own spans and another instrumentation's (a tool
  span carrying the token, as agent frameworks record tool inputs), through
  :class:`~authsec_crewai.otel_scrub.ScrubbingSpanExporter`;
- **cassette**: the session recorded as ``AUTHSEC_MODE=record`` would;
- **result**: the JSON text the CrewAI tools return, for an answer and an error.

A sink that holds the token or its signature, or the API token, fails its
check (a cassette keeps a token's header and claims without its signature: no
credential). A sink nothing reached proves nothing and says so.

For the run, stdlib logging is set to DEBUG with a handler of the canary's,
structlog is set aside, and the library's telemetry points at a provider of
the canary's; afterwards levels and structlog are put back and telemetry
points at the global providers again. It is meant for the command line.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from . import telemetry
from .checks import Check, safe
from .logging import HTTP_LOGGERS

__all__ = ["run_canary"]

_RECORDS, _METRICS = "secure-vault/records", "secure-vault/metrics"
_FORMAT = "%(name)s %(levelname)s %(message)s"


@contextmanager
def _captured_logs() -> Iterator[io.StringIO]:
    """Every stdlib record at DEBUG into a buffer; levels and structlog put back after.

    structlog is set aside for the run, so the library's events take their
    stdlib route (the one an application without structlog gets).
    """
    import structlog

    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(_FORMAT))
    loggers = [logging.getLogger(name) for name in ("", "authsec_crewai", *HTTP_LOGGERS)]
    levels = [logger.level for logger in loggers]
    structlog_config = structlog.get_config() if structlog.is_configured() else None
    structlog.reset_defaults()
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    loggers[0].addHandler(handler)
    try:
        yield buffer
    finally:
        loggers[0].removeHandler(handler)
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        if structlog_config is not None:
            structlog.configure(**structlog_config)


class _Spans:
    """The library's spans, and another instrumentation's, through the scrubbing exporter."""

    def __init__(self) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from .otel_scrub import ScrubbingSpanExporter

        self.exported = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(ScrubbingSpanExporter(self.exported)))

    def foreign_span(self, token: str, api_token: str) -> None:
        """What an agent framework's instrumentation records around a tool call."""
        tracer = self.provider.get_tracer("canary.other-instrumentation")
        with tracer.start_as_current_span(
            "tool.call",
            attributes={
                "tool.input": json.dumps({"endpoint": _RECORDS, "token": token}),
                "http.request.header.authorization": [f"Bearer {token}"],
                "tool.args": ["--api-token", api_token],
            },
        ) as span:
            span.add_event("tool.result", {"output": f"called with {token}"})

    def text(self) -> tuple[int, str]:
        spans = self.exported.get_finished_spans()
        return len(spans), "\n".join(str(span.to_json(indent=None)) for span in spans)


def _needles(token: str, api_token: str) -> dict[str, str]:
    signature = token.rsplit(".", 1)[-1]  # the header and claims alone are no credential
    return {
        "the canary token": token,
        "its signature": signature,
        "the canary API token": api_token,
    }


def _leaks(text: str, needles: dict[str, str]) -> list[str]:
    return [label for label, needle in needles.items() if needle and needle in text]


def _sink_check(
    sink: str, text: str, needles: dict[str, str], reached: str | None, said: str
) -> Check:
    leaked = _leaks(text, needles)
    if leaked:
        where = ""
        if sink == "logs":
            names = sorted(
                {line.split(" ", 1)[0] for line in text.splitlines() if _leaks(line, needles)}
            )
            where = f" (lines of {', '.join(names[:4])})"
        return Check(
            f"canary.{sink}",
            "fail",
            f"LEAK: {', '.join(leaked)} in the {sink}{where}",
            {"leaked": leaked},
        )
    if reached is not None:
        return Check(f"canary.{sink}", "warn", f"{reached}: this proves nothing about the {sink}")
    return Check(f"canary.{sink}", "ok", said)


async def run_canary() -> list[Check]:
    """One canary session through every sink; a check per sink."""
    from .broker import TokenBroker
    from .fetch import SecureFetcher
    from .testing import TOKEN_PATH, Fault, LoopbackServer, MockAuthority, MockFaults, create_app
    from .toolspec import fetch_text
    from .transports.live import LiveTransport
    from .transports.record import RecordingTransport

    api_token = f"authsec-canary-api-{secrets.token_hex(16)}"
    client_id = str(uuid.uuid4())
    authority = MockAuthority()
    authority.delegate(client_id)
    faults = MockFaults()
    faults.add(Fault(status=503, echo="{bearer}", echo_header="x-echo"), path=TOKEN_PATH)
    faults.add(
        Fault(
            status=200, echo='{"records": [], "seen": "{bearer}"}', echo_header="www-authenticate"
        ),
        path=f"/{_RECORDS}",
    )
    faults.add(
        Fault(
            status=401,
            echo='Bearer error="invalid_token", token="{bearer}"',
            echo_header="www-authenticate",
        ),
        count=2,
        path=f"/{_METRICS}",
    )
    try:
        spans: _Spans | None = _Spans()
    except ImportError:
        spans = None
    server = LoopbackServer(create_app(authority, faults=faults, api_token=api_token))
    results: list[str] = []
    with tempfile.TemporaryDirectory(prefix="authsec-canary-") as directory:
        cassette = Path(directory) / "canary.json"
        await anyio.to_thread.run_sync(server.start)
        try:
            with _captured_logs() as logs:
                if spans is not None:
                    telemetry.instrument(tracer_provider=spans.provider)
                try:
                    live = LiveTransport(
                        server.url, api_token=api_token, backoff=0.01, max_backoff=0.05
                    )
                    recording = RecordingTransport(live, cassette, record_mode="all")
                    async with TokenBroker(recording, client_id=client_id) as broker:
                        token = (await broker.token("read:records")).value
                        fetcher = SecureFetcher(
                            broker, api_transport=recording.api(), api_base_url=server.url
                        )
                        results.append(await fetch_text(fetcher, _RECORDS, "read:records"))
                        results.append(await fetch_text(fetcher, _METRICS, "read:metrics"))
                        if spans is not None:
                            spans.foreign_span(token, api_token)
                except Exception as exc:  # the finding is that the session could not run
                    return [Check("canary", "fail", safe(f"the canary session failed: {exc}"))]
                finally:
                    if spans is not None:
                        telemetry.instrument()
        finally:
            await anyio.to_thread.run_sync(server.stop)
        cassette_text = cassette.read_text(encoding="utf-8") if cassette.exists() else ""
    needles = _needles(token, api_token)
    log_text = logs.getvalue()
    checks = [
        _sink_check(
            "logs",
            log_text,
            needles,
            None if "www-authenticate" in log_text else "httpcore's header lines were not logged",
            f"{len(log_text.splitlines())} lines at DEBUG (the library's, httpx's, httpcore's "
            "echoed headers): no canary",
        )
    ]
    if spans is None:
        checks.append(
            Check("canary.spans", "skip", "opentelemetry-sdk is not installed (the otel extra)")
        )
    else:
        count, span_text = spans.text()
        checks.append(
            _sink_check(
                "spans",
                span_text,
                needles,
                None if count else "no span was exported (is OTEL_SDK_DISABLED set?)",
                f"{count} spans (the library's and another instrumentation's) through "
                "ScrubbingSpanExporter: no canary",
            )
        )
    checks.append(
        _sink_check(
            "cassette",
            cassette_text,
            needles,
            None if '"interactions"' in cassette_text else "no cassette was written",
            "the recorded session: no canary",
        )
    )
    statuses = [_status(text) for text in results]
    checks.append(
        _sink_check(
            "result",
            "\n".join(results),
            needles,
            None if statuses == ["ok", "error"] else f"tool results were {statuses}",
            "the tool's answer and its error, as a model reads them: no canary",
        )
    )
    return checks


def _status(text: str) -> Any:
    try:
        return json.loads(text).get("status")
    except (ValueError, AttributeError):
        return None
