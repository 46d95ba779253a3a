"""``authsec-crewai serve-mcp``: the secure fetch tool served to MCP hosts.

Each test starts the command as a real subprocess, as Claude Desktop or an IDE
would, and drives it with the MCP SDK's stdio client (or its streamable HTTP
client for ``--http``). The tool must answer exactly as the CrewAI tool does
(the same ``ToolBinding`` call, made here in process, is the reference), in
mock mode and in live mode against the mock AuthSec server on 127.0.0.1, and
no token may appear in any MCP message, nor on standard error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from _server import MockServer
from click.testing import CliRunner
from mcpkit import JWT_SHAPED, mcp_session, serve_mcp_command, server_env, text_of

from authsec_crewai._toolruntime import ToolBinding, close_shared_brokers
from authsec_crewai.cli import main
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.testing import TOKEN_PATH
from authsec_crewai.toolspec import DEFAULT_TOOL_NAME, arguments_schema, describe_tool

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_env")]

TOOL = DEFAULT_TOOL_NAME
RECORDS = {"endpoint": "secure-vault/records", "scope": "read:records"}


@pytest.fixture(autouse=True)
def shared_brokers_closed() -> Iterator[None]:
    """The in-process reference calls start shared brokers: none outlives its test."""
    close_shared_brokers()
    yield
    close_shared_brokers()


def crewai_tool_answer(settings: AuthSecSettings, **arguments: Any) -> str:
    """What the CrewAI tool (the same binding, in this process) answers to ``arguments``."""
    binding = ToolBinding.create(settings=settings)
    return binding.call(arguments["endpoint"], arguments["scope"], arguments.get("params"))


def _live_env(server: MockServer, client_id: str, **extra: str) -> dict[str, str]:
    return server_env(
        AUTHSEC_MODE="live",
        AUTHSEC_BASE_URL=server.url,
        AUTHSEC_CLIENT_ID=client_id,
        AUTHSEC_RETRY_BUDGET="0",
        **extra,
    )


async def test_mock_mode_lists_the_one_tool_and_answers_like_the_crewai_tool(
    tmp_path: Path,
) -> None:
    env = server_env(AUTHSEC_MODE="mock", AUTHSEC_ALLOWED_SCOPES="read:records,read:metrics")
    settings = AuthSecSettings(mode="mock", allowed_scopes=["read:records", "read:metrics"])
    with (tmp_path / "stderr").open("w+") as errlog:
        async with mcp_session(env, errlog, cwd=tmp_path) as (session, wire):
            (tool,) = (await session.list_tools()).tools
            ok = await session.call_tool(TOOL, RECORDS)
            paged = await session.call_tool(
                TOOL, {**RECORDS, "params": [{"name": "page", "value": "1"}]}
            )
            traversal = await session.call_tool(TOOL, {**RECORDS, "endpoint": "../admin"})
            elsewhere = await session.call_tool(
                TOOL, {**RECORDS, "endpoint": "https://evil.example/records"}
            )
            unlisted = await session.call_tool(TOOL, {**RECORDS, "scope": "write:records"})
            missing = await session.call_tool(TOOL, {"endpoint": "secure-vault/records"})
    assert tool.name == TOOL
    assert tool.inputSchema == arguments_schema()
    assert tool.description == describe_tool(settings)
    assert tool.annotations is not None and tool.annotations.readOnlyHint is True

    assert ok.isError is False and paged.isError is False
    answer = json.loads(text_of(ok))
    assert answer["status"] == "ok" and answer["data"]["count"] == 6
    assert answer == json.loads(crewai_tool_answer(settings, **RECORDS))
    # A refused endpoint and a scope outside the allowlist: the CrewAI tool's very text.
    for result, arguments, kind in (
        (traversal, {**RECORDS, "endpoint": "../admin"}, "endpoint_refused"),
        (elsewhere, {**RECORDS, "endpoint": "https://evil.example/records"}, "endpoint_refused"),
        (unlisted, {**RECORDS, "scope": "write:records"}, "scope_refused"),
    ):
        assert result.isError is True
        assert text_of(result) == crewai_tool_answer(settings, **arguments)
        assert json.loads(text_of(result))["error"] == kind
    # Arguments that are not the tool's are an answer too, not a protocol error.
    refused = json.loads(text_of(missing))
    assert missing.isError is True
    assert (refused["error"], refused["retryable"]) == ("invalid_arguments", False)
    assert "scope" in refused["message"]
    assert not JWT_SHAPED.search(wire.text())


async def test_live_mode_against_the_mock_authsec_server_never_shows_the_token(
    authsec_server: MockServer, client_id: str, tmp_path: Path
) -> None:
    authsec_server.authority.delegate(client_id, permissions=["read:records"])
    env = _live_env(authsec_server, client_id)
    settings = AuthSecSettings(
        mode="live", base_url=authsec_server.url, client_id=client_id, retry_budget=0
    )
    with (tmp_path / "stderr").open("w+") as errlog:
        async with mcp_session(env, errlog, "-vv", cwd=tmp_path) as (session, wire):
            first = await session.call_tool(TOOL, RECORDS)
            second = await session.call_tool(TOOL, RECORDS)
            not_granted = await session.call_tool(
                TOOL, {"endpoint": "secure-vault/metrics", "scope": "read:metrics"}
            )
        errlog.seek(0)
        logged = errlog.read()
    token = authsec_server.authority.token_answer(client_id)[1]["token"]
    assert first.isError is False and second.isError is False
    assert json.loads(text_of(first))["data"]["count"] == 6
    # One token, from the broker's cache for the second call; two calls reached the vault.
    assert authsec_server.count(TOKEN_PATH) == 1
    assert authsec_server.agent_counts[(client_id, "/secure-vault/records")] == 2
    # A scope the delegation does not grant: refused as the CrewAI tool refuses it.
    assert not_granted.isError is True
    expected = crewai_tool_answer(settings, endpoint="secure-vault/metrics", scope="read:metrics")
    assert text_of(not_granted) == expected
    assert json.loads(expected)["error"] == "insufficient_scope"
    # The token is in no MCP message and no log line; the logs did go to stderr.
    assert "fetch.ok" in logged
    for sink in (wire.text(), logged):
        assert token not in sink
        assert token.rsplit(".", 1)[0] not in sink
        assert not JWT_SHAPED.search(sink)


STRAY_WRITER = """
import os, sys
from authsec_crewai import _toolruntime

original = _toolruntime.fetch_text


async def fetch_text(*args, **kwargs):
    print("stray print from a tool call")
    os.write(1, b"stray bytes on file descriptor 1\\n")
    return await original(*args, **kwargs)


_toolruntime.fetch_text = fetch_text
from authsec_crewai.cli import main

sys.argv = ["authsec-crewai", "-vv", "serve-mcp"]
main()
"""


def _request(ident: int, method: str, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": ident, "method": method}
    if params is not None:
        message["params"] = params
    return (json.dumps(message) + "\n").encode()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_standard_output_carries_nothing_but_the_protocol(tmp_path: Path) -> None:
    """Log lines, a print and raw writes to fd 1 during a call all end on stderr."""
    initialize = {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw-host", "version": "0"},
    }
    script = [
        _request(1, "initialize", initialize),
        b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n',
        _request(2, "tools/list"),
        _request(3, "tools/call", {"name": TOOL, "arguments": RECORDS}),
    ]
    stderr_file = tmp_path / "stderr"
    with stderr_file.open("wb") as errlog:
        async with await anyio.open_process(
            [sys.executable, "-c", STRAY_WRITER],
            env=server_env(AUTHSEC_MODE="mock"),
            cwd=tmp_path,
            stderr=errlog,
        ) as process:
            assert process.stdin is not None and process.stdout is not None
            await process.stdin.send(b"".join(script))
            received = b""
            with anyio.fail_after(60):
                while received.count(b"\n") < 3:  # an answer to each request ...
                    received += await process.stdout.receive()
            await process.stdin.aclose()  # ... then the host hangs up
            with anyio.fail_after(30):
                async for chunk in process.stdout:
                    received += chunk
                assert await process.wait() == 0
    lines = received.decode().splitlines()
    messages = [json.loads(line) for line in lines]  # every line is JSON ...
    assert all(m["jsonrpc"] == "2.0" for m in messages)  # ... and JSON-RPC
    assert [m.get("id") for m in messages] == [1, 2, 3]
    answer = json.loads(messages[2]["result"]["content"][0]["text"])
    assert answer["status"] == "ok"
    stderr = stderr_file.read_text()
    assert "stray print from a tool call" in stderr
    assert "stray bytes on file descriptor 1" in stderr
    assert "fetch.ok" in stderr  # -vv: the library's log lines, on stderr


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_streamable_http_on_loopback(tmp_path: Path) -> None:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with await anyio.open_process(
        [*serve_mcp_command(), "--http", "--port", "0"],
        env=server_env(AUTHSEC_MODE="mock"),
        cwd=tmp_path,
    ) as process:
        assert process.stderr is not None and process.stdout is not None
        said = b""
        with anyio.fail_after(30):
            while b"\n" not in said:
                said += await process.stderr.receive()
        line = said.decode().splitlines()[0]
        assert line.startswith("MCP server on http://127.0.0.1:"), line
        url = line.split()[-1]
        assert url.endswith("/mcp")
        async with (
            streamable_http_client(url) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            (tool,) = (await session.list_tools()).tools
            result = await session.call_tool(TOOL, RECORDS)
            refused = await session.call_tool(TOOL, {**RECORDS, "endpoint": "//evil/x"})
        process.terminate()
        with anyio.fail_after(10):
            printed = b"".join([chunk async for chunk in process.stdout])
            await process.wait()
    assert tool.name == TOOL
    assert json.loads(text_of(result))["status"] == "ok"
    assert json.loads(text_of(refused))["error"] == "endpoint_refused"
    assert not JWT_SHAPED.search(text_of(result))
    assert printed == b""


def test_http_only_on_loopback() -> None:
    result = CliRunner().invoke(
        main, ["serve-mcp", "--http", "--host", "0.0.0.0"], env={"AUTHSEC_MODE": "mock"}
    )
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --host '0.0.0.0' is not a loopback address")


def test_a_broken_configuration_stops_before_any_host_connects() -> None:
    result = CliRunner().invoke(main, ["serve-mcp"], env={"AUTHSEC_MODE": "live"}, input="")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: AUTHSEC_BASE_URL is not set")
    assert result.stdout == ""  # nothing on the protocol channel


def test_serve_mcp_has_help() -> None:
    result = CliRunner().invoke(main, ["serve-mcp", "--help"])
    assert result.exit_code == 0
    for text in ("authsec_secure_vault_fetcher", "--http", "standard error", "AUTHSEC_"):
        assert text in result.output
