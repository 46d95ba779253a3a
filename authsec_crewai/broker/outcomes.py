"""What a flight's outcome does to its agent: cache the token, or apply the failure policy.

Both run under the broker's lock and return the log line for the broker to
emit once the lock is released and the waiters are woken.

Failures: an ADVISORY refresh that fails keeps serving the valid token and
backs off with jitter; a MANDATORY failure is remembered for its key, so a herd
does not retry in a storm; a terminal answer (revoked, expired, refused) drops
every token of the agent at once and fences the flights still in the air, so
none of them can cache what the server has just withdrawn (fail closed).
"""

from __future__ import annotations

import random

from .. import errors
from ..policy import RefreshPolicy
from ..token import DelegationToken, TokenRequest
from .agents import AgentState
from .failures import Remembered
from .flights import Flight

__all__ = ["LogLine", "cache_token", "fence_stale", "record_failure"]

LogLine = tuple[str, str, dict[str, object]]


def cache_token(
    agent: AgentState,
    key: TokenRequest,
    token: DelegationToken,
    policy: RefreshPolicy,
    rng: random.Random,
    now: float,
    mono: float,
) -> LogLine:
    """A flight brought ``token`` for ``key``: learn what it grants and cache it."""
    agent.failures.succeeded(key)
    agent.learn_grants(token)
    if not token.covers(key.scopes):
        # The delegation does not grant these scopes: nothing to cache under
        # them (and an entry the token no longer covers goes).
        agent.cache.drop(key)
        return (
            "info",
            "token.scope_not_granted",
            {
                "client_id": agent.client_id,
                "fingerprint": token.fingerprint,
                "jti": token.jti,
                "missing": sorted(key.scopes - token.permissions),
            },
        )
    level, event, facts = agent.cache.store(key, token, policy, rng, now, mono)
    return level, event, {"client_id": agent.client_id, **facts}


def fence_stale(agent: AgentState, flight: Flight, token: DelegationToken) -> LogLine:
    """A flight older than the agent's last revocation or invalidation landed: its token
    is not cached, and its waiters ask again (they then meet the revocation)."""
    flight.stale = True
    entry = agent.cache.entries.get(flight.request)
    if flight.background and entry is not None:
        entry.serve_until = min(entry.serve_until, entry.advisory_at)  # refresh again later
    return (
        "info",
        "token.fenced",
        {
            "client_id": agent.client_id,
            "fingerprint": token.fingerprint,
            "jti": token.jti,
            "scopes": sorted(flight.request.scopes),
            "background": flight.background,
        },
    )


def record_failure(
    agent: AgentState,
    flight: Flight,
    error: errors.AuthSecError,
    policy: RefreshPolicy,
    rng: random.Random,
    mono: float,
) -> LogLine:
    """Apply the failure policy to the flight's agent and key."""
    key = flight.request
    agent.counts["failures"] += 1
    dropped = 0
    if error.terminal:
        # The server withdrew this agent's delegation: fail closed for every
        # scope set of this agent (and never touch another agent's tokens).
        dropped = agent.cache.clear()
        agent.forget_grants()
        agent.failures.terminal = Remembered(error, mono + policy.failure_memory)
        agent.fence()
    entry = agent.cache.entries.get(key)
    if flight.background and entry is not None:
        entry.failures += 1
        entry.retry_at = mono + policy.backoff(entry.failures, rng)
        entry.serve_until = entry.advisory_at  # back to the counted, backed-off path
    if not flight.background or flight.joined:
        agent.failures.remember(key, Remembered(error, mono + policy.failure_memory), mono)
    return (
        "warning",
        "token.refresh.failed",
        {
            "client_id": agent.client_id,
            "error": error.kind,
            "message": str(error),
            "scopes": sorted(key.scopes),
            "background": flight.background,
            "dropped": dropped,
        },
    )
