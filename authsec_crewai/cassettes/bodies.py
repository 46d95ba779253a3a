"""Bodies as a cassette stores them: compact JSON by value, else text, else base64."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from .scrub import Scrubber

__all__ = ["body_key", "decode_body", "encode_body"]


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
    except (ValueError, RecursionError):
        return {"text": scrubber.text(text)}
    scrubbed = scrubber.text(text)
    if "\\" in text and _escapes_hide_a_secret(scrubbed, scrubber):
        # JSON escapes (\\u002e for a dot) hid a token or a secret from the text
        # scrub: keep the decoded value, scrubbed. Replay serves it as compact
        # JSON, the same value in other bytes.
        return {"json": scrubber.value(value)}
    return {"text": scrubbed}


def _escapes_hide_a_secret(scrubbed: str, scrubber: Scrubber) -> bool:
    """Whether the scrubbed JSON text still decodes to something the scrubber changes."""
    try:
        value = json.loads(scrubbed)
    except (ValueError, RecursionError):
        return False
    return bool(scrubber.value(value) != value)


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


def body_key(body: Mapping[str, Any] | None) -> tuple[str, str]:
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
