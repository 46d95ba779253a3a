"""The CrewAI tools: ``AuthSecSecureFetchTool`` (sync) and ``AsyncAuthSecSecureFetchTool``.

This is the only module of the library that imports crewai (which takes
seconds to import); ``import authsec_crewai`` never loads it.

Both tools wrap a :class:`~authsec_crewai.fetch.SecureFetcher`. What they add:

- **One broker per configuration, per process.** A crew builds many tools (one
  per agent, often more); each with its own broker would mean one token cache
  and one single flight per tool, and a request to AuthSec per tool. Tools
  configured alike share one :class:`BrokerThread`: a token broker, and the
  event loop (on a daemon thread) it runs on. The registry key is the part of
  the settings that decides how tokens are fetched (see :func:`_settings_key`);
  per-tool policy (allowlists, method, size cap, API origin) stays per tool.
- **Every agent its own identity, one runtime.** A tool acts for one agent
  (``client_id=``, :meth:`~_SecureFetchTool.for_agent`,
  :func:`assign_identities`); the client id is not part of the registry key,
  so tools of any number of agents share one broker (which keeps each agent's
  tokens apart) and one thread: an identity costs its tokens, not a runtime.
- **Any caller.** CrewAI calls the sync ``_run`` in worker threads, under both
  ``kickoff()`` and ``akickoff()``; async applications await ``_arun`` on
  asyncio or trio, on any thread. ``_run`` hands the call to the runtime's
  loop and blocks until it is done, so that pool only ever sees one loop.
  ``_arun`` stays on the caller's loop in every mode, with the shared broker
  (which serves any loop), so a cache hit needs no thread hop; a network API
  is reached through a pool of that loop, shared by every agent's tools.
- **Failures are answers.** A refusal or failure is *returned* as JSON telling
  the model what went wrong and whether retrying can help, instead of raised:
  CrewAI would otherwise feed the exception text back and let the model repeat
  a refused call. A live failure is an error, never mock data (fail closed).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import os
import threading
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Self, TypeVar

import anyio.lowlevel
import httpx
from pydantic import BaseModel, Field, PrivateAttr, SecretStr

from . import errors
from ._brokerthread import BrokerThread
from ._lazy import requires_extra
from .broker import TokenBroker
from .fetch import OK_PREFIX, ParamsLike, SecureFetcher
from .logging import get_logger
from .settings import AuthSecSettings, client_id_for_role, env_var, parse_agents
from .sync import SyncTokenBroker
from .toolspec import (
    DEFAULT_TOOL_NAME,
    QueryParam,
    SecureFetchArgs,
    describe_tool,
    failure_text,
    fetch_text,
)
from .wiring import build_broker, build_fetcher, client_id_for, refresh_policy

with requires_extra("crewai", "the CrewAI tools"):
    from crewai.tools import BaseTool, EnvVar

if TYPE_CHECKING:
    from .transports.base import Transport

__all__ = [
    "DEFAULT_TOOL_NAME",
    "AsyncAuthSecSecureFetchTool",
    "AuthSecSecureFetchTool",
    "QueryParam",
    "SecureFetchArgs",
    "assign_identities",
    "close_shared_brokers",
    "describe_tool",
]

T = TypeVar("T")

_log = get_logger("authsec_crewai.tools")


def _env_vars() -> list[EnvVar]:
    def var(field: str, description: str, default: str | None = None) -> EnvVar:
        return EnvVar(name=env_var(field), description=description, required=False, default=default)

    return [
        var(
            "mode",
            "auto | live | mock | record | replay (auto: live when the server and client "
            "id are set, else mock with a warning).",
            "auto",
        ),
        var("base_url", "The AuthSec server, e.g. https://authsec.example.com."),
        var("client_id", "The agent's client id (a UUID); AUTHSEC_AGENT_CLIENT_ID is read too."),
        EnvVar(
            name="AUTHSEC_AGENT_CLIENT_ID",
            description="The client id under the name the existing AuthSec SDKs use.",
            required=False,
        ),
        var(
            "agents",
            "Each agent's own client id by CrewAI role (role=uuid,role=uuid or JSON), used by "
            "assign_identities(crew) and tool.for_agent(role).",
        ),
        var("api_token", "API token for the AuthSec server (newest server generation)."),
        var(
            "api_base_url",
            "The protected API's origin; the token is only sent there. Defaults to "
            "AUTHSEC_BASE_URL.",
        ),
        var("allowed_scopes", "If set, the only scopes the tool may request."),
        var("allowed_endpoints", "If set, the only path prefixes the tool may call."),
    ]


def cache_successes(_args: Any = None, result: Any = None) -> bool:
    """CrewAI's tool cache keeps only successful answers.

    A cached failure would answer a later, legitimate retry of a transient
    error (a timeout, a 503) with the stale error.
    """
    return isinstance(result, str) and result.startswith(OK_PREFIX)


_registry: dict[Hashable, BrokerThread] = {}
_registry_lock = threading.Lock()


def _settings_key(settings: AuthSecSettings) -> tuple[Hashable, ...]:
    """What decides how a broker gets tokens: tools equal in all of it share a broker.

    The mode and server, the API token (as a hash: the registry must not hold
    secrets in its keys), audience, verification, the refresh policy and the
    shared store (its URL and keys, hashed too). The agent (client id) is
    deliberately absent: one broker serves every agent,
    each with its own cache, so a process runs one broker however many
    identities its tools act for. Per-tool policy (allowlists, methods, size
    cap, API origin) is absent too: it does not change the tokens, only their use.
    """
    api_token = settings.api_token_value()
    return (
        settings.resolved_mode,
        settings.base_url,
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


class _Binding:
    """What one tool is wired to: a shared runtime and the tool's own fetcher.

    Resolved on first use (constructing a tool starts no thread) and again
    after :func:`close_shared_brokers`. Copies of a tool share the binding.
    """

    def __init__(
        self,
        settings: AuthSecSettings,
        source: TokenBroker | SyncTokenBroker | Transport | None,
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

    def __copy__(self) -> _Binding:
        return self

    def as_agent(self, client_id: str) -> _Binding:
        """The same wiring acting for another agent (a new binding; runtimes stay shared)."""
        return _Binding(self.settings, self.source, client_id)

    def __deepcopy__(self, memo: dict[int, object]) -> _Binding:
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
        runtime, _ = self.get()
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
        if isinstance(source, SyncTokenBroker):
            source = source.broker
        if isinstance(source, TokenBroker):
            broker = source
            return _shared_runtime(
                ("broker", pid, id(broker)), lambda: BrokerThread(broker, owns_broker=False)
            )
        if source is not None:
            transport = source
            return _shared_runtime(  # the transport decides the mode and server
                ("transport", pid, id(transport), _settings_key(settings)[2:]),
                lambda: BrokerThread(build_broker(settings, transport), owns_broker=True),
            )
        return _shared_runtime(
            ("settings", pid, _settings_key(settings)),
            lambda: BrokerThread(build_broker(settings), owns_broker=True),
        )


def _check_cassette(settings: AuthSecSettings) -> None:
    """Replay needs its cassette: without it, every call of the crew would fail."""
    cassette = settings.cassette
    if settings.resolved_mode == "replay" and cassette is not None and not cassette.is_file():
        raise errors.ConfigurationError(
            f"AUTHSEC_CASSETTE={cassette} does not exist, so AUTHSEC_MODE=replay has nothing "
            f"to replay; record it first: authsec-crewai record -o {cassette} -- python "
            "your_crew.py"
        )


# --- identities ---------------------------------------------------------------------------------


def _checked_client_id(client_id: object) -> str:
    try:
        (checked,) = parse_agents({"agent": client_id}).values()
    except ValueError:
        raise errors.ConfigurationError(
            f"client_id {str(client_id)[:60]!r} must be the agent's UUID; AuthSec answers 400 "
            "to anything else"
        ) from None
    return str(checked)


def _client_id_for_role(
    role: str, settings: AuthSecSettings, agents: Mapping[str, str] | None
) -> str:
    if agents is None:
        mapping, source = settings.agents, env_var("agents")
    else:
        try:
            mapping, source = parse_agents(dict(agents)), "agents="
        except ValueError as exc:
            raise errors.ConfigurationError(f"agents=: {exc}") from None
    client_id = client_id_for_role(mapping, role)
    if client_id is not None:
        return client_id
    known = ", ".join(repr(name) for name in mapping) or "none"
    raise errors.ConfigurationError(
        f"the agent with role {role[:80]!r} has no client id in {source} (roles there: "
        f"{known}); add it, e.g. {env_var('agents')}='{role[:40]}=<its client id>'"
    )


def assign_identities(crew: Any, *, agents: Mapping[str, str] | None = None) -> None:
    """Give each agent of ``crew`` its own AuthSec identity, by role.

    Every AuthSec tool of every agent (and of every task, whose tools CrewAI
    uses instead of its agent's) is replaced by a copy acting as that agent:
    the client id comes from ``agents`` (role -> client id), else from
    ``AUTHSEC_AGENTS``. A tool given ``client_id=`` explicitly keeps it. An
    agent with AuthSec tools and no client id is a ``ConfigurationError``.
    ``crew`` is a ``Crew``, or an iterable of agents. The copies share one
    broker runtime, whatever the number of agents.
    """

    def bound(tools: Iterable[Any], agent: Any) -> list[Any]:
        return [
            tool.for_agent(agent, agents=agents)
            if isinstance(tool, _SecureFetchTool) and tool._binding.client_id is None
            else tool
            for tool in tools
        ]

    members = getattr(crew, "agents", crew)
    for agent in members:
        if agent.tools:
            agent.tools = bound(agent.tools, agent)
    for task in getattr(crew, "tasks", ()):
        if task.tools and task.agent is not None:
            task.tools = bound(task.tools, task.agent)


# --- the tools ----------------------------------------------------------------------------------


class _SecureFetchTool(BaseTool):
    """What both tools share: arguments, wiring, and turning outcomes into JSON."""

    name: str = DEFAULT_TOOL_NAME
    description: str = ""
    args_schema: type[BaseModel] = SecureFetchArgs
    env_vars: list[EnvVar] = Field(default_factory=_env_vars)

    _binding: _Binding = PrivateAttr()

    def __init__(
        self,
        *,
        settings: AuthSecSettings | None = None,
        broker: TokenBroker | SyncTokenBroker | None = None,
        transport: Transport | None = None,
        client_id: str | None = None,
        **data: Any,
    ) -> None:
        """Wire the tool by hand, or not at all.

        - nothing: ``AuthSecSettings()`` from the environment (and ``.env``);
        - ``settings=``: that configuration;
        - ``broker=``: a running ``TokenBroker`` or ``SyncTokenBroker`` you
          own (the tool never closes it); ``settings`` then only sets policy;
        - ``transport=``: a transport of yours; a broker is built on it from
          ``settings``;
        - ``client_id=``: the agent this tool acts for, when it is not the
          settings' (one tool per agent, each with its own identity; see
          also :meth:`for_agent` and :func:`assign_identities`).

        Tools given the same configuration, broker or transport share one
        broker. Other keyword arguments are CrewAI's (``name``,
        ``description``, ``result_as_answer``, ...); any other keyword is a
        ``TypeError`` that names it, never a silently ignored option.
        """
        unknown = sorted(set(data) - set(type(self).model_fields))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword argument(s) "
                f"{', '.join(repr(name) for name in unknown)}; it takes settings, broker, "
                "transport, client_id and CrewAI's tool options "
                f"({', '.join(sorted(type(self).model_fields))})"
            )
        if broker is not None and transport is not None:
            raise errors.ConfigurationError("pass broker= or transport=, not both")
        # A broken configuration fails here, not mid-crew: settings validate at construction.
        resolved = settings if settings is not None else AuthSecSettings()
        if client_id is not None:  # validated like any setting (model_copy re-validates)
            resolved = resolved.model_copy(update={"client_id": _checked_client_id(client_id)})
        if broker is None and transport is None:
            _check_cassette(resolved)
        if not data.get("description"):
            data["description"] = describe_tool(resolved)
        data.setdefault("cache_function", cache_successes)
        super().__init__(**data)
        self._binding = _Binding(resolved, broker if broker is not None else transport, client_id)

    def for_agent(self, agent: Any, *, agents: Mapping[str, str] | None = None) -> Self:
        """A copy of this tool acting as ``agent`` (a CrewAI agent, or its role).

        The client id comes from ``agents`` (role -> client id), else from
        ``AUTHSEC_AGENTS``; roles match without regard to case and spacing. A
        role with no client id is a ``ConfigurationError``: an agent never
        quietly borrows another identity. The copy shares this tool's broker.
        """
        role = agent if isinstance(agent, str) else getattr(agent, "role", None)
        if not isinstance(role, str):
            raise TypeError(f"for_agent() takes a CrewAI agent or its role, not {type(agent)!r}")
        client_id = _client_id_for_role(role, self.settings, agents)
        copy = self.model_copy()
        copy._binding = self._binding.as_agent(client_id)
        return copy

    @property
    def client_id(self) -> str | None:
        """The client id of the agent this tool acts for (None: your broker's default agent)."""
        return self._binding.agent_id()

    @property
    def settings(self) -> AuthSecSettings:
        """The configuration this tool was built with (policy, and the broker's if shared)."""
        return self._binding.settings

    @property
    def broker(self) -> TokenBroker:
        """The (shared) broker this tool gets its tokens from; starts it if needed."""
        return self._binding.runtime().broker

    def _run(self, endpoint: str, scope: str, params: ParamsLike = None) -> str:
        """Fetch synchronously; safe from any thread, also one running an event loop.

        Returns the result as JSON text; failures are returned, not raised.
        """
        try:
            runtime, fetcher = self._binding.get()
            return runtime.call(
                functools.partial(fetch_text, fetcher, endpoint, scope, params, tool=self.name)
            )
        except Exception as exc:  # the runtime itself failed (closed, interrupted)
            return failure_text(exc, tool=self.name)


class AuthSecSecureFetchTool(_SecureFetchTool):
    """Fetch from an AuthSec-protected API with a scoped delegation token (sync).

    The drop-in successor of authsec-crewai 0.1's tool: same name
    (``authsec_secure_vault_fetcher``) and arguments (``endpoint``, ``scope``),
    plus optional ``params``; guarded, shared-broker, fail-closed.
    """

    def __init__(
        self,
        *,
        settings: AuthSecSettings | None = None,
        broker: TokenBroker | SyncTokenBroker | None = None,
        transport: Transport | None = None,
        client_id: str | None = None,
        **data: Any,
    ) -> None:
        # Spelled out (not inherited) so type checkers see these keywords: they
        # synthesise a pydantic model's __init__ from its fields otherwise.
        super().__init__(
            settings=settings, broker=broker, transport=transport, client_id=client_id, **data
        )


class AsyncAuthSecSecureFetchTool(_SecureFetchTool):
    """The same tool with a native ``_arun`` for async applications (asyncio or trio).

    ``await tool.arun(endpoint=..., scope=...)`` does not block the event loop
    and works from any loop on any thread. Its ``_run`` stays truly sync,
    because CrewAI calls ``_run`` in worker threads under both ``kickoff()``
    and ``akickoff()``, and ``BaseTool.run`` would hand a coroutine to
    ``asyncio.run``, which fails inside a running loop.
    """

    def __init__(
        self,
        *,
        settings: AuthSecSettings | None = None,
        broker: TokenBroker | SyncTokenBroker | None = None,
        transport: Transport | None = None,
        client_id: str | None = None,
        **data: Any,
    ) -> None:
        super().__init__(
            settings=settings, broker=broker, transport=transport, client_id=client_id, **data
        )

    async def _arun(self, endpoint: str, scope: str, params: ParamsLike = None) -> str:
        """Fetch asynchronously; returns the result as JSON text, failures included."""
        try:
            fetcher = self._binding.fetcher_on_this_loop()
        except Exception as exc:
            return failure_text(exc, tool=self.name)
        return await fetch_text(fetcher, endpoint, scope, params, tool=self.name)
