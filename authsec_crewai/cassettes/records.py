"""Typed errors as a cassette stores them, and back: a replay raises what was raised."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from .. import errors
from .scrub import Scrubber

__all__ = ["error_from_record", "error_record"]


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
