"""The CrewAI tools: ``AuthSecSecureFetchTool`` (sync) and ``AsyncAuthSecSecureFetchTool``.

This is the only module of the library that imports crewai (which takes
seconds to import); ``import authsec_crewai`` never loads it.

Both tools wrap a :class:`~authsec_crewai.fetch.SecureFetcher`. What they add:

- **One broker per configuration, per process.** A crew builds many tools (one
  per agent, often more); each with its own broker would mean one token cache
  and one single flight per tool, and a request to AuthSec per tool. Tools
  configured alike share one :class:`BrokerThread`: a token broker, and the
  event loop (on a daemon thread) it runs on. The registry key is the part of
  the settings that decides which tokens come back (see
  :func:`_settings_key`); per-tool policy (allowlists, method, size cap, API
  origin) stays per tool.
- **Any caller.** CrewAI calls the sync ``_run`` in worker threads, under both
  ``kickoff()`` and ``akickoff()``; async applications await ``_arun`` on
  asyncio or trio, on any thread. ``_run`` hands the call to the runtime's
  loop and blocks until it is done, so that pool only ever sees one loop.
  ``_arun`` in live mode uses a pool on its own loop and the shared broker
  (which serves any loop), so a cache hit needs no thread hop; in the other
  modes it hands the call over like ``_run``, without blocking its loop.
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
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

import anyio.lowlevel
import httpx
from crewai.tools import BaseTool, EnvVar
from pydantic import BaseModel, Field, PrivateAttr

from . import errors
from ._brokerthread import BrokerThread
from .broker import TokenBroker
from .fetch import OK_PREFIX, ParamsLike, SecureFetcher
from .logging import get_logger
from .settings import AuthSecSettings, env_var
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

if TYPE_CHECKING:
    from .transports.base import Transport

__all__ = [
    "DEFAULT_TOOL_NAME",
    "AsyncAuthSecSecureFetchTool",
    "AuthSecSecureFetchTool",
    "QueryParam",
    "SecureFetchArgs",
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
    """What decides which tokens a broker gets: tools equal in all of it share a broker.

    The mode and server, the agent, the API token (as a hash: the registry must
    not hold secrets in its keys), audience, verification and the refresh
    policy. Per-tool policy (allowlists, methods, size cap, API origin) is
    deliberately absent: it does not change the tokens, only their use.
    """
    api_token = settings.api_token_value()
    return (
        settings.resolved_mode,
        settings.base_url,
        client_id_for(settings),
        None if api_token is None else hashlib.sha256(api_token.encode()).hexdigest(),
        tuple(settings.audience),
        settings.verify,
        settings.verify_leeway,
        settings.timeout,
        settings.retry_budget,
        refresh_policy(settings),
        None if settings.cassette is None else str(settings.cassette.resolve()),
    )


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


class _Binding:
    """What one tool is wired to: a shared runtime and the tool's own fetcher.

    Resolved on first use (constructing a tool starts no thread) and again
    after :func:`close_shared_brokers`. Copies of a tool share the binding.
    """

    def __init__(
        self,
        settings: AuthSecSettings,
        source: TokenBroker | SyncTokenBroker | Transport | None,
    ) -> None:
        self.settings = settings
        self.source = source
        self._lock = threading.Lock()
        self._runtime: BrokerThread | None = None
        self._fetcher: SecureFetcher | None = None
        self._on_loop: dict[object, SecureFetcher] = {}

    def __copy__(self) -> _Binding:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _Binding:
        return self

    def get(self) -> tuple[BrokerThread, SecureFetcher]:
        with self._lock:
            if self._runtime is None or self._fetcher is None or self._runtime.closed:
                runtime = self._acquire()
                self._fetcher = build_fetcher(runtime.broker, self.settings)
                self._runtime = runtime
                self._on_loop.clear()
            return self._runtime, self._fetcher

    def fetcher_on_this_loop(self) -> SecureFetcher:
        """A fetcher of the calling event loop, on the one shared broker.

        Async callers then reach the API without hopping to the broker's
        thread and back (two cross-thread wake-ups per call); tokens still
        come from the one shared broker, which serves callers on any loop.
        The path is the same in every mode; only the API transport differs,
        as the broker's transport declares: a network API
        (``info.network_api``) gets a connection pool of this loop, anything
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
                    api_transport=httpx.AsyncHTTPTransport()
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
            return _shared_runtime(
                (
                    "transport",
                    pid,
                    id(transport),
                    (client_id_for(settings, transport), *_settings_key(settings)[3:]),
                ),
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
        **data: Any,
    ) -> None:
        """Wire the tool by hand, or not at all.

        - nothing: ``AuthSecSettings()`` from the environment (and ``.env``);
        - ``settings=``: that configuration;
        - ``broker=``: a running ``TokenBroker`` or ``SyncTokenBroker`` you
          own (the tool never closes it); ``settings`` then only sets policy;
        - ``transport=``: a transport of yours; a broker is built on it from
          ``settings``.

        Tools given the same configuration, broker or transport share one
        broker. Other keyword arguments are CrewAI's (``name``,
        ``description``, ``result_as_answer``, ...).
        """
        if broker is not None and transport is not None:
            raise errors.ConfigurationError("pass broker= or transport=, not both")
        # A broken configuration fails here, not mid-crew: settings validate at construction.
        resolved = settings if settings is not None else AuthSecSettings()
        if broker is None and transport is None:
            _check_cassette(resolved)
        if not data.get("description"):
            data["description"] = describe_tool(resolved)
        data.setdefault("cache_function", cache_successes)
        super().__init__(**data)
        self._binding = _Binding(resolved, broker if broker is not None else transport)

    @property
    def settings(self) -> AuthSecSettings:
        """The configuration this tool was built with (policy, and the broker's if shared)."""
        return self._binding.settings

    @property
    def broker(self) -> TokenBroker:
        """The (shared) broker this tool gets its tokens from; starts it if needed."""
        return self._binding.get()[0].broker

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
        **data: Any,
    ) -> None:
        # Spelled out (not inherited) so type checkers see these keywords: they
        # synthesise a pydantic model's __init__ from its fields otherwise.
        super().__init__(settings=settings, broker=broker, transport=transport, **data)


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
        **data: Any,
    ) -> None:
        super().__init__(settings=settings, broker=broker, transport=transport, **data)

    async def _arun(self, endpoint: str, scope: str, params: ParamsLike = None) -> str:
        """Fetch asynchronously; returns the result as JSON text, failures included."""
        try:
            fetcher = self._binding.fetcher_on_this_loop()
        except Exception as exc:
            return failure_text(exc, tool=self.name)
        return await fetch_text(fetcher, endpoint, scope, params, tool=self.name)
