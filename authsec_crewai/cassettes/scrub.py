"""Cassettes: the file format of a recorded session, its redaction, and its matching.

A cassette is one JSON document, written for people and for ``git diff``:
two-space indentation, one interaction after another, structural keys in a
fixed order and headers sorted. It records three kinds of interaction, each
with its ``offset`` in seconds from the start of the recording:

``token``
    a delegation-token fetch: the request (client id, scopes, audience) and
    the server's answer body, or the typed error it became;
``key_set``
    a fetch of a tenant's public keys;
``api``
    a protected-API call: method, path, query, request body, and the answer's
    status, headers and body.

What is never written, whatever the transport saw (see :class:`Scrubber`):
``Authorization`` / ``Cookie`` / ``Set-Cookie`` and similar headers (request
headers are not stored at all), the API token, and the signature of any JWT,
anywhere it appears (answer bodies, API bodies, header values): a token is kept
as ``<header>.<payload>.REDACTED``. Its claims stay readable, which is what
replay needs (it verifies claims only), and it can never again be presented as
a credential to anything that checks signatures. :func:`find_secrets` proves
it: the writer runs it on every document and refuses to write one that fails.

This module is the one place that knows the format; the transports in
:mod:`authsec_crewai.transports.replay`, the CLI and the pytest plugin all go
through it. It imports nothing heavy.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import difflib
import json
import math
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, cast
from urllib.parse import urlencode, urlsplit, urlunsplit

from .. import errors
from ..redact import JWT_PATTERN, fingerprint

__all__ = [
    "FORMAT",
    "MARKER",
    "NEVER_STORED_HEADERS",
    "RECORD_MODES",
    "VERSION",
    "Cassette",
    "Interaction",
    "Player",
    "RecordMode",
    "ScrubHook",
    "Scrubber",
    "decode_body",
    "describe",
    "dumps",
    "encode_body",
    "error_from_record",
    "error_record",
    "find_secrets",
    "load",
    "new_document",
    "request_key",
    "strip_credentials",
    "validate_interaction",
    "write_atomic",
]

FORMAT: Final = "authsec-cassette"
"""The value of the document's ``format`` key: how a cassette is told from other JSON."""

VERSION: Final = 1
"""The format version this release writes and the newest one it reads."""

MARKER: Final = "REDACTED"
"""What replaces a JWT signature or a secret in a cassette."""

RecordMode = Literal["none", "once", "new_episodes", "all"]
RECORD_MODES: Final[tuple[RecordMode, ...]] = ("none", "once", "new_episodes", "all")

Interaction = dict[str, Any]
"""One interaction as its JSON object (what scrub hooks receive and return)."""

ScrubHook = Callable[[Interaction], "Interaction | None"]
"""A user hook run on each interaction before it is kept: return it (changed or
not), or None to leave it out of the cassette."""

KINDS: Final = ("token", "key_set", "api")

NEVER_STORED_HEADERS: Final = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "set-cookie2",
        "x-api-key",
        "x-auth-token",
        "x-csrf-token",
        "x-xsrf-token",
        "x-amz-security-token",
    }
)
"""Header names whose values are credentials: dropped when recording, and a
finding of :func:`find_secrets` wherever they appear."""

_VOLATILE_HEADERS: Final = frozenset(
    {"date", "server", "content-length", "transfer-encoding", "connection", "keep-alive"}
)
"""Dropped because they change on every run (noise in diffs) or are recomputed
on replay; ``content-encoding`` is dropped too because bodies are stored decoded."""

_BEARER = re.compile(r"(?i)\b(bearer\s+)([A-Za-z0-9._~+/=-]{8,})")
_MAX_DESCRIBE = 160


# --- redaction ---------------------------------------------------------------------------


def _b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _map_jwt_claims(token: str, change: Callable[[str], str]) -> str:
    """``token`` with ``change`` applied to the JSON text of its claims.

    Only possible because the signature is gone (or about to go): rewriting the
    payload of a signed token would merely break it, which is the point.
    """
    head, payload, signature = token.split(".")
    try:
        text = _b64url_decode(payload).decode("utf-8")
    except (binascii.Error, ValueError):
        return token
    changed = change(text)
    if changed == text:
        return token
    return f"{head}.{_b64url_encode(changed.encode('utf-8'))}.{signature}"


def _replace_all(text: str, pairs: Iterable[tuple[str, str]]) -> str:
    for old, new in pairs:
        if old in text:
            text = text.replace(old, new)
    return text


class Scrubber:
    """Turns what a transport saw into what a cassette may hold.

    ``placeholders`` (``{"<secret>": "<placeholder>"}``) replace values both
    ways: :meth:`text` and :meth:`value` put placeholders in (recording, and
    normalising a live request before it is matched), :meth:`restore_text`
    and :meth:`restore` take them out again (serving a recorded answer). They
    reach inside JWT claims too. ``secrets`` are values that must never be
    written (the API token): they become ``REDACTED``, one way.
    """

    def __init__(
        self,
        placeholders: Mapping[str, str] | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        pairs = dict(placeholders or {})
        for secret, placeholder in pairs.items():
            if not isinstance(secret, str) or not isinstance(placeholder, str):
                raise TypeError("placeholders must map strings to strings")
            if len(secret) < 4 or not placeholder:
                raise ValueError(
                    "a placeholder's secret must be at least 4 characters (a shorter one "
                    "would be replaced inside unrelated text) and its placeholder non-empty"
                )
        # Longest first, so a secret that contains another is replaced whole.
        self._forward = sorted(pairs.items(), key=lambda kv: -len(kv[0]))
        self._backward = sorted(((p, s) for s, p in pairs.items()), key=lambda kv: -len(kv[0]))
        cleaned = {s for s in secrets if s}
        short = [s for s in cleaned if len(s) < 4]
        if short:
            raise ValueError("secrets to scrub must be at least 4 characters long")
        self.secrets: frozenset[str] = frozenset(cleaned)
        self._secret_pairs = [(s, MARKER) for s in sorted(cleaned, key=len, reverse=True)]

    # forward: what the transport saw -> what the cassette holds

    def text(self, text: str) -> str:
        """Placeholders in, JWT signatures and bearer credentials and secrets out."""
        text = _replace_all(text, self._forward)
        if "eyJ" in text:
            text = JWT_PATTERN.sub(self._redact_jwt, text)
        if "earer" in text or "EARER" in text:
            text = _BEARER.sub(self._redact_bearer, text)
        return _replace_all(text, self._secret_pairs)

    def _redact_jwt(self, match: re.Match[str]) -> str:
        head, payload, _ = match.group(0).split(".")
        token = f"{head}.{payload}.{MARKER}"
        if self._forward or self._secret_pairs:
            token = _map_jwt_claims(
                token, lambda t: _replace_all(_replace_all(t, self._forward), self._secret_pairs)
            )
        return token

    @staticmethod
    def _redact_bearer(match: re.Match[str]) -> str:
        credential = match.group(2)
        if credential.endswith("." + MARKER) or credential == MARKER:
            return match.group(0)
        return match.group(1) + MARKER

    def value(self, value: Any) -> Any:
        """:meth:`text` over every string of a JSON value (keys included)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self.value(item) for item in value]
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        return value

    def headers(self, items: Iterable[tuple[str, str]]) -> dict[str, str]:
        """Answer headers fit to store: no credentials, no noise, sorted by name."""
        kept: dict[str, str] = {}
        for raw_name, raw_value in items:
            name = raw_name.lower()
            if (
                name in NEVER_STORED_HEADERS
                or name in _VOLATILE_HEADERS
                or name == "content-encoding"
            ):
                continue
            value = self.text(raw_value)
            kept[name] = f"{kept[name]}, {value}" if name in kept else value
        return dict(sorted(kept.items()))

    def binary(self, raw: bytes) -> bytes:
        """JWT signatures and secrets out of a body that is not UTF-8 text."""
        text = raw.decode("latin-1")
        return self.text(text).encode("latin-1", "replace")

    # backward: what the cassette holds -> what the code under test sees

    def restore_text(self, text: str) -> str:
        """Placeholders back to the values they stand for (also inside JWT claims)."""
        if not self._backward:
            return text
        text = _replace_all(text, self._backward)
        if "eyJ" in text:
            text = JWT_PATTERN.sub(
                lambda m: _map_jwt_claims(m.group(0), lambda t: _replace_all(t, self._backward)),
                text,
            )
        return text

    def restore(self, value: Any) -> Any:
        """:meth:`restore_text` over every string of a JSON value."""
        if not self._backward:
            return value
        if isinstance(value, str):
            return self.restore_text(value)
        if isinstance(value, list):
            return [self.restore(item) for item in value]
        if isinstance(value, dict):
            return {self.restore_text(str(k)): self.restore(v) for k, v in value.items()}
        return value


def strip_credentials(url: str | None) -> str | None:
    """``url`` without user:password, query or fragment (they may carry secrets)."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


# --- bodies ------------------------------------------------------------------------------


def _compact_json(value: Any) -> str:
    # What starlette's JSONResponse and httpx's json= both produce.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode_body(raw: bytes, scrubber: Scrubber) -> dict[str, Any] | None:
    """A body as the cassette stores it: ``{"json": ...}`` when the bytes are
    exactly compact JSON (readable, diffable, and replayed byte for byte),
    else ``{"text": ...}`` for UTF-8, else ``{"base64": ...}``."""
    if not raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(scrubber.binary(raw)).decode("ascii")}
    try:
        value = json.loads(text)
        if _compact_json(value) == text:
            return {"json": scrubber.value(value)}
    except ValueError:
        pass
    return {"text": scrubber.text(text)}


def decode_body(body: Mapping[str, Any] | None, scrubber: Scrubber | None = None) -> bytes:
    """The bytes a stored body stands for, placeholders restored."""
    if not body:
        return b""
    if "json" in body:
        value = body["json"] if scrubber is None else scrubber.restore(body["json"])
        return _compact_json(value).encode("utf-8")
    if "text" in body:
        text = str(body["text"])
        return (text if scrubber is None else scrubber.restore_text(text)).encode("utf-8")
    raw = base64.b64decode(str(body.get("base64", "")))
    if scrubber is None:
        return raw
    return scrubber.restore_text(raw.decode("latin-1")).encode("latin-1", "replace")


def _body_key(body: Mapping[str, Any] | None) -> tuple[str, str]:
    """What request bodies are matched on: JSON by value, anything else by bytes."""
    if not body:
        return ("", "")
    if "json" in body:
        return ("json", json.dumps(body["json"], sort_keys=True, separators=(",", ":")))
    raw = decode_body(body)
    try:
        value = json.loads(raw)
    except ValueError:
        return ("bytes", base64.b64encode(raw).decode("ascii"))
    return ("json", json.dumps(value, sort_keys=True, separators=(",", ":")))


# --- errors as records ---------------------------------------------------------------------

_STATUS_BY_KIND: Final = {
    "invalid_client_id": 400,
    "authentication": 401,
    "not_delegated": 404,
    "delegation_expired": 410,
    "rate_limited": 429,
}
_ANSWERED = re.compile(r"answered (\d{3})\b")


def error_record(exc: errors.AuthSecError, scrubber: Scrubber) -> dict[str, Any]:
    """A typed error as a cassette stores it: kind, message and status when known."""
    record: dict[str, Any] = {"kind": exc.kind, "message": scrubber.text(str(exc))}
    status = _STATUS_BY_KIND.get(exc.kind)
    if status is None:
        found = _ANSWERED.search(str(exc))
        status = int(found.group(1)) if found else None
    if status is not None:
        record["status"] = status
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float):
        record["retry_after"] = retry_after
    return record


def _error_classes() -> dict[str, type[errors.AuthSecError]]:
    found: dict[str, type[errors.AuthSecError]] = {}
    for name in errors.__all__:
        cls = getattr(errors, name)
        # Token errors win a shared kind: only token fetches record errors.
        if (
            isinstance(cls, type)
            and issubclass(cls, errors.AuthSecError)
            and (cls.kind not in found or issubclass(cls, errors.TokenError))
        ):
            found[cls.kind] = cls
    return found


def error_from_record(record: Mapping[str, Any]) -> errors.AuthSecError:
    """The typed error a stored error record stands for (same class, same message)."""
    kind = str(record.get("kind", ""))
    message = str(record.get("message", "")) or f"recorded error {kind!r}"
    cls = _error_classes().get(kind, errors.TokenError)
    if cls is errors.RateLimitedError:
        retry_after = record.get("retry_after")
        seconds = float(retry_after) if isinstance(retry_after, int | float) else None
        return errors.RateLimitedError(message, retry_after=seconds)
    return cls(message)


# --- the document ----------------------------------------------------------------------------


def iso_utc(unix: float) -> str:
    """``2026-05-20T06:25:36.123456Z``."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_document(
    *,
    recorded_at: float,
    settings: Mapping[str, Any],
    interactions: list[Interaction],
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A cassette document, keys in reading order (not sorted: the header first)."""
    from .. import __version__

    return {
        "format": FORMAT,
        "version": VERSION,
        "generator": f"authsec-crewai {__version__}",
        "recorded_at": round(recorded_at, 6),
        "recorded_at_iso": iso_utc(recorded_at),
        "settings": dict(settings),
        "metadata": dict(metadata or {}),
        "redaction": {
            "jwt_signature": MARKER,
            "never_stored": [
                "request headers (Authorization, Cookie, ...)",
                "Set-Cookie and other credential headers of answers",
                "the API token",
                "JWT signatures",
            ],
        },
        "interactions": interactions,
    }


def dumps(document: Mapping[str, Any]) -> str:
    """The document as the file's text: indented, UTF-8, one trailing newline."""
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one,
    never half of one (temporary file in the same directory, fsync, ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # a cassette is meant to be committed and read by CI
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class Cassette:
    """A loaded, validated cassette."""

    path: Path | None
    version: int
    recorded_at: float
    settings: dict[str, Any]
    metadata: dict[str, Any]
    interactions: list[Interaction]
    document: dict[str, Any] = field(repr=False)

    @property
    def client_id(self) -> str | None:
        """The client id of the first recorded token fetch (what replay asks as)."""
        for item in self.interactions:
            if item["kind"] == "token":
                return str(item["request"]["client_id"])
        return None

    def counts(self) -> dict[str, int]:
        """Interactions per kind."""
        counts = dict.fromkeys(KINDS, 0)
        for item in self.interactions:
            counts[item["kind"]] += 1
        return counts


def _where(path: Path | None) -> str:
    return f"cassette {path}" if path is not None else "cassette"


def _fail(path: Path | None, message: str) -> errors.CassetteError:
    return errors.CassetteError(f"{_where(path)}: {message}")


def load(path: str | os.PathLike[str]) -> Cassette:
    """Read and validate a cassette; every problem is a :class:`CassetteError` that
    says what is wrong and what to do, never a ``KeyError`` from deep inside."""
    where = Path(path)
    try:
        text = where.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(where, "does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(where, f"cannot be read ({exc})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(
            where,
            f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix it or record it again",
        ) from None
    return parse(document, where)


def parse(document: Any, path: Path | None = None) -> Cassette:
    """Validate a decoded cassette document (see :func:`load`)."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _fail(path, f'is not an authsec-crewai cassette (no "format": "{FORMAT}" at the top)')
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(path, f"has no valid format version (got {str(version)[:20]!r})")
    if version > VERSION:
        raise _fail(
            path,
            f"was written in cassette format version {version}, but this authsec-crewai "
            f"reads version {VERSION} at most; upgrade authsec-crewai or record it again",
        )
    recorded_at = document.get("recorded_at")
    if (
        isinstance(recorded_at, bool)
        or not isinstance(recorded_at, int | float)
        or not math.isfinite(recorded_at)
        or recorded_at <= 0
    ):
        raise _fail(path, "has no valid 'recorded_at' (UNIX seconds)")
    settings = document.get("settings", {})
    metadata = document.get("metadata", {})
    if not isinstance(settings, dict) or not isinstance(metadata, dict):
        raise _fail(path, "'settings' and 'metadata' must be JSON objects")
    interactions = document.get("interactions")
    if not isinstance(interactions, list):
        raise _fail(path, "has no 'interactions' list")
    for index, item in enumerate(interactions):
        problem = validate_interaction(item)
        if problem:
            raise _fail(path, f"interaction #{index}: {problem}")
    return Cassette(
        path=path,
        version=version,
        recorded_at=float(recorded_at),
        settings=settings,
        metadata=metadata,
        interactions=cast(list[Interaction], interactions),
        document=document,
    )


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _body_problem(body: Any) -> str | None:
    if body is None:
        return None
    if not isinstance(body, dict) or len(body.keys() & {"json", "text", "base64"}) != 1:
        return "a body must be null or one of {'json': ...}, {'text': ...}, {'base64': ...}"
    if "text" in body and not isinstance(body["text"], str):
        return "a 'text' body must be a string"
    if "base64" in body:
        try:
            base64.b64decode(str(body["base64"]), validate=True)
        except (binascii.Error, ValueError):
            return "a 'base64' body is not valid base64"
    return None


def validate_interaction(item: Any) -> str | None:
    """What is wrong with one interaction, or None (also used on scrub hooks' output)."""
    if not isinstance(item, dict):
        return "not a JSON object"
    kind = item.get("kind")
    if kind not in KINDS:
        return f"unknown kind {str(kind)[:30]!r} (expected one of {', '.join(KINDS)})"
    offset = item.get("offset")
    if isinstance(offset, bool) or not isinstance(offset, int | float) or not offset >= 0:
        return "'offset' must be a number of seconds >= 0"
    request = item.get("request")
    if not isinstance(request, dict):
        return "no 'request' object"
    has_response, has_error = "response" in item, "error" in item
    if has_response == has_error:
        return "needs exactly one of 'response' and 'error'"
    if has_error:
        error = item["error"]
        if not isinstance(error, dict) or not isinstance(error.get("kind"), str):
            return "'error' must be an object with a 'kind'"
    if has_response and not isinstance(item["response"], dict):
        return "'response' must be an object"
    response: dict[str, Any] = item["response"] if has_response else {}
    if kind == "token":
        if not isinstance(request.get("client_id"), str) or not request["client_id"]:
            return "a token request needs a 'client_id'"
        if not _is_str_list(request.get("scopes")) or not _is_str_list(request.get("audience", [])):
            return "a token request needs 'scopes' (and 'audience') as lists of strings"
        if has_response and not isinstance(response.get("body"), dict):
            return "a token answer needs a 'body' object"
    elif kind == "key_set":
        tenant = request.get("tenant_id")
        if tenant is not None and not isinstance(tenant, str):
            return "'tenant_id' must be a string or null"
        if has_response and not isinstance(response.get("body"), dict | None):
            return "a key-set answer's 'body' must be an object or null"
    else:
        if not isinstance(request.get("method"), str) or not isinstance(request.get("path"), str):
            return "an API request needs 'method' and 'path'"
        query = request.get("query", [])
        if not isinstance(query, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)
            for pair in query
        ):
            return "'query' must be a list of [name, value] pairs"
        problem = _body_problem(request.get("body"))
        if problem:
            return problem
        if has_response:
            status = response.get("status")
            if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
                return "an API answer needs a 'status' between 100 and 599"
            headers = response.get("headers", {})
            if not isinstance(headers, dict) or not all(
                isinstance(v, str) for v in headers.values()
            ):
                return "'headers' must map names to strings"
            problem = _body_problem(response.get("body"))
            if problem:
                return problem
    return None


# --- the secret scan -----------------------------------------------------------------------------


def _walk(value: Any, where: str) -> Iterator[tuple[str, Any, str | None]]:
    """(location, value, key) for every node of a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{where}.{key}", item, str(key)
            yield from _walk(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield f"{where}[{index}]", item, None
            yield from _walk(item, f"{where}[{index}]")


def _text_findings(text: str, where: str, secrets: frozenset[str]) -> list[str]:
    found: list[str] = []
    for match in JWT_PATTERN.finditer(text):
        signature = match.group(0).rsplit(".", 1)[1]
        if signature and signature != MARKER:
            found.append(f"{where}: a JWT with its signature (jwt:{fingerprint(match.group(0))})")
    for match in _BEARER.finditer(text):
        credential = match.group(2)
        if credential != MARKER and not credential.endswith("." + MARKER):
            found.append(f"{where}: a bearer credential")
    for secret in secrets:
        if secret and secret in text:
            found.append(f"{where}: the API token (or another configured secret)")
    return found


def find_secrets(document: Any, *, secrets: Iterable[str | None] = ()) -> list[str]:
    """Everything in a cassette document that must not be there, as readable lines.

    Looks at every string (keys too) for JWTs that still carry a signature,
    bearer credentials and the given ``secrets``; inside base64 bodies as well;
    and for credential headers (``Authorization``, ``Cookie``, ...) anywhere.
    An empty list means the document is safe to share.
    """
    wanted = frozenset(s for s in secrets if s)
    found: list[str] = []
    for where, value, key in _walk(document, "$"):
        if key is not None:
            if key.lower() in NEVER_STORED_HEADERS:
                found.append(f"{where}: a {key!r} header or field")
            found.extend(_text_findings(key, f"{where} (key)", wanted))
        if isinstance(value, str):
            found.extend(_text_findings(value, where, wanted))
            if key == "base64":
                try:
                    raw = base64.b64decode(value).decode("latin-1")
                except (binascii.Error, ValueError):
                    continue
                found.extend(_text_findings(raw, f"{where} (decoded)", wanted))
    return found


# --- matching -------------------------------------------------------------------------------------

RequestKey = tuple[Any, ...]


def request_key(kind: str, request: Mapping[str, Any]) -> RequestKey:
    """What a request is matched on. Never a token, never a header."""
    if kind == "token":
        return (
            "token",
            str(request.get("client_id")),
            tuple(sorted(request.get("scopes", []))),
            tuple(sorted(request.get("audience", []))),
        )
    if kind == "key_set":
        return ("key_set", request.get("tenant_id"))
    return (
        "api",
        str(request.get("method", "")).upper(),
        str(request.get("path", "")),
        tuple(sorted(tuple(pair) for pair in request.get("query", []))),
        _body_key(request.get("body")),
    )


def describe(kind: str, request: Mapping[str, Any]) -> str:
    """A request in one line, for error messages and ``cassette show``."""
    if kind == "token":
        text = (
            f"token for client {request.get('client_id')} with scopes "
            f"{' '.join(request.get('scopes', [])) or '(none)'}"
        )
        if request.get("audience"):
            text += f" and audience {' '.join(request['audience'])}"
    elif kind == "key_set":
        text = f"key set of tenant {request.get('tenant_id')}"
    else:
        text = f"{str(request.get('method', '')).upper()} {request.get('path', '')}"
        query = request.get("query") or []
        if query:
            text += "?" + urlencode([tuple(pair) for pair in query])
        body = decode_body(request.get("body"))
        if body:
            text += f" with a {len(body)}-byte body"
    return text if len(text) <= _MAX_DESCRIBE else text[: _MAX_DESCRIBE - 3] + "..."


_API_PARTS: Final = (("method", 1, 4.0), ("path", 2, 4.0), ("query", 3, 2.0), ("body", 4, 1.0))
_TOKEN_PARTS: Final = (("client id", 1, 4.0), ("scopes", 2, 2.0), ("audience", 3, 1.0))


def _closeness(wanted: RequestKey, candidate: RequestKey) -> tuple[float, list[str]]:
    parts: tuple[tuple[str, int, float], ...] = _API_PARTS if wanted[0] == "api" else _TOKEN_PARTS
    if wanted[0] == "key_set":
        parts = (("tenant", 1, 1.0),)
    score, differs = 0.0, []
    for name, index, weight in parts:
        if wanted[index] == candidate[index]:
            score += weight
        else:
            differs.append(name)
            if isinstance(wanted[index], str) and isinstance(candidate[index], str):
                score += (
                    weight
                    * difflib.SequenceMatcher(None, wanted[index], candidate[index]).ratio()
                    * 0.9
                )
    return score, differs


@dataclass
class _Track:
    """The recorded answers to one request, in recorded order."""

    items: list[tuple[int, Interaction]]
    played: int = 0


class Player:
    """Serves recorded interactions by request, never by token or header.

    Identical requests get their recorded answers in recorded order; once
    those are used up, the last one again when ``allow_repeats`` (a cached
    token refetched one time more than during the recording is not an error),
    else a :class:`CassetteError`. A request that was never recorded is a
    :class:`CassetteError` naming the closest recorded one and how it differs.
    Thread-safe: a crew may call from several threads and loops.
    """

    def __init__(
        self,
        interactions: Iterable[Interaction],
        *,
        allow_repeats: bool = True,
        path: Path | None = None,
        kinds: Iterable[str] = KINDS,
    ) -> None:
        self.path = path
        self.allow_repeats = allow_repeats
        wanted = set(kinds)
        self._tracks: dict[RequestKey, _Track] = {}
        self._lock = threading.Lock()
        for index, item in enumerate(interactions):
            if item["kind"] not in wanted:
                continue
            key = request_key(item["kind"], item["request"])
            self._tracks.setdefault(key, _Track([])).items.append((index, item))

    def has(self, kind: str, request: Mapping[str, Any]) -> bool:
        """Whether a request like this one was recorded."""
        return request_key(kind, request) in self._tracks

    def take(self, kind: str, request: Mapping[str, Any]) -> Interaction:
        """The recorded answer for ``request`` (see the class docstring)."""
        key = request_key(kind, request)
        with self._lock:
            track = self._tracks.get(key)
            if track is None:
                raise self._unmatched(kind, request, key)
            if track.played < len(track.items):
                item = track.items[track.played][1]
            elif self.allow_repeats:
                item = track.items[-1][1]
            else:
                raise _fail(
                    self.path,
                    f"{describe(kind, request)} was recorded {len(track.items)} time(s) and "
                    "has been replayed that often; allow_playback_repeats=False forbids "
                    "another (record the session again if the code now makes more calls)",
                )
            track.played += 1
            return item

    def _unmatched(
        self, kind: str, request: Mapping[str, Any], key: RequestKey
    ) -> errors.CassetteError:
        best: tuple[float, list[str], Interaction] | None = None
        for other, track in self._tracks.items():
            if other[0] != key[0]:
                continue
            score, differs = _closeness(key, other)
            if best is None or score > best[0]:
                best = (score, differs, track.items[0][1])
        message = f"{describe(kind, request)} is not in the cassette"
        if best is None:
            message += f"; it holds no {kind.replace('_', '-')} requests at all"
        else:
            item = best[2]
            message += (
                f"; the closest recorded request is {describe(item['kind'], item['request'])}"
                f" (it differs in {', '.join(best[1])})"
            )
        message += (
            ". Record the session again (record mode 'all' or 'new_episodes') "
            "if the code now makes this request"
        )
        return _fail(self.path, message)

    def unused(self) -> list[tuple[int, Interaction]]:
        """Recorded interactions that were never served, as (index, interaction)."""
        with self._lock:
            left = [
                entry for track in self._tracks.values() for entry in track.items[track.played :]
            ]
        return sorted(left, key=lambda entry: entry[0])
