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
  threads) and async (``_arun``, asyncio or trio).
- **Every agent its own identity.** ``client_id=`` (or
  :meth:`MCPServer.for_agent`) makes the calls as that agent on a broker that
  serves many (AuthSec delegation tokens); an OAuth client is one transport, so
  agents with OAuth identities each get an ``MCPServer`` on their own broker.
- **A session per call.** Each call opens a streamable HTTP session, calls
  the tool and closes the session, so nothing outlives the call and no
  session is shared between agents or event loops.
- **Results like the fetch tool's.** A success is ``{"status": "ok", "tool":
  ..., "data": ...}``; a tool error, a refusal or a failure is ``{"status":
  "error", "error": <kind>, "message": ..., "retryable": ...}`` that the model
  reads, never raised. Every token the process holds, and anything shaped
  like one, is masked in what comes back, and an answer larger than the cap
  (``AUTHSEC_MAX_RESPONSE_BYTES``) is refused as ``response_too_large``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, PrivateAttr, ValidationError

from .. import _secrets, errors
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

with requires_extra("crewai", "MCP tools for CrewAI"):
    from crewai.tools import BaseTool

if TYPE_CHECKING:
    from ..broker import TokenBroker
    from ..settings import AuthSecSettings
    from ..sync import SyncTokenBroker

__all__ = ["MCPServer", "MCPTool"]

_MAX_MESSAGE_CHARS = 2000


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
        tools: list[types.Tool] = []
        async with self._session() as session:
            cursor: str | None = None
            while True:
                page = await session.list_tools(
                    params=types.PaginatedRequestParams(cursor=cursor) if cursor else None
                )
                tools.extend(page.tools)
                cursor = page.nextCursor
                if not cursor:
                    return tools

    async def atools(self) -> list[MCPTool]:
        """Each of the server's tools as a CrewAI tool (asyncio or trio)."""
        return [MCPTool.from_mcp(self, tool) for tool in await self.alist_tools()]

    def tools(self) -> list[MCPTool]:
        """Each of the server's tools as a CrewAI tool; blocks, safe from any thread."""
        listed = self._binding.runtime().call(self.alist_tools)
        return [MCPTool.from_mcp(self, tool) for tool in listed]

    # --- calling ---------------------------------------------------------------------------

    async def acall(self, tool: str, arguments: Mapping[str, Any]) -> str:
        """Call ``tool`` in a session of its own; the result (or failure) as JSON text."""
        try:
            async with self._session() as session:
                result = await session.call_tool(tool, dict(arguments))
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

    def _session(self) -> _Session:
        runtime = self._binding.runtime()
        agent = self._binding.identity()
        return _Session(self.url, BrokerAuth(runtime.broker, self.scopes, agent=agent), self)

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


class _Session:
    """An initialized MCP session on a client that carries the broker's auth.

    One async context, so the client, the transport's task group and the
    session open and close in the one task that uses them.
    """

    def __init__(self, url: str, auth: BrokerAuth, server: MCPServer) -> None:
        self.url = url
        self.auth = auth
        self.server = server
        self._stack: Any = None

    async def __aenter__(self) -> ClientSession:
        from contextlib import AsyncExitStack

        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
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
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return session

    async def __aexit__(self, *exc: object) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.__aexit__(*exc)


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
    threads); ``_arun`` awaits on the caller's loop. The arguments are checked
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
