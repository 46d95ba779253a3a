"""Failure memory: what a failed fetch leaves behind, so a herd does not retry in a storm.

A MANDATORY failure is remembered for ``RefreshPolicy.failure_memory`` seconds
under its key and re-raised to whoever asks for that key meanwhile; a terminal
answer (the delegation was revoked, expired or refused) is remembered for the
whole agent. Both are bounded, since the scopes asked for are an agent's
(often a language model's) choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import errors
from ..token import TokenRequest

__all__ = ["FAILURE_LIMIT", "FailureMemory", "Remembered"]

FAILURE_LIMIT = 256
"""Failures remembered per agent (expired ones first, then the oldest, make room)."""


@dataclass(slots=True)
class Remembered:
    error: errors.AuthSecError
    until: float  # monotonic


class FailureMemory:
    """One agent's remembered failures (used under the broker's lock)."""

    __slots__ = ("by_request", "terminal")

    def __init__(self) -> None:
        self.by_request: dict[TokenRequest, Remembered] = {}
        self.terminal: Remembered | None = None  # the agent's delegation was withdrawn

    def __len__(self) -> int:
        return len(self.by_request)

    def remember(self, key: TokenRequest, failure: Remembered, mono: float) -> None:
        """Remember a failure for ``key``, within :data:`FAILURE_LIMIT` entries."""
        remembered = self.by_request
        remembered.pop(key, None)
        if len(remembered) >= FAILURE_LIMIT:
            for stale in [k for k, r in remembered.items() if r.until <= mono]:
                del remembered[stale]
            while len(remembered) >= FAILURE_LIMIT:
                del remembered[next(iter(remembered))]  # the oldest goes
        remembered[key] = failure

    def refusal(self, key: TokenRequest, mono: float) -> errors.AuthSecError | None:
        """The remembered error that still answers ``key``: the agent's first, then the key's."""
        for remembered in (self.terminal, self.by_request.get(key)):
            if remembered is not None and mono < remembered.until:
                return remembered.error
        return None

    def succeeded(self, key: TokenRequest) -> None:
        """A token was had for ``key``: nothing about it or the agent is failing any more."""
        self.by_request.pop(key, None)
        self.terminal = None

    def clear(self) -> None:
        self.by_request.clear()
        self.terminal = None
