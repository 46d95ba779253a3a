"""When a cached token is refreshed, and how failed refreshes back off: ``RefreshPolicy``.

How a cached token is served depends on where "now" falls in its life::

    issued ─── FRESH ─── advisory_at ─── ADVISORY ─── mandatory_at ─── MANDATORY ─── exp ─ EXPIRED
               serve                      serve + one                  callers wait on       never
                                          background refresh           the one refresh       served

The windows scale with the token's lifetime and the ADVISORY start carries
per-token jitter, so a fleet of brokers does not refresh in step (botocore's
refreshable credentials).

A plain value module with no imports of the broker: the settings check a policy
with these same rules (:func:`policy_problem`), naming their own variables, so
a configuration the broker would refuse is refused where it is read.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

__all__ = ["RefreshPolicy", "Zone", "policy_problem"]


class Zone(enum.Enum):
    """Where a cached token is in its life, and so how it may be served."""

    FRESH = "fresh"
    ADVISORY = "advisory"
    MANDATORY = "mandatory"
    EXPIRED = "expired"


def policy_problem(values: Mapping[str, float], name: Callable[[str], str] = str) -> str | None:
    """The first rule ``values`` (a :class:`RefreshPolicy`'s fields) break, else None.

    ``name`` renders a field's name in the message: the policy's own field names
    for :class:`RefreshPolicy`, the environment variables for the settings. The
    one place these rules are written.
    """
    for field in ("advisory_fraction", "mandatory_fraction"):
        if not 0.0 < values[field] < 1.0:
            return f"{name(field)} must be between 0 and 1 (exclusive)"
    if values["mandatory_fraction"] >= values["advisory_fraction"]:
        return (
            f"{name('mandatory_fraction')} ({values['mandatory_fraction']:g}) must be smaller "
            f"than {name('advisory_fraction')} ({values['advisory_fraction']:g}): the mandatory "
            "window sits inside the advisory one"
        )
    if not 0.0 <= values["jitter_fraction"] <= 1.0:
        return f"{name('jitter_fraction')} must be between 0 and 1"
    for field in ("advisory_max", "mandatory_max", "backoff_initial", "backoff_max"):
        if values[field] <= 0:
            return f"{name(field)} must be positive"
    if values["advisory_max"] <= values["mandatory_max"]:
        return (
            f"{name('advisory_max')} ({values['advisory_max']:g}s) must be greater than "
            f"{name('mandatory_max')} ({values['mandatory_max']:g}s): otherwise a long-lived "
            "token has no advisory window, is never refreshed in the background, and every "
            "caller waits for its mandatory refresh"
        )
    if values["failure_memory"] < 0:
        return f"{name('failure_memory')} must not be negative"
    if values["backoff_initial"] > values["backoff_max"]:
        return (
            f"{name('backoff_initial')} ({values['backoff_initial']:g}) must not exceed "
            f"{name('backoff_max')} ({values['backoff_max']:g})"
        )
    return None


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When to refresh ahead of expiry and how to behave when refreshing fails.

    Windows are fractions of the token's lifetime, capped in seconds, so a
    5-minute token gets a 60 s advisory window, not a 15-minute one. A policy
    that would leave some token without an advisory window (and so without a
    background refresh) is refused here, where it is built.
    """

    advisory_fraction: float = 0.2
    advisory_max: float = 900.0
    mandatory_fraction: float = 0.05
    mandatory_max: float = 300.0
    jitter_fraction: float = 0.25
    failure_memory: float = 1.0
    backoff_initial: float = 1.0
    backoff_max: float = 60.0

    def __post_init__(self) -> None:
        problem = policy_problem({f.name: getattr(self, f.name) for f in fields(self)})
        if problem is not None:
            raise ValueError(problem)

    def windows(self, lifetime: float) -> tuple[float, float]:
        """(advisory, mandatory) window lengths in seconds before expiry.

        The advisory window is always the longer one: both its fraction and
        its cap are larger (checked when the policy is built).
        """
        mandatory = min(lifetime * self.mandatory_fraction, self.mandatory_max)
        advisory = min(lifetime * self.advisory_fraction, self.advisory_max)
        return advisory, mandatory

    def backoff(self, failures: int, rng: random.Random) -> float:
        """Seconds before the next advisory attempt: exponential, half jittered."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2.0 ** max(0, failures - 1))
        return ceiling * (0.5 + rng.random() / 2)
