"""The secure fetch tool for the OpenAI Agents SDK: a ``FunctionTool``, made in one call.

Install with ``pip install 'authsec-crewai[openai-agents]'``::

    agent = Agent(name="analyst", tools=[secure_fetch_tool()])   # settings from AUTHSEC_*
    result = Runner.run_sync(agent, "Brief me")                   # or: await Runner.run(...)

Built as the CrewAI tools are: tools configured alike share one broker per
process, and every call runs on that broker's runtime, so ``Runner.run`` and
``Runner.run_sync`` (which runs a loop of its own) both work without the
application entering a broker. ``fetcher=``, ``settings=``, ``broker=``,
``transport=`` and ``client_id=`` wire it by hand. A run whose ``context`` is a
:class:`~authsec_crewai.fetch.SecureFetcher` (or has a ``fetcher`` attribute)
uses that fetcher, unless one was fixed with ``fetcher=``.

What goes back to the model and what ends the run: a refusal or failure is the
CrewAI tools' JSON answer; a malformed call (not JSON, a missing ``scope``) is
an ``invalid_arguments`` answer, so the model can correct it, as the SDK does
for its own tools. Only the application's misconfiguration ends the run: a
:class:`~authsec_crewai.errors.ConfigurationError`, raised when the tool is
made, or at its first call when it can only be known then.

With crewai installed, pip resolves the SDK to its 0.20 series: later ones
require openai 3, and crewai requires openai below 3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .._lazy import requires_extra
from .._toolruntime import ToolBinding
from ..fetch import SecureFetcher, render_result
from ..redact import redact_text
from ..toolspec import (
    DEFAULT_TOOL_NAME,
    SecureFetchArgs,
    arguments_schema,
    describe_tool,
    fetch_text,
    fetcher_in,
)

with requires_extra("openai-agents", "the OpenAI Agents SDK tool"):
    from agents import FunctionTool, RunContextWrapper
    from agents.strict_schema import ensure_strict_json_schema

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
) -> FunctionTool:
    """An Agents SDK tool that calls the protected API with a scoped delegation token.

    With no arguments it is built from ``AuthSecSettings()``, exactly as
    ``AuthSecSecureFetchTool()`` is; a broken configuration raises
    ``ConfigurationError`` here. ``client_id=`` makes the tool act for that
    agent (one tool per agent, one shared broker).
    """
    binding = ToolBinding.create(
        settings=settings, broker=broker, transport=transport, fetcher=fetcher, client_id=client_id
    )

    async def invoke(ctx: RunContextWrapper[Any], arguments: str) -> str:
        try:
            args = SecureFetchArgs.model_validate_json(arguments or "{}")
        except ValidationError as exc:
            return _malformed(exc)
        chosen = None if fetcher is not None else fetcher_in(ctx.context)
        if chosen is not None:
            return await fetch_text(chosen, args.endpoint, args.scope, args.params, tool=name)
        binding.get()  # the application's misconfiguration raises here and ends the run
        return await binding.acall(
            args.endpoint, args.scope, args.params, tool=name, on_runtime=True
        )

    return FunctionTool(
        name=name,
        description=description or describe_tool(binding.policy),
        params_json_schema=ensure_strict_json_schema(arguments_schema(strict=True)),
        on_invoke_tool=invoke,
        strict_json_schema=True,
    )


def _malformed(exc: ValidationError) -> str:
    """A call the model got wrong, as an answer it can correct (never an ended run)."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'arguments'}: {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False)[:5]
    )
    return render_result(
        {
            "status": "error",
            "error": "invalid_arguments",
            "message": redact_text(
                "the call's arguments are not valid: "
                f"{problems[:500]}; send a JSON object with 'endpoint' and 'scope' "
                "(and optionally 'params')"
            ),
            "retryable": True,
        }
    )
