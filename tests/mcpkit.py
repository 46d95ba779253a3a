"""Drive ``authsec-crewai serve-mcp`` as an MCP host does: a real subprocess on stdio,
the MCP SDK's client, and every message on the wire kept for inspection."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.message import SessionMessage

ROOT = Path(__file__).resolve().parent.parent
JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.")
"""A JWT with its signature part begun: the shape no MCP message may carry."""


def server_env(**settings: str) -> dict[str, str]:
    """The environment of a serve-mcp process: this one's without AUTHSEC_*, plus
    ``settings`` and the worktree on the import path."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("AUTHSEC_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(settings)
    return env


def serve_mcp_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "authsec_crewai.cli", *args, "serve-mcp"]


@dataclass
class Wire:
    """Every JSON-RPC message the host sent and received, as the JSON on the wire."""

    messages: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(self.messages)


async def _tee_in(
    source: MemoryObjectReceiveStream[SessionMessage | Exception],
    sink: MemoryObjectSendStream[SessionMessage | Exception],
    wire: Wire,
) -> None:
    async with sink:
        async for item in source:
            if isinstance(item, SessionMessage):
                wire.messages.append(item.message.model_dump_json(by_alias=True))
            else:
                wire.messages.append(f"unreadable: {item!r}")
            await sink.send(item)


async def _tee_out(
    source: MemoryObjectReceiveStream[SessionMessage],
    sink: MemoryObjectSendStream[SessionMessage],
    wire: Wire,
) -> None:
    async for item in source:
        wire.messages.append(item.message.model_dump_json(by_alias=True))
        await sink.send(item)


@asynccontextmanager
async def mcp_session(
    env: Mapping[str, str], errlog: IO[str], *args: str, cwd: Path | None = None
) -> AsyncIterator[tuple[ClientSession, Wire]]:
    """An initialized session with a serve-mcp subprocess, and the wire between them."""
    params = StdioServerParameters(
        command=sys.executable,
        args=serve_mcp_command(*args)[1:],
        env=dict(env),
        cwd=cwd,
    )
    wire = Wire()
    async with stdio_client(params, errlog=errlog) as (read, write):
        inbound_send, inbound_recv = anyio.create_memory_object_stream[SessionMessage | Exception](
            0
        )
        outbound_send, outbound_recv = anyio.create_memory_object_stream[SessionMessage](0)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_tee_in, read, inbound_send, wire)
            tasks.start_soon(_tee_out, outbound_recv, write, wire)
            async with ClientSession(inbound_recv, outbound_send) as session:
                await session.initialize()
                yield session, wire
            tasks.cancel_scope.cancel()


def text_of(result: Any) -> str:
    """The one text block of a tool result."""
    (block,) = result.content
    assert block.type == "text"
    return str(block.text)
