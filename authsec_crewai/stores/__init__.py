"""Token stores: where brokers share tokens beyond one process.

``TokenBroker(transport, client_id=..., store=...)`` takes one; ``build_store``
makes it from ``AUTHSEC_STORE`` and friends (``build_broker`` calls it). The
default, ``memory:``, is no shared store: each broker keeps its tokens to
itself, as it always did. Redis support needs the ``redis`` extra (coredis);
it is imported only when a Redis store is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import SealedCodec, TokenStore, decode_key
from .memory import MemoryStore
from .sqlite import SQLiteStore

if TYPE_CHECKING:
    from ..settings import AuthSecSettings
    from .redis import RedisStore

__all__ = [
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "SealedCodec",
    "TokenStore",
    "build_store",
    "store_keys",
]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":  # coredis is imported only by those who use it
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def store_keys(settings: AuthSecSettings) -> list[bytes]:
    """The store keys, sealing key first: ``AUTHSEC_STORE_KEY`` ('new,old' allowed),
    then ``AUTHSEC_STORE_OLD_KEY``."""
    texts: list[tuple[str, str]] = []
    if settings.store_key is not None:
        for part in settings.store_key.get_secret_value().split(","):
            if part.strip():
                texts.append((part, "AUTHSEC_STORE_KEY"))
    if settings.store_old_key is not None:
        texts.append((settings.store_old_key.get_secret_value(), "AUTHSEC_STORE_OLD_KEY"))
    return [decode_key(text, variable=variable) for text, variable in texts]


def build_store(settings: AuthSecSettings) -> TokenStore | None:
    """The shared store ``settings`` ask for, or None for ``memory:`` (no sharing).

    A shared store without a key is a configuration error unless
    ``AUTHSEC_STORE_ENCRYPTION=off`` says so: tokens at rest are bearer
    credentials.
    """
    from ..errors import ConfigurationError

    url = settings.store
    if url == "memory:":
        return None
    keys = store_keys(settings)
    if settings.store_encryption and not keys:
        raise ConfigurationError(
            f"AUTHSEC_STORE={url.partition(':')[0]}:... keeps bearer tokens where other "
            "processes can read them: set AUTHSEC_STORE_KEY (urlsafe base64 of 32 random bytes), "
            "or AUTHSEC_STORE_ENCRYPTION=off to store them unencrypted on purpose"
        )
    if not settings.store_encryption:
        keys = []
    options: dict[str, Any] = {
        "keys": keys,
        "timeout": settings.store_timeout,
        "lease_seconds": settings.store_lease,
    }
    if url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///"), **options)
    from .redis import RedisStore

    return RedisStore(url, encryption=settings.store_encryption, **options)
