"""``RedisStore``: processes on many hosts share tokens through Redis (coredis, anyio).

coredis 6 runs on anyio, so one store works under asyncio and trio alike.
A lease is ``SET name owner NX PX ttl`` and is given back only by a
compare-and-delete script, never a bare ``DEL``: a holder that outlived its
lease cannot delete the lease its successor took. One node's lease is enough
(no Redlock): losing a lease costs one extra fetch, never a wrong token.
Events travel on one pub/sub channel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from .._lazy import requires_extra
from ..errors import ConfigurationError
from .base import DEFAULT_LEASE_SECONDS, DEFAULT_TIMEOUT_SECONDS, SealedCodec

if TYPE_CHECKING:
    import coredis

__all__ = ["RedisStore"]

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class RedisStore:
    """A token store in Redis, for processes on many hosts.

    ``url`` is ``redis://[:password@]host:port/db`` or ``rediss://`` for TLS.
    Names are prefixed with ``prefix`` so one Redis can serve several
    deployments. Keys are required (encryption at rest) unless
    ``encryption=False`` says otherwise on purpose.
    """

    def __init__(
        self,
        url: str,
        *,
        keys: Sequence[bytes] = (),
        encryption: bool = True,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_interval: float = 0.5,
        prefix: str = "authsec:",
    ) -> None:
        with requires_extra("redis", "a Redis token store"):
            import coredis  # noqa: F401 (fail at configuration time, not at first use)
        if encryption and not keys:
            raise ConfigurationError(
                "a Redis token store keeps bearer tokens where others can read them: set "
                "AUTHSEC_STORE_KEY (urlsafe base64 of 32 random bytes), or "
                "AUTHSEC_STORE_ENCRYPTION=off to store them unencrypted on purpose"
            )
        self.codec = SealedCodec(keys if encryption else ())
        self.timeout = timeout
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.prefix = prefix
        self.channel = f"{prefix}events"
        self._url = url
        self._client_or_none: coredis.Redis[bytes] | None = None
        self._release: Any = None

    @property
    def _client(self) -> coredis.Redis[bytes]:
        if self._client_or_none is None:
            raise RuntimeError("enter the store first (the broker does)")
        return self._client_or_none

    def __repr__(self) -> str:
        return f"RedisStore(prefix={self.prefix!r}, encrypted={self.codec.encrypts})"

    async def __aenter__(self) -> Self:
        # A client per entry: coredis binds its pool to the event loop that enters it.
        import coredis

        client: coredis.Redis[bytes] = coredis.Redis.from_url(
            self._url,
            connect_timeout=self.timeout,
            retry_policy=coredis.retry.NoRetryPolicy(),  # the fleet layer decides
        )
        await client.__aenter__()
        self._client_or_none, self._release = client, client.register_script(_RELEASE)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        client, self._client_or_none = self._client_or_none, None
        if client is not None:
            await client.__aexit__(exc_type, exc, tb)

    async def items(self) -> dict[str, bytes]:
        """Every name and value under the prefix (what an attacker reading Redis sees)."""
        out: dict[str, bytes] = {}
        async for name in self._client.scan_iter(match=f"{self.prefix}*"):
            value = await self._client.get(name)
            if value is not None:
                out[name.decode()] = value
        return out

    async def get(self, names: Sequence[str]) -> list[bytes | None]:
        values = await self._client.mget([self.prefix + name for name in names])
        return list(values)

    async def put(self, name: str, value: bytes, ttl: float) -> None:
        await self._client.set(self.prefix + name, value, px=max(1, int(ttl * 1000)))

    async def delete(self, names: Sequence[str]) -> None:
        await self._client.delete([self.prefix + name for name in names])

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        import coredis

        taken = await self._client.set(
            self.prefix + name,
            owner,
            px=max(1, int(ttl * 1000)),
            condition=coredis.PureToken.NX,
        )
        return bool(taken)

    async def release(self, name: str, owner: str) -> None:
        await self._release(keys=[self.prefix + name], args=[owner])

    async def publish(self, message: str) -> None:
        await self._client.publish(self.channel, message)

    async def listen(self, on_message: Callable[[str], None]) -> None:
        async with self._client.pubsub(
            channels=[self.channel],
            ignore_subscribe_messages=True,
            retry_policy=None,
            subscription_timeout=self.timeout,
            max_idle_seconds=max(1.0, self.lease_seconds),
        ) as pubsub:
            async for message in pubsub:
                data = message.get("data")
                if isinstance(data, bytes):
                    on_message(data.decode("utf-8", "replace"))
