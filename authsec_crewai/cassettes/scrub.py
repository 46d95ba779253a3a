"""Redaction: what a transport saw becomes what a cassette may hold, and the scan
that proves a document holds no secret.

What is never written, whatever the transport saw: ``Authorization`` /
``Cookie`` / ``Set-Cookie`` and similar headers (request headers are not
stored at all), the API token, and the signature of any JWT, anywhere it
appears (answer bodies, API bodies, header values): a token is kept as
``<header>.<payload>.REDACTED``. Its claims stay readable, which is what
replay needs (it verifies claims only), and it can never again be presented
as a credential to anything that checks signatures. :func:`find_secrets`
proves it: the writer runs it on every document and refuses to write one that
fails.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from ..redact import BEARER_PATTERN, JWT_PATTERN, fingerprint

__all__ = [
    "NEVER_STORED_HEADERS",
    "REDACTION_MARKER",
    "Scrubber",
    "find_secrets",
    "strip_credentials",
]

REDACTION_MARKER: Final = "REDACTED"
"""What replaces a JWT signature or a secret in a cassette."""

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
        self._secret_pairs = [(s, REDACTION_MARKER) for s in sorted(cleaned, key=len, reverse=True)]

    def add_secret(self, secret: str) -> None:
        """One more value that must never be written (an opaque access token met
        while recording): masked from here on, and scanned for before writing."""
        if len(secret) < 4 or secret in self.secrets:
            return
        self.secrets = self.secrets | {secret}
        self._secret_pairs = [
            (s, REDACTION_MARKER) for s in sorted(self.secrets, key=len, reverse=True)
        ]

    # forward: what the transport saw -> what the cassette holds

    def text(self, text: str) -> str:
        """Placeholders in, JWT signatures and bearer credentials and secrets out."""
        text = _replace_all(text, self._forward)
        if "eyJ" in text:
            text = JWT_PATTERN.sub(self._redact_jwt, text)
        if "earer" in text or "EARER" in text:
            text = BEARER_PATTERN.sub(self._redact_bearer, text)
        return _replace_all(text, self._secret_pairs)

    def _redact_jwt(self, match: re.Match[str]) -> str:
        head, payload, _ = match.group(0).split(".")
        token = f"{head}.{payload}.{REDACTION_MARKER}"
        if self._forward or self._secret_pairs:
            token = _map_jwt_claims(
                token, lambda t: _replace_all(_replace_all(t, self._forward), self._secret_pairs)
            )
        return token

    @staticmethod
    def _redact_bearer(match: re.Match[str]) -> str:
        credential = match.group(2)
        if credential.endswith("." + REDACTION_MARKER) or credential == REDACTION_MARKER:
            return match.group(0)
        return match.group(1) + REDACTION_MARKER

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
        if signature and signature != REDACTION_MARKER:
            found.append(f"{where}: a JWT with its signature (jwt:{fingerprint(match.group(0))})")
    for match in BEARER_PATTERN.finditer(text):
        credential = match.group(2)
        if credential != REDACTION_MARKER and not credential.endswith("." + REDACTION_MARKER):
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
            if key == "text":
                found.extend(_embedded_json_findings(value, where, wanted))
            if key == "base64":
                try:
                    raw = base64.b64decode(value).decode("latin-1")
                except (binascii.Error, ValueError):
                    continue
                found.extend(_text_findings(raw, f"{where} (decoded)", wanted))
                found.extend(_embedded_json_findings(raw, f"{where} (decoded)", wanted))
    return found


def _embedded_json_findings(text: str, where: str, secrets: frozenset[str]) -> list[str]:
    """Findings in the decoded strings of a body that is JSON text with escapes:
    ``\\u002e`` for a dot hides a token from a scan of the raw text, and any
    JSON reader restores it."""
    if "\\" not in text:
        return []
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return []
    found: list[str] = []
    for inner, item, key in _walk(value, f"{where} (as JSON)"):
        if key is not None:
            found.extend(_text_findings(key, f"{inner} (key)", secrets))
        if isinstance(item, str):
            found.extend(_text_findings(item, inner, secrets))
    return found
