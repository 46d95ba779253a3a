"""Masking of secrets: the one place that knows what a token looks like.

Logs, error messages, reprs, cassettes and tool results all pass through these
helpers, so a token can only ever appear as ``jwt:<fingerprint>``.
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "AUTH_SCHEME_PATTERN",
    "BEARER_PATTERN",
    "JWT_PATTERN",
    "MASKED_JWT_PATTERN",
    "fingerprint",
    "mask_jwt",
    "redact_text",
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
    rf"(?!{MASKED_JWT_PATTERN.pattern}\b)(?!\[redacted\])([^\s,;\"'<>\[\](){{}}]+)"
)
"""Any Bearer or Basic credential, however short, not already masked: the scheme
(group 1), its spacing (group 2), the credential (group 3). Stricter than
:data:`BEARER_PATTERN`, for log lines, where even ``Bearer xyz`` is a credential."""


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
