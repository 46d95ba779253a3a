"""What a broker tells the world, through one small interface it owns: ``BrokerEvents``.

The broker reports log events, the outcome of each request it waited for, the
fetches it makes and its own start and close here, and nowhere else. Logging
(:mod:`authsec_crewai.logging`) and OpenTelemetry
(:mod:`authsec_crewai.telemetry`) sit behind this interface and never import
the broker, so the import graph runs one way.

Nothing here is on the cache-hit fast path: hits are counted by the broker
itself and read when a metric reader collects.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .. import telemetry
from ..logging import get_logger
from ..token import DelegationToken, TokenRequest

__all__ = ["BrokerEvents"]

T = TypeVar("T")

_log = get_logger("authsec_crewai.broker")
_fallback_log = logging.getLogger("authsec_crewai.broker")


class BrokerEvents:
    """The broker's events, for one broker (``mode`` names its transport in each)."""

    __slots__ = ("_log_failed", "mode")

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._log_failed = False

    def log(self, level: str, event: str, fields: dict[str, object]) -> None:
        """Log an event; a logging failure never reaches a caller or the task group.

        An application's structlog processor may raise (a bug, but it happens);
        that must not change what any caller receives. The first such failure
        is reported on the standard library logger, once per broker.
        """
        try:
            getattr(_log, level)(event, **fields, mode=self.mode)
        except Exception as exc:
            if not self._log_failed:
                self._log_failed = True
                with contextlib.suppress(Exception):  # else nowhere is left to say it
                    _fallback_log.error(
                        "logging the broker event %r failed (%s); further failures are "
                        "not reported",
                        event,
                        type(exc).__name__,
                    )

    def trace_parent(self) -> object:
        """The asking task's trace context, for work that runs in the broker's task."""
        return telemetry.current_context()

    async def within(self, parent: object, work: Callable[[T], Awaitable[None]], arg: T) -> None:
        """``await work(arg)`` under ``parent``'s trace context (a flight, in the broker's task)."""
        await telemetry.run_within(parent, work, arg)  # type: ignore[arg-type]

    def fetching(
        self, fetching: Awaitable[DelegationToken], request: TokenRequest
    ) -> Awaitable[DelegationToken]:
        """One transport call, spanned and timed."""
        return telemetry.traced_fetch(
            fetching, request.scopes, self.mode, client_id=request.client_id
        )

    def flight_source(self) -> str:
        """``fetch`` if the current flight called the transport, else ``store``."""
        return telemetry.flight_source()

    def served(self, source: str, ok: bool) -> None:
        """A request that waited for a flight was answered (or failed)."""
        telemetry.count_request(self.mode, source, "ok" if ok else "error")

    def opened(self, owner: telemetry.CountsHits) -> None:
        """The broker started: its cache hits count from now on."""
        telemetry.track(owner, self.mode)

    def closed(self, owner: telemetry.CountsHits) -> None:
        telemetry.untrack(owner)
