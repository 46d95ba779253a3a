"""Matching: which recorded interaction answers a request, and the player that serves them.

Requests are matched by what they ask, never by a token or a header.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from .. import errors
from .bodies import body_key, decode_body
from .schema import KINDS, Interaction, cassette_error

__all__ = ["Player", "RequestKey", "describe", "request_key"]

_MAX_DESCRIBE = 160


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
        body_key(request.get("body")),
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
                raise cassette_error(
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
        return cassette_error(self.path, message)

    def unused(self) -> list[tuple[int, Interaction]]:
        """Recorded interactions that were never served, as (index, interaction)."""
        with self._lock:
            left = [
                entry for track in self._tracks.values() for entry in track.items[track.played :]
            ]
        return sorted(left, key=lambda entry: entry[0])
