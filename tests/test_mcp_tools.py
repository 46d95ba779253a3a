"""MCP server tools as CrewAI tools, authorized per call (``authsec_crewai.integrations.mcp``).

Against :class:`MCPTestServer`: a real FastMCP server that accepts only live
tokens the test authorization server issued for its own URL. Two agents, each
an OAuth client of its own on a broker of its own, run in a real
``Crew.kickoff()`` with scripted models; the server records which token each
call carried.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from crewai import Agent, BaseLLM, Crew, Task
from crewkit import crewai_env, shared_brokers_closed  # noqa: F401 (autouse fixtures)
from joserfc.jwk import RSAKey
from structlog.testing import capture_logs

from authsec_crewai import SyncTokenBroker
from authsec_crewai.demo import observed_results
from authsec_crewai.integrations.mcp import MCPServer, MCPTool
from authsec_crewai.testing import MCPTestServer, OAuthAuthority
from authsec_crewai.tools import close_shared_brokers
from authsec_crewai.transports import OAuthTransport

pytestmark = pytest.mark.crew

SCOPE = "mcp:tools"
AGENTS = {"Analyst": "agent-analyst", "Auditor": "agent-auditor"}
SECRETS = {client: f"{client} s3cret" for client in AGENTS.values()}


@pytest.fixture
def mcp_server(as_key: RSAKey) -> Iterator[MCPTestServer]:
    authority = OAuthAuthority(key=as_key, path="/as")
    for client, secret in SECRETS.items():
        authority.register_client(client, secret=secret, scopes=[SCOPE])
    with MCPTestServer(authority, scopes=[SCOPE]) as server:
        yield server
        close_shared_brokers()  # the pooled sessions say goodbye while the server listens


@pytest.fixture
def brokers(mcp_server: MCPTestServer) -> Iterator[dict[str, SyncTokenBroker]]:
    """One broker per agent: an OAuth client is one transport, with its own secret."""
    opened: dict[str, SyncTokenBroker] = {}
    try:
        for client, secret in SECRETS.items():
            transport = OAuthTransport(
                resource=mcp_server.mcp_url, client_id=client, client_secret=secret
            )
            opened[client] = SyncTokenBroker(transport, client_id=client).__enter__()
        yield opened
    finally:
        for broker in opened.values():
            broker.__exit__(None, None, None)


def _tools(server: MCPTestServer, broker: SyncTokenBroker) -> dict[str, MCPTool]:
    return {t.name: t for t in MCPServer(server.mcp_url, broker=broker, scopes=SCOPE).tools()}


def test_each_mcp_tool_is_a_crewai_tool_with_the_servers_schema(
    mcp_server: MCPTestServer, brokers: dict[str, SyncTokenBroker]
) -> None:
    tools = _tools(mcp_server, brokers["agent-analyst"])
    assert set(tools) == {"whoami", "lookup_record", "echo_token", "big", "fail"}
    lookup = tools["lookup_record"]
    assert lookup.description == "One record of the vault, by its id."
    schema = lookup.args_schema.model_json_schema()
    assert schema["required"] == ["record_id"]
    assert schema["properties"]["record_id"]["type"] == "string"
    assert lookup.args_schema.model_validate({"record_id": "r-1"}).model_dump() == {
        "record_id": "r-1",
        "include_history": False,
    }
    answer = json.loads(lookup._run(record_id="r-1", include_history=True))
    assert answer["status"] == "ok" and answer["tool"] == "lookup_record"
    record = json.loads(answer["data"]["result"])
    assert record == {"id": "r-1", "reader": "agent-analyst", "history": ["created", "reviewed"]}
    refused = json.loads(lookup._run())  # never reaches the server
    assert (refused["error"], refused["retryable"]) == ("invalid_arguments", False)
    assert [c.tool for c in mcp_server.calls] == ["lookup_record"]


def test_answers_are_scrubbed_capped_and_failures_are_json(
    mcp_server: MCPTestServer, brokers: dict[str, SyncTokenBroker]
) -> None:
    broker = brokers["agent-analyst"]
    tools = _tools(mcp_server, broker)
    token = broker.token(SCOPE)
    echoed = tools["echo_token"]._run()
    assert token.value not in echoed and token.value.rsplit(".", 1)[0] not in echoed
    assert f"jwt:{token.fingerprint}" in echoed
    small = MCPServer(mcp_server.mcp_url, broker=broker, scopes=SCOPE, max_result_bytes=500)
    capped = json.loads(small.call("big", {"size": 600}))
    fits = json.loads(small.call("big", {"size": 100}))
    assert capped["error"] == "response_too_large" and fits["status"] == "ok"
    failed = json.loads(tools["fail"]._run())
    assert failed["status"] == "error" and failed["error"] == "tool_error"
    assert "the record store is down" in failed["message"]
    nowhere = MCPServer("http://127.0.0.1:9/mcp", broker=broker, scopes=SCOPE)
    unreachable = json.loads(nowhere.call("whoami", {}))
    assert (unreachable["error"], unreachable["retryable"]) == ("api_error", True)
    assert token.value not in repr(small) + repr(tools["whoami"])


@pytest.mark.anyio
async def test_the_async_tool_on_asyncio_and_trio_refetches_once_after_a_refusal(
    mcp_server: MCPTestServer,
    brokers: dict[str, SyncTokenBroker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = brokers["agent-auditor"]
    server = MCPServer(mcp_server.mcp_url, broker=broker, scopes=SCOPE)
    caplog.set_level(logging.DEBUG)
    with capture_logs() as events:
        tools = {tool.name: tool for tool in await server.atools()}
        first = json.loads(await tools["whoami"]._arun())
        tokens = [broker.token(SCOPE).value]
        before = mcp_server.token_requests
        mcp_server.forget_tokens()
        second = json.loads(await tools["lookup_record"]._arun(record_id="r-9"))
        tokens.append(broker.token(SCOPE).value)
    assert first["status"] == second["status"] == "ok"
    assert json.loads(second["data"]["result"])["reader"] == "agent-auditor"
    assert mcp_server.token_requests == before + 1
    assert tokens[0] != tokens[1]
    logged = repr(events) + caplog.text
    assert "HTTP Request: POST" in caplog.text  # the HTTP stack logged: the search means something
    for token in tokens:  # no token in any log line, the library's or the HTTP stack's
        assert token not in logged and token.rsplit(".", 1)[0] not in logged


class RecordReader(BaseLLM):
    """A scripted native function-calling model: read one record, then report its reader."""

    record: str = "r-1"

    def __init__(self, **data: Any) -> None:
        data.setdefault("model", "scripted-mcp")
        super().__init__(**data)

    def supports_function_calling(self) -> bool:
        return True

    def get_context_window_size(self) -> int:
        return 1_000_000

    def call(
        self,
        messages: Any,
        tools: list[dict[str, Any]] | None = None,
        callbacks: list[Any] | None = None,
        available_functions: dict[str, Any] | None = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> Any:
        results = observed_results(messages)
        if results or not tools:
            readers = [
                json.loads(r["data"]["result"])["reader"] if r["status"] == "ok" else r["error"]
                for r in results
            ]
            return f"readers={','.join(readers)}"
        (lookup,) = [t for t in tools if t["function"]["name"] == "lookup_record"]
        arguments = json.dumps({"record_id": self.record})
        return [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": lookup["function"]["name"], "arguments": arguments},
            }
        ]


def _crew(server: MCPTestServer, brokers: dict[str, SyncTokenBroker]) -> Crew:
    agents, tasks = [], []
    for role, client in AGENTS.items():
        tools = _tools(server, brokers[client])
        agent = Agent(
            role=role,
            goal="Read a record through the MCP server",
            backstory="Careful.",
            llm=RecordReader(record=f"r-{role.lower()}"),
            tools=[tools["lookup_record"]],
            allow_delegation=False,
            verbose=False,
            max_iter=4,
        )
        agents.append(agent)
        tasks.append(
            Task(description="Read your record.", expected_output="Its reader.", agent=agent)
        )
    return Crew(agents=agents, tasks=tasks, verbose=False)


def test_a_crew_of_two_identities_calls_mcp_tools_and_outlives_a_forgetful_authority(
    mcp_server: MCPTestServer, brokers: dict[str, SyncTokenBroker]
) -> None:
    crew = _crew(mcp_server, brokers)
    crew.kickoff()
    first = [task.output.raw for task in crew.tasks]
    assert mcp_server.token_requests == 2  # one token per agent, for every request
    mcp_server.forget_tokens()
    crew.kickoff()
    second = [task.output.raw for task in crew.tasks]
    assert mcp_server.token_requests == 4  # exactly one more per agent

    assert first == second == [f"readers={client}" for client in AGENTS.values()]
    calls = [c for c in mcp_server.calls if c.tool == "lookup_record"]
    assert [c.client_id for c in calls] == [*AGENTS.values(), *AGENTS.values()]
    by_agent: dict[str, set[str]] = {}
    for call in calls:
        by_agent.setdefault(call.client_id, set()).add(call.token_fingerprint)
    analyst, auditor = by_agent["agent-analyst"], by_agent["agent-auditor"]
    assert len(analyst) == len(auditor) == 2  # a fresh token after the authority forgot
    assert not analyst & auditor  # two identities never share a token


def test_assign_identities_gives_each_agent_its_own_mcp_identity() -> None:
    """By role, as for the fetch tool; an identity given explicitly is kept."""
    import uuid

    from mcp import types

    from authsec_crewai import errors
    from authsec_crewai.tools import assign_identities
    from authsec_crewai.transports import MockTransport

    analyst, auditor, fixed = (str(uuid.uuid4()) for _ in range(3))
    declared = types.Tool(name="whoami", inputSchema={"type": "object", "properties": {}})
    with SyncTokenBroker(MockTransport(), client_id=fixed) as broker:
        shared = MCPServer("http://127.0.0.1:9/mcp", broker=broker, scopes="read:records")
        pinned = MCPServer(
            "http://127.0.0.1:9/mcp", broker=broker, scopes="read:records", client_id=fixed
        )
        members = [
            Agent(role=role, goal="g", backstory="b", tools=[MCPTool.from_mcp(shared, declared)])
            for role in ("Analyst", "Auditor")
        ]
        members[1].tools.append(MCPTool.from_mcp(pinned, declared))
        assign_identities(members, agents={"analyst": analyst, "auditor": auditor})
        ids = [[tool.server.client_id for tool in member.tools] for member in members]
        assert ids == [[analyst], [auditor, fixed]]
        assert shared.client_id is None  # the original is untouched: copies act as agents
        stranger = Agent(
            role="Stranger", goal="g", backstory="b", tools=[MCPTool.from_mcp(shared, declared)]
        )
        with pytest.raises(errors.ConfigurationError, match="Stranger"):
            assign_identities([stranger], agents={"analyst": analyst})


def test_no_token_in_any_span_of_an_mcp_call(
    mcp_server: MCPTestServer,
    brokers: dict[str, SyncTokenBroker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from authsec_crewai import telemetry

    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)  # crewkit quiets the SDK
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.instrument(tracer_provider=tracers)
    broker = brokers["agent-analyst"]
    try:
        answer = json.loads(_tools(mcp_server, broker)["echo_token"]._run())
        token = broker.token(SCOPE)
    finally:
        telemetry.instrument()
        tracers.shutdown()
    spans = exporter.get_finished_spans()
    calls = [s for s in spans if s.name == "authsec.api.call"]
    assert answer["status"] == "ok" and calls  # every MCP request had a span
    dump = "\n".join(
        json.dumps(dict(s.attributes or {}))
        + json.dumps([dict(e.attributes or {}) for e in s.events])
        for s in spans
    )
    for part in token.value.split("."):
        assert part not in dump


# --- pooled sessions: one per (server, agent) on the broker runtime's loop ---------------


def _session_ids(server: MCPTestServer, client: str | None = None) -> list[str | None]:
    """The session id of each tool call the server ran (for ``client``, if given), in order."""
    return [c.session_id for c in server.calls if client is None or c.client_id == client]


@pytest.mark.anyio
async def test_twenty_sequential_calls_sync_and_async_share_one_session(
    mcp_server: MCPTestServer, brokers: dict[str, SyncTokenBroker]
) -> None:
    server = MCPServer(mcp_server.mcp_url, broker=brokers["agent-analyst"], scopes=SCOPE)
    tools = {tool.name: tool for tool in await server.atools()}
    answers = [json.loads(await tools["whoami"]._arun()) for _ in range(15)]
    answers += [json.loads(await anyio.to_thread.run_sync(tools["whoami"]._run)) for _ in range(5)]
    assert [a["status"] for a in answers] == ["ok"] * 20
    assert mcp_server.sessions_opened() == 1  # the listing and all 20 calls: one initialize
    assert len(set(_session_ids(mcp_server))) == 1 and None not in _session_ids(mcp_server)
    assert mcp_server.sessions_closed() == []  # nothing closed between calls


@pytest.mark.anyio
async def test_fifty_concurrent_first_calls_open_one_session(
    mcp_server: MCPTestServer, brokers: dict[str, SyncTokenBroker]
) -> None:
    server = MCPServer(mcp_server.mcp_url, broker=brokers["agent-analyst"], scopes=SCOPE)
    answers: list[str] = []

    async def one(i: int) -> None:
        answers.append(await server.acall("lookup_record", {"record_id": f"r-{i}"}))

    async with anyio.create_task_group() as tasks:
        for i in range(50):
            tasks.start_soon(one, i)
    assert [json.loads(a)["status"] for a in answers] == ["ok"] * 50
    assert mcp_server.sessions_opened() == 1  # single flight: the 49 others waited for it
    assert len(set(_session_ids(mcp_server))) == 1
    assert len(mcp_server.calls) == 50


@pytest.mark.anyio
async def test_two_agents_get_a_session_each_and_never_each_others_tokens(
    mcp_server: MCPTestServer, brokers: dict[str, SyncTokenBroker]
) -> None:
    servers = {
        client: MCPServer(mcp_server.mcp_url, broker=broker, scopes=SCOPE)
        for client, broker in brokers.items()
    }
    async with anyio.create_task_group() as tasks:
        for _ in range(10):
            for server in servers.values():
                tasks.start_soon(server.acall, "whoami", {})
    assert mcp_server.sessions_opened() == 2
    sessions = {client: set(_session_ids(mcp_server, client)) for client in servers}
    assert all(len(ids) == 1 for ids in sessions.values())
    assert not sessions["agent-analyst"] & sessions["agent-auditor"]
    tokens = {
        client: {c.token_fingerprint for c in mcp_server.calls if c.client_id == client}
        for client in servers
    }
    assert [len(tokens[c]) for c in servers] == [1, 1] and not set.intersection(*tokens.values())
    for client, broker in brokers.items():  # each session carried its own agent's token only
        assert tokens[client] == {broker.token(SCOPE).fingerprint}
        in_session = [c for c in mcp_server.calls if c.session_id in sessions[client]]
        assert {c.client_id for c in in_session} == {client}


@pytest.mark.anyio
async def test_closing_the_shared_brokers_closes_the_session_and_the_next_call_opens_one(
    mcp_server: MCPTestServer, brokers: dict[str, SyncTokenBroker]
) -> None:
    from authsec_crewai.integrations import mcp

    server = MCPServer(mcp_server.mcp_url, broker=brokers["agent-auditor"], scopes=SCOPE)
    for _ in range(2):
        assert json.loads(await server.acall("whoami", {}))["status"] == "ok"
    (first,) = set(_session_ids(mcp_server))
    assert mcp_server.sessions_opened() == 1 and mcp_server.sessions_closed() == []
    await anyio.to_thread.run_sync(close_shared_brokers)
    assert mcp_server.sessions_closed() == [first]  # the client said goodbye: DELETE
    assert json.loads(await server.acall("whoami", {}))["status"] == "ok"
    assert mcp_server.sessions_opened() == 2
    assert _session_ids(mcp_server)[-1] not in (None, first)
    gc.collect()  # the closed runtime's pool is not kept: only the live runtime's remains
    assert list(mcp._pools) == [server._binding.runtime()]


@pytest.mark.anyio
async def test_a_session_the_server_forgot_is_reopened_once_and_the_call_succeeds(
    mcp_server: MCPTestServer, brokers: dict[str, SyncTokenBroker]
) -> None:
    server = MCPServer(mcp_server.mcp_url, broker=brokers["agent-analyst"], scopes=SCOPE)
    assert json.loads(await server.acall("whoami", {}))["status"] == "ok"
    mcp_server.forget_sessions()  # a restart: every later request of the session gets 404
    answer = json.loads(await server.acall("lookup_record", {"record_id": "r-2"}))
    assert answer["status"] == "ok", answer
    assert json.loads(answer["data"]["result"])["reader"] == "agent-analyst"
    assert mcp_server.sessions_opened() == 2  # exactly one reopen
    assert [r.method for r in mcp_server.requests].count("tools/call") == 3  # one 404'd, resent
    assert [c.tool for c in mcp_server.calls] == ["whoami", "lookup_record"]  # ran once each
    assert json.loads(await server.acall("whoami", {}))["status"] == "ok"
    assert mcp_server.sessions_opened() == 2  # the new session is pooled in turn
    first, second, third = _session_ids(mcp_server)
    assert first != second == third


@pytest.mark.anyio
async def test_a_session_whose_owner_ended_is_replaced_by_the_next_call(
    mcp_server: MCPTestServer, brokers: dict[str, SyncTokenBroker]
) -> None:
    """What a broken transport leaves behind (its owner task ended) is never reused."""
    from authsec_crewai.integrations import mcp

    server = MCPServer(mcp_server.mcp_url, broker=brokers["agent-auditor"], scopes=SCOPE)
    assert json.loads(await server.acall("whoami", {}))["status"] == "ok"
    runtime = server._binding.runtime()
    (pooled,) = mcp._pool_of(runtime).live.values()

    async def end_it() -> None:  # as the transport's task group crashing would
        pooled.scope.cancel()
        await pooled.finished.wait()

    await runtime.acall(end_it)
    assert not pooled.alive
    assert json.loads(await server.acall("whoami", {}))["status"] == "ok"
    assert mcp_server.sessions_opened() == 2
    first, second = _session_ids(mcp_server)
    assert first != second


@pytest.mark.anyio
async def test_a_pooled_session_refused_even_with_a_fresh_token_answers_401_and_is_dropped(
    mcp_server: MCPTestServer,
    brokers: dict[str, SyncTokenBroker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refusal of the request itself is the answer: no reopen, no retry of the call."""
    from authsec_crewai.testing import mcpserver

    server = MCPServer(mcp_server.mcp_url, broker=brokers["agent-analyst"], scopes=SCOPE)
    assert json.loads(await server.acall("whoami", {}))["status"] == "ok"
    before = mcp_server.token_requests

    async def refuse(self: object, token: str) -> None:
        return None

    monkeypatch.setattr(mcpserver._AuthorityVerifier, "verify_token", refuse)
    refused = json.loads(await server.acall("whoami", {}))
    assert refused["error"] == "api_error" and "HTTP 401" in refused["message"], refused
    assert "a fresh one too" in refused["message"]
    assert mcp_server.token_requests == before + 1  # BrokerAuth's one refetch
    assert mcp_server.sessions_opened() == 1  # not reopened
    monkeypatch.undo()
    assert json.loads(await server.acall("whoami", {}))["status"] == "ok"
    assert mcp_server.sessions_opened() == 2  # the refused session was not kept
