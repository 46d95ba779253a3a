"""Many agents, one runtime: tools per agent identity, and real crews of two agents.

A tool acts for one agent: ``client_id=``, ``tool.for_agent(role)`` or
``assign_identities(crew)`` (roles from ``AUTHSEC_AGENTS`` or an argument).
However many identities, the process runs one broker runtime. The crews run
for real (``Crew.kickoff()`` / ``akickoff()``, native and ReAct), against the
mock AuthSec server over loopback, whose per-agent counters prove which
agent's token reached the API and that a refused scope never did.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from _server import LoopbackServer, MockServer
from crewai import Agent, Crew, Task
from crewkit import crewai_env, shared_brokers_closed  # noqa: F401 (autouse fixtures)
from joserfc.jwk import RSAKey

from authsec_crewai import errors
from authsec_crewai.demo import DEMO_AGENTS, ScriptedVaultLLM, build_two_agent_crew
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.testing import TOKEN_PATH, MockAuthority, MockFaults, create_app
from authsec_crewai.tools import (
    AsyncAuthSecSecureFetchTool,
    AuthSecSecureFetchTool,
    assign_identities,
)
from authsec_crewai.transports import MockTransport

pytestmark = pytest.mark.crew

ANALYST, WRITER = DEMO_AGENTS
RECORDS, METRICS = "/secure-vault/records", "/secure-vault/metrics"


@pytest.fixture
def crew_server(loopback_server: LoopbackServer, rsa_key: RSAKey) -> Iterator[MockServer]:
    """The mock server on loopback knowing the demo's two agents; any other id gets 404."""
    authority = MockAuthority(
        key=rsa_key,
        agents={member.client_id: member.grants for member in DEMO_AGENTS},
        unknown_agents="refuse",
    )
    faults = MockFaults()
    app = create_app(authority, faults=faults)
    loopback_server.app = app
    try:
        yield MockServer(url=loopback_server.url, app=app, authority=authority, faults=faults)
    finally:
        loopback_server.app = None


def _live(server: MockServer) -> AuthSecSettings:
    """Live settings whose only identities are the crew's agents (no AUTHSEC_CLIENT_ID)."""
    agents = {member.role: member.client_id for member in DEMO_AGENTS}
    return AuthSecSettings(mode="live", base_url=server.url, agents=agents)


def _token_requests(server: MockServer) -> Counter[tuple[str, str | None]]:
    """Token requests that reached the server, per (client id, requested scopes)."""
    return Counter(
        (r.query["client_id"], r.query.get("scope"))
        for r in server.requests
        if r.path == TOKEN_PATH
    )


def _assert_each_agent_used_its_own_identity(server: MockServer) -> None:
    """Each agent asked for its own tokens (once per scope set) and called only what it may."""
    vault_calls = {key: n for key, n in server.agent_counts.items() if key[1] != TOKEN_PATH}
    assert vault_calls == {(ANALYST.client_id, RECORDS): 1, (WRITER.client_id, METRICS): 1}
    # The refused reads never reached the API, under any identity.
    assert server.counts[RECORDS] == 1 and server.counts[METRICS] == 1
    asked = _token_requests(server)
    assert {client_id for client_id, _ in asked} == {ANALYST.client_id, WRITER.client_id}
    assert set(asked.values()) == {1}, asked  # one request per agent and scope set


def _assert_answers(outputs: list[str]) -> None:
    analyst, writer = outputs
    assert "secure-vault/records: 6 people on file" in analyst
    assert "grants read:records, not read:metrics" in analyst
    assert "secure-vault/metrics: 2026-Q2 revenue" in writer
    assert "grants read:metrics, not read:records" in writer
    for answer in outputs:
        assert "1 of 2 reads succeeded; every refusal happened before the API" in answer
        assert "eyJ" not in answer


# --- crews of two agents ------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["kickoff", "akickoff"])
@pytest.mark.parametrize("native", [True, False], ids=["native", "react"])
@pytest.mark.parametrize("tool_cls", [AuthSecSecureFetchTool, AsyncAuthSecSecureFetchTool])
def test_two_agents_on_two_identities_each_call_as_themselves(
    tool_cls: type[AuthSecSecureFetchTool], native: bool, entry: str, crew_server: MockServer
) -> None:
    tool = tool_cls(settings=_live(crew_server))
    crew = build_two_agent_crew(tool, native=native)  # assign_identities by role
    output = crew.kickoff() if entry == "kickoff" else asyncio.run(crew.akickoff())
    _assert_answers([task.raw for task in output.tasks_output])
    _assert_each_agent_used_its_own_identity(crew_server)


def _crew(analyst_tool: Any, writer_tool: Any) -> Crew:
    agents, tasks = [], []
    for member, tool in ((ANALYST, analyst_tool), (WRITER, writer_tool)):
        agent = Agent(
            role=member.role,
            goal=member.goal,
            backstory="Careful.",
            llm=ScriptedVaultLLM(plan=list(member.plan)),
            tools=[tool],
            allow_delegation=False,
            max_iter=6,
        )
        agents.append(agent)
        tasks.append(Task(description="Read and report.", expected_output="A report.", agent=agent))
    return Crew(agents=agents, tasks=tasks)


def test_roles_from_authsec_agents_in_the_environment(
    crew_server: MockServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTHSEC_MODE", "live")
    monkeypatch.setenv("AUTHSEC_BASE_URL", crew_server.url)
    # Roles match regardless of case and spacing.
    monkeypatch.setenv(
        "AUTHSEC_AGENTS", f"  analyst ={ANALYST.client_id},WRITER={WRITER.client_id}"
    )
    tool = AuthSecSecureFetchTool()  # everything from the environment
    crew = _crew(tool, tool)
    assign_identities(crew)
    output = crew.kickoff()
    _assert_answers([task.raw for task in output.tasks_output])
    _assert_each_agent_used_its_own_identity(crew_server)


def test_explicit_client_ids_per_tool(crew_server: MockServer) -> None:
    settings = _live(crew_server)
    analyst = AuthSecSecureFetchTool(settings=settings, client_id=ANALYST.client_id)
    writer = AuthSecSecureFetchTool(settings=settings, client_id=WRITER.client_id)
    assert (analyst.client_id, writer.client_id) == (ANALYST.client_id, WRITER.client_id)
    crew = _crew(analyst, writer)
    assign_identities(crew, agents={"Analyst": WRITER.client_id})  # explicit ids are kept
    output = crew.kickoff()
    _assert_answers([task.raw for task in output.tasks_output])
    _assert_each_agent_used_its_own_identity(crew_server)


def test_task_tools_are_given_the_task_agents_identity(crew_server: MockServer) -> None:
    """CrewAI runs a task's own tools instead of its agent's: those act as the agent too."""
    tool = AuthSecSecureFetchTool(settings=_live(crew_server))
    crew = _crew(tool, tool)
    for task in crew.tasks:
        task.tools = [tool]
    assign_identities(crew, agents={m.role: m.client_id for m in DEMO_AGENTS})
    assert [t.tools[0].client_id for t in crew.tasks] == [ANALYST.client_id, WRITER.client_id]
    output = crew.kickoff()
    _assert_answers([task.raw for task in output.tasks_output])
    _assert_each_agent_used_its_own_identity(crew_server)


def test_an_agent_without_a_client_id_is_refused_by_name() -> None:
    tool = AuthSecSecureFetchTool(settings=AuthSecSettings(mode="mock"))
    crew = _crew(tool, tool)
    with pytest.raises(errors.ConfigurationError) as info:
        assign_identities(crew, agents={"Analyst": ANALYST.client_id})
    assert "'Writer' has no client id in agents=" in str(info.value)
    with pytest.raises(errors.ConfigurationError, match="no client id in AUTHSEC_AGENTS"):
        tool.for_agent("Writer")
    with pytest.raises(errors.ConfigurationError, match="agents=: the client id of role 'x'"):
        tool.for_agent("x", agents={"x": "not-a-uuid"})


# --- async tools on asyncio and trio -------------------------------------------------------------


@pytest.mark.anyio
async def test_async_tools_of_two_agents_call_as_themselves(crew_server: MockServer) -> None:
    tool = AsyncAuthSecSecureFetchTool(settings=_live(crew_server))
    analyst, writer = (tool.for_agent(m.role, agents={m.role: m.client_id}) for m in DEMO_AGENTS)
    results: dict[tuple[str, str], str] = {}

    async def call(agent_tool: AsyncAuthSecSecureFetchTool, name: str, resource: str) -> None:
        results[name, resource] = await agent_tool.arun(
            endpoint=f"secure-vault/{resource}", scope=f"read:{resource}"
        )

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(call, analyst, "analyst", "records")
            tg.start_soon(call, writer, "writer", "metrics")
        tg.start_soon(call, analyst, "analyst", "metrics")
        tg.start_soon(call, writer, "writer", "records")
    assert results["analyst", "records"].startswith('{"status": "ok"')
    assert results["writer", "metrics"].startswith('{"status": "ok"')
    assert '"insufficient_scope"' in results["analyst", "metrics"]
    assert '"insufficient_scope"' in results["writer", "records"]
    counts = crew_server.agent_counts
    asked = _token_requests(crew_server)
    for member in DEMO_AGENTS:  # once per agent and granted scope; a refused one at most once
        assert asked[member.client_id, member.grants[0]] == 1
    assert set(asked.values()) == {1}
    assert counts[ANALYST.client_id, RECORDS] == counts[WRITER.client_id, METRICS] == 20
    assert counts[ANALYST.client_id, METRICS] == counts[WRITER.client_id, RECORDS] == 0


# --- one runtime however many identities ------------------------------------------------------


def test_500_identities_through_the_sync_tool_add_no_threads() -> None:
    settings = AuthSecSettings(mode="mock")
    transport = MockTransport()
    identities = [str(uuid.uuid4()) for _ in range(500)]
    first = AuthSecSecureFetchTool(settings=settings, transport=transport, client_id=identities[0])
    assert first._run(endpoint="secure-vault/metrics", scope="read:metrics").startswith(
        '{"status": "ok"'
    )
    threads_with_one_identity = threading.active_count()
    results: Counter[bool] = Counter()
    for client_id in identities:
        tool = AuthSecSecureFetchTool(settings=settings, transport=transport, client_id=client_id)
        result = tool._run(endpoint="secure-vault/metrics", scope="read:metrics")
        results[result.startswith('{"status": "ok"')] += 1
        assert tool.broker is first.broker  # one broker for every identity
    assert results == {True: 500}
    assert threading.active_count() == threads_with_one_identity
    assert transport.calls == 500  # one token per identity, each fetched once
    issued_to = {
        body["client_id"] for body in (transport.authority.token_answer(c)[1] for c in identities)
    }
    assert issued_to == set(identities)


# --- the tool's keywords ----------------------------------------------------------------------


@pytest.mark.parametrize("tool_cls", [AuthSecSecureFetchTool, AsyncAuthSecSecureFetchTool])
def test_an_unknown_keyword_is_an_error_that_names_it(
    tool_cls: type[AuthSecSecureFetchTool],
) -> None:
    with pytest.raises(TypeError) as info:
        tool_cls(client_id=ANALYST.client_id, bogus_option=3)
    message = str(info.value)
    assert "'bogus_option'" in message and tool_cls.__name__ in message
    assert "client_id" in message  # says what it does take
    with pytest.raises(TypeError, match="'clientid', 'setting'"):
        tool_cls(setting=None, clientid=ANALYST.client_id)


def test_a_client_id_that_is_not_a_uuid_is_refused() -> None:
    with pytest.raises(errors.ConfigurationError, match="client_id 'analyst' must be"):
        AuthSecSecureFetchTool(settings=AuthSecSettings(mode="mock"), client_id="analyst")


def test_assign_identities_takes_a_list_of_agents_too() -> None:
    tool = AuthSecSecureFetchTool(settings=AuthSecSettings(mode="mock"))
    crew = _crew(tool, tool)
    assign_identities(crew.agents, agents={m.role: m.client_id for m in DEMO_AGENTS})
    bound = [agent.tools[0] for agent in crew.agents]
    assert [t.client_id for t in bound] == [ANALYST.client_id, WRITER.client_id]
    assert bound[0].broker is bound[1].broker is tool.broker
    assert tool.client_id != ANALYST.client_id  # the original tool is left as it was


@pytest.mark.anyio
async def test_tools_name_agents_on_a_broker_you_own(rsa_key: RSAKey) -> None:
    from authsec_crewai import TokenBroker

    authority = MockAuthority(
        key=rsa_key, agents={m.client_id: m.grants for m in DEMO_AGENTS}, unknown_agents="refuse"
    )
    async with TokenBroker(MockTransport(authority=authority)) as broker:  # no default agent
        tools = {
            m.role: AsyncAuthSecSecureFetchTool(broker=broker, client_id=m.client_id)
            for m in DEMO_AGENTS
        }
        ok = await tools["Writer"].arun(endpoint="secure-vault/metrics", scope="read:metrics")
        refused = await tools["Writer"].arun(endpoint="secure-vault/records", scope="read:records")
        assert ok.startswith('{"status": "ok"') and '"insufficient_scope"' in refused
        assert broker.agent(WRITER.client_id).stats.fetches == 1
        assert broker.agent(ANALYST.client_id).stats.fetches == 0
        unnamed = AsyncAuthSecSecureFetchTool(broker=broker)
        answer = await unnamed.arun(endpoint="secure-vault/metrics", scope="read:metrics")
        assert '"error": "configuration"' in answer  # no default agent: never another's


@pytest.mark.anyio
async def test_agents_async_tools_on_one_loop_share_one_api_pool(crew_server: MockServer) -> None:
    """A pool per agent would mean connections per identity; one per loop serves them all."""
    tool = AsyncAuthSecSecureFetchTool(settings=_live(crew_server))
    tools = [tool.for_agent(m.role) for m in DEMO_AGENTS for _ in range(3)]
    answers: list[str] = []

    async def call(agent_tool: AsyncAuthSecSecureFetchTool) -> None:
        answers.append(await agent_tool.arun(endpoint="secure-vault/metrics", scope="read:metrics"))

    async with anyio.create_task_group() as tg:
        for agent_tool in tools:
            tg.start_soon(call, agent_tool)
    assert sum('"status": "ok"' in a for a in answers) == 3  # the writer's three
    assert sum('"insufficient_scope"' in a for a in answers) == 3  # the analyst's, refused
    pools = {id(t._binding.fetcher_on_this_loop()._api_transport) for t in tools}
    assert len(pools) == 1
    assert {t.broker for t in tools} == {tool.broker}
