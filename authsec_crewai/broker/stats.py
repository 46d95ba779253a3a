"""``BrokerStats``: the counters a broker keeps, for all its agents or for one."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COUNTERS", "BrokerStats"]

COUNTERS = (
    "hits",
    "misses",
    "fetches",
    "coalesced",
    "background_refreshes",
    "failures",
    "stale_served",
    "refused",
)
"""The per-agent counters (``cached`` and the shared-store counts are not kept per agent)."""


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """A snapshot of the broker's counters (for all agents, or for one).

    ``hits``: served from cache without waiting; ``misses``: had to wait for a
    fetch; ``fetches``: transport calls; ``coalesced``: waiters that joined a
    fetch already in flight; ``background_refreshes``: ADVISORY refreshes
    started; ``failures``: fetches that failed; ``stale_served``: ADVISORY
    tokens served after their refresh had failed; ``refused``: requests for
    scopes the agent's delegation does not grant, refused without a fetch.
    ``cached`` is not a counter: the number of cache entries right now. With a
    shared store (counted for the whole broker): ``store_hits``: flights served
    from the store without a transport call; ``store_errors``: store
    operations that failed or timed out; ``lease_waits``: flights that waited
    for another process's fetch.
    """

    hits: int = 0
    misses: int = 0
    fetches: int = 0
    coalesced: int = 0
    background_refreshes: int = 0
    failures: int = 0
    stale_served: int = 0
    refused: int = 0
    store_hits: int = 0
    store_errors: int = 0
    lease_waits: int = 0
    cached: int = 0
