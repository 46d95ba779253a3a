"""The guarded secure fetch tool as an MCP server, for any MCP host: ``authsec-crewai serve-mcp``.

Install with ``pip install 'authsec-crewai[mcp,cli]'``. An MCP host (Claude
Desktop, an IDE's agent, any framework's MCP client) then calls the
AuthSec-protected API through one tool, ``authsec_secure_vault_fetcher``,
with delegated tokens it never sees: the token is fetched, cached and sent by
this process, and only the API's answer (capped and scrubbed) goes back.

Why a thin layer over :class:`~authsec_crewai._toolruntime.ToolBinding`
rather than a tool of its own: the guards, allowlists, results and errors
must be the ones the CrewAI tool has, so a refusal reads the same whichever
host asked. The tool's name, arguments and description come from
:mod:`authsec_crewai.toolspec`; every call goes through
:meth:`ToolBinding.acall`, on the server's own event loop. A failure is the
same JSON text the CrewAI tool returns, in a result marked ``isError`` so a
host shows it as a failed call.

The server is the MCP SDK's low-level ``Server`` (not ``FastMCP``), because
its tool schema must be exactly the shared one (FastMCP derives a schema from
a function's signature) and its results must be the shared text, unwrapped.

Standard output is the protocol channel on stdio: :func:`serve_stdio` keeps
the real standard output for the protocol alone and points file descriptor 1
at standard error, so a stray ``print`` or a library writing to stdout cannot
corrupt the stream.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from io import TextIOWrapper
from typing import Any, Final

import anyio
from pydantic import ValidationError

from .._lazy import requires_extra
from .._toolruntime import ToolBinding
from .._version import __version__
from ..fetch import OK_PREFIX, render_result
from ..redact import redact_text
from ..toolspec import DEFAULT_TOOL_NAME, SecureFetchArgs, arguments_schema, describe_tool

with requires_extra("mcp", "the MCP server"):
    from mcp import types
    from mcp.server.lowlevel import Server
    from mcp.server.stdio import stdio_server

__all__ = ["MCP_PATH", "SERVER_NAME", "create_http_app", "create_server", "serve_stdio"]

SERVER_NAME: Final = "authsec-crewai"
MCP_PATH: Final = "/mcp"
"""Where the streamable HTTP endpoint is served (the MCP SDK's default path)."""

_READ_ONLY_METHODS: Final = frozenset({"GET", "HEAD"})


def create_server(
    binding: ToolBinding | None = None, *, name: str = DEFAULT_TOOL_NAME
) -> Server[Any, Any]:
    """An MCP server with one tool, the guarded secure fetch, on ``binding``.

    ``binding`` defaults to ``ToolBinding.create()``: the ``AUTHSEC_*``
    settings decide the mode, the agent's identity and the policy, exactly as
    they do for ``AuthSecSecureFetchTool()``; a broken configuration raises
    :class:`~authsec_crewai.errors.ConfigurationError` here, before any host
    connects.
    """
    bound = binding if binding is not None else ToolBinding.create()
    methods = {m.upper() for m in bound.policy.allowed_methods}
    tool = types.Tool(
        name=name,
        description=describe_tool(bound.policy),
        inputSchema=arguments_schema(),
        annotations=types.ToolAnnotations(
            title="AuthSec secure fetch",
            readOnlyHint=methods <= _READ_ONLY_METHODS,
            openWorldHint=True,
        ),
    )
    server: Server[Any, Any] = Server(
        SERVER_NAME,
        version=__version__,
        instructions="Calls the AuthSec-protected API with short-lived delegated tokens "
        f"through the {name} tool; the tokens stay in this server.",
    )

    async def list_tools() -> list[types.Tool]:
        return [tool]

    async def call_tool(tool_name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        if tool_name != name:
            return _result(_refused("unknown_tool", f"this server has no tool {tool_name[:80]!r}"))
        try:
            args = SecureFetchArgs.model_validate(arguments)
        except ValidationError as exc:
            return _result(_refused("invalid_arguments", _validation_message(exc)))
        text = await bound.acall(args.endpoint, args.scope, args.params, tool=name)
        return _result(text)

    # The SDK's decorators are unannotated; registering through them keeps its
    # tool cache and result handling. Input is validated by SecureFetchArgs
    # (which also accepts the {"page": "2"} form of params), not by jsonschema.
    server.list_tools()(list_tools)  # type: ignore[no-untyped-call]
    server.call_tool(validate_input=False)(call_tool)
    return server


def _result(text: str) -> types.CallToolResult:
    """The tool's JSON text as the call's one content block; a failure is ``isError``."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        isError=not text.startswith(OK_PREFIX),
    )


def _refused(kind: str, message: str) -> str:
    return render_result(
        {"status": "error", "error": kind, "message": redact_text(message), "retryable": False}
    )


def _validation_message(exc: ValidationError) -> str:
    """Which arguments were wrong, without echoing what was sent (it may hold anything)."""
    problems = [
        f"{'.'.join(str(part) for part in error['loc']) or 'arguments'}: {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False)
    ]
    return "invalid arguments: " + "; ".join(problems[:5])


async def serve_stdio(server: Server[Any, Any]) -> None:
    """Serve ``server`` on standard input and output until the host closes stdin.

    The protocol gets a private copy of standard output; file descriptor 1
    (and so ``sys.stdout``, and any child process) then writes to standard
    error. Nothing but protocol messages can reach the host's stream.
    """
    sys.stdout.flush()
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    stdin = anyio.wrap_file(TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace"))
    stdout = anyio.wrap_file(TextIOWrapper(channel, encoding="utf-8", write_through=True))
    try:
        async with stdio_server(stdin, stdout) as (read, write):
            await server.run(read, write, server.create_initialization_options())
    finally:
        channel.close()


class _Endpoint:
    """The session manager's request handler as an ASGI app, at one exact path."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.manager.handle_request(scope, receive, send)


def create_http_app(server: Server[Any, Any], *, host: str, port: int) -> Any:
    """``server`` over streamable HTTP at :data:`MCP_PATH`, as a Starlette app.

    Only loopback is meant to serve it (the command refuses anything else):
    the MCP endpoint spends this process's delegated tokens for whoever
    reaches it. Host and Origin headers are checked against the loopback
    address (DNS rebinding protection), so a web page cannot reach it through
    the browser.
    """
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.routing import Route

    shown = f"[{host}]" if ":" in host else host
    hosts = [f"{shown}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]
    manager = StreamableHTTPSessionManager(
        app=server,
        security_settings=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=hosts,
            allowed_origins=[f"http://{name}" for name in hosts],
        ),
    )

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return Starlette(routes=[Route(MCP_PATH, endpoint=_Endpoint(manager))], lifespan=lifespan)
