"""The secure fetch tool for the OpenAI Agents SDK: a ``FunctionTool``.

Install with ``pip install 'authsec-crewai[openai-agents]'``::

    agent = Agent(name="analyst", tools=[secure_fetch_tool()])
    async with build_broker(settings) as broker:
        await Runner.run(agent, "Brief me", context=build_fetcher(broker, settings))

The fetcher comes from the run's ``context`` (itself, or its ``fetcher``
attribute), or is fixed when the tool is made: ``secure_fetch_tool(fetcher)``.
With crewai installed, pip resolves the SDK to its 0.20 series: later ones
require openai 3, and crewai requires openai below 3.
"""

from __future__ import annotations

from typing import Any

from .._lazy import requires_extra
from ..fetch import SecureFetcher
from ..toolspec import DEFAULT_TOOL_NAME, QueryParam, describe_tool, fetch_text, fetcher_from

with requires_extra("openai-agents", "the OpenAI Agents SDK tool"):
    from agents import FunctionTool, RunContextWrapper, function_tool

__all__ = ["secure_fetch_tool"]


def secure_fetch_tool(
    fetcher: SecureFetcher | None = None,
    *,
    name: str = DEFAULT_TOOL_NAME,
    description: str | None = None,
) -> FunctionTool:
    """An Agents SDK tool that calls the protected API through ``fetcher`` (or the context's).

    Refusals and failures are the CrewAI tools' JSON text, returned to the
    model. A run without a fetcher (none here, none in its context) fails
    with ``ConfigurationError``.
    """

    async def fetch(
        ctx: RunContextWrapper[Any],
        endpoint: str,
        scope: str,
        params: list[QueryParam] | None = None,
    ) -> str:
        """Fetch from the AuthSec-protected API with a token limited to one scope.

        Args:
            endpoint: Path relative to the protected API, e.g. 'secure-vault/records'.
                Never a full URL or host; no '..', '?', '#' or percent-escapes.
            scope: The permission this call needs, e.g. 'read:records'.
            params: Optional query parameters, e.g. [{'name': 'page', 'value': '2'}].
        """
        chosen = fetcher if fetcher is not None else fetcher_from(ctx.context)
        return await fetch_text(chosen, endpoint, scope, params, tool=name)

    if description is None:
        description = describe_tool(fetcher) if fetcher is not None else describe_tool(_NoPolicy())
    # failure_error_function=None: a missing fetcher is the application's bug, so the run
    # fails with it, instead of the model reading a generic "error running the tool".
    return function_tool(
        fetch,
        name_override=name,
        description_override=description,
        failure_error_function=None,
    )


class _NoPolicy:
    """The description's view of a fetcher not known yet: no allowlists to spell out."""

    allowed_endpoints = None
    allowed_scopes = None
    allowed_methods = frozenset({"GET"})
