"""The secure fetch tool for PydanticAI: a ``Tool``, made in one call.

Install with ``pip install 'authsec-crewai[pydantic-ai]'``::

    agent = Agent(model, tools=[secure_fetch_tool()])   # settings from AUTHSEC_*
    result = agent.run_sync("Brief me")                 # or: await agent.run("Brief me")

Built as the CrewAI tools are: tools configured alike share one broker per
process, and every call runs on that broker's runtime, so ``run`` (any loop)
and ``run_sync`` (a loop PydanticAI starts for each run) both work without
the application entering a broker. ``settings=``, ``broker=``, ``transport=``
and ``client_id=`` wire it by hand (``client_id=``: the agent it acts for).

Dependency injection still works: when the run's deps are a
:class:`~authsec_crewai.fetch.SecureFetcher` or have a ``fetcher`` attribute,
that fetcher (its broker, policy and agent) is used for the run::

    result = await agent.run("Brief me", deps=Deps(fetcher=build_fetcher(broker, settings)))

``fetcher_of=`` reads the fetcher from the deps your own way, and then a run
whose deps hold none fails with ``ConfigurationError``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._lazy import requires_extra
from .._toolruntime import ToolBinding
from ..fetch import SecureFetcher
from ..toolspec import DEFAULT_TOOL_NAME, SecureFetchArgs, describe_tool, fetch_text, fetcher_in

with requires_extra("pydantic-ai", "the PydanticAI tool"):
    from pydantic_ai import RunContext, Tool
    from pydantic_ai.tools import ToolDefinition

if TYPE_CHECKING:
    from ..broker import TokenBroker
    from ..settings import AuthSecSettings
    from ..sync import SyncTokenBroker
    from ..transports.base import Transport

__all__ = ["secure_fetch_tool"]


def secure_fetch_tool(
    *,
    settings: AuthSecSettings | None = None,
    broker: TokenBroker | SyncTokenBroker | None = None,
    transport: Transport | None = None,
    client_id: str | None = None,
    fetcher_of: Callable[[Any], SecureFetcher] | None = None,
    name: str = DEFAULT_TOOL_NAME,
) -> Tool[Any]:
    """A PydanticAI tool that calls the protected API with a scoped delegation token.

    With no arguments it is built from ``AuthSecSettings()``, exactly as
    ``AuthSecSecureFetchTool()`` is; a broken configuration raises
    ``ConfigurationError`` here. A run whose deps carry a fetcher uses that
    one. Results and failures are the CrewAI tools' JSON text; the description
    is written at each step from the allowlists of the fetcher that will run.
    """
    binding = ToolBinding.create(
        settings=settings, broker=broker, transport=transport, client_id=client_id
    )

    def chosen(deps: Any) -> SecureFetcher | None:
        return fetcher_of(deps) if fetcher_of is not None else fetcher_in(deps)

    # One model-like argument: PydanticAI then shows the model SecureFetchArgs' own schema
    # (the descriptions every framework's tool shares) and validates the call with it.
    async def fetch(ctx: RunContext[Any], args: SecureFetchArgs) -> str:
        fetcher = chosen(ctx.deps)
        if fetcher is not None:
            return await fetch_text(fetcher, args.endpoint, args.scope, args.params, tool=name)
        return await binding.acall(
            args.endpoint, args.scope, args.params, tool=name, on_runtime=True
        )

    async def describe(ctx: RunContext[Any], definition: ToolDefinition) -> ToolDefinition:
        fetcher = chosen(ctx.deps)
        policy = fetcher if fetcher is not None else binding.policy
        return dataclasses.replace(definition, description=describe_tool(policy))

    return Tool(fetch, takes_ctx=True, name=name, prepare=describe)
