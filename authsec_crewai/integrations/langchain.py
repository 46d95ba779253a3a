"""The secure fetch tool for LangChain and LangGraph: a ``StructuredTool``, sync and async.

Install with ``pip install 'authsec-crewai[langchain]'``::

    tool = secure_fetch_tool()              # settings from the AUTHSEC_* environment
    message = tool.invoke(tool_call)        # a ToolMessage with the JSON result
    message = await tool.ainvoke(tool_call)

Built as the CrewAI tools are: tools configured alike share one broker per
process, ``invoke`` runs the call on that broker's runtime (so it works from
any thread, a sync LangGraph graph or an ``AgentExecutor``), and ``ainvoke``
stays on the caller's event loop. ``fetcher=``, ``settings=``, ``broker=``,
``transport=`` and ``client_id=`` wire it by hand.

A refusal or failure is the JSON answer the model reads, in a ``ToolMessage``
with ``status="error"`` (LangChain's convention for a failed tool call): the
tool raises ``ToolException`` and handles it itself (``handle_tool_error``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import requires_extra
from .._toolruntime import ToolBinding
from ..fetch import OK_PREFIX, SecureFetcher
from ..toolspec import DEFAULT_TOOL_NAME, QueryParam, SecureFetchArgs, describe_tool

with requires_extra("langchain", "the LangChain tool"):
    from langchain_core.tools import StructuredTool, ToolException

if TYPE_CHECKING:
    from ..broker import TokenBroker
    from ..settings import AuthSecSettings
    from ..sync import SyncTokenBroker
    from ..transports.base import Transport

__all__ = ["secure_fetch_tool"]


def secure_fetch_tool(
    fetcher: SecureFetcher | None = None,
    *,
    settings: AuthSecSettings | None = None,
    broker: TokenBroker | SyncTokenBroker | None = None,
    transport: Transport | None = None,
    client_id: str | None = None,
    name: str = DEFAULT_TOOL_NAME,
    description: str | None = None,
) -> StructuredTool:
    """A LangChain tool that calls the protected API with a scoped delegation token.

    With no arguments it is built from ``AuthSecSettings()``, exactly as
    ``AuthSecSecureFetchTool()`` is; a broken configuration raises
    ``ConfigurationError`` here. ``client_id=`` makes the tool act for that
    agent (one tool per agent, one shared broker). Results and failures are the
    CrewAI tools' JSON text.
    """
    binding = ToolBinding.create(
        settings=settings, broker=broker, transport=transport, fetcher=fetcher, client_id=client_id
    )

    def fetch(endpoint: str, scope: str, params: list[QueryParam] | None = None) -> str:
        return _answer(binding.call(endpoint, scope, params, tool=name))

    async def afetch(endpoint: str, scope: str, params: list[QueryParam] | None = None) -> str:
        return _answer(await binding.acall(endpoint, scope, params, tool=name))

    return StructuredTool.from_function(
        func=fetch,
        coroutine=afetch,
        name=name,
        description=description or describe_tool(binding.policy),
        args_schema=SecureFetchArgs,
        handle_tool_error=True,  # the exception's text (our JSON) is the message content
    )


def _answer(text: str) -> str:
    """A success as the tool's result; a failure as ``ToolException`` (``status="error"``)."""
    if not text.startswith(OK_PREFIX):
        raise ToolException(text)
    return text
