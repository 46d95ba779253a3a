"""Token stores: where brokers share tokens beyond one process.

``TokenBroker(transport, client_id=..., store=...)`` takes one. Stores take
plain arguments and know nothing of settings: ``wiring.build_store`` makes one
from ``AUTHSEC_STORE`` and friends (``build_broker`` calls it). The default,
``memory:``, is no shared store: each broker keeps its tokens to itself, as it
always did. Redis support needs the ``redis`` extra (coredis); it is imported
only when a Redis store is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import SealedCodec, TokenStore, decode_key
from .memory import MemoryStore
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = [
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "SealedCodec",
    "TokenStore",
    "decode_key",
]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":  # coredis is imported only by those who use it
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
