"""The exact secrets this process holds, so every sink can mask them by value.

Patterns catch what looks like a credential (a JWT, ``Bearer ...``); an API
token, a store key or an opaque OAuth token looks like nothing in particular.
Whatever holds such a secret (the live transport its API token, the store
keys' decoder, the token parser every token it is handed) hands it to
:func:`remember`, and the log filter, the span scrubber and the doctor mask
them with :func:`scrub`.

Bounded rather than weak (``str`` cannot be weakly referenced): the most
recent :data:`CAPACITY` secrets are kept, so a process that sees tokens for
days does not grow. Values shorter than :data:`MIN_LENGTH` are not kept:
masking every ``"abc"`` in a trace would destroy data and protect nothing.
Nothing here ever logs or shows a value.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from .redact import JWT_PATTERN, mask_secret

__all__ = ["CAPACITY", "MIN_LENGTH", "known", "remember", "scrub"]

CAPACITY = 1024
"""How many secrets are kept; the least recently remembered goes first."""

MIN_LENGTH = 8
"""Shorter values are not secrets worth masking by value."""

_FEW = 48
"""Up to this many, each secret is searched for on its own (a C substring search);
beyond, one pass over the text looks its windows up by prefix, whatever the count."""

_lock = threading.Lock()
_held: OrderedDict[str, None] = OrderedDict()


class _Index:
    """The secrets as :func:`scrub` searches them, built once per change of the set."""

    __slots__ = ("all", "by_prefix", "exact")

    def __init__(self, held: tuple[str, ...]) -> None:
        self.all = tuple(sorted(held, key=len, reverse=True))  # longest first
        # A JWT is masked by its shape wherever it appears (the same fingerprint):
        # searching for it by value too would only cost time.
        self.exact = tuple(s for s in self.all if not JWT_PATTERN.fullmatch(s))
        self.by_prefix: dict[str, tuple[str, ...]] | None = None
        if len(self.exact) > _FEW:
            groups: dict[str, list[str]] = {}
            for secret in self.exact:
                groups.setdefault(secret[:MIN_LENGTH], []).append(secret)
            self.by_prefix = {prefix: tuple(group) for prefix, group in groups.items()}


_index: _Index | None = _Index(())
"""None once a change made it stale: rebuilt on the next read, so remembering stays
O(1) on the token-fetch path."""


def remember(secret: str | None) -> None:
    """Keep ``secret`` so every sink masks it; cheap when it is already kept."""
    global _index
    if not secret or len(secret) < MIN_LENGTH:
        return
    with _lock:
        if secret in _held:
            _held.move_to_end(secret)
            return
        _held[secret] = None
        while len(_held) > CAPACITY:
            _held.popitem(last=False)
        _index = None


def _current() -> _Index:
    global _index
    index = _index
    if index is None:
        with _lock:
            if _index is None:
                _index = _Index(tuple(_held))
            index = _index
    return index


def known() -> tuple[str, ...]:
    """Every secret kept, longest first (a secret that contains another is masked whole)."""
    return _current().all


def scrub(text: str) -> str:
    """``text`` with every kept secret that is not JWT-shaped masked (JWTs: by their shape).

    Costs one substring search per secret while they are few, then one pass
    over the text, so a process holding a thousand opaque tokens does not pay
    a thousand searches per log line or span attribute.
    """
    index = _current()
    if not index.exact or len(text) < MIN_LENGTH:
        return text
    if index.by_prefix is None:
        found = [secret for secret in index.exact if secret in text]
    else:
        prefixes, hits = index.by_prefix, set[str]()
        for start in range(len(text) - MIN_LENGTH + 1):
            group = prefixes.get(text[start : start + MIN_LENGTH])
            if group is not None:
                hits.update(secret for secret in group if text.startswith(secret, start))
        found = sorted(hits, key=len, reverse=True)
    for secret in found:
        text = text.replace(secret, mask_secret(secret))
    return text
