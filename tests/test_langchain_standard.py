"""LangChain's own standard tool tests (``langchain-tests``) on ``secure_fetch_tool()``.

``ToolsUnitTests`` builds the tool with no more than its settings (and from the
environment alone); ``ToolsIntegrationTests`` invokes it sync and async, with
and without a ``ToolCall``, in mock mode and in live mode against the mock
AuthSec server on a real loopback socket.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from _server import MockServer
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from langchain_tests.integration_tests import ToolsIntegrationTests
from langchain_tests.unit_tests import ToolsUnitTests

from authsec_crewai._toolruntime import close_shared_brokers
from authsec_crewai.integrations.langchain import secure_fetch_tool
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.testing import TOKEN_PATH
from authsec_crewai.toolspec import DEFAULT_TOOL_NAME

CLIENT_ID = "6f1c2b9e-2f4d-4c1a-9a57-3d0f5b8e7a21"
RECORDS = {"endpoint": "secure-vault/records", "scope": "read:records"}

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """LangChain's async tool path runs on asyncio (its callbacks use asyncio's APIs)."""
    return "asyncio"


@pytest.fixture(autouse=True)
def shared_brokers_closed() -> Iterator[None]:
    close_shared_brokers()
    yield
    close_shared_brokers()


class TestSecureFetchToolUnit(ToolsUnitTests):
    @property
    def tool_constructor(self) -> Any:
        return secure_fetch_tool

    @property
    def tool_constructor_params(self) -> dict[str, Any]:
        return {"settings": AuthSecSettings(mode="mock", client_id=CLIENT_ID)}

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return dict(RECORDS)

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        env = {"AUTHSEC_MODE": "mock", "AUTHSEC_CLIENT_ID": CLIENT_ID}
        return env, {}, {"name": DEFAULT_TOOL_NAME}


class TestSecureFetchToolMock(ToolsIntegrationTests):
    @property
    def tool_constructor(self) -> Any:
        return secure_fetch_tool

    @property
    def tool_constructor_params(self) -> dict[str, Any]:
        return {"settings": AuthSecSettings(mode="mock", client_id=CLIENT_ID)}

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return dict(RECORDS)


class TestSecureFetchToolLive(ToolsIntegrationTests):
    """The same suite in live mode: tokens and data over a real socket."""

    @pytest.fixture
    def tool(self, authsec_server: MockServer) -> Iterator[BaseTool]:
        yield secure_fetch_tool(settings=live_settings(authsec_server))
        # Each standard test asks once; the tool's calls all reached the server.
        assert authsec_server.count("/secure-vault/records") >= 1
        assert authsec_server.count(TOKEN_PATH) == 1

    @property
    def tool_constructor(self) -> Any:
        return secure_fetch_tool

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return dict(RECORDS)


def live_settings(server: MockServer) -> AuthSecSettings:
    return AuthSecSettings(mode="live", base_url=server.url, client_id=CLIENT_ID, retry_budget=0)


# --- what the standard suites do not check --------------------------------------------------


def call(args: dict[str, Any], call_id: str = "call_1") -> dict[str, Any]:
    return {"name": DEFAULT_TOOL_NAME, "args": args, "id": call_id, "type": "tool_call"}


REFUSED = {"endpoint": "secure-vault/audit-log", "scope": "read:audit"}  # not delegated


async def test_invoke_and_ainvoke_answer_alike_and_refusals_have_status_error(
    authsec_server: MockServer,
) -> None:
    tool = secure_fetch_tool(settings=live_settings(authsec_server))
    sync_ok, sync_refused = tool.invoke(call(RECORDS)), tool.invoke(call(REFUSED, "call_2"))
    async_ok, async_refused = (
        await tool.ainvoke(call(RECORDS)),
        await tool.ainvoke(call(REFUSED, "call_2")),
    )
    for ok, refused in ((sync_ok, sync_refused), (async_ok, async_refused)):
        assert isinstance(ok, ToolMessage) and isinstance(refused, ToolMessage)
        assert ok.status == "success" and json.loads(str(ok.content))["data"]["count"] == 6
        assert refused.status == "error" and refused.tool_call_id == "call_2"
        answer = json.loads(str(refused.content))
        assert answer["error"] == "insufficient_scope" and answer["retryable"] is False
        assert "eyJ" not in str(ok.content) + str(refused.content)
    assert sync_ok.content == async_ok.content
    assert authsec_server.count(TOKEN_PATH) == 1  # one shared broker for both paths
    # The audit read was refused before the API: only the two records reads reached it.
    assert authsec_server.count("/secure-vault/records") == 2
    assert authsec_server.count("/secure-vault/audit-log") == 0


async def test_without_a_tool_call_a_refusal_is_the_json_answer_not_an_exception() -> None:
    tool = secure_fetch_tool(settings=AuthSecSettings(mode="mock", client_id=CLIENT_ID))
    for answer in (tool.invoke(REFUSED), await tool.ainvoke(REFUSED)):
        assert json.loads(answer)["error"] == "insufficient_scope"


def test_a_hostile_endpoint_is_refused_with_status_error_and_no_request() -> None:
    tool = secure_fetch_tool(settings=AuthSecSettings(mode="mock", client_id=CLIENT_ID))
    for endpoint in ("https://evil.example/x", "//evil.example/x", "secure-vault/%2e%2e/admin"):
        message = tool.invoke(call({"endpoint": endpoint, "scope": "read:records"}))
        assert message.status == "error"
        assert json.loads(str(message.content))["error"] == "endpoint_refused"


def test_configuration_errors_are_raised_when_the_tool_is_made(tmp_path: Any) -> None:
    from authsec_crewai import errors

    with pytest.raises(errors.ConfigurationError, match="UUID"):
        secure_fetch_tool(settings=AuthSecSettings(mode="mock"), client_id="not-a-uuid")
    missing = tmp_path / "none.json"
    with pytest.raises(errors.ConfigurationError, match="nothing to replay"):
        secure_fetch_tool(settings=AuthSecSettings(mode="replay", cassette=missing))


def test_each_agent_its_own_identity_on_one_broker(authsec_server: MockServer) -> None:
    other = "0b7a8f3e-7d7e-4b7a-9a3e-1f2d3c4b5a69"
    settings = live_settings(authsec_server)
    first, second = (
        secure_fetch_tool(settings=settings),
        secure_fetch_tool(settings=settings, client_id=other),
    )
    assert first.invoke(call(RECORDS)).status == "success"
    assert second.invoke(call(RECORDS)).status == "success"
    asked = {client for client, path in authsec_server.agent_counts if path == TOKEN_PATH}
    assert asked == {CLIENT_ID, other}
