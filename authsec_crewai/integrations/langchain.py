"""The secure fetch tool for LangChain: a ``StructuredTool`` with a native coroutine.

Install with ``pip install 'authsec-crewai[langchain]'``::

    async with build_broker(settings) as broker:
        tool = secure_fetch_tool(build_fetcher(broker, settings))
        message = await tool.ainvoke(tool_call)  # a ToolMessage with the JSON result

The tool is async only (``ainvoke``, which LangChain's async agents and
LangGraph use): the fetcher's broker and connections live on an event loop,
and a blocking ``invoke`` would have to hide one.
"""

from __future__ import annotations

from .._lazy import requires_extra
from ..fetch import SecureFetcher
from ..toolspec import DEFAULT_TOOL_NAME, QueryParam, SecureFetchArgs, describe_tool, fetch_text

with requires_extra("langchain", "the LangChain tool"):
    from langchain_core.tools import StructuredTool

__all__ = ["secure_fetch_tool"]


def secure_fetch_tool(
    fetcher: SecureFetcher,
    *,
    name: str = DEFAULT_TOOL_NAME,
    description: str | None = None,
) -> StructuredTool:
    """A LangChain tool that calls the protected API through ``fetcher``.

    Results and failures are the CrewAI tools' JSON text; a refusal is an
    answer the model reads, never an exception that ends the run.
    """

    async def fetch(endpoint: str, scope: str, params: list[QueryParam] | None = None) -> str:
        return await fetch_text(fetcher, endpoint, scope, params, tool=name)

    return StructuredTool.from_function(
        coroutine=fetch,
        name=name,
        description=description or describe_tool(fetcher),
        args_schema=SecureFetchArgs,
    )
