"""structlog set-up, and the one processor that keeps secrets out of every log line.

Redaction is a single structlog processor, :func:`redact_secrets`, not a habit
at call sites: call sites forget, a processor does not. It walks the whole
event (nested containers, exceptions, arbitrary objects' reprs, bytes) and
masks anything shaped like a JWT or a bearer credential, and the values of
keys that are named like secrets.

The library's own modules log through :func:`get_logger`. Where its events go
is decided at each call, so configuring logging after import works:

- structlog not configured (the default): to the stdlib logger of the same
  name under ``authsec_crewai``, like httpx or botocore. The events follow the
  application's ``logging`` set-up; with none, Python shows warnings and
  errors on standard error and nothing else. A library is quiet unless asked.
- structlog configured by the application: through the application's chain,
  with ``redact_secrets`` put into it, so the guarantee holds even when the
  application never heard of this module.

Nothing the library logs goes to standard output on either path. Applications
may call :func:`configure` for a ready-made console or JSON set-up on
standard error; the library never calls it on its own.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import json
import logging
import os
import re
import sys
import threading
import traceback
import uuid
from collections.abc import Iterable, Mapping
from typing import IO, Any, Literal

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from . import _secrets
from .redact import JWT_PATTERN, MASKED_JWT_PATTERN, mask_jwt, redact_credentials, scrub_secrets

__all__ = [
    "HTTP_LOGGERS",
    "HTTP_LOG_FILTER_VARIABLE",
    "REDACTED",
    "LibraryLogger",
    "RedactingFilter",
    "configure",
    "ensure_http_log_filter",
    "get_logger",
    "install_http_log_filter",
    "is_secret_key",
    "redact_secrets",
    "redact_value",
    "render_line",
]

REDACTED = "[redacted]"
"""What replaces a secret that is not a JWT (a JWT becomes ``jwt:<fingerprint>``)."""

_MAX_DEPTH = 12
"""Deeper nesting is cut off: a log line is not a data dump, and the walk must
terminate on self-referencing structures."""

# Key names whose values are secrets whatever they look like. Compared after
# lower-casing and turning "-" into "_", so "Authorization", "X-Api-Key" and
# "api_token" all match.
_SECRET_KEYS = frozenset(
    {
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "api_token",
        "apitoken",
        "api_key",
        "apikey",
        "x_api_key",
        "token",
        "token_value",
        "raw_token",
        "access_token",
        "refresh_token",
        "id_token",
        "bearer",
        "jwt",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "private_key",
    }
)
_SECRET_SUFFIXES = ("_token", "_secret", "_password", "_api_key", "_apikey")

# Values whose repr cannot carry a secret and whose type renderers know how to
# format (JSON renderers and orjson handle some of them natively).
_SAFE_SCALARS = (
    bool,
    int,
    float,
    type(None),
    _dt.datetime,
    _dt.date,
    _dt.time,
    _dt.timedelta,
    uuid.UUID,
    decimal.Decimal,
)


def is_secret_key(key: object) -> bool:
    """Whether a field (or header) of this name holds a secret whatever its value."""
    if not isinstance(key, str):
        return False
    name = key.strip().lower().replace("-", "_")
    return name in _SECRET_KEYS or name.endswith(_SECRET_SUFFIXES)


# redact_text masks bearer values of eight or more characters; in a log line
# even a short one ("Bearer xyz") is a credential, and so is HTTP Basic.
_scrub_text = redact_credentials


def _mask_secret(value: Any) -> Any:
    """The stand-in for the value of a secret-named key.

    A JWT keeps its fingerprint (so log lines can still be correlated with the
    token's ``fingerprint`` field); anything else is replaced outright.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and (value == REDACTED or MASKED_JWT_PATTERN.fullmatch(value)):
        return value  # already masked: a second pass must not lose the fingerprint
    fingerprint = getattr(value, "fingerprint", None)
    if isinstance(fingerprint, str) and re.fullmatch(r"[0-9a-f]{12}", fingerprint):
        return f"jwt:{fingerprint}"
    if isinstance(value, str) and JWT_PATTERN.fullmatch(value.strip()):
        return mask_jwt(value.strip())
    return REDACTED


def _format_exception(exc_info: Any) -> str | None:
    """Render ``exc_info`` (True, an exception, or a triple) as plain text, or None."""
    if isinstance(exc_info, BaseException):
        exc: BaseException | None = exc_info
    elif isinstance(exc_info, tuple) and len(exc_info) == 3:
        exc = exc_info[1] if isinstance(exc_info[1], BaseException) else None
    elif exc_info:
        exc = sys.exc_info()[1]
    else:
        exc = None
    if exc is None:
        return None
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip("\n")


def redact_value(value: Any, *, _depth: int = 0, _seen: frozenset[int] = frozenset()) -> Any:
    """``value`` with every secret masked: strings scrubbed, containers walked.

    Objects other than plain data are replaced by their scrubbed ``repr`` (an
    exception by ``"Type: message"``), because a renderer would otherwise call
    ``repr``/``str`` on them after this processor has run, beyond its reach.
    """
    if isinstance(value, str):
        return _scrub_text(value)
    if isinstance(value, _SAFE_SCALARS):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return _scrub_text(bytes(value).decode("utf-8", "backslashreplace"))
    if isinstance(value, BaseException):
        return _scrub_text(f"{type(value).__name__}: {value}")
    if _depth >= _MAX_DEPTH or id(value) in _seen:
        return "[...]"
    seen = _seen | {id(value)}
    depth = _depth + 1
    if isinstance(value, Mapping):
        return {
            redact_value(key, _depth=depth, _seen=seen): (
                _mask_secret(item)
                if is_secret_key(key)
                else redact_value(item, _depth=depth, _seen=seen)
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        items = [_redact_item(item, depth, seen) for item in value]
        if isinstance(value, list):
            return items
        if isinstance(value, tuple):
            return tuple(items)
        try:
            return frozenset(items) if isinstance(value, frozenset) else set(items)
        except TypeError:  # an element is unhashable after redaction
            return items
    structlog_hook = getattr(type(value), "__structlog__", None)
    try:
        text = str(structlog_hook(value)) if callable(structlog_hook) else repr(value)
    except Exception:  # a broken __repr__ must not break logging
        return f"<unrepresentable {type(value).__name__}>"
    return _scrub_text(text)


def _redact_item(item: Any, depth: int, seen: frozenset[int]) -> Any:
    # A ("Authorization", "Bearer ...") pair, as in a list of headers, is a
    # secret-named key too.
    if isinstance(item, tuple) and len(item) == 2 and is_secret_key(item[0]):
        return (redact_value(item[0], _depth=depth, _seen=seen), _mask_secret(item[1]))
    return redact_value(item, _depth=depth, _seen=seen)


def redact_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask every secret in the event, at any depth.

    ``exc_info`` is rendered here, to scrubbed text under ``exception``:
    renderers that format tracebacks themselves (rich, with local variables)
    would otherwise print secrets this processor never saw. Placed anywhere in
    a chain; idempotent, so running it twice is harmless. Given an
    already-rendered string (it was placed after a renderer), it scrubs that.
    """
    untyped: Any = event_dict
    if isinstance(untyped, str | bytes):
        return redact_value(untyped)  # type: ignore[no-any-return]
    if "exc_info" in event_dict:
        rendered = _format_exception(event_dict.pop("exc_info"))
        if rendered is not None:
            event_dict["exception"] = rendered
    result = redact_value(event_dict)
    assert isinstance(result, dict)
    return result


# --- stdlib logging of the HTTP stack --------------------------------------------------

HTTP_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)
"""The stdlib loggers of the HTTP stack. A filter on a logger does not apply to
its children, so each of httpcore's loggers is named here."""


class RedactingFilter(logging.Filter):
    """A stdlib ``logging.Filter`` that masks secrets in a record's message.

    httpcore logs response headers verbatim at DEBUG, so a ``WWW-Authenticate``
    header that echoes the token would otherwise land in the log. The record's
    message is rendered, scrubbed like a structlog event (JWTs, ``Bearer`` and
    ``Basic`` credentials), and the exact secrets the process holds (the
    ``secrets`` given, and those the library was handed: API token, store
    keys, cached tokens) are masked too. It never drops a record and changes
    nothing but the record's message and exception text.
    """

    def __init__(self, name: str = "", *, secrets: Iterable[str] = ()) -> None:
        super().__init__(name)
        self.secrets = tuple(secret for secret in secrets if secret)

    def _scrub(self, text: str) -> str:
        return _scrub_text(_secrets.scrub(scrub_secrets(text, self.secrets)))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format must not break logging
            return True
        record.msg, record.args = self._scrub(message), None
        if record.exc_info and record.exc_text is None:
            record.exc_text = self._scrub(logging.Formatter().formatException(record.exc_info))
        return True


def install_http_log_filter(secrets: Iterable[str] = ()) -> RedactingFilter:
    """Put one :class:`RedactingFilter` on every logger of :data:`HTTP_LOGGERS`.

    Idempotent: an earlier filter installed here (or by the library on its
    own, see :func:`ensure_http_log_filter`) is replaced, so calling it again
    with new ``secrets`` does not stack filters. :func:`configure` and the
    command line call it; applications that want to add exact values of their
    own call it once at start-up.
    """
    installed = RedactingFilter(secrets=secrets)
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, RedactingFilter)]:
            logger.removeFilter(old)
        logger.addFilter(installed)
    return installed


HTTP_LOG_FILTER_VARIABLE = "AUTHSEC_HTTP_LOG_FILTER"
"""``off`` (or ``0``, ``false``, ``no``) keeps the library from putting its filter
on the HTTP stack's loggers; read when it builds its first HTTP client."""

_FILTER_OFF = frozenset({"off", "0", "false", "no"})
_ensured = False
_ensure_lock = threading.Lock()


def ensure_http_log_filter() -> None:
    """The secure default: the HTTP stack's logs scrubbed without being asked.

    Called wherever the library builds or uses an HTTP client (the live
    transport, the fetcher, ``BrokerAuth``, the command line), before the
    client can log, also one the caller built. The first call
    puts one :class:`RedactingFilter` on each logger of :data:`HTTP_LOGGERS`,
    unless :data:`HTTP_LOG_FILTER_VARIABLE` says ``off`` or the application
    already put one there (its own :func:`install_http_log_filter`, perhaps
    with secrets of its own, is kept, never stacked on). Every later call is
    one flag test. A filter only rewrites a record's message: no level,
    handler or propagation changes, and no record is dropped, so the
    application's logging set-up stays its own.
    """
    global _ensured
    if _ensured:
        return
    with _ensure_lock:
        if _ensured:
            return
        _ensured = True
        if os.environ.get(HTTP_LOG_FILTER_VARIABLE, "").strip().lower() in _FILTER_OFF:
            return
        loggers = [logging.getLogger(name) for name in HTTP_LOGGERS]
        if any(isinstance(f, RedactingFilter) for lg in loggers for f in lg.filters):
            return
        installed = RedactingFilter()
        for logger in loggers:
            logger.addFilter(installed)


# --- configuration ----------------------------------------------------------------------


class _CurrentStderr:
    """A file that writes to whatever ``sys.stderr`` is at the time of writing.

    So ``configure()`` before a test harness (or an application) swaps
    ``sys.stderr`` still writes where the application expects.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())


def configure(
    format: Literal["console", "json"] = "console",
    level: str | int = "INFO",
    stream: IO[str] | None = None,
) -> None:
    """Set up structlog for an application: console or JSON lines, with redaction.

    ``stream`` defaults to standard error (read at each write), keeping
    standard output free for a program's actual output. This changes
    structlog's global configuration, and puts a :class:`RedactingFilter` on
    the HTTP stack's stdlib loggers (:func:`install_http_log_filter`), so only
    applications (and the CLI) call it, never the library itself.
    """
    if format not in ("console", "json"):
        raise ValueError(f"log format must be 'console' or 'json', not {format!r}")
    if isinstance(level, str):
        levels = logging.getLevelNamesMapping()
        if level.upper() not in levels:
            raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING or ERROR")
        min_level = levels[level.upper()]
    else:
        min_level = level
    out: Any = stream if stream is not None else _CurrentStderr()
    renderer: Processor
    if format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        colors = bool(getattr(out, "isatty", lambda: False)())
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.StackInfoRenderer(),
            structlog.dev.set_exc_info,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    install_http_log_filter()


def _guarded(processors: Iterable[Processor]) -> list[Processor]:
    """The application's chain with ``redact_secrets`` first and just before the renderer.

    First, so no processor of the application's (one that ships events to an
    error tracker, say) sees a secret; again before the last one, because
    processors in between add fields (context variables, rendered exceptions)
    that were not there at the start.
    """
    chain = list(processors)
    if redact_secrets in chain:
        return chain
    if not chain:
        return [redact_secrets]
    return [redact_secrets, *chain[:-1], redact_secrets, chain[-1]]


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "msg": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


def _logfmt_value(value: Any) -> str:
    if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
        return value
    if isinstance(value, str | bool | int | float | type(None)):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, ensure_ascii=False, default=str)


def render_line(event_dict: Mapping[str, Any]) -> str:
    """``event key=value ...``, then the exception text on lines of its own.

    The message a stdlib record carries when structlog is not configured: one
    line that reads well under ``logging``'s default formats.
    """
    fields = {k: v for k, v in event_dict.items() if k not in ("event", "exception")}
    line = " ".join(
        [str(event_dict.get("event", "")), *(f"{k}={_logfmt_value(v)}" for k, v in fields.items())]
    )
    exception = event_dict.get("exception")
    return f"{line}\n{exception}" if exception else line


class _StdlibRoute:
    """Where events go while structlog is not configured: a stdlib logger.

    The event is redacted (context variables included) and rendered by
    :func:`render_line`; the redacted fields ride along on the record as
    ``record.authsec`` for handlers that want them structured. ``exc_info``
    never reaches the record: ``redact_secrets`` has already turned it into
    scrubbed text, and a stdlib formatter would print the raw traceback.
    """

    __slots__ = ("_context", "_logger")

    def __init__(self, logger: logging.Logger, context: Mapping[str, Any]) -> None:
        self._logger = logger
        self._context = context

    def _emit(
        self, method: str, level: int, event: str, args: tuple[Any, ...], kw: Any, depth: int
    ) -> None:
        if not self._logger.isEnabledFor(level):
            return
        event_dict: EventDict = structlog.contextvars.merge_contextvars(
            None, method, {**self._context, **kw, "event": event}
        )
        if method == "exception":
            event_dict.setdefault("exc_info", True)
        event_dict = redact_secrets(None, method, event_dict)
        if args:
            redacted_args = redact_value(args)
            try:
                event_dict["event"] = str(event_dict["event"]) % tuple(redacted_args)
            except (TypeError, ValueError):
                event_dict["positional_args"] = list(redacted_args)
        # stacklevel: the record names the library's call site, not this module.
        self._logger.log(
            level, render_line(event_dict), extra={"authsec": event_dict}, stacklevel=depth
        )

    def log(self, level: int, event: str, *args: Any, **kw: Any) -> None:
        name = logging.getLevelName(level)
        self._emit(name.lower() if isinstance(name, str) else "info", level, event, args, kw, 3)

    def __getattr__(self, name: str) -> Any:
        level = _LEVELS.get(name)
        if level is None:
            raise AttributeError(name)
        return lambda event, *args, **kw: self._emit(name, level, event, args, kw, 4)


class LibraryLogger:
    """A lazy logger whose events are always redacted.

    Like structlog's own lazy proxy, it decides at each call where the event
    goes (so configuring logging after import works): to the stdlib logger
    named ``name`` while structlog is not configured, else through the
    application's structlog chain with :func:`redact_secrets` guaranteed in it.

    Deciding is cheap, because most of the library's events are debug events
    that nobody listens to: the stdlib route asks the logger's level first, and
    the structlog route reuses the logger it built until the application's
    configuration changes.
    """

    __slots__ = ("_built", "_context", "_name", "_stdlib")

    def __init__(self, name: str, context: Mapping[str, Any] | None = None) -> None:
        self._name = name
        self._context = dict(context or {})
        self._stdlib = logging.getLogger(name)
        self._built: tuple[tuple[object, ...], Any] | None = None

    def __repr__(self) -> str:
        return f"LibraryLogger({self._name!r}, context={sorted(self._context)!r})"

    def _resolve(self) -> Any:
        if not structlog.is_configured():
            return _StdlibRoute(self._stdlib, self._context)
        config = structlog.get_config()
        processors = config["processors"]
        made_of = (
            tuple(processors),  # its content: structlog.testing.capture_logs edits it in place
            config["wrapper_class"],
            config["logger_factory"],
            config["context_class"],
        )
        built = self._built
        if (
            built is not None and built[0] == made_of
        ):  # the same objects (compared by identity first)
            return built[1]
        logger = config["wrapper_class"](
            config["logger_factory"](self._name),
            processors=_guarded(processors),
            context=config["context_class"](self._context),
        )
        self._built = (made_of, logger)
        return logger

    def _quiet(self, level: int) -> bool:
        """True when an event at ``level`` would go nowhere (structlog not configured,
        and the stdlib logger not enabled for it): nothing needs to be built."""
        return not structlog.is_configured() and not self._stdlib.isEnabledFor(level)

    def bind(self, **values: Any) -> LibraryLogger:
        """A logger whose events carry ``values`` too."""
        return LibraryLogger(self._name, {**self._context, **values})

    def new(self, **values: Any) -> LibraryLogger:
        """A logger with only ``values`` as context."""
        return LibraryLogger(self._name, values)

    def unbind(self, *keys: str) -> LibraryLogger:
        """A logger without ``keys`` in its context (a missing key is an error)."""
        missing = [key for key in keys if key not in self._context]
        if missing:
            raise KeyError(missing[0])
        return self.try_unbind(*keys)

    def try_unbind(self, *keys: str) -> LibraryLogger:
        """A logger without ``keys`` in its context."""
        return LibraryLogger(self._name, {k: v for k, v in self._context.items() if k not in keys})

    def debug(self, event: str, *args: Any, **kw: Any) -> Any:
        if self._quiet(logging.DEBUG):
            return None
        return self._resolve().debug(event, *args, **kw)

    def info(self, event: str, *args: Any, **kw: Any) -> Any:
        if self._quiet(logging.INFO):
            return None
        return self._resolve().info(event, *args, **kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._resolve().warning(event, *args, **kw)

    def error(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._resolve().error(event, *args, **kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._resolve().exception(event, *args, **kw)

    def critical(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._resolve().critical(event, *args, **kw)

    def __getattr__(self, name: str) -> Any:
        # Everything else the configured wrapper offers (log, msg, ainfo, ...).
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._resolve(), name)


def get_logger(name: str, **initial_values: Any) -> LibraryLogger:
    """The logger this library's modules use; its events are always redacted."""
    return LibraryLogger(name, initial_values)
