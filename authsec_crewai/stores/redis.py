"""``RedisStore``: processes on many hosts share tokens through Redis (coredis, anyio).

coredis 6 runs on anyio, so one store works under asyncio and trio alike. One
store speaks to one node, a Redis Cluster, or the master a Sentinel names
(:mod:`authsec_crewai._redis_urls` reads the URL).

- A lease is ``SET name owner NX PX ttl``, renewed and given back only by
  compare-and-set scripts, never a bare ``DEL``: a holder that outlived its
  lease cannot touch the lease its successor took. One node's lease is enough
  (no Redlock): losing a lease costs one extra fetch, never a wrong token.
- Every name of one agent carries the same hash tag, so what is read together
  (``MGET``) or scripted lives in one Cluster slot.
- Events travel on one channel with plain ``PUBLISH``: in a Cluster the
  message is broadcast over the cluster bus, so a listener subscribed on any
  node receives it, and a listener whose node fails over resubscribes
  anywhere. The fleet's events are rare (a token written, an agent revoked),
  so the broadcast costs nothing measurable; sharded pub/sub would tie every
  listener to the one shard owning the channel's slot and to Redis 7.
- The command pool is bounded (``max_connections``; coredis multiplexes
  commands on a connection), plus one pub/sub connection: a process opens
  the same few connections whether it serves one agent or a thousand.
- A refused password or TLS handshake is a configuration error when the
  store is entered, not an outage: it will not heal by waiting.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio

from .._redis_urls import RedisTarget, parse_redis_url
from ..errors import ConfigurationError
from .base import DEFAULT_LEASE_SECONDS, DEFAULT_TIMEOUT_SECONDS, SealedCodec

if TYPE_CHECKING:
    import coredis

__all__ = ["DEFAULT_MAX_CONNECTIONS", "RedisStore"]

DEFAULT_MAX_CONNECTIONS = 2
"""Command connections per store (per node in a Cluster); pub/sub adds one."""

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""
_TIME = "return redis.call('TIME')"  # coredis' time() loses the microseconds
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class RedisStore:
    """A token store in Redis, for processes on many hosts.

    ``url`` is ``redis://[user:password@]host:port/db``,
    ``redis+cluster://host:port[,host:port...]`` or
    ``redis+sentinel://host:port[,...]/service/db``, each with a ``rediss``
    form for TLS; ``tls_ca`` is a CA bundle for servers whose certificate the
    system store does not know, ``tls_cert`` and ``tls_key`` a client
    certificate. Names are prefixed with ``prefix`` so one Redis can serve
    several deployments. Keys are required (encryption at rest) unless
    ``encryption=False`` says otherwise on purpose. ``required=True`` makes a
    store that cannot be reached at start a configuration error instead of
    an outage.
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
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        required: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        try:
            import coredis  # noqa: F401 (fail at configuration time, not at first use)
        except ImportError:
            raise ConfigurationError(
                "a Redis token store needs coredis: pip install 'authsec-crewai[redis]'"
            ) from None
        if encryption and not keys:
            raise ConfigurationError(
                "a Redis token store keeps bearer tokens where others can read them: set "
                "AUTHSEC_STORE_KEY (urlsafe base64 of 32 random bytes), or "
                "AUTHSEC_STORE_ENCRYPTION=off to store them unencrypted on purpose"
            )
        try:
            self.target: RedisTarget = parse_redis_url(url)
        except ValueError as exc:
            raise ConfigurationError(f"AUTHSEC_STORE: {exc}") from None
        if (tls_ca or tls_cert) and not self.target.tls:
            raise ConfigurationError(
                "AUTHSEC_STORE_TLS_CA and AUTHSEC_STORE_TLS_CERT need a rediss:// store URL"
            )
        if max_connections < 1:
            raise ConfigurationError("a Redis store needs at least one connection")
        self.codec = SealedCodec(keys if encryption else ())
        self.timeout = timeout
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.prefix = prefix
        self.channel = f"{prefix}events"
        self.required = required
        self.max_connections = max_connections
        self._tls = (tls_ca, tls_cert, tls_key)
        self._client_or_none: Any = None
        self._stack: AsyncExitStack | None = None
        self._release: Any = None
        self._renew: Any = None
        self._time: Any = None

    @property
    def url(self) -> str:
        """The store's URL with the password masked."""
        return self.target.masked()

    @property
    def _client(self) -> coredis.Redis[bytes]:
        if self._client_or_none is None:
            raise RuntimeError("the Redis store is not connected")
        client: coredis.Redis[bytes] = self._client_or_none
        return client

    def __repr__(self) -> str:
        return f"RedisStore({self.url!r}, prefix={self.prefix!r}, encrypted={self.codec.encrypts})"

    # --- life cycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        # A client per entry: coredis binds its pool to the event loop that enters it.
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            client = await self._connect(stack)
            self._client_or_none, self._stack = client, stack
            self._release = client.register_script(_RELEASE)
            self._renew = client.register_script(_RENEW)
            self._time = client.register_script(_TIME)
            await self._probe()
        except BaseException:
            self._client_or_none, self._stack = None, None
            await stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack, self._client_or_none = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def _connect(self, stack: AsyncExitStack) -> Any:
        import coredis
        from coredis.connection import TCPLocation

        target = self.target
        options: dict[str, Any] = {
            "username": target.username,
            "password": target.password,
            "connect_timeout": self.timeout,
            "max_connections": self.max_connections,
            "retry_policy": coredis.retry.NoRetryPolicy(),  # the fleet layer decides
        }
        if target.tls:
            options["ssl_context"] = self._ssl_context()
        if target.topology == "node":
            ((host, port),) = target.hosts
            return await stack.enter_async_context(
                coredis.Redis(host, port, db=target.db, **options)
            )
        if target.topology == "cluster":
            try:
                return await stack.enter_async_context(
                    coredis.RedisCluster(
                        startup_nodes=[TCPLocation(h, p) for h, p in target.hosts],
                        max_connections_per_node=True,
                        non_atomic_cross_slot=False,
                        **options,
                    )
                )
            except Exception as exc:
                self._refuse(exc)
                raise
        sentinel_options: dict[str, Any] = {"connect_timeout": self.timeout}
        if target.tls:
            sentinel_options["ssl_context"] = options["ssl_context"]
        sentinel = await stack.enter_async_context(
            coredis.Sentinel(
                [TCPLocation(h, p) for h, p in target.hosts],
                sentinel_kwargs=sentinel_options,
                retry_policy=coredis.retry.NoRetryPolicy(),
            )
        )
        assert target.service is not None
        del options["retry_policy"]  # the Sentinel's own applies to its primary
        return await stack.enter_async_context(
            sentinel.primary_for(target.service, db=target.db, **options)
        )

    def _ssl_context(self) -> ssl.SSLContext:
        ca, cert, key = self._tls
        try:
            context = ssl.create_default_context(cafile=None if ca is None else str(ca))
            if cert is not None:
                context.load_cert_chain(str(cert), None if key is None else str(key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                "AUTHSEC_STORE_TLS_CA / AUTHSEC_STORE_TLS_CERT / AUTHSEC_STORE_TLS_KEY: "
                f"cannot be loaded ({type(exc).__name__}: {exc.strerror or exc})"
            ) from None
        return context

    async def _probe(self) -> None:
        """One PING at start: refused credentials or TLS are configuration errors."""
        try:
            with anyio.fail_after(self.timeout):
                await self._client.ping()
        except Exception as exc:
            self._refuse(exc)
            if self.required:
                raise ConfigurationError(
                    f"AUTHSEC_STORE_REQUIRED is on and the Redis token store at {self.url} "
                    f"cannot be reached ({type(exc).__name__})"
                ) from None
            # Otherwise an outage of the usual kind: the fleet layer reports and retries.

    def _refuse(self, exc: BaseException) -> None:
        """Raise a ConfigurationError if ``exc`` is refused credentials or TLS."""
        from coredis.exceptions import AuthenticationError, AuthorizationError

        for cause in _causes(exc):
            if isinstance(cause, (AuthenticationError, AuthorizationError)):
                raise ConfigurationError(
                    f"the Redis token store at {self.url} refused the credentials "
                    f"({type(cause).__name__}): check the user and password in AUTHSEC_STORE"
                ) from None
            if isinstance(cause, ssl.SSLError):
                raise ConfigurationError(
                    f"the TLS handshake with the Redis token store at {self.url} failed "
                    f"({getattr(cause, 'reason', None) or type(cause).__name__}): give the "
                    "server's CA in AUTHSEC_STORE_TLS_CA (and a client certificate in "
                    "AUTHSEC_STORE_TLS_CERT if the server asks for one)"
                ) from None

    # --- the protocol -----------------------------------------------------------------

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
        # One call: what is deleted together is one agent's, in one slot (hash tags).
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

    async def renew(self, name: str, owner: str, ttl: float) -> bool:
        renewed = await self._renew(
            keys=[self.prefix + name], args=[owner, max(1, int(ttl * 1000))]
        )
        return bool(renewed)

    async def release(self, name: str, owner: str) -> None:
        await self._release(keys=[self.prefix + name], args=[owner])

    async def now(self) -> float:
        seconds, micros = await self._time(keys=[], args=[])
        return int(seconds) + int(micros) / 1e6

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
                    on_message(data.decode("ascii", "replace"))


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``, what it wraps (exception groups included) and what caused it."""
    seen: list[BaseException] = []
    pending = [exc]
    while pending and len(seen) < 50:
        current = pending.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return seen
