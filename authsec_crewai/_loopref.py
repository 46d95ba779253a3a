"""A thread-safe handle on a running event loop (asyncio or trio).

The broker's single flight is shared by callers on any thread and any event
loop. Waking a waiter, or starting work on the broker's own loop, from another
thread needs the loop's thread-safe entry point: asyncio's
``call_soon_threadsafe`` or trio's ``TrioToken.run_sync_soon``. Neither blocks
the caller, so one loop can never deadlock waiting for another.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio.lowlevel

__all__ = ["LoopRef"]


@dataclass(frozen=True, slots=True)
class LoopRef:
    """The loop that was running when :meth:`current` was called."""

    thread_id: int
    _schedule: Callable[..., Any]

    @classmethod
    def current(cls) -> LoopRef:
        native: Any = anyio.lowlevel.current_token().native_token
        if hasattr(native, "call_soon_threadsafe"):
            # asyncio runs a callback in the *caller's* context unless told
            # otherwise; a caller on a trio thread would make anyio on this
            # loop believe it runs under trio. Pin this loop's own context.
            context = contextvars.copy_context()
            return cls(
                threading.get_ident(),
                partial(_asyncio_call_soon, native.call_soon_threadsafe, context),
            )
        return cls(threading.get_ident(), native.run_sync_soon)

    def is_current_thread(self) -> bool:
        return threading.get_ident() == self.thread_id

    def call_soon(self, func: Callable[..., object], *args: object) -> bool:
        """Run ``func(*args)`` on the loop soon; False if the loop has gone away."""
        try:
            self._schedule(func, *args)
        except RuntimeError:  # asyncio: loop closed; trio: run finished
            return False
        return True


def _asyncio_call_soon(
    call_soon_threadsafe: Callable[..., Any],
    context: contextvars.Context,
    func: Callable[..., object],
    *args: object,
) -> None:
    call_soon_threadsafe(func, *args, context=context)
