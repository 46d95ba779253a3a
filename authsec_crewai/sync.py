"""``SyncTokenBroker``: the async broker behind a blocking API.

The broker runs on its own event-loop thread (a daemon, so a program that
forgets to close it still exits), so ``token()`` works from any thread,
including one that is itself running an event loop (CrewAI runs sync tools in
worker threads of an async app). A token that can be served from cache is
returned without a thread hop.
"""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from ._brokerthread import BrokerThread
from .broker import BrokerStats, TokenBroker

if TYPE_CHECKING:
    from .token import DelegationToken, ScopesLike
    from .transports.base import Transport

__all__ = ["SyncTokenBroker"]


class SyncTokenBroker:
    """A :class:`TokenBroker` on a background event-loop thread.

    Takes the same keyword arguments as ``TokenBroker``. Use it as a context
    manager (or call :meth:`close`): leaving it stops the thread, cancels
    background refreshes and closes the transport.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        backend: Literal["asyncio", "trio"] = "asyncio",
        **broker_options: Any,
    ) -> None:
        self.broker = TokenBroker(transport, **broker_options)
        self._thread = BrokerThread(self.broker, owns_broker=True, backend=backend)

    def __repr__(self) -> str:
        return f"SyncTokenBroker({self.broker!r})"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start the event-loop thread and enter the broker on it (``token()`` does too)."""
        self._thread.start()

    def close(self) -> None:
        """Stop the broker and its thread. Safe to call twice."""
        self._thread.close()

    def token(self, scopes: ScopesLike) -> DelegationToken:
        """Like ``await TokenBroker.token(scopes)``, blocking the calling thread."""
        cached = self.broker.cached_token(scopes)
        if cached is not None:
            return cached
        return self._thread.call(lambda: self.broker.token(scopes))

    def invalidate(self, token: DelegationToken) -> bool:
        """Drop ``token`` if it is still the cached one (see ``TokenBroker.invalidate``)."""
        return self.broker.invalidate(token)

    @property
    def stats(self) -> BrokerStats:
        return self.broker.stats
