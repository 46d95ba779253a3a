"""The exact secrets this process holds, so every sink can mask them by value.

Patterns catch what looks like a credential (a JWT, ``Bearer ...``); an API
token, a store key or an opaque OAuth token looks like nothing in particular.
Whatever holds such a secret (the live transport its API token, the store
keys' decoder, the broker every token it caches) hands it to :func:`remember`,
and the log filter, the span scrubber and the doctor mask what :func:`known`
returns.

Bounded rather than weak (``str`` cannot be weakly referenced): the most
recent :data:`CAPACITY` secrets are kept, so a process that sees tokens for
days does not grow. Values shorter than :data:`MIN_LENGTH` are not kept:
masking every ``"abc"`` in a trace would destroy data and protect nothing.
Nothing here ever logs or shows a value.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

__all__ = ["CAPACITY", "MIN_LENGTH", "known", "remember"]

CAPACITY = 1024
"""How many secrets are kept; the least recently remembered goes first."""

MIN_LENGTH = 8
"""Shorter values are not secrets worth masking by value."""

_lock = threading.Lock()
_held: OrderedDict[str, None] = OrderedDict()
_snapshot: tuple[str, ...] | None = ()
"""What :func:`known` returns; None once a change made it stale (rebuilt on the next read,
so remembering stays O(1) on the token-fetch path)."""


def remember(secret: str | None) -> None:
    """Keep ``secret`` so every sink masks it; cheap when it is already kept."""
    global _snapshot
    if not secret or len(secret) < MIN_LENGTH:
        return
    with _lock:
        if secret in _held:
            _held.move_to_end(secret)
            return
        _held[secret] = None
        while len(_held) > CAPACITY:
            _held.popitem(last=False)
        _snapshot = None


def known() -> tuple[str, ...]:
    """Every secret kept, longest first (a secret that contains another is masked whole)."""
    global _snapshot
    snapshot = _snapshot
    if snapshot is None:
        with _lock:
            if _snapshot is None:
                _snapshot = tuple(sorted(_held, key=len, reverse=True))
            snapshot = _snapshot
    return snapshot
