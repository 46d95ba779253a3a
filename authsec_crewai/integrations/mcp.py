"""An MCP server's tools as CrewAI tools, each call authorized with the broker's token.

Install with ``pip install 'authsec-crewai[mcp,crewai]'``::

    server = MCPServer("https://mcp.example.com/mcp", broker=broker, scopes="mcp:tools")
    agent = Agent(..., tools=server.tools())          # one CrewAI tool per MCP tool

Why not CrewAI's own MCP support: it takes static headers, so a long-running
crew holds whatever token it started with until the server refuses it. Here
every request of every call carries the broker's current token
(:class:`~authsec_crewai.BrokerAuth`): from its cache, refreshed ahead of
expiry, and on a 401 dropped and fetched again, once, with the refetches of
many calls coalesced into one.

- **The server's tools, as the server declares them.** :meth:`MCPServer.tools`
  lists the server's tools; each becomes a CrewAI ``BaseTool`` with the MCP
  tool's name, description and arguments (its ``args_schema`` made from the
  tool's ``inputSchema``), sync (``_run``, what ``kickoff()`` calls in worker
  threads) and async (``_arun``, from asyncio or trio).
- **Every agent its own identity.** ``client_id=`` (or
  :meth:`MCPServer.for_agent`) makes the calls as that agent on a broker that
  serves many (AuthSec delegation tokens); an OAuth client is one transport, so
  agents with OAuth identities each get an ``MCPServer`` on their own broker.
- **One session per server and agent, pooled on the broker runtime's loop.**
  Opening a streamable HTTP session costs an ``initialize`` exchange (and a
  DELETE to close it), so a session is opened once and reused: by every later
  call, sync or async, and by concurrent calls, which share it (the client
  multiplexes requests by id) or wait for its one opening. The MCP client's
  task groups must be entered and left in one task, and the session must
  outlive the call that opened it, so it lives in a task of the broker's
  runtime (the event loop, on a thread of its own, where sync calls already
  run); async calls (asyncio or trio) hop there and back. Sessions are keyed
  by the server's URL, the agent, the scopes and the timeout: never shared
  between agents, and on one loop only. A session the server answers 404 for
  (it expired, the server restarted) or whose transport broke is dropped and
  reopened once, transparently; a refusal of the request itself (a 401 even
  with a fresh token, a 403, a 5xx) is the call's answer. The sessions close,
  each with its DELETE, when the runtime closes: the shared broker's with
  :func:`~authsec_crewai.tools.close_shared_brokers` (or at exit); for a
  broker of yours (``broker=``), whose calls run on a runtime of its own, at
  :func:`~authsec_crewai.tools.close_shared_brokers` too, or at exit.
- **Results like the fetch tool's.** A success is ``{"status": "ok", "tool":
  ..., "data": ...}``; a tool error, a refusal or a failure is ``{"status":
  "error", "error": <kind>, "message": ..., "retryable": ...}`` that the model
  reads, never raised. Every token the process holds, and anything shaped
  like one, is masked in what comes back, and an answer larger than the cap
  (``AUTHSEC_MAX_RESPONSE_BYTES``) is refused as ``response_too_large``.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import anyio
import httpx
from pydantic import BaseModel, PrivateAttr, ValidationError

from .. import _secrets, errors
from .._brokerthread import CLOSE_GRACE, BrokerThread
from .._lazy import requires_extra
from .._toolruntime import ToolBinding
from ..auth import BrokerAuth
from ..fetch import error_result, render_result
from ..redact import scrub_secrets, scrub_value
from ..token import ScopesLike, canonical_scopes
from ..toolspec import failure_text
from ._mcp_args import arguments_model

with requires_extra("mcp", "MCP tools for CrewAI"):
    from mcp import ClientSession, McpError, types
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import CONNECTION_CLOSED

with requires_extra("crewai", "MCP tools for CrewAI"):
    from crewai.tools import BaseTool

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from ..broker import TokenBroker
    from ..settings import AuthSecSettings
    from ..sync import SyncTokenBroker

__all__ = ["MCPServer", "MCPTool"]

_MAX_MESSAGE_CHARS = 2000

T = TypeVar("T")


class MCPServer:
    """One MCP server (streamable HTTP) reached with the broker's tokens, as one agent.

    ``broker=``: a ``TokenBroker`` or ``SyncTokenBroker`` of yours (never
    closed here); without it, the shared broker the ``AUTHSEC_*`` settings
    (or ``settings=``) configure, as for the fetch tool. ``scopes``: what each
    token must grant the server. ``client_id=``: the agent the calls are made
    as. ``timeout``: seconds for each HTTP exchange with the server.
    ``max_result_bytes``: the cap on an answer (default: the settings').
    """

    def __init__(
        self,
        url: str,
        *,
        scopes: ScopesLike,
        broker: TokenBroker | SyncTokenBroker | None = None,
        settings: AuthSecSettings | None = None,
        client_id: str | None = None,
        timeout: float = 30.0,
        max_result_bytes: int | None = None,
    ) -> None:
        if not url.startswith(("https://", "http://")):
            raise errors.ConfigurationError(
                f"MCPServer takes the server's streamable HTTP URL, not {url[:80]!r}"
            )
        try:
            self.scopes = canonical_scopes(scopes)
        except ValueError as exc:
            raise errors.ConfigurationError(f"MCPServer scopes: {exc}") from None
        self.url = url
        self.timeout = timeout
        self._binding = ToolBinding.create(settings=settings, broker=broker, client_id=client_id)
        self.explicit_identity = client_id is not None
        """Whether ``client_id=`` named the agent (``assign_identities`` then keeps it)."""
        self.max_result_bytes = (
            max_result_bytes
            if max_result_bytes is not None
            else self._binding.settings.max_response_bytes
        )

    def __repr__(self) -> str:
        return f"MCPServer(url={self.url!r}, scopes={sorted(self.scopes)!r})"

    def for_agent(self, client_id: str) -> MCPServer:
        """The same server reached as another agent (the broker stays shared)."""
        copy = object.__new__(MCPServer)
        copy.__dict__.update(self.__dict__)
        copy._binding = self._binding.as_agent(client_id)
        copy.explicit_identity = True
        return copy

    @property
    def settings(self) -> AuthSecSettings:
        """The configuration: policy (the result cap), and the broker's if shared."""
        return self._binding.settings

    @property
    def client_id(self) -> str | None:
        """The agent the calls are made as (None: your broker's default agent)."""
        return self._binding.identity()

    # --- listing -------------------------------------------------------------------------

    async def alist_tools(self) -> list[types.Tool]:
        """The server's tools, as it declares them (every page of them)."""

        async def listing(session: ClientSession) -> list[types.Tool]:
            tools: list[types.Tool] = []
            cursor: str | None = None
            while True:
                page = await session.list_tools(
                    params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
                )
                tools.extend(page.tools)
                cursor = page.nextCursor
                if not cursor:
                    return tools

        return await self._on_session(listing)

    async def atools(self) -> list[MCPTool]:
        """Each of the server's tools as a CrewAI tool (asyncio or trio)."""
        return [MCPTool.from_mcp(self, tool) for tool in await self.alist_tools()]

    def tools(self) -> list[MCPTool]:
        """Each of the server's tools as a CrewAI tool; blocks, safe from any thread."""
        listed = self._binding.runtime().call(self.alist_tools)
        return [MCPTool.from_mcp(self, tool) for tool in listed]

    # --- calling ---------------------------------------------------------------------------

    async def acall(self, tool: str, arguments: Mapping[str, Any]) -> str:
        """Call ``tool`` in the pooled session; the result (or failure) as JSON text."""

        async def calling(session: ClientSession) -> types.CallToolResult:
            return await session.call_tool(tool, dict(arguments))

        try:
            result = await self._on_session(calling)
        except BaseException as exc:
            leaf = _leaf(exc)
            if not isinstance(leaf, Exception):
                raise  # cancellation, KeyboardInterrupt: not an answer
            return self._failure(leaf, tool)
        return self._render(tool, result)

    def call(self, tool: str, arguments: Mapping[str, Any]) -> str:
        """:meth:`acall` from sync code: on the broker runtime's loop, from any thread."""
        try:
            runtime = self._binding.runtime()
            return runtime.call(functools.partial(self.acall, tool, arguments))
        except Exception as exc:  # the runtime itself failed (closed, interrupted)
            return failure_text(exc, tool=tool)

    async def _on_session(self, use: Callable[[ClientSession], Awaitable[T]]) -> T:
        """``use`` the pooled session of this server and agent, on the runtime's loop.

        The session lives in a task of the broker runtime (an MCP session's
        task groups must open and close in one task, and must outlive the
        call), so every call hops there, from any loop or thread; a call
        already on it does not hop. The caller's cancellation cancels its call.
        """
        runtime = self._binding.runtime()
        agent = self._binding.identity()
        key: _Key = (self.url, agent, frozenset(self.scopes), self.timeout)

        def connect() -> _Connection:
            return _Connection(self.url, BrokerAuth(runtime.broker, self.scopes, agent=agent), self)

        async def on_runtime() -> T:
            return await _pool_of(runtime).use(key, connect, use)

        return await runtime.acall(on_runtime)

    def _render(self, tool: str, result: types.CallToolResult) -> str:
        known = _secrets.known()
        texts = [
            block.text if isinstance(block, types.TextContent) else f"[{block.type} content]"
            for block in result.content
        ]
        text = "\n".join(texts)
        if result.isError:
            message = scrub_secrets(text, known)[:_MAX_MESSAGE_CHARS] or "the tool failed"
            return render_result(
                {"status": "error", "error": "tool_error", "message": message, "retryable": False}
            )
        data = result.structuredContent if result.structuredContent is not None else text
        rendered = render_result({"status": "ok", "tool": tool, "data": scrub_value(data, known)})
        if len(rendered.encode("utf-8")) > self.max_result_bytes:
            too_large = errors.ResponseTooLargeError(
                f"the answer of MCP tool {tool[:80]!r} is larger than {self.max_result_bytes} "
                "bytes (AUTHSEC_MAX_RESPONSE_BYTES); ask for less"
            )
            return render_result(error_result(too_large))
        return rendered

    def _failure(self, exc: Exception, tool: str) -> str:
        """A failure as the JSON the model reads; the server's text scrubbed."""
        if isinstance(exc, errors.AuthSecError):
            return failure_text(exc, tool=tool)
        if isinstance(exc, httpx.HTTPStatusError):
            status = exc.response.status_code
            failure: Exception = errors.ProtectedApiError(
                f"the MCP server answered HTTP {status} to {tool[:80]!r}"
                + (" (the token was refused, and a fresh one too)" if status == 401 else ""),
                status_code=status,
            )
        elif isinstance(exc, httpx.TransportError | OSError):
            failure = errors.ProtectedApiError(
                f"the MCP server {self.url} could not be reached ({type(exc).__name__}); "
                "try again later",
                status_code=None,
            )
        elif isinstance(exc, McpError):
            message = scrub_secrets(str(exc.error.message), _secrets.known())
            return render_result(
                {
                    "status": "error",
                    "error": "mcp_error",
                    "message": message[:_MAX_MESSAGE_CHARS],
                    "retryable": False,
                }
            )
        else:
            return failure_text(exc, tool=tool)
        return render_result(error_result(failure))


class _Connection:
    """How to open an initialized MCP session on a client that carries the broker's auth."""

    def __init__(self, url: str, auth: BrokerAuth, server: MCPServer) -> None:
        self.url = url
        self.auth = auth
        self.server = server

    async def open(self, stack: AsyncExitStack) -> ClientSession:
        """The client, the transport (and its task group) and the session, on ``stack``:
        entered here, in the owner task, which also exits them."""
        client = await stack.enter_async_context(
            httpx.AsyncClient(
                auth=self.auth,
                timeout=httpx.Timeout(self.server.timeout),
                follow_redirects=False,  # the token goes to this server only
            )
        )
        read, write, _ = await stack.enter_async_context(
            streamable_http_client(self.url, http_client=client)
        )
        session = await stack.enter_async_context(ClientSession(read, write))
        await session.initialize()
        return session


_Key: TypeAlias = "tuple[str, str | None, frozenset[str], float]"
"""A pooled session's key: the server's URL, the agent, the scopes, the timeout. An
agent's session carries its tokens only, so agents never share one."""


class _SessionLost(Exception):
    """The pooled session ended under a call (its transport broke, or the server forgot it).

    ``closed``: the connection closed under the call, so the owner task is
    ending and knows why (a 404 for the session id leaves it running).
    """

    def __init__(self, *, closed: bool = True) -> None:
        super().__init__("the MCP session was lost")
        self.closed = closed


class _Pooled:
    """One pooled session, owned by a task of the runtime, and the calls using it."""

    def __init__(self) -> None:
        self.session: ClientSession | None = None
        self.closing = anyio.Event()
        self.finished = anyio.Event()
        self.failure: Exception | None = None
        """What ended the session, when it was not closed on purpose."""
        self.scope = anyio.CancelScope()
        self.users: set[anyio.CancelScope] = set()

    @property
    def alive(self) -> bool:
        return self.session is not None and not (self.closing.is_set() or self.finished.is_set())

    def close(self) -> None:
        """Ask the owner task to close the session, within ``CLOSE_GRACE`` seconds."""
        self.closing.set()
        self.scope.deadline = min(self.scope.deadline, anyio.current_time() + CLOSE_GRACE)

    async def own(
        self, connection: _Connection, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The owner task: open, serve until asked to close (or the transport breaks), close.

        An error while opening goes to the opener (``start_service``); after
        that, nothing may escape into the runtime's task group, so what ended
        the session is kept for the calls that were using it.
        """
        started = False
        try:
            with self.scope:
                async with AsyncExitStack() as stack:
                    self.session = await connection.open(stack)
                    task_status.started()
                    started = True
                    await self.closing.wait()
        except BaseException as exc:
            leaf = _leaf(exc)
            if not started or not isinstance(leaf, Exception):
                raise
            self.failure = leaf
        finally:
            self.finished.set()
            for user in self.users:
                user.cancel()

    async def use(self, use: Callable[[ClientSession], Awaitable[T]]) -> T:
        """``use(session)``; :class:`_SessionLost` if the session ends under it."""
        scope = anyio.CancelScope()
        self.users.add(scope)
        try:
            with scope:
                if self.session is None or self.finished.is_set():
                    raise _SessionLost
                try:
                    return await use(self.session)
                except McpError as exc:
                    if exc.error.code == CONNECTION_CLOSED:
                        raise _SessionLost from exc
                    if exc.error.code == _SESSION_TERMINATED and "terminated" in str(
                        exc.error.message
                    ):  # the server answered 404 for the session id: it forgot the session
                        raise _SessionLost(closed=False) from exc
                    raise
            raise _SessionLost  # the owner ended (the transport broke) and cancelled the call
        finally:
            self.users.discard(scope)


_SESSION_TERMINATED = 32600
"""The error the MCP client answers a request with when the server says 404 to its session."""


class _Pool:
    """The pooled sessions of one broker runtime, by :data:`_Key`; used on its loop only.

    A session is opened once per key (single flight: concurrent first calls
    wait for the one opening), reused by every later call, dropped and
    reopened once when it is lost under a call, and closed, each with its
    DELETE to the server, when the runtime closes.
    """

    def __init__(self, runtime: BrokerThread) -> None:
        # weakly: the pools map runtimes to pools weakly, which a strong reference back
        # from the pool would defeat (every closed runtime and its pool kept for ever)
        self._runtime = weakref.ref(runtime)
        self.live: dict[_Key, _Pooled] = {}
        self.opening: dict[_Key, anyio.Lock] = {}
        runtime.add_closer(self.aclose)

    async def session(self, key: _Key, connect: Callable[[], _Connection]) -> _Pooled:
        pooled = self.live.get(key)
        if pooled is not None and pooled.alive:
            return pooled
        async with self.opening.setdefault(key, anyio.Lock()):
            pooled = self.live.get(key)
            if pooled is not None and pooled.alive:
                return pooled  # opened while this call waited
            runtime = self._runtime()
            if runtime is None:
                raise errors.BrokerClosedError("the broker's event-loop thread was closed")
            pooled = _Pooled()
            await runtime.start_service(pooled.own, connect())
            self.live[key] = pooled
            return pooled

    def drop(self, key: _Key, pooled: _Pooled) -> None:
        if self.live.get(key) is pooled:
            del self.live[key]
        pooled.close()

    async def use(
        self,
        key: _Key,
        connect: Callable[[], _Connection],
        use: Callable[[ClientSession], Awaitable[T]],
    ) -> T:
        """``use`` the session of ``key``; one lost session is replaced once, transparently.

        Lost means the server answered 404 for the session id (it expired
        or was forgotten: the request was not served) or the transport
        broke. An HTTP status refusing the request itself (a 401 even with a
        fresh token, a 403, a 5xx) is the answer, not a reason to reopen.
        """
        for attempt in (1, 2):
            pooled = await self.session(key, connect)
            try:
                return await pooled.use(use)
            except _SessionLost as lost:
                if lost.closed:  # the client saw the connection close: let the owner say why
                    with anyio.move_on_after(CLOSE_GRACE):
                        await pooled.finished.wait()
                self.drop(key, pooled)
                failure = pooled.failure
                if failure is not None and not _reopens(failure):
                    raise failure from None
                if attempt == 2:
                    raise errors.ProtectedApiError(
                        f"the MCP session with {key[0]} was lost twice in a row; try again later",
                        status_code=None,
                    ) from (failure or lost.__cause__)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        """Close every session (each sends the server its DELETE), then forget them."""
        pooled, self.live = list(self.live.values()), {}
        for each in pooled:
            each.close()
        for each in pooled:
            await each.finished.wait()


def _reopens(failure: Exception) -> bool:
    """Whether what ended a session is a broken transport (or a forgotten session)."""
    if isinstance(failure, httpx.HTTPStatusError):
        return failure.response.status_code == 404
    return isinstance(
        failure,
        httpx.TransportError | OSError | anyio.BrokenResourceError | anyio.ClosedResourceError,
    )


_pools: weakref.WeakKeyDictionary[BrokerThread, _Pool] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def _pool_of(runtime: BrokerThread) -> _Pool:
    """The session pool of ``runtime`` (one per broker runtime, made on first use)."""
    with _pools_lock:
        pool = _pools.get(runtime)
        if pool is None:
            pool = _pools[runtime] = _Pool(runtime)
        return pool


def _leaf(exc: BaseException) -> BaseException:
    """The first error of a (nested) exception group: what went wrong, not its wrapper.

    The MCP client runs in task groups, which wrap a failure in groups.
    """
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


class MCPTool(BaseTool):
    """One tool of an MCP server as a CrewAI tool; every call authorized by the broker.

    Made by :meth:`MCPServer.tools`. ``_run`` blocks (CrewAI's worker
    threads); ``_arun`` awaits on the caller's loop (asyncio or trio) while the
    call runs on the broker runtime's, where the pooled session lives. The arguments are checked
    against the tool's schema first; a call that does not match it is answered
    ``invalid_arguments`` without reaching the server.
    """

    _server: MCPServer = PrivateAttr()
    _tool: str = PrivateAttr()

    @classmethod
    def from_mcp(cls, server: MCPServer, tool: types.Tool) -> MCPTool:
        """The CrewAI tool for ``tool`` (as the server listed it) on ``server``."""
        made = cls(
            name=tool.name,
            description=tool.description or tool.title or f"The MCP tool {tool.name}.",
            args_schema=arguments_model(tool.name, tool.inputSchema),
        )
        made._server = server
        made._tool = tool.name
        return made

    def for_agent(self, client_id: str) -> MCPTool:
        """A copy of this tool calling as ``client_id`` (the broker stays shared)."""
        copy = self.model_copy()
        copy._server = self._server.for_agent(client_id)
        copy._tool = self._tool
        return copy

    def assign_identity(self, agent: Any, *, agents: Mapping[str, str] | None = None) -> MCPTool:
        """This tool acting as ``agent`` (a CrewAI agent or its role), by role from
        ``agents`` or ``AUTHSEC_AGENTS``, unless its server was given ``client_id=``.

        What :func:`authsec_crewai.tools.assign_identities` calls for each agent.
        """
        if self._server.explicit_identity:
            return self
        from ..tools import client_id_for_agent

        return self.for_agent(client_id_for_agent(agent, self._server.settings, agents))

    @property
    def server(self) -> MCPServer:
        return self._server

    def _arguments(self, kwargs: Mapping[str, Any]) -> dict[str, Any] | str:
        model: type[BaseModel] = self.args_schema
        try:
            checked = model.model_validate(dict(kwargs))
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            ]
            return render_result(
                {
                    "status": "error",
                    "error": "invalid_arguments",
                    "message": "invalid arguments: " + "; ".join(problems[:5]),
                    "retryable": False,
                }
            )
        sent = checked.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return {name: value for name, value in sent.items() if value is not None}

    def _run(self, **kwargs: Any) -> str:
        arguments = self._arguments(kwargs)
        if isinstance(arguments, str):
            return arguments
        return self._server.call(self._tool, arguments)

    async def _arun(self, **kwargs: Any) -> str:
        arguments = self._arguments(kwargs)
        if isinstance(arguments, str):
            return arguments
        return await self._server.acall(self._tool, arguments)
