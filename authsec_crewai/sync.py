"""``SyncTokenBroker``: the async broker behind a blocking API.

The broker runs on its own event-loop thread (an anyio blocking portal), so
``token()`` works from any thread, including one that is itself running an
event loop (CrewAI runs sync tools in worker threads of an async app). A token
that can be served from cache is returned without a thread hop.
"""

from __future__ import annotations

from contextlib import ExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from anyio.from_thread import BlockingPortal, start_blocking_portal

from . import errors
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
        self._backend = backend
        self._stack = ExitStack()
        self._portal: BlockingPortal | None = None

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
        """Start the event-loop thread and enter the broker on it."""
        if self._portal is not None:
            return
        portal = self._stack.enter_context(start_blocking_portal(self._backend))
        try:
            self._stack.enter_context(portal.wrap_async_context_manager(self.broker))
        except BaseException:
            self._stack.close()
            raise
        self._portal = portal

    def close(self) -> None:
        """Stop the broker and its thread. Safe to call twice."""
        self._portal = None
        self._stack.close()

    def token(self, scopes: ScopesLike) -> DelegationToken:
        """Like ``await TokenBroker.token(scopes)``, blocking the calling thread."""
        cached = self.broker.cached_token(scopes)
        if cached is not None:
            return cached
        portal = self._portal
        if portal is None:
            raise errors.BrokerClosedError(
                "the SyncTokenBroker is not running; use `with SyncTokenBroker(...) as broker`"
            )
        return portal.call(self.broker.token, scopes)

    def invalidate(self, token: DelegationToken) -> bool:
        """Drop ``token`` if it is still the cached one (see ``TokenBroker.invalidate``)."""
        return self.broker.invalidate(token)

    @property
    def stats(self) -> BrokerStats:
        return self.broker.stats
