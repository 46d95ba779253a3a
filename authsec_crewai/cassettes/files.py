"""A cassette on disk: the document's layout, atomic writes, and loading with validation.

A cassette is one JSON document, written for people and for ``git diff``:
two-space indentation, one interaction after another, structural keys in a
fixed order and headers sorted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, cast

from .schema import FORMAT, KINDS, VERSION, Interaction, cassette_error, validate_interaction
from .scrub import REDACTION_MARKER

__all__ = ["Cassette", "dumps", "iso_utc", "load", "new_document", "parse", "write_atomic"]


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
    from .._version import __version__

    return {
        "format": FORMAT,
        "version": VERSION,
        "generator": f"authsec-crewai {__version__}",
        "recorded_at": round(recorded_at, 6),
        "recorded_at_iso": iso_utc(recorded_at),
        "settings": dict(settings),
        "metadata": dict(metadata or {}),
        "redaction": {
            "jwt_signature": REDACTION_MARKER,
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


MAX_CASSETTE_BYTES: Final = 64 * 1024 * 1024
"""A recorded session is kilobytes (API answers over 16 MiB are not even
recorded); a larger file is refused before it is read."""

MAX_NESTING: Final = 64
"""Deepest nesting of JSON arrays and objects a cassette may have: the document
takes five levels, an API answer the rest."""


def load(path: str | os.PathLike[str]) -> Cassette:
    """Read and validate a cassette; every problem is a :class:`CassetteError` that
    says what is wrong and what to do, never a ``KeyError`` (or a ``RecursionError``)
    from deep inside. A file over :data:`MAX_CASSETTE_BYTES` is refused unread."""
    where = Path(path)
    try:
        with where.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            too_large = size > MAX_CASSETTE_BYTES
            # Ask for what the file holds (plus one byte, to notice it growing), not for
            # the cap: read(n) allocates n bytes up front.
            raw = b"" if too_large else handle.read(size + 1)
        if too_large or len(raw) > MAX_CASSETTE_BYTES:
            raise cassette_error(
                where,
                f"is larger than {MAX_CASSETTE_BYTES // (1024 * 1024)} MiB, more than a "
                "recorded session can be; refusing to read it",
            )
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise cassette_error(where, "does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise cassette_error(where, f"cannot be read ({exc})") from None
    del raw
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise cassette_error(
            where,
            f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix it or record it again",
        ) from None
    except RecursionError:
        raise cassette_error(where, _TOO_DEEP) from None
    return parse(document, where)


_TOO_DEEP: Final = (
    f"nests JSON deeper than {MAX_NESTING} levels, which no recorded session does; refusing it"
)


def _too_deep(document: Any) -> bool:
    """Whether ``document`` nests deeper than :data:`MAX_NESTING` (without recursing)."""
    level: list[Any] = [document]
    for _ in range(MAX_NESTING + 1):
        inner: list[Any] = []
        for node in level:
            if isinstance(node, dict):
                inner.extend(node.values())
            elif isinstance(node, list):
                inner.extend(node)
        if not inner:
            return False
        level = inner
    return True


def parse(document: Any, path: Path | None = None) -> Cassette:
    """Validate a decoded cassette document (see :func:`load`)."""
    if _too_deep(document):
        raise cassette_error(path, _TOO_DEEP)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise cassette_error(
            path, f'is not an authsec-crewai cassette (no "format": "{FORMAT}" at the top)'
        )
    version = document.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise cassette_error(path, f"has no valid format version (got {str(version)[:20]!r})")
    if version > VERSION:
        raise cassette_error(
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
        raise cassette_error(path, "has no valid 'recorded_at' (UNIX seconds)")
    settings = document.get("settings", {})
    metadata = document.get("metadata", {})
    if not isinstance(settings, dict) or not isinstance(metadata, dict):
        raise cassette_error(path, "'settings' and 'metadata' must be JSON objects")
    interactions = document.get("interactions")
    if not isinstance(interactions, list):
        raise cassette_error(path, "has no 'interactions' list")
    for index, item in enumerate(interactions):
        problem = validate_interaction(item)
        if problem:
            raise cassette_error(path, f"interaction #{index}: {problem}")
    return Cassette(
        path=path,
        version=version,
        recorded_at=float(recorded_at),
        settings=settings,
        metadata=metadata,
        interactions=cast(list[Interaction], interactions),
        document=document,
    )
