"""Every span scrubbed before export, whoever wrote it.

The library's own spans never hold a secret, but tokens reach traces through
other code in the same process: agent frameworks' instrumentation records tool
arguments and results, HTTP client instrumentation records headers. The only
place that sees all of them is the exporter, so :class:`ScrubbingSpanExporter`
wraps the application's one and hands it copies of the spans with every
credential removed::

    provider.add_span_processor(BatchSpanProcessor(ScrubbingSpanExporter(OTLPSpanExporter())))

Removed, from the span's name, attributes (sequence and nested values
included), events (names and attributes), links' attributes and status
description: anything shaped like a JWT (it becomes ``jwt:<fingerprint>``, as
in the logs), every ``Bearer`` or ``Basic`` credential, the values of
attributes named like secrets (``http.request.header.authorization``,
``api_key``, ...), and the exact secrets the library holds (API token, store
keys, cached tokens) or that the application names. Everything else (ids,
timing, kind, status code, resource, scope, dropped counts) is passed on as
it was; a span with nothing to scrub is passed on as the very same object.

This module imports the OpenTelemetry SDK (the ``otel`` extra; CrewAI brings
it too); nothing else in the library does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.trace import Link, Status

from . import _secrets
from ._lazy import requires_extra

with requires_extra("otel", "ScrubbingSpanExporter"):
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from .logging import is_secret_key
from .redact import mask_secret, redact_credentials, scrub_secrets

__all__ = ["ScrubbingSpanExporter", "scrub_span"]

_MAX_DEPTH = 16
"""Nested attribute values deeper than this are cut off (OpenTelemetry nests little)."""


@functools.lru_cache(maxsize=4096)
def _names_secret(key: str) -> bool:
    """Whether an attribute's name (its last dotted part) names a secret (names repeat:
    cached)."""
    return is_secret_key(key.rsplit(".", 1)[-1])


class _Scrubber:
    """The rules for one export: the application's own exact secrets, and the library's."""

    __slots__ = ("secrets",)

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets

    def text(self, text: str) -> str:
        if self.secrets:
            text = scrub_secrets(text, self.secrets)
        return redact_credentials(_secrets.scrub(text))

    def value(self, value: Any, *, secret: bool = False, depth: int = 0) -> Any:
        """An attribute value, scrubbed; the very same object when nothing changed."""
        if isinstance(value, str):
            scrubbed = mask_secret(value) if secret and value else self.text(value)
            return value if scrubbed == value else scrubbed
        if value is None or isinstance(value, bool | int | float):
            return value
        if depth >= _MAX_DEPTH:
            return "[...]"
        if isinstance(value, tuple | list) or (
            isinstance(value, Sequence) and not isinstance(value, bytes | bytearray)
        ):
            members = [self.value(v, secret=secret, depth=depth + 1) for v in value]
            if all(new is old for new, old in zip(members, value, strict=True)):
                return value
            return tuple(members)
        if isinstance(value, bytes):
            try:
                decoded = value.decode("utf-8")
            except UnicodeDecodeError:
                return value
            scrubbed = self.value(decoded, secret=secret, depth=depth)
            return value if scrubbed == decoded else scrubbed.encode("utf-8")
        if isinstance(value, Mapping):
            items = {
                k: self.value(v, secret=is_secret_key(k), depth=depth + 1) for k, v in value.items()
            }
            changed = any(items[k] is not v for k, v in value.items())
            return items if changed else value
        return value

    def attributes(self, attributes: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """Attributes scrubbed (a key's last dotted part decides whether it names a secret)."""
        if not attributes:
            return attributes
        scrubbed = {
            key: self.value(value, secret=_names_secret(key)) for key, value in attributes.items()
        }
        changed = any(scrubbed[key] is not value for key, value in attributes.items())
        return scrubbed if changed else attributes


class _ScrubbedSpan(ReadableSpan):
    """A copy of a finished span with new text; its dropped counts are the original's."""

    def __init__(self, original: ReadableSpan, **changed: Any) -> None:
        fields: dict[str, Any] = {
            "name": original.name,
            "context": original.context,
            "parent": original.parent,
            "resource": original.resource,
            "attributes": original.attributes,
            "events": original.events,
            "links": original.links,
            "kind": original.kind,
            "status": original.status,
            "start_time": original.start_time,
            "end_time": original.end_time,
            "instrumentation_scope": original.instrumentation_scope,
        }
        super().__init__(**{**fields, **changed})
        self._dropped = (
            original.dropped_attributes,
            original.dropped_events,
            original.dropped_links,
        )

    @property
    def dropped_attributes(self) -> int:
        return self._dropped[0]

    @property
    def dropped_events(self) -> int:
        return self._dropped[1]

    @property
    def dropped_links(self) -> int:
        return self._dropped[2]


def _scrub(span: ReadableSpan, scrub: _Scrubber) -> ReadableSpan:
    changed: dict[str, Any] = {}
    name = scrub.text(span.name)
    if name != span.name:
        changed["name"] = name
    original = span.attributes  # a new read-only view at each read: read it once
    attributes = scrub.attributes(original)
    if attributes is not original:
        changed["attributes"] = attributes
    events = []
    for event in span.events:
        event_name, event_attributes = scrub.text(event.name), scrub.attributes(event.attributes)
        if event_name == event.name and event_attributes is event.attributes:
            events.append(event)
        else:
            events.append(Event(event_name, event_attributes, event.timestamp, limit=None))
    if any(new is not old for new, old in zip(events, span.events, strict=True)):
        changed["events"] = events
    links = []
    for link in span.links:
        link_attributes = scrub.attributes(link.attributes)
        links.append(
            link if link_attributes is link.attributes else Link(link.context, link_attributes)
        )
    if any(new is not old for new, old in zip(links, span.links, strict=True)):
        changed["links"] = links
    description = span.status.description
    if description:
        scrubbed = scrub.text(description)
        if scrubbed != description:
            changed["status"] = Status(span.status.status_code, scrubbed)
    return _ScrubbedSpan(span, **changed) if changed else span


def scrub_span(span: ReadableSpan, secrets: Iterable[str] = ()) -> ReadableSpan:
    """``span`` with every credential removed (see the module's docstring).

    ``secrets`` are exact values to remove on top of those the library holds.
    Returns ``span`` itself when there was nothing to remove.
    """
    return _scrub(span, _Scrubber(tuple(s for s in secrets if s)))


class ScrubbingSpanExporter(SpanExporter):
    """Wraps an exporter so that every span it exports is scrubbed first.

    ``exporter`` is the application's (OTLP, console, in-memory...);
    ``secrets`` are exact values of the application's own to remove too. Put it
    where the exporter would go: inside ``BatchSpanProcessor`` or
    ``SimpleSpanProcessor`` on the application's ``TracerProvider``.
    """

    def __init__(self, exporter: SpanExporter, *, secrets: Iterable[str] = ()) -> None:
        self.exporter = exporter
        self._secrets = tuple(secret for secret in secrets if secret)

    def __repr__(self) -> str:
        return f"ScrubbingSpanExporter({self.exporter!r}, secrets=<{len(self._secrets)}>)"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        scrub = _Scrubber(self._secrets)
        return self.exporter.export([_scrub(span, scrub) for span in spans])

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)
