"""The one rule for a configured base URL (the AuthSec server, the protected API).

Settings, the live transport and the fetcher all take base URLs; they share this
rule so a URL one of them accepts is never refused by another.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["check_base_url"]


def check_base_url(value: str) -> str:
    """``value`` without surrounding space or a trailing slash, or ``ValueError`` saying why not.

    An http(s) URL with a host, an optional port and path, and nothing else:
    credentials in a URL end up in logs, proxies and error messages; a query or
    fragment would be silently mangled when paths are appended to it; and
    backslashes, whitespace or control characters are parsed differently by
    different clients. The messages never repeat the URL (it may hold a secret).
    """
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ValueError("is not a valid URL; expected e.g. https://authsec.example.com") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(
            "must start with https:// (or http:// for local testing); "
            f"got scheme {parts.scheme or '(none)'!r}"
        )
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(
            "must not contain credentials (user:password@); put the API token in "
            "AUTHSEC_API_TOKEN instead"
        )
    if not parts.hostname:
        raise ValueError("has no host; expected e.g. https://authsec.example.com")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError("must not have a query string or fragment")
    if "\\" in text or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise ValueError("must not contain backslashes, whitespace or control characters")
    return text.rstrip("/")
