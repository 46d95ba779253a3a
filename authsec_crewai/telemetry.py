"""OpenTelemetry metrics and spans, through ``opentelemetry-api`` only.

Cost: until the application imports ``opentelemetry`` (its SDK set-up does),
nothing here imports it either, and each hook is one dictionary lookup. With
the API loaded but no SDK configured, the API hands out no-op instruments and
the hooks cost a few calls on the slow paths (fetches, protected-API calls).
The cache-hit path costs nothing in either case: hits are not recorded one by
one but read from the brokers' own counters when a metric reader collects (an
observable counter), so the lock-free fast path in ``TokenBroker.token()``
does not change.

Instruments (meter ``authsec_crewai``):

- ``authsec.token.requests`` (counter): token requests by ``outcome``
  (``ok`` / ``error``), ``source`` (``cache``, ``store``, ``fetch``) and
  ``mode``;
- ``authsec.token.fetch.duration`` (histogram, s): one per transport call,
  by ``outcome`` and ``mode``; its count is the number of fetches;
- ``authsec.token.lifetime_remaining`` (histogram, s): what a token had left
  when it was sent to a protected API.

Spans (tracer ``authsec_crewai``): ``authsec.token.fetch`` and
``authsec.api.call``, children of whatever span is current where the work
was asked for (CrewAI's tool span, an application's request). Attributes
never carry a token: its fingerprint, ``jti``, the scopes and the mode do.

Applications that do not use OpenTelemetry's global providers call
:func:`instrument` with their own.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import Span, TracerProvider

    from .token import DelegationToken

__all__ = [
    "FETCH_HISTOGRAM",
    "LIFETIME_HISTOGRAM",
    "REQUESTS_COUNTER",
    "api_call",
    "api_ended",
    "api_span",
    "count_request",
    "current_context",
    "flight_source",
    "instrument",
    "run_within",
    "token_attributes",
    "traced_fetch",
    "track",
    "untrack",
    "within",
]

T = TypeVar("T")


class CountsHits(Protocol):
    """What :func:`track` reads: a broker, seen only through this (telemetry does not
    import the broker; the broker tells it of itself)."""

    def cache_hits(self) -> int: ...


SCOPE = "authsec_crewai"
REQUESTS_COUNTER = "authsec.token.requests"
FETCH_HISTOGRAM = "authsec.token.fetch.duration"
LIFETIME_HISTOGRAM = "authsec.token.lifetime_remaining"


class _Instruments:
    """The meter's instruments and the tracer, made on first use (``opentelemetry``
    is imported then, not when ``authsec_crewai`` is)."""

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        from opentelemetry import metrics, trace

        meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self.tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        self.requests = meter.create_observable_counter(
            REQUESTS_COUNTER,
            callbacks=[_observe_requests],
            unit="{request}",
            description="Token requests by outcome and source (cache, store, fetch)",
        )
        self.fetch_duration = meter.create_histogram(
            FETCH_HISTOGRAM,
            unit="s",
            description="How long one token fetch (one transport call) took",
        )
        self.lifetime = meter.create_histogram(
            LIFETIME_HISTOGRAM,
            unit="s",
            description="Seconds a token had left when it was sent to a protected API",
        )


_lock = threading.Lock()
_instruments: _Instruments | None = None
# Cumulative request counts by (mode, source, outcome). Cache hits are folded in
# from the brokers' counters (see _observe_requests), everything else is added
# as it happens.
_totals: Counter[tuple[str, str, str]] = Counter()
_hits_seen: weakref.WeakKeyDictionary[CountsHits, tuple[str, int]] = weakref.WeakKeyDictionary()


def _get() -> _Instruments | None:
    """The instruments, or None while the application has not imported ``opentelemetry``
    (then no SDK can be configured, and importing the API would only cost time)."""
    global _instruments
    found = _instruments
    if found is None:
        if "opentelemetry" not in sys.modules:
            return None
        with _lock:
            if _instruments is None:
                _instruments = _Instruments()
            found = _instruments
    return found


def instrument(
    *,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> None:
    """Send this library's metrics and spans to these providers (default: the global ones).

    The usual OpenTelemetry instrumentation hook, for applications (and
    tests) that keep their providers out of the global ones. Counts already
    made carry over.
    """
    global _instruments
    made = _Instruments(meter_provider, tracer_provider)
    with _lock:
        _instruments = made


# --- token requests --------------------------------------------------------------------------


def track(broker: CountsHits, mode: str) -> None:
    """Count ``broker``'s cache hits in ``authsec.token.requests`` from now on.

    Hits are read from ``broker.cache_hits()`` when a reader collects; a broker
    that is garbage-collected unclosed loses only the hits since the last
    collection.
    """
    with _lock:
        _hits_seen.setdefault(broker, (mode, broker.cache_hits()))


def untrack(broker: CountsHits) -> None:
    """Fold ``broker``'s last hits into the totals and stop reading it (it closed)."""
    with _lock:
        seen = _hits_seen.pop(broker, None)
        if seen is not None:
            _totals[(seen[0], "cache", "ok")] += broker.cache_hits() - seen[1]


def count_request(mode: str, source: str, outcome: str) -> None:
    """One token request served (or failed) from ``source``: ``cache``, ``store`` or ``fetch``."""
    with _lock:
        _totals[(mode, source, outcome)] += 1


def _observe_requests(options: CallbackOptions) -> Iterable[Observation]:
    from opentelemetry.metrics import Observation

    with _lock:
        for broker, (mode, seen) in list(_hits_seen.items()):
            hits = broker.cache_hits()
            _totals[(mode, "cache", "ok")] += hits - seen
            _hits_seen[broker] = (mode, hits)
        totals = dict(_totals)
    return [
        Observation(count, {"mode": mode, "source": source, "outcome": outcome})
        for (mode, source, outcome), count in totals.items()
    ]


# --- spans and timings ----------------------------------------------------------------------


def current_context() -> Context | None:
    """The caller's OpenTelemetry context, for work that runs elsewhere (a fetch task,
    a call handed to the broker's thread); None while ``opentelemetry`` is not loaded."""
    if "opentelemetry" not in sys.modules:
        return None
    from opentelemetry.context import get_current

    return get_current()


async def within(parent: Context | None, work: Awaitable[T]) -> T:
    """Await ``work`` with ``parent`` as the current OpenTelemetry context.

    For work handed to another thread's event loop: its spans then sit under
    the span of the thread that asked, not under nothing.
    """
    if parent is None:
        return await work
    from opentelemetry import context

    token = context.attach(parent)
    try:
        return await work
    finally:
        context.detach(token)


def token_attributes(token: DelegationToken) -> dict[str, Any]:
    """What may be said about a token in telemetry: never its value.

    Spans name the agent (``authsec.agent.client_id``: ids are not secrets), so
    a trace says which agent fetched and called what; metrics never do, since
    a process may hold thousands of agents and each would be a new series.
    """
    return {
        "authsec.agent.client_id": token.client_id,
        "authsec.token.fingerprint": token.fingerprint,
        "authsec.token.jti": token.jti or "",
        "authsec.token.permissions": sorted(token.permissions),
    }


async def run_within(parent: Context | None, work: Callable[[T], Awaitable[None]], arg: T) -> None:
    """``await work(arg)`` with ``parent`` as the current OpenTelemetry context: a broker's
    flight runs in the broker's task, its spans under the caller that started it."""
    await within(parent, work(arg))


async def traced_fetch(
    fetching: Awaitable[DelegationToken],
    scopes: Iterable[str],
    mode: str,
    *,
    client_id: str | None = None,
) -> DelegationToken:
    """Await one transport call inside an ``authsec.token.fetch`` span, timing it.

    ``client_id``, the agent asking, is on the span from its start, so a failed
    fetch names its agent too.

    One span and one duration per transport call, whatever the outcome, so the
    histogram's count is the number of fetches the AuthSec server saw. Also
    notes, for :func:`flight_source`, that this task called the transport.
    """
    _transport_called.set(True)
    instruments = _get()
    if instruments is None:
        return await fetching
    from opentelemetry.trace import SpanKind, Status, StatusCode

    span = instruments.tracer.start_span(
        "authsec.token.fetch",
        kind=SpanKind.CLIENT,
        attributes={
            "authsec.mode": mode,
            "authsec.scopes": sorted(scopes),
            **({} if client_id is None else {"authsec.agent.client_id": client_id}),
        },
    )
    started = time.perf_counter()
    outcome = "error"
    try:
        token = await fetching
    except BaseException as exc:
        kind = str(getattr(exc, "kind", type(exc).__name__))
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))
        raise
    else:
        outcome = "ok"
        span.set_attributes(token_attributes(token))
        return token
    finally:
        attributes = {"mode": mode, "outcome": outcome}
        instruments.fetch_duration.record(time.perf_counter() - started, attributes)
        span.end()


_transport_called: ContextVar[bool] = ContextVar("authsec_crewai_transport_called", default=False)


def flight_source() -> str:
    """Where the current flight's token came from: ``fetch`` if this task called the
    transport, else ``store`` (a shared store answered)."""
    return "fetch" if _transport_called.get() else "store"


def api_span(method: str, path: str, token: DelegationToken, mode: str) -> Span | None:
    """Start an ``authsec.api.call`` span (not made current; the caller ends it) and
    record the token's remaining lifetime. None while ``opentelemetry`` is not loaded."""
    instruments = _get()
    if instruments is None:
        return None
    from opentelemetry.trace import SpanKind

    instruments.lifetime.record(max(0.0, token.expires_in(time.time())), {"mode": mode})
    attributes = {
        "http.request.method": method,
        "url.path": path,
        "authsec.mode": mode,
        **token_attributes(token),
    }
    return instruments.tracer.start_span(
        "authsec.api.call", kind=SpanKind.CLIENT, attributes=attributes
    )


def api_ended(
    span: Span | None, status: int | None = None, error: BaseException | None = None
) -> None:
    """End an ``api_span`` with the API's status (an error from 400 up) or the failure."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    if status is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
    if error is not None:
        kind = str(getattr(error, "kind", type(error).__name__))
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, kind))
    span.end()


async def api_call(
    sending: Awaitable[tuple[int, Any, bytes]],
    *,
    method: str,
    path: str,
    token: DelegationToken,
    mode: str,
) -> tuple[int, Any, bytes]:
    """Await one protected-API exchange ``(status, headers, body)`` inside its span
    (current while it runs, so an instrumented HTTP client's spans nest under it)."""
    span = api_span(method, path, token, mode)
    if span is None:
        return await sending
    from opentelemetry import trace

    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False):
            answer = await sending
    except BaseException as exc:
        api_ended(span, error=exc)
        raise
    api_ended(span, answer[0])
    return answer
