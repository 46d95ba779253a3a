"""The cassette format's vocabulary and its validation: what a well-formed cassette is.

Every other module of the package speaks these names; :func:`validate_interaction`
is the one judge of an interaction's shape (used on loaded files and on what
scrub hooks return).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal

from .. import errors

__all__ = [
    "FORMAT",
    "KINDS",
    "RECORD_MODES",
    "VERSION",
    "Interaction",
    "RecordMode",
    "ScrubHook",
    "cassette_error",
    "validate_interaction",
]

FORMAT: Final = "authsec-cassette"
"""The value of the document's ``format`` key: how a cassette is told from other JSON."""

VERSION: Final = 1
"""The format version this release writes and the newest one it reads."""

RecordMode = Literal["none", "once", "new_episodes", "all"]
RECORD_MODES: Final[tuple[RecordMode, ...]] = ("none", "once", "new_episodes", "all")

Interaction = dict[str, Any]
"""One interaction as its JSON object (what scrub hooks receive and return)."""

ScrubHook = Callable[[Interaction], "Interaction | None"]
"""A user hook run on each interaction before it is kept: return it (changed or
not), or None to leave it out of the cassette."""

KINDS: Final = ("token", "key_set", "api")


def cassette_error(path: Path | None, message: str) -> errors.CassetteError:
    """A :class:`CassetteError` that names the file it is about."""
    where = f"cassette {path}" if path is not None else "cassette"
    return errors.CassetteError(f"{where}: {message}")


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
