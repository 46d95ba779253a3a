"""The LangChain, PydanticAI and OpenAI Agents adapters, each driven by its real framework
with a scripted model, offline. Every call of one corpus (successes, each guard's
refusal, an API error) must come back exactly as the CrewAI tool answers it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from crewkit import crewai_env, shared_brokers_closed  # noqa: F401 (autouse fixtures)

from authsec_crewai.broker import TokenBroker
from authsec_crewai.fetch import SecureFetcher
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.testing import TOKEN_PATH
from authsec_crewai.tools import AuthSecSecureFetchTool
from authsec_crewai.toolspec import DEFAULT_TOOL_NAME
from authsec_crewai.transports.mock import MockTransport
from authsec_crewai.wiring import build_fetcher

CLIENT_ID = "6f1c2b9e-2f4d-4c1a-9a57-3d0f5b8e7a21"


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: LangChain, PydanticAI and the Agents SDK run on asyncio (under trio
    they fail inside the framework, on asyncio.gather and get_running_loop). The broker
    and fetcher under them are tested on both backends elsewhere."""
    return "asyncio"


CALLS: list[tuple[str, str, list[dict[str, str]] | None]] = [
    ("secure-vault/records", "read:records", None),
    ("secure-vault/metrics", "read:metrics", [{"name": "page", "value": "2"}]),
    ("https://evil.example/secure-vault/records", "read:records", None),  # endpoint guard
    ("secure-vault/../admin", "read:records", None),  # traversal
    ("secure-vault/records", "write:records", None),  # not in the scope allowlist
    ("secure-vault/audit-log", "read:audit", None),  # allowed, but not delegated
    ("secure-vault/nowhere", "read:records", None),  # the API's own 404
]
EXPECTED_KINDS = [
    None,
    None,
    "endpoint_refused",
    "endpoint_refused",
    "scope_refused",
    "insufficient_scope",
    "api_error",
]


def settings() -> AuthSecSettings:
    return AuthSecSettings(
        mode="mock",
        client_id=CLIENT_ID,
        allowed_scopes=["read:records", "read:metrics", "read:audit"],
    )


def args_of(call: tuple[str, str, list[dict[str, str]] | None]) -> dict[str, Any]:
    endpoint, scope, params = call
    return {"endpoint": endpoint, "scope": scope, "params": params}


@pytest.fixture(scope="module")
def crewai_answers() -> list[dict[str, Any]]:
    """What the CrewAI tool answers to each call: the reference."""
    tool = AuthSecSecureFetchTool(settings=settings(), transport=MockTransport())
    try:
        return [json.loads(tool._run(**args_of(call))) for call in CALLS]
    finally:
        from authsec_crewai.tools import close_shared_brokers

        close_shared_brokers()


@asynccontextmanager
async def mock_fetcher() -> AsyncIterator[SecureFetcher]:
    configured = settings()
    async with TokenBroker(MockTransport(), client_id=CLIENT_ID) as broker:
        yield build_fetcher(broker, configured)


def assert_same_as_crewai(texts: list[str], reference: list[dict[str, Any]]) -> None:
    answers = [json.loads(text) for text in texts]
    assert [a.get("error") for a in answers] == EXPECTED_KINDS
    assert answers == reference
    assert answers[0]["data"]["count"] == 6
    assert not any("eyJ" in text for text in texts)


# --- LangChain -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_langchain_tool_calls_answer_as_the_crewai_tool(
    crewai_answers: list[dict[str, Any]],
) -> None:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    from authsec_crewai.integrations.langchain import secure_fetch_tool

    calls = [
        {"name": DEFAULT_TOOL_NAME, "args": args_of(call), "id": f"call_{i}", "type": "tool_call"}
        for i, call in enumerate(CALLS)
    ]
    model = GenericFakeChatModel(
        messages=iter([AIMessage(content="", tool_calls=calls), AIMessage(content="done")])
    )
    async with mock_fetcher() as fetcher:
        tool = secure_fetch_tool(fetcher)
        assert "Allowed scopes: read:audit, read:metrics, read:records." in tool.description
        conversation: list[Any] = [HumanMessage("Brief me on the vault")]
        asked = await model.ainvoke(conversation)
        conversation.append(asked)
        for call in asked.tool_calls:
            conversation.append(await tool.ainvoke(call))  # LangChain's tool-call protocol
        conversation.append(await model.ainvoke(conversation))
    results = [m for m in conversation if isinstance(m, ToolMessage)]
    assert [m.tool_call_id for m in results] == [c["id"] for c in calls]
    assert_same_as_crewai([str(m.content) for m in results], crewai_answers)
    assert conversation[-1].content == "done"


def langgraph_app(tool: Any, *, use_async: bool) -> Any:
    """A LangGraph graph: a scripted chat model node asks for every corpus call in one
    turn, LangGraph's ``ToolNode`` runs them, and the model answers; sync or async nodes."""
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    calls = [
        {"name": tool.name, "args": args_of(call), "id": f"call_{i}", "type": "tool_call"}
        for i, call in enumerate(CALLS)
    ]
    model = GenericFakeChatModel(
        messages=iter([AIMessage(content="", tool_calls=calls), AIMessage(content="done")])
    )

    def think(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    async def athink(state: MessagesState) -> dict[str, Any]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", athink if use_async else think)
    graph.add_node("tools", ToolNode([tool]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "agent")
    return graph.compile()


@pytest.mark.anyio
@pytest.mark.parametrize("use_async", [False, True], ids=["sync-graph", "async-graph"])
@pytest.mark.parametrize("mode", ["mock", "live"])
async def test_langgraph_tool_node_runs_the_tool_from_settings(
    crewai_answers: list[dict[str, Any]], use_async: bool, mode: str, request: Any
) -> None:
    """``secure_fetch_tool()`` from settings alone in LangGraph's ``ToolNode``: a sync
    graph (``invoke``, the tool's sync path) and an async one (``ainvoke``), in mock mode
    and in live mode against the mock server on a real socket."""
    from langchain_core.messages import HumanMessage, ToolMessage

    from authsec_crewai.integrations.langchain import secure_fetch_tool

    configured = settings()
    if mode == "live":
        server = request.getfixturevalue("authsec_server")
        configured = configured.model_copy(
            update={"mode": "live", "base_url": server.url, "retry_budget": 0}
        )
    tool = secure_fetch_tool(settings=configured)
    app = langgraph_app(tool, use_async=use_async)
    question = {"messages": [HumanMessage("Brief me on the vault")]}
    if use_async:
        state = await app.ainvoke(question)
    else:
        state = await anyio.to_thread.run_sync(app.invoke, question)  # a plain sync caller
    results = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    assert [m.tool_call_id for m in results] == [f"call_{i}" for i in range(len(CALLS))]
    assert [m.status for m in results] == [
        "success" if kind is None else "error" for kind in EXPECTED_KINDS
    ]
    if mode == "mock":
        assert_same_as_crewai([str(m.content) for m in results], crewai_answers)
    else:  # the same kinds of answer; live data and messages name the live server
        assert [json.loads(str(m.content)).get("error") for m in results] == EXPECTED_KINDS
        # ToolNode runs the calls at once: at most one fetch per scope asked for (3).
        assert 1 <= server.count(TOKEN_PATH) <= 3
    assert state["messages"][-1].content == "done"


# --- PydanticAI -------------------------------------------------------------------------------


def pydantic_ai_script(seen: dict[str, Any]) -> Callable[..., Any]:
    """A FunctionModel function: every corpus call in one turn, then a summary."""
    from pydantic_ai.messages import ModelResponse, TextPart, ToolCallPart, ToolReturnPart

    def respond(messages: list[Any], info: Any) -> ModelResponse:
        returns = [
            part
            for message in messages
            for part in getattr(message, "parts", [])
            if isinstance(part, ToolReturnPart)
        ]
        if not returns:
            seen["tools"] = info.function_tools
            return ModelResponse(
                parts=[
                    ToolCallPart(DEFAULT_TOOL_NAME, args_of(call), tool_call_id=f"call_{i}")
                    for i, call in enumerate(CALLS)
                ]
            )
        seen["returns"] = sorted(returns, key=lambda part: int(part.tool_call_id[5:]))
        return ModelResponse(parts=[TextPart(f"{len(returns)} results")])

    return respond


@pytest.mark.anyio
async def test_pydantic_ai_tool_takes_the_fetcher_from_the_agents_deps(
    crewai_answers: list[dict[str, Any]],
) -> None:
    from dataclasses import dataclass

    from pydantic_ai import Agent
    from pydantic_ai.models.function import FunctionModel

    from authsec_crewai.integrations.pydantic_ai import secure_fetch_tool

    @dataclass
    class Deps:
        fetcher: SecureFetcher

    seen: dict[str, Any] = {}
    agent = Agent(
        FunctionModel(pydantic_ai_script(seen)), deps_type=Deps, tools=[secure_fetch_tool()]
    )
    async with mock_fetcher() as fetcher:
        result = await agent.run("Brief me on the vault", deps=Deps(fetcher))
    assert result.output == f"{len(CALLS)} results"
    (definition,) = seen["tools"]
    assert definition.name == DEFAULT_TOOL_NAME
    assert "Allowed scopes: read:audit, read:metrics, read:records." in definition.description
    assert set(definition.parameters_json_schema["properties"]) == {"endpoint", "scope", "params"}
    assert_same_as_crewai([str(part.content) for part in seen["returns"]], crewai_answers)


@pytest.mark.anyio
async def test_pydantic_ai_fetcher_of_deps_without_one_is_a_clear_error() -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.test import TestModel

    from authsec_crewai import errors
    from authsec_crewai.integrations.pydantic_ai import secure_fetch_tool
    from authsec_crewai.toolspec import fetcher_from

    agent = Agent(TestModel(), deps_type=dict, tools=[secure_fetch_tool(fetcher_of=fetcher_from)])
    with pytest.raises(errors.ConfigurationError, match="SecureFetcher"):
        await agent.run("hello", deps={})


def configured(mode: str, request: Any, **changes: Any) -> AuthSecSettings:
    """The corpus settings, in mock mode or live against the mock server on loopback."""
    chosen = settings()
    if mode == "live":
        server = request.getfixturevalue("authsec_server")
        changes |= {"mode": "live", "base_url": server.url, "retry_budget": 0}
    return chosen.model_copy(update=changes) if changes else chosen


def answers_match(texts: list[str], reference: list[dict[str, Any]], mode: str) -> None:
    if mode == "mock":
        assert_same_as_crewai(texts, reference)
    else:  # the same answers; live data and messages name the live server
        assert [json.loads(t).get("error") for t in texts] == EXPECTED_KINDS
        assert json.loads(texts[0])["data"]["count"] == 6


def pydantic_ai_one_call_agent(seen: dict[str, Any], mode: str, request: Any) -> Any:
    from pydantic_ai import Agent
    from pydantic_ai.models.function import FunctionModel

    from authsec_crewai.integrations.pydantic_ai import secure_fetch_tool

    tool = secure_fetch_tool(settings=configured(mode, request))  # no deps, no broker
    return Agent(FunctionModel(pydantic_ai_script(seen)), tools=[tool])


@pytest.mark.parametrize("mode", ["mock", "live"])
def test_pydantic_ai_one_call_tool_under_run_sync(
    crewai_answers: list[dict[str, Any]], mode: str, request: Any
) -> None:
    """``run_sync`` runs a loop of its own: the tool's calls run on the shared broker."""
    seen: dict[str, Any] = {}
    agent = pydantic_ai_one_call_agent(seen, mode, request)
    assert agent.run_sync("Brief me on the vault").output == f"{len(CALLS)} results"
    assert agent.run_sync("Again").output == f"{len(CALLS)} results"  # a second loop
    answers_match([str(p.content) for p in seen["returns"]], crewai_answers, mode)
    (definition,) = seen["tools"]
    assert "Allowed scopes: read:audit, read:metrics, read:records." in definition.description


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["mock", "live"])
async def test_pydantic_ai_one_call_tool_under_run(
    crewai_answers: list[dict[str, Any]], mode: str, request: Any
) -> None:
    seen: dict[str, Any] = {}
    agent = pydantic_ai_one_call_agent(seen, mode, request)
    result = await agent.run("Brief me on the vault")
    assert result.output == f"{len(CALLS)} results"
    answers_match([str(p.content) for p in seen["returns"]], crewai_answers, mode)
    schema = seen["tools"][0].parameters_json_schema
    assert set(schema["properties"]) == {"endpoint", "scope", "params"}
    assert "strict" not in json.dumps(schema)  # no developer docstring reaches the model


def test_pydantic_ai_tool_acts_for_its_client_id(authsec_server: Any) -> None:
    from pydantic_ai import Agent
    from pydantic_ai.models.test import TestModel

    from authsec_crewai.integrations.pydantic_ai import secure_fetch_tool

    other = "0b7a8f3e-7d7e-4b7a-9a3e-1f2d3c4b5a69"
    live = AuthSecSettings(mode="live", base_url=authsec_server.url, client_id=CLIENT_ID)
    tool = secure_fetch_tool(settings=live, client_id=other)
    Agent(TestModel(), tools=[tool]).run_sync("hello")
    askers = {client for client, path in authsec_server.agent_counts if path == TOKEN_PATH}
    assert askers == {other}


@pytest.mark.anyio
async def test_pydantic_ai_test_model_calls_the_tool_through_the_deps() -> None:
    """PydanticAI's own TestModel fills in arguments from the schema: a guarded refusal."""
    from pydantic_ai import Agent
    from pydantic_ai.models.test import TestModel

    from authsec_crewai.integrations.pydantic_ai import secure_fetch_tool

    agent = Agent(TestModel(), deps_type=SecureFetcher, tools=[secure_fetch_tool()])
    async with mock_fetcher() as fetcher:
        result = await agent.run("hello", deps=fetcher)
    answer = json.loads(json.loads(result.output)[DEFAULT_TOOL_NAME])
    assert answer["status"] == "error" and answer["error"] in ("endpoint_refused", "scope_refused")


# --- OpenAI Agents SDK --------------------------------------------------------------------------


def openai_agents_model(seen: dict[str, Any]) -> Any:
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.usage import Usage
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    class ScriptedModel(Model):
        """Every corpus call in one turn, then a summary of the outputs it was given."""

        async def get_response(
            self, system_instructions: Any, input: Any, *args: Any, **kw: Any
        ) -> ModelResponse:
            items = input if isinstance(input, list) else []
            outputs = [
                i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"
            ]
            if not outputs:
                seen["tools"] = args[2] if len(args) > 2 else kw.get("tools")
                calls: list[Any] = [
                    ResponseFunctionToolCall(
                        id=f"fc_{i}",
                        call_id=f"call_{i}",
                        name=DEFAULT_TOOL_NAME,
                        arguments=json.dumps(args_of(call)),
                        type="function_call",
                    )
                    for i, call in enumerate(CALLS)
                ]
                return ModelResponse(output=calls, usage=Usage(), response_id=None)
            seen["outputs"] = sorted(outputs, key=lambda o: int(o["call_id"][5:]))
            text = ResponseOutputText(
                text=f"{len(outputs)} results", type="output_text", annotations=[]
            )
            message = ResponseOutputMessage(
                id="msg_1", role="assistant", status="completed", type="message", content=[text]
            )
            return ModelResponse(output=[message], usage=Usage(), response_id=None)

        def stream_response(self, *args: Any, **kw: Any) -> Any:
            raise NotImplementedError

    return ScriptedModel()


@pytest.mark.anyio
@pytest.mark.parametrize("from_context", [False, True], ids=["fixed", "from-context"])
async def test_openai_agents_function_tool_answers_as_the_crewai_tool(
    crewai_answers: list[dict[str, Any]], from_context: bool
) -> None:
    from agents import Agent, RunConfig, Runner

    from authsec_crewai.integrations.openai_agents import secure_fetch_tool

    seen: dict[str, Any] = {}
    async with mock_fetcher() as fetcher:
        tool = secure_fetch_tool() if from_context else secure_fetch_tool(fetcher)
        agent = Agent(name="analyst", model=openai_agents_model(seen), tools=[tool])
        result = await Runner.run(
            agent,
            "Brief me on the vault",
            context=fetcher if from_context else None,
            run_config=RunConfig(tracing_disabled=True),
        )
    assert result.final_output == f"{len(CALLS)} results"
    assert tool.name == DEFAULT_TOOL_NAME
    assert set(tool.params_json_schema["properties"]) == {"endpoint", "scope", "params"}
    assert_same_as_crewai([o["output"] for o in seen["outputs"]], crewai_answers)


def openai_agents_run(agent: Any, prompt: str, *, sync: bool, **options: Any) -> Any:
    from agents import RunConfig, Runner

    options.setdefault("run_config", RunConfig(tracing_disabled=True))
    if sync:
        return Runner.run_sync(agent, prompt, **options)
    return Runner.run(agent, prompt, **options)


@pytest.mark.parametrize("mode", ["mock", "live"])
def test_openai_agents_one_call_tool_under_run_sync(
    crewai_answers: list[dict[str, Any]], mode: str, request: Any
) -> None:
    """``Runner.run_sync`` runs a loop of its own: the calls run on the shared broker."""
    from agents import Agent

    from authsec_crewai.integrations.openai_agents import secure_fetch_tool

    seen: dict[str, Any] = {}
    tool = secure_fetch_tool(settings=configured(mode, request))
    agent = Agent(name="analyst", model=openai_agents_model(seen), tools=[tool])
    for prompt in ("Brief me on the vault", "Again"):  # each run on a loop of its own
        result = openai_agents_run(agent, prompt, sync=True)
        assert result.final_output == f"{len(CALLS)} results"
    answers_match([o["output"] for o in seen["outputs"]], crewai_answers, mode)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["mock", "live"])
async def test_openai_agents_one_call_tool_under_run(
    crewai_answers: list[dict[str, Any]], mode: str, request: Any
) -> None:
    from agents import Agent

    from authsec_crewai.integrations.openai_agents import secure_fetch_tool

    seen: dict[str, Any] = {}
    tool = secure_fetch_tool(settings=configured(mode, request))
    agent = Agent(name="analyst", model=openai_agents_model(seen), tools=[tool])
    result = await openai_agents_run(agent, "Brief me on the vault", sync=False)
    assert result.final_output == f"{len(CALLS)} results"
    answers_match([o["output"] for o in seen["outputs"]], crewai_answers, mode)
    assert "strict" not in json.dumps(tool.params_json_schema)


def malformed_calls_model(seen: dict[str, Any]) -> Any:
    """A model that first sends calls the SDK cannot use, then a good one, then answers."""
    from agents.items import ModelResponse
    from agents.models.interface import Model
    from agents.usage import Usage
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseOutputText,
    )

    turns = [
        ["{not json", json.dumps({"endpoint": "secure-vault/records"})],  # bad JSON, no scope
        [json.dumps({"endpoint": "secure-vault/records", "scope": "read:records"})],
    ]

    class Scripted(Model):
        async def get_response(
            self, system_instructions: Any, input: Any, *args: Any, **kw: Any
        ) -> ModelResponse:
            items = input if isinstance(input, list) else []
            seen["outputs"] = [
                i["output"]
                for i in items
                if isinstance(i, dict) and i.get("type") == "function_call_output"
            ]
            turn = len(seen.setdefault("turns", []))
            seen["turns"].append(turn)
            if turn < len(turns):
                calls: list[Any] = [
                    ResponseFunctionToolCall(
                        id=f"fc_{turn}_{i}",
                        call_id=f"call_{turn}_{i}",
                        name=DEFAULT_TOOL_NAME,
                        arguments=arguments,
                        type="function_call",
                    )
                    for i, arguments in enumerate(turns[turn])
                ]
                return ModelResponse(output=calls, usage=Usage(), response_id=None)
            text = ResponseOutputText(text="corrected", type="output_text", annotations=[])
            message = ResponseOutputMessage(
                id="msg_1", role="assistant", status="completed", type="message", content=[text]
            )
            return ModelResponse(output=[message], usage=Usage(), response_id=None)

        def stream_response(self, *args: Any, **kw: Any) -> Any:
            raise NotImplementedError

    return Scripted()


@pytest.mark.anyio
@pytest.mark.parametrize("sync", [False, True], ids=["run", "run_sync"])
async def test_openai_agents_malformed_calls_go_back_to_the_model(sync: bool) -> None:
    from agents import Agent

    from authsec_crewai.integrations.openai_agents import secure_fetch_tool

    seen: dict[str, Any] = {}
    tool = secure_fetch_tool(settings=settings())
    agent = Agent(name="analyst", model=malformed_calls_model(seen), tools=[tool])
    if sync:
        result = await anyio.to_thread.run_sync(
            lambda: openai_agents_run(agent, "Brief me", sync=True)
        )
    else:
        result = await openai_agents_run(agent, "Brief me", sync=False)
    assert result.final_output == "corrected"  # the run went on after the bad calls
    bad_json, no_scope, good = (json.loads(o) for o in seen["outputs"])
    assert bad_json["error"] == no_scope["error"] == "invalid_arguments"
    assert bad_json["retryable"] and "scope" in no_scope["message"]
    assert good["status"] == "ok"


@pytest.mark.anyio
async def test_openai_agents_misconfiguration_ends_the_run() -> None:
    """The application's own mistake is no answer for the model: a live transport with
    no API origin to send tokens to ends the run with ConfigurationError."""
    from agents import Agent

    from authsec_crewai import errors
    from authsec_crewai.integrations.openai_agents import secure_fetch_tool
    from authsec_crewai.transports.live import LiveTransport

    tool = secure_fetch_tool(settings=settings(), transport=LiveTransport("http://127.0.0.1:9"))
    agent = Agent(name="analyst", model=openai_agents_model({}), tools=[tool])
    with pytest.raises(Exception, match="AUTHSEC_API_BASE_URL") as caught:
        await openai_agents_run(agent, "hi", sync=False)
    chain = [caught.value, caught.value.__cause__, caught.value.__context__]
    assert any(isinstance(e, errors.ConfigurationError) for e in chain)


def test_openai_agents_tool_acts_for_its_client_id(authsec_server: Any) -> None:
    from agents import Agent

    from authsec_crewai.integrations.openai_agents import secure_fetch_tool

    other = "0b7a8f3e-7d7e-4b7a-9a3e-1f2d3c4b5a69"
    live = settings().model_copy(
        update={"mode": "live", "base_url": authsec_server.url, "retry_budget": 0}
    )
    tool = secure_fetch_tool(settings=live, client_id=other)
    agent = Agent(name="analyst", model=openai_agents_model({}), tools=[tool])
    openai_agents_run(agent, "hi", sync=True)
    askers = {client for client, path in authsec_server.agent_counts if path == TOKEN_PATH}
    assert askers == {other}


def test_every_framework_shows_the_model_the_same_arguments_and_no_developer_docstring() -> None:
    """One description per argument, written for the model, in every framework's schema;
    no class docstring (QueryParam's note on strict schemas is for developers)."""
    from agents.strict_schema import ensure_strict_json_schema

    from authsec_crewai.integrations import langchain, openai_agents, pydantic_ai
    from authsec_crewai.toolspec import ARGUMENT_DESCRIPTIONS, QueryParam, SecureFetchArgs

    mock = settings()
    schemas = {
        "crewai": AuthSecSecureFetchTool(settings=mock).args_schema.model_json_schema(),
        "langchain": langchain.secure_fetch_tool(
            settings=mock
        ).tool_call_schema.model_json_schema(),
        "pydantic-ai": pydantic_ai.secure_fetch_tool(settings=mock).tool_def.parameters_json_schema,
        "openai-agents": openai_agents.secure_fetch_tool(settings=mock).params_json_schema,
    }
    assert ensure_strict_json_schema(dict(schemas["openai-agents"]))  # strict-mode valid
    for framework, schema in schemas.items():
        described = {name: prop.get("description") for name, prop in schema["properties"].items()}
        assert described == dict(ARGUMENT_DESCRIPTIONS), framework
        text = json.dumps(schema)
        for docstring in (QueryParam.__doc__, SecureFetchArgs.__doc__):
            assert docstring is not None and docstring.strip() not in text, framework
        assert "strict function-calling" not in text and "developers" not in text, framework
        item = schema["$defs"]["QueryParam"]
        assert item["description"] == "One query parameter: its name and its value."


def test_importing_the_library_loads_no_framework() -> None:
    script = (
        "import sys, authsec_crewai, authsec_crewai.toolspec, authsec_crewai.integrations\n"
        "print(sorted(m for m in ('crewai', 'langchain_core', 'pydantic_ai', 'agents') "
        "if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


# --- the examples, as a user runs them ----------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("example", ["langchain_tool", "pydantic_ai_agent", "openai_agents_tool"])
def test_each_framework_example_runs_offline_as_a_script(example: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHSEC_", "OPENAI_"))}
    env["AUTHSEC_MODE"] = "mock"
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{example}.py")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["secure-vault/records: ok", "secure-vault/metrics: ok"], done.stdout
    assert "insufficient_scope" in lines[2]
    assert "eyJ" not in done.stdout + done.stderr
