"""Masking of secrets: the one place that knows what a token looks like.

Logs, error messages, reprs, cassettes and tool results all pass through these
helpers, so a token can only ever appear as ``jwt:<fingerprint>``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "AUTH_SCHEME_PATTERN",
    "BEARER_PATTERN",
    "JWT_PATTERN",
    "MASKED_JWT_PATTERN",
    "fingerprint",
    "mask_jwt",
    "mask_secret",
    "redact_credentials",
    "redact_text",
    "scrub_secrets",
    "scrub_value",
]

# The patterns below are the only definitions of what a token looks like: logs,
# messages and cassettes all use them.

JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
"""Three base64url parts separated by dots, the first one a JSON object header
("eyJ" is base64url of '{"'). The signature may be empty (alg "none")."""

MASKED_JWT_PATTERN = re.compile(r"jwt:[0-9a-f]{12}")
"""What :func:`mask_jwt` shows instead of a token."""

BEARER_PATTERN = re.compile(r"(?i)(bearer\s+)([A-Za-z0-9._~+/=-]{8,})")
"""A bearer credential of eight or more token68 characters: the scheme and its
spacing (group 1), the credential (group 2)."""

AUTH_SCHEME_PATTERN = re.compile(
    r"(?i)\b(bearer|basic)(\s+)"
    rf"(?!{MASKED_JWT_PATTERN.pattern}\b)(?!\[redacted\])(?!(?:bearer|basic)\s)"
    r"([^\s,;\"'<>\[\](){}]+)"
)
"""Any Bearer or Basic credential, however short, not already masked: the scheme
(group 1), its spacing (group 2), the credential (group 3). Stricter than
:data:`BEARER_PATTERN`, for log lines, where even ``Bearer xyz`` is a credential.
A scheme word followed by another scheme (``basic Basic <credential>``) is not
taken for the credential, which would hide the real one from the match."""


def fingerprint(value: str) -> str:
    """A short, stable, non-reversible name for a secret: 12 hex digits of sha256."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def mask_jwt(value: str) -> str:
    """What is shown instead of a token."""
    return f"jwt:{fingerprint(value)}"


def redact_text(text: str) -> str:
    """Replace anything shaped like a JWT or a bearer credential in ``text``."""
    if "eyJ" in text:
        text = JWT_PATTERN.sub(lambda m: mask_jwt(m.group(0)), text)
    if "earer" in text or "EARER" in text:
        text = BEARER_PATTERN.sub(
            lambda m: m.group(0) if m.group(2).startswith("jwt:") else m.group(1) + "[redacted]",
            text,
        )
    return text


def redact_credentials(text: str) -> str:
    """:func:`redact_text`, and every ``Bearer`` or ``Basic`` credential however short.

    For text that is not a server's data but a record of traffic (a log line,
    a span attribute): there even ``Bearer xyz`` is a credential, and so is
    HTTP Basic.
    """
    text = redact_text(text)
    if "asic" in text or "earer" in text or "ASIC" in text or "EARER" in text:
        text = AUTH_SCHEME_PATTERN.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]", text)
    return text


_MAX_DEPTH = 64
"""Deeper data is cut off: no answer an agent can use nests this far."""


def mask_secret(value: str) -> str:
    """What is shown instead of a known secret: a JWT's fingerprint, else a marker."""
    return mask_jwt(value) if JWT_PATTERN.fullmatch(value) else "[redacted]"


def scrub_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every known secret masked, then anything token-shaped.

    For text a server supplied (an error body, an echo): the exact values the
    library holds (the API token, the tokens it was given) are removed even
    when they do not look like a JWT or follow ``Bearer``.
    """
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, mask_secret(secret))
    return redact_text(text)


def scrub_value(value: Any, secrets: Iterable[str] = (), *, _depth: int = 0) -> Any:
    """Decoded data (JSON-like) with every string, key or value, scrubbed.

    Masking the raw text of an answer is not enough: JSON escapes (``\\u002e``
    for a dot) hide a token from a text search and ``json.loads`` restores it.
    So the decoded values are scrubbed too.
    """
    secrets = tuple(secrets)
    if isinstance(value, str):
        return scrub_secrets(value, secrets)
    if _depth >= _MAX_DEPTH:
        return "[...]"
    if isinstance(value, dict):
        return {
            scrub_secrets(k, secrets) if isinstance(k, str) else k: scrub_value(
                v, secrets, _depth=_depth + 1
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        items = [scrub_value(v, secrets, _depth=_depth + 1) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value
