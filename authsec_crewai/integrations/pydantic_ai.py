"""The secure fetch tool for PydanticAI: a ``Tool`` whose fetcher comes from the run's deps.

Install with ``pip install 'authsec-crewai[pydantic-ai]'``::

    @dataclass
    class Deps:
        fetcher: SecureFetcher

    agent = Agent(model, deps_type=Deps, tools=[secure_fetch_tool()])
    async with build_broker(settings) as broker:
        result = await agent.run("Brief me", deps=Deps(build_fetcher(broker, settings)))

The fetcher (and so the broker, its token cache and its connections) belongs
to the application and reaches the tool through PydanticAI's dependency
injection, so one agent definition serves any configuration, and tests pass
a fetcher on a mock transport. The deps may be the fetcher itself, have a
``fetcher`` attribute, or be read by a ``fetcher_of`` function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .._lazy import requires_extra
from ..fetch import SecureFetcher
from ..toolspec import DEFAULT_TOOL_NAME, QueryParam, describe_tool, fetch_text, fetcher_from

with requires_extra("pydantic-ai", "the PydanticAI tool"):
    from pydantic_ai import RunContext, Tool
    from pydantic_ai.tools import ToolDefinition

__all__ = ["secure_fetch_tool"]


def secure_fetch_tool(
    *,
    fetcher_of: Callable[[Any], SecureFetcher] = fetcher_from,
    name: str = DEFAULT_TOOL_NAME,
) -> Tool[Any]:
    """A PydanticAI tool that calls the protected API through the run's fetcher.

    Its description is written at each step from that fetcher's allowlists,
    as the CrewAI tools' is from their settings.
    """

    async def fetch(
        ctx: RunContext[Any], endpoint: str, scope: str, params: list[QueryParam] | None = None
    ) -> str:
        """Fetch from the AuthSec-protected API with a token limited to one scope.

        Args:
            endpoint: Path relative to the protected API, e.g. 'secure-vault/records'.
                Never a full URL or host; no '..', '?', '#' or percent-escapes.
            scope: The permission this call needs, e.g. 'read:records'.
            params: Optional query parameters, e.g. [{'name': 'page', 'value': '2'}].
        """
        return await fetch_text(fetcher_of(ctx.deps), endpoint, scope, params, tool=name)

    async def describe(ctx: RunContext[Any], definition: ToolDefinition) -> ToolDefinition:
        return dataclasses.replace(definition, description=describe_tool(fetcher_of(ctx.deps)))

    return Tool(fetch, takes_ctx=True, name=name, prepare=describe)
