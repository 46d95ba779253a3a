"""The runtime every framework's secure fetch tool stands on: one broker per configuration,
per process, and the one call that turns a tool call into the text the model reads.

No framework is imported here: the CrewAI tools (:mod:`authsec_crewai.tools`)
and the adapters for LangChain, PydanticAI and the OpenAI Agents SDK
(:mod:`authsec_crewai.integrations`) each wrap a :class:`ToolBinding`, so a
tool made in one call, from the ``AUTHSEC_*`` settings, works alike in all of
them:

- **One broker per configuration, per process.** A crew builds many tools (one
  per agent, often more); each with its own broker would mean one token cache
  and one single flight per tool, and a request to AuthSec per tool. Tools
  configured alike share one :class:`BrokerThread`: a token broker, and the
  event loop (on a daemon thread) it runs on. The registry key is the part of
  the settings that decides how tokens are fetched (see :func:`_settings_key`);
  per-tool policy (allowlists, method, size cap, API origin) stays per tool.
- **Every agent its own identity, one runtime.** A binding acts for one agent
  (``client_id=``); the client id is not part of the registry key, so tools of
  any number of agents share one broker (which keeps each agent's tokens
  apart) and one thread: an identity costs its tokens, not a runtime.
- **Any caller.** :meth:`ToolBinding.call` (sync) hands the call to the
  runtime's loop and blocks until it is done, so it works from any thread,
  also one running an event loop, and under a framework's ``run_sync`` that
  runs a loop of its own. :meth:`ToolBinding.acall` stays on the caller's loop
  (asyncio or trio, any thread) with the shared broker (which serves any
  loop), so a cache hit needs no thread hop; a network API is reached through
  a pool of that loop, shared by every agent's tools.
- **Failures are answers.** Both return the JSON text a model reads; a refusal
  or failure is ``{"status": "error", ...}``, never raised.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import threading
import weakref
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, TypeAlias

import anyio.lowlevel
import httpx
from pydantic import SecretStr

from . import errors
from ._brokerthread import BrokerThread
from .broker import TokenBroker
from .fetch import ParamsLike, SecureFetcher
from .logging import get_logger
from .settings import AuthSecSettings, parse_agents
from .sync import SyncTokenBroker
from .toolspec import DEFAULT_TOOL_NAME, failure_text, fetch_text
from .wiring import build_broker, build_fetcher, client_id_for, refresh_policy

if TYPE_CHECKING:
    from .transports.base import Transport

__all__ = ["ToolBinding", "close_shared_brokers"]

_log = get_logger("authsec_crewai.tools")

_registry: dict[Hashable, BrokerThread] = {}
_registry_lock = threading.Lock()


def _settings_key(settings: AuthSecSettings) -> tuple[Hashable, ...]:
    """What decides how a broker gets tokens: tools equal in all of it share a broker.

    The mode and server, the API token (as a hash: the registry must not hold
    secrets in its keys), audience, verification, the refresh policy and the
    shared store (its URL and keys, hashed too). The agent (client id) is
    deliberately absent: one broker serves every agent,
    each with its own cache, so a process runs one broker however many
    identities its tools act for, except in OAuth mode, where the transport
    authenticates as one client (its secret or key): each client its own
    broker. Per-tool policy (allowlists, methods, size cap, API origin) is
    absent too: it does not change the tokens, only their use.
    """
    api_token = settings.api_token_value()
    return (  # the first three say where tokens come from: a given transport replaces them
        settings.resolved_mode,
        settings.base_url,
        _digest(
            settings.client_id if settings.from_oauth_server else None,
            settings.oauth_issuer,
            settings.resource,
            *settings.oauth_secrets(),
            settings.client_key_id,
            settings.oauth_auth_method,
        ),
        None if api_token is None else hashlib.sha256(api_token.encode()).hexdigest(),
        tuple(settings.audience),
        settings.verify,
        settings.verify_leeway,
        settings.timeout,
        settings.retry_budget,
        refresh_policy(settings),
        None if settings.cassette is None else str(settings.cassette.resolve()),
        _digest(
            settings.store,
            _secret(settings.store_key),
            _secret(settings.store_old_key),
            settings.store_encryption,
            settings.store_timeout,
            settings.store_lease,
            settings.store_required,
            settings.store_tls_ca,
            settings.store_tls_cert,
            settings.store_tls_key,
            settings.store_max_connections,
        ),
    )


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()


def _digest(*parts: object) -> str:
    """A SHA-256 of ``parts``: a registry key that holds no secret (a store URL may)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _shared_runtime(key: Hashable, factory: Callable[[], BrokerThread]) -> BrokerThread:
    with _registry_lock:
        runtime = _registry.get(key)
        if runtime is None or runtime.closed:
            runtime = _registry[key] = factory()
    runtime.start()
    return runtime


def close_shared_brokers() -> None:
    """Stop every shared broker and its loop thread; tools start fresh ones on next use.

    Runs at interpreter exit. Call it yourself after forking, between tests, or
    to drop every cached token of the process at once.
    """
    with _registry_lock:
        runtimes = list(_registry.values())
        _registry.clear()
    for runtime in runtimes:
        try:
            runtime.close()
        except Exception as exc:  # best effort: one stuck runtime must not keep others open
            _log.warning("tools.close_failed", error=type(exc).__name__)


atexit.register(close_shared_brokers)


def _loop_finished(loop: object) -> bool:
    """True once an asyncio loop is closed or a trio run is over."""
    is_closed = getattr(loop, "is_closed", None)
    if callable(is_closed):
        return bool(is_closed())
    try:
        loop.run_sync_soon(_nothing)  # type: ignore[attr-defined]
    except RuntimeError:  # trio.RunFinishedError
        return True
    return False


def _nothing() -> None:
    """Scheduled on a trio run only to learn whether it is still running."""


_loop_pools: weakref.WeakKeyDictionary[BrokerThread, dict[object, httpx.AsyncHTTPTransport]] = (
    weakref.WeakKeyDictionary()
)
_loop_pools_lock = threading.Lock()


def _pool_of_loop(runtime: BrokerThread, loop: object) -> httpx.AsyncHTTPTransport:
    """The API connection pool of ``loop`` for every tool on ``runtime``, whatever its agent.

    One pool per event loop and runtime, not per tool: a crew of many agents
    (a tool, or a copy of one, per agent) would otherwise open a pool, and its
    connections, per identity. Pools of loops that have finished are dropped
    whenever a new loop arrives (a weak mapping would not do: a pool's sockets
    keep their loop alive); a runtime's pools go with the runtime.
    """
    with _loop_pools_lock:
        pools = _loop_pools.setdefault(runtime, {})
        pool = pools.get(loop)
        if pool is None:
            for finished in [known for known in pools if _loop_finished(known)]:
                del pools[finished]
            pool = pools[loop] = httpx.AsyncHTTPTransport()
        return pool


Source: TypeAlias = "TokenBroker | SyncTokenBroker | SecureFetcher | Transport | None"
"""What a tool is built on: a broker or fetcher of the application's, a transport, or
nothing (the settings decide)."""


class ToolBinding:
    """What one tool is wired to: a shared runtime and the tool's own fetcher.

    Resolved on first use (constructing a tool starts no thread) and again
    after :func:`close_shared_brokers`. Copies of a tool share the binding.
    Build one with :meth:`create`, which checks the configuration at once.
    """

    @classmethod
    def create(
        cls,
        *,
        settings: AuthSecSettings | None = None,
        broker: TokenBroker | SyncTokenBroker | None = None,
        transport: Transport | None = None,
        fetcher: SecureFetcher | None = None,
        client_id: str | None = None,
    ) -> ToolBinding:
        """Wire a tool by hand, or not at all; a broken configuration fails here.

        - nothing: ``AuthSecSettings()`` from the environment (and ``.env``);
        - ``settings=``: that configuration;
        - ``broker=``: a running ``TokenBroker`` or ``SyncTokenBroker`` you
          own (the tool never closes it); ``settings`` then only sets policy;
        - ``transport=``: a transport of yours; a broker is built on it from
          ``settings``;
        - ``fetcher=``: a ``SecureFetcher`` of yours (its broker, policy and
          agent are used as they are);
        - ``client_id=``: the agent this tool acts for, when it is not the
          settings' (one tool per agent, each with its own identity).
        """
        given = [
            name
            for name, value in (("broker", broker), ("transport", transport), ("fetcher", fetcher))
            if value is not None
        ]
        if len(given) > 1:
            raise errors.ConfigurationError(
                f"pass one of broker=, transport= or fetcher=, not both (got {' and '.join(given)})"
            )
        if fetcher is not None and not isinstance(fetcher, SecureFetcher):
            raise errors.ConfigurationError(
                f"fetcher= takes a SecureFetcher (build_fetcher(broker, settings)), "
                f"not {type(fetcher).__name__}"
            )
        if fetcher is not None and client_id is not None:
            raise errors.ConfigurationError(
                "a fetcher acts for the agent it was built for: pass client_id= to "
                "build_fetcher(broker, settings, agent=...) instead"
            )
        resolved = settings if settings is not None else AuthSecSettings()
        if client_id is not None:  # validated like any setting (model_copy re-validates)
            resolved = resolved.model_copy(update={"client_id": _checked_client_id(client_id)})
        if not given:
            _check_cassette(resolved)
        source: Source = next((v for v in (broker, transport, fetcher) if v is not None), None)
        return cls(resolved, source, client_id)

    def __init__(
        self,
        settings: AuthSecSettings,
        source: Source,
        client_id: str | None = None,
    ) -> None:
        if client_id is not None and settings.client_id != client_id:
            settings = settings.model_copy(update={"client_id": client_id})  # validated again
        self.settings = settings
        self.source = source
        self.client_id = client_id
        """The agent this tool acts for when given explicitly; else the settings' (or broker's)."""
        self._lock = threading.Lock()
        self._runtime: BrokerThread | None = None
        self._fetcher: SecureFetcher | None = None
        self._agent: str | None = None
        self._on_loop: dict[object, SecureFetcher] = {}

    def __copy__(self) -> ToolBinding:
        return self

    def as_agent(self, client_id: str) -> ToolBinding:
        """The same wiring acting for another agent (a new binding; runtimes stay shared)."""
        return ToolBinding(self.settings, self.source, client_id)

    def __deepcopy__(self, memo: dict[int, object]) -> ToolBinding:
        return self

    def runtime(self) -> BrokerThread:
        """The shared runtime, (re)acquired when there is none or it was closed."""
        with self._lock:
            return self._runtime_locked()

    def get(self) -> tuple[BrokerThread, SecureFetcher]:
        """The runtime and this tool's fetcher; a tool without an identity fails here."""
        with self._lock:
            runtime = self._runtime_locked()
            if self._fetcher is None:
                if isinstance(self.source, SecureFetcher):
                    self._fetcher = self.source
                    self._agent = self.source.client_id
                else:
                    self._agent = self._agent_for(runtime.broker)
                    self._fetcher = build_fetcher(runtime.broker, self.settings, agent=self._agent)
            return runtime, self._fetcher

    def _runtime_locked(self) -> BrokerThread:
        if self._runtime is None or self._runtime.closed:
            self._runtime = self._acquire()
            self._fetcher = None
            self._on_loop.clear()
        return self._runtime

    def agent_id(self) -> str | None:
        """The client id this tool acts for (None: the default agent of a broker you own)."""
        self.get()
        return self._agent

    def identity(self) -> str | None:
        """The client id this binding's tokens are asked as, without building a fetcher
        (for clients other than the fetcher, such as MCP sessions, which need no API
        origin). None: the default agent of a broker you own."""
        return self._agent_for(self.runtime().broker)

    def _agent_for(self, broker: TokenBroker) -> str | None:
        """Who this tool is: never whoever happened to create the shared broker.

        A broker of the user's keeps its own default agent unless the tool
        names one; a shared broker serves every tool alike, so each tool names
        its agent: the explicit one, else its settings' (or its mode's default).
        """
        if self.client_id is not None:
            return self.client_id
        if isinstance(self.source, TokenBroker | SyncTokenBroker):
            return None
        return client_id_for(self.settings, broker.transport)

    def fetcher_on_this_loop(self) -> SecureFetcher:
        """A fetcher of the calling event loop, on the one shared broker.

        Async callers then reach the API without hopping to the broker's
        thread and back (two cross-thread wake-ups per call); tokens still
        come from the one shared broker, which serves callers on any loop.
        The path is the same in every mode; only the API transport differs,
        as the broker's transport declares: a network API
        (``info.network_api``) gets the connection pool of this loop (shared
        by the tools of every agent, see :func:`_pool_of_loop`), anything
        else is the mode's own ``api()`` (the mock app, a recorder, a replay),
        which serves any loop. Fetchers of loops that have finished are
        dropped whenever a new loop arrives (a weak mapping would not do: a
        pool's sockets keep their loop alive).
        """
        runtime, fixed = self.get()
        if isinstance(self.source, SecureFetcher):
            return fixed  # the application's own: it chose where its traffic goes
        loop = anyio.lowlevel.current_token().native_token
        with self._lock:
            fetcher = self._on_loop.get(loop)
            if fetcher is None:
                for finished in [known for known in self._on_loop if _loop_finished(known)]:
                    del self._on_loop[finished]
                transport = runtime.broker.transport
                fetcher = build_fetcher(
                    runtime.broker,
                    self.settings,
                    agent=self._agent,
                    api_transport=_pool_of_loop(runtime, loop)
                    if transport.info.network_api
                    else transport.api(),
                )
                self._on_loop[loop] = fetcher
        return fetcher

    def _acquire(self) -> BrokerThread:
        source, settings, pid = self.source, self.settings, os.getpid()
        if isinstance(source, SyncTokenBroker | SecureFetcher):
            source = source.broker
        if isinstance(source, TokenBroker):
            broker = source
            return _shared_runtime(
                ("broker", pid, id(broker)), lambda: BrokerThread(broker, owns_broker=False)
            )
        if source is not None:
            transport = source
            return _shared_runtime(  # the transport decides the mode and server
                ("transport", pid, id(transport), _settings_key(settings)[3:]),
                lambda: BrokerThread(build_broker(settings, transport), owns_broker=True),
            )
        return _shared_runtime(
            ("settings", pid, _settings_key(settings)),
            lambda: BrokerThread(build_broker(settings), owns_broker=True),
        )

    @property
    def policy(self) -> AuthSecSettings | SecureFetcher:
        """Where the tool's description reads its allowlists: the fetcher's, if fixed."""
        return self.source if isinstance(self.source, SecureFetcher) else self.settings

    def call(
        self,
        endpoint: str,
        scope: str,
        params: ParamsLike = None,
        *,
        tool: str = DEFAULT_TOOL_NAME,
    ) -> str:
        """Fetch synchronously on the shared runtime's loop; safe from any thread, also
        one running an event loop (or a framework's ``run_sync``). Failures are returned."""
        try:
            runtime, fetcher = self.get()
            return runtime.call(
                functools.partial(fetch_text, fetcher, endpoint, scope, params, tool=tool)
            )
        except Exception as exc:  # the runtime itself failed (closed, interrupted)
            return failure_text(exc, tool=tool)

    async def acall(
        self,
        endpoint: str,
        scope: str,
        params: ParamsLike = None,
        *,
        tool: str = DEFAULT_TOOL_NAME,
        on_runtime: bool = False,
    ) -> str:
        """Fetch asynchronously (asyncio or trio) with the shared broker; failures are
        returned.

        By default the call stays on the caller's loop (a cache hit needs no thread
        hop). ``on_runtime`` runs it on the shared runtime's loop while the caller's
        keeps running: for frameworks whose sync entry points (``run_sync``) run a
        short-lived loop of their own for each run, where a connection pool of that
        loop would not outlive the run. A fetcher of the application's own always
        runs where it is awaited.
        """
        try:
            if on_runtime and not isinstance(self.source, SecureFetcher):
                runtime, fetcher = self.get()
                return await runtime.acall(
                    functools.partial(fetch_text, fetcher, endpoint, scope, params, tool=tool)
                )
            fetcher = self.fetcher_on_this_loop()
        except Exception as exc:
            return failure_text(exc, tool=tool)
        return await fetch_text(fetcher, endpoint, scope, params, tool=tool)


def _check_cassette(settings: AuthSecSettings) -> None:
    """Replay needs its cassette: without it, every call of the crew would fail."""
    cassette = settings.cassette
    if settings.resolved_mode == "replay" and cassette is not None and not cassette.is_file():
        raise errors.ConfigurationError(
            f"AUTHSEC_CASSETTE={cassette} does not exist, so AUTHSEC_MODE=replay has nothing "
            f"to replay; record it first: authsec-crewai record -o {cassette} -- python "
            "your_crew.py"
        )


def _checked_client_id(client_id: object) -> str:
    try:
        (checked,) = parse_agents({"agent": client_id}).values()
    except ValueError:
        raise errors.ConfigurationError(
            f"client_id {str(client_id)[:60]!r} must be the agent's UUID; AuthSec answers 400 "
            "to anything else"
        ) from None
    return str(checked)
