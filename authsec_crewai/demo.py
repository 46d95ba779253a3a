"""The offline demo behind ``authsec-crewai demo``: a real crew, a scripted model.

Everything is real except the model: ``Crew.kickoff()`` runs CrewAI's own agent
loop (native function calling, parallel tool calls in worker threads), the
tool is :class:`~authsec_crewai.tools.AuthSecSecureFetchTool`, tokens are RS256
JWTs minted by the mock authority and checked by the mock vault. The model is
:class:`ScriptedVaultLLM`, which asks for tools and then writes its summary
from what the tools returned, so the demo needs no network and no API key.

Like :mod:`authsec_crewai.tools`, this module imports crewai; nothing imports
it except the ``demo`` command and code that asks for it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from crewai import Agent, BaseLLM, Crew, Task
from pydantic import Field

from . import errors
from .settings import AuthSecSettings
from .tools import DEFAULT_TOOL_NAME, AuthSecSecureFetchTool
from .transports.mock import MockTransport

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

    from .token import DelegationToken

__all__ = [
    "DEMO_PLAN",
    "DemoRun",
    "ScriptedVaultLLM",
    "build_demo_crew",
    "observed_results",
    "run_demo",
]

DEMO_PLAN: tuple[tuple[str, str], ...] = (
    ("secure-vault/records", "read:records"),
    ("secure-vault/metrics", "read:metrics"),
    ("secure-vault/audit-log", "read:audit"),
)
"""What the scripted analyst asks for: two granted scopes, and one the mock
delegation does not grant (``read:audit``), which must be refused."""


def observed_results(messages: str | Sequence[Any]) -> list[dict[str, Any]]:
    """Every tool result (``{"status": ...}`` JSON object) found in the conversation.

    Reads tool messages (native function calling) and observations inside
    other messages (ReAct) alike, so a scripted model can answer from what
    the tools really returned.
    """
    texts: list[str] = []
    if isinstance(messages, str):
        texts.append(messages)
    else:
        for message in messages:
            if not isinstance(message, dict) or message.get("role") == "system":
                continue
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    for text in texts:
        start = text.find('{"status"')
        while start != -1:
            try:
                value, end = decoder.raw_decode(text, start)
            except ValueError:
                end = start + 1
            else:
                if isinstance(value, dict) and value.get("status") in ("ok", "error"):
                    found.append(value)
            start = text.find('{"status"', end)
    return found


def _summarise(results: Sequence[dict[str, Any]], plan: Sequence[tuple[str, str]]) -> str:
    """The analyst's report, written from the tool results only."""
    lines = ["Secure-vault briefing (from delegated, scoped reads):"]
    oks = [r for r in results if r.get("status") == "ok"]
    for result in oks:
        data, endpoint = result.get("data"), result.get("endpoint")
        if isinstance(data, dict) and isinstance(data.get("records"), list):
            records = data["records"]
            levels: dict[str, int] = {}
            for person in records:
                level = str(person.get("clearance", "unknown"))
                levels[level] = levels.get(level, 0) + 1
            spread = ", ".join(f"{n} {level}" for level, n in sorted(levels.items()))
            lines.append(f"- {endpoint}: {len(records)} people on file ({spread}).")
        elif isinstance(data, dict) and "revenue_target_usd" in data:
            target, to_date = data["revenue_target_usd"], data.get("revenue_to_date_usd", 0)
            status = data.get("infrastructure_status", {})
            degraded = [k for k, v in status.items() if v != "operational"] or ["none"]
            lines.append(
                f"- {endpoint}: {data.get('quarter')} revenue ${to_date:,} of ${target:,} "
                f"({to_date / target:.0%}); {data.get('active_users', 0):,} active users; "
                f"degraded: {', '.join(degraded)}."
            )
        else:
            lines.append(f"- {endpoint}: answered ({type(data).__name__}).")
    errors = [r for r in results if r.get("status") == "error"]
    for result in errors:
        retry = "may retry later" if result.get("retryable") else "not retried"
        lines.append(f"- refused: {result.get('error')} ({retry}): {result.get('message')}")
    asked = {endpoint for endpoint, _ in plan}
    before_api = all(
        r.get("error") in ("endpoint_refused", "scope_refused")
        or "without calling the API" in str(r.get("message"))
        for r in errors
    )
    lines.append(
        f"{len(oks)} of {len(asked)} reads succeeded"
        + (
            "; every refusal happened before the API saw a request."
            if errors and before_api
            else "."
        )
    )
    return "\n".join(lines)


class ScriptedVaultLLM(BaseLLM):
    """A model that follows a script: ask for every tool call at once, then summarise.

    With ``native=True`` (the default) it speaks native function calling, as
    current providers do; CrewAI then runs the calls in parallel worker
    threads. With ``native=False`` it writes ReAct text, one action per turn,
    as CrewAI's text path expects. Stateless between calls: it reads where it
    is from the conversation, so one instance can serve concurrent agents.
    """

    model: str = "scripted-vault-analyst"
    llm_type: str = "scripted"
    native: bool = True
    tool_name: str = DEFAULT_TOOL_NAME
    plan: list[tuple[str, str]] = Field(default_factory=lambda: list(DEMO_PLAN))

    def __init__(self, **data: Any) -> None:
        # BaseLLM insists on a model name in the constructor's arguments.
        data.setdefault("model", "scripted-vault-analyst")
        super().__init__(**data)

    def supports_function_calling(self) -> bool:
        return self.native

    def supports_stop_words(self) -> bool:
        return not self.native

    def get_context_window_size(self) -> int:
        return 128_000

    def get_input_tokens_count(
        self, messages: Any, tools: Any = None, response_model: Any = None
    ) -> int:
        """A rough count, quietly (the base class warns that it is estimating)."""
        return len(json.dumps(messages, default=str)) // 4

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
        if self.native:
            name = _tool_name(tools)
            if name is None or results:
                return _summarise(results, self.plan)
            return [
                {
                    "id": f"call_{index}",
                    "type": "function",
                    "function": {
                        "name": name,
                        "arguments": json.dumps({"endpoint": endpoint, "scope": scope}),
                    },
                }
                for index, (endpoint, scope) in enumerate(self.plan)
            ]
        if len(results) >= len(self.plan):
            return "Thought: I now know the final answer\nFinal Answer: " + _summarise(
                results, self.plan
            )
        endpoint, scope = self.plan[len(results)]
        return (
            f"Thought: I need {endpoint}.\nAction: {self.tool_name}\n"
            f"Action Input: {json.dumps({'endpoint': endpoint, 'scope': scope})}"
        )

    async def acall(
        self,
        messages: Any,
        tools: list[dict[str, Any]] | None = None,
        callbacks: list[Any] | None = None,
        available_functions: dict[str, Any] | None = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> Any:
        return self.call(messages, tools, callbacks, available_functions)


def _tool_name(tools: list[dict[str, Any]] | None) -> str | None:
    for schema in tools or []:
        function = schema.get("function") if isinstance(schema, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return str(function["name"])
    return None


def build_demo_crew(tool: Any, llm: BaseLLM | None = None) -> Crew:
    """One analyst agent with ``tool``, one task: brief me on the secure vault."""
    analyst = Agent(
        role="Secure vault analyst",
        goal="Brief the security lead on the vault's records and metrics, using only "
        "data the agent's delegation allows it to read",
        backstory="You read protected data through AuthSec delegation tokens and never "
        "guess at data you were refused.",
        llm=llm or ScriptedVaultLLM(),
        tools=[tool],
        allow_delegation=False,
        verbose=False,
        max_iter=6,
    )
    task = Task(
        description="Read secure-vault/records (scope read:records), secure-vault/metrics "
        "(scope read:metrics) and secure-vault/audit-log (scope read:audit), then write a "
        "short briefing. Report any refusal as it is.",
        expected_output="A short briefing with the facts read and the refusals.",
        agent=analyst,
    )
    return Crew(agents=[analyst], tasks=[task], verbose=False)


@dataclass
class DemoRun:
    """What the demo did: the crew's answer, the token and fetch log, the tokens."""

    answer: str
    mode: str
    events: list[dict[str, Any]]
    tokens: list[DelegationToken]
    seconds: float


@contextmanager
def _capture(prefixes: tuple[str, ...]) -> Iterator[list[dict[str, Any]]]:
    """Collect the library's log events (already redacted) for the demo's token log.

    Events also go on to the application's structlog set-up, at its own level
    (the command line's: standard error, ``AUTHSEC_LOG_LEVEL``). Without one,
    they are only collected: nothing is printed, and structlog is left
    unconfigured afterwards, as it was found.
    """
    events: list[dict[str, Any]] = []
    was_configured = structlog.is_configured()
    saved = structlog.get_config()
    threshold = _threshold(saved["wrapper_class"]) if was_configured else logging.CRITICAL + 1

    def keep(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        level = _METHOD_LEVELS.get(method, logging.INFO)
        if level >= logging.INFO and str(event_dict.get("event", "")).startswith(prefixes):
            events.append({"at": time.time(), "level": method, **event_dict})
        if level < threshold:
            raise structlog.DropEvent
        return event_dict

    structlog.configure(
        processors=[keep, *(saved["processors"] if was_configured else [])],
        wrapper_class=structlog.make_filtering_bound_logger(min(logging.INFO, threshold)),
        cache_logger_on_first_use=False,
    )
    try:
        yield events
    finally:
        structlog.configure(**saved)
        if not was_configured:
            structlog.reset_defaults()


_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}


def _threshold(wrapper_class: Any) -> int:
    """The level below which ``wrapper_class`` (a structlog filtering logger) drops events."""
    try:
        return int(wrapper_class.get_effective_level(None))
    except (AttributeError, TypeError, ValueError):
        return logging.NOTSET


def run_demo(llm: BaseLLM | None = None) -> DemoRun:
    """Run the demo crew in mock mode and report what happened.

    Mock mode is forced, whatever ``AUTHSEC_*`` says: the demo must never
    reach a real server or depend on a user's allowlists.
    """
    settings = AuthSecSettings(
        mode="mock",
        base_url=None,
        api_base_url=None,
        allowed_scopes=None,
        allowed_endpoints=None,
        allowed_methods=["GET"],
        cassette=None,
    )
    tool = AuthSecSecureFetchTool(settings=settings, transport=MockTransport())
    started = time.monotonic()
    with _capture(("token.", "fetch.")) as events:
        output = build_demo_crew(tool, llm).kickoff()
    broker = tool.broker
    tokens: dict[str, DelegationToken] = {}
    for _, scope in DEMO_PLAN:
        with suppress(errors.ScopeNotGrantedError):  # read:audit: refused, as it should be
            token = broker.cached_token(scope)
            if token is not None:
                tokens.setdefault(token.fingerprint, token)
    return DemoRun(
        answer=str(getattr(output, "raw", output)),
        mode=settings.resolved_mode,
        events=events,
        tokens=list(tokens.values()),
        seconds=time.monotonic() - started,
    )
