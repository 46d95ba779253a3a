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

import contextlib
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.abc

from .._lazy import requires_extra
from .._redis_urls import RedisTarget, parse_redis_url
from ..errors import ConfigurationError
from .base import DEFAULT_LEASE_SECONDS, DEFAULT_TIMEOUT_SECONDS, SealedCodec

if TYPE_CHECKING:
    import coredis

__all__ = ["DEFAULT_MAX_CONNECTIONS", "RedisStore"]

_REBUILD_EVERY = 1.0  # seconds: a failing client is replaced at most this often
_STALLS_BEFORE_REBUILD = 3  # calls cancelled in a row (timeouts) before the client is replaced
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
        with requires_extra("redis", "a Redis token store"):
            import coredis  # noqa: F401 (fail at configuration time, not at first use)
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
        self._tg: anyio.abc.TaskGroup | None = None
        self._failed = anyio.Event()
        self._built_at = -_REBUILD_EVERY
        self._stalls = 0
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
        # The clients live in a task of the store's own, entered and left there: coredis
        # binds a client to the task (and event loop) that enters it, and the store
        # replaces its client after a failure (below).
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self._own_clients)
        except BaseException:
            tg.cancel_scope.cancel()
            with contextlib.suppress(BaseException):
                await tg.__aexit__(None, None, None)
            raise
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    async def _own_clients(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Hold a connected client; build a new one each time the current one failed.

        A client whose connections broke is not trusted to heal: coredis 6.9 loses a
        pool slot for each connection that dies while in use, so a bounded pool that
        lived through an outage could end with none. A fresh client costs one
        connect, once per failure (at most once a second).
        """
        first, pause = True, 0.0
        while True:
            await anyio.sleep(pause)
            self._built_at = anyio.current_time()
            try:
                async with AsyncExitStack() as stack:
                    client = await self._connect(stack)
                    self._release = client.register_script(_RELEASE)
                    self._renew = client.register_script(_RENEW)
                    self._time = client.register_script(_TIME)
                    self._failed = anyio.Event()
                    self._client_or_none = client
                    if first:
                        await self._probe()
                        first = False
                        task_status.started()
                    await self._failed.wait()
            except Exception as exc:
                if first:
                    self._refuse(exc)
                    if self.required:
                        raise self._unreachable(exc) from None
                    first = False
                    task_status.started()
            finally:
                self._client_or_none = None
            pause = max(0.0, self._built_at + _REBUILD_EVERY - anyio.current_time())

    def _suspect(self) -> None:
        """An operation failed: the client is replaced (see :meth:`_own_clients`)."""
        self._stalls = 0
        self._failed.set()

    async def _connect(self, stack: AsyncExitStack) -> Any:
        import coredis
        from coredis.connection import TCPLocation

        target = self.target
        options: dict[str, Any] = {
            "username": target.username,
            "password": target.password,
            "connect_timeout": self.timeout / 2,
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
                raise self._unreachable(exc) from None
            # Otherwise an outage of the usual kind: the fleet layer reports and retries.
            self._suspect()

    def _unreachable(self, exc: BaseException) -> ConfigurationError:
        return ConfigurationError(
            f"AUTHSEC_STORE_REQUIRED is on and the Redis token store at {self.url} "
            f"cannot be reached ({type(exc).__name__})"
        )

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

    @asynccontextmanager
    async def _watched(self) -> AsyncIterator[Any]:
        """The current client; one whose connection failed is replaced.

        An error the server sent (``ResponseError``) says the connection works. A
        call cancelled by the fleet's timeout may only mean a slow server, so the
        client is replaced after three in a row with no success between.
        """
        from coredis.exceptions import ResponseError

        client = self._client
        try:
            yield client
        except ResponseError:
            raise
        except Exception:
            if client is self._client_or_none:
                self._suspect()
            raise
        except BaseException:  # cancelled: a timeout, or the broker closing
            self._stalls += 1
            if self._stalls >= _STALLS_BEFORE_REBUILD and client is self._client_or_none:
                self._suspect()
            raise
        else:
            self._stalls = 0

    async def items(self) -> dict[str, bytes]:
        """Every name and value under the prefix (what an attacker reading Redis sees)."""
        out: dict[str, bytes] = {}
        async with self._watched() as client:
            async for name in client.scan_iter(match=f"{self.prefix}*"):
                value = await client.get(name)
                if value is not None:
                    out[name.decode()] = value
        return out

    async def get(self, names: Sequence[str]) -> list[bytes | None]:
        async with self._watched() as client:
            values = await client.mget([self.prefix + name for name in names])
        return list(values)

    async def put(self, name: str, value: bytes, ttl: float) -> None:
        async with self._watched() as client:
            await client.set(self.prefix + name, value, px=max(1, int(ttl * 1000)))

    async def delete(self, names: Sequence[str]) -> None:
        # One call: what is deleted together is one agent's, in one slot (hash tags).
        async with self._watched() as client:
            await client.delete([self.prefix + name for name in names])

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        import coredis

        async with self._watched() as client:
            taken = await client.set(
                self.prefix + name,
                owner,
                px=max(1, int(ttl * 1000)),
                condition=coredis.PureToken.NX,
            )
        return bool(taken)

    async def renew(self, name: str, owner: str, ttl: float) -> bool:
        async with self._watched():
            renewed = await self._renew(
                keys=[self.prefix + name], args=[owner, max(1, int(ttl * 1000))]
            )
        return bool(renewed)

    async def release(self, name: str, owner: str) -> None:
        async with self._watched():
            await self._release(keys=[self.prefix + name], args=[owner])

    async def now(self) -> float:
        async with self._watched():
            seconds, micros = await self._time(keys=[], args=[])
        return int(seconds) + int(micros) / 1e6

    async def publish(self, message: str) -> None:
        async with self._watched() as client:
            await client.publish(self.channel, message)

    async def listen(self, on_message: Callable[[str], None]) -> None:
        try:
            await self._listen(on_message)
        except BaseExceptionGroup as group:
            # coredis' pub/sub tasks may fail together with the cancellation that stops
            # the listener (its client was just replaced): the cancellation wins, or the
            # broker's shutdown would see an error of the old connection.
            cancelled = _cancellation_in(group)
            if cancelled is not None:
                raise cancelled from None
            raise

    async def _listen(self, on_message: Callable[[str], None]) -> None:
        async with (
            self._watched() as client,
            client.pubsub(
                channels=[self.channel],
                ignore_subscribe_messages=True,
                retry_policy=None,
                subscription_timeout=self.timeout,
                max_idle_seconds=max(1.0, self.lease_seconds),
            ) as pubsub,
        ):
            async for message in pubsub:
                data = message.get("data")
                if isinstance(data, bytes):
                    on_message(data.decode("ascii", "replace"))


def _cancellation_in(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    cancelled = anyio.get_cancelled_exc_class()
    for inner in group.exceptions:
        if isinstance(inner, cancelled):
            return inner
        if isinstance(inner, BaseExceptionGroup):
            found = _cancellation_in(inner)
            if found is not None:
                return found
    return None


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
