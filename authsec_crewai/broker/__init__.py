"""The token broker: a TTL cache with single flight, refresh-ahead and a failure policy.

One job per module:

- :mod:`.core`: :class:`TokenBroker`, the facade, with its inlined fast path
  and the one critical section that serves, refuses or waits;
- :mod:`.cache`: entries and their zones, the covering search, the hot map
  that keeps every hit on the fast path, and its bounds;
- :mod:`.flights`: single flight (flights, waiters, the home loop, wake-ups
  across threads and loops);
- :mod:`.agents`: the agent registry, grants, refusals, per-agent counters
  and epochs;
- :mod:`.failures`: failure memory; :mod:`.outcomes`: what a flight's result
  does (cache, back off, fail closed, fence);
- :mod:`.shared`: the seam to a shared token store;
- :mod:`.events`: the interface through which logging and telemetry hear of
  the broker; :mod:`.stats`: :class:`BrokerStats`; :mod:`.view`:
  :class:`BrokerAgent`.

:class:`~authsec_crewai.policy.RefreshPolicy` and
:class:`~authsec_crewai.policy.Zone` live in :mod:`authsec_crewai.policy` (the
settings check policies with the same rules) and are re-exported here.
"""

from __future__ import annotations

from ..identity import check_client_id
from ..policy import RefreshPolicy, Zone
from .cache import CACHE_LIMIT, MEMO_LIMIT
from .core import TokenBroker
from .failures import FAILURE_LIMIT
from .stats import BrokerStats
from .view import BrokerAgent

__all__ = [
    "CACHE_LIMIT",
    "FAILURE_LIMIT",
    "MEMO_LIMIT",
    "BrokerAgent",
    "BrokerStats",
    "RefreshPolicy",
    "TokenBroker",
    "Zone",
    "check_client_id",
]
