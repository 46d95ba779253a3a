"""The offline demo behind ``authsec-crewai demo``: a real crew, a scripted model.

Everything is real except the model: ``Crew.kickoff()`` runs CrewAI's own agent
loop (native function calling, parallel tool calls in worker threads), the
tool is :class:`~authsec_crewai.tools.AuthSecSecureFetchTool`, tokens are RS256
JWTs minted by the mock authority and checked by the mock vault. The model is
:class:`ScriptedVaultLLM`, which asks for tools and then writes its summary
from what the tools returned, so the demo needs no network and no API key.

The crew has two agents, each with its own AuthSec identity (client id) and
delegation: an analyst who may read records and a writer who may only read
metrics. Each asks for both, and each is refused, before the API, what only
the other may read.

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
from pydantic import Field

from . import errors
from ._lazy import requires_extra
from .settings import AuthSecSettings
from .testing.authority import MockAuthority
from .tools import DEFAULT_TOOL_NAME, AuthSecSecureFetchTool, assign_identities
from .transports.mock import MockTransport

with requires_extra("crewai", "the demo crew"):
    from crewai import Agent, BaseLLM, Crew, Task
    from crewai.crews.crew_output import CrewOutput

if TYPE_CHECKING:
    from structlog.typing import EventDict, WrappedLogger

    from .token import DelegationToken

__all__ = [
    "DEMO_AGENTS",
    "DEMO_PLAN",
    "DemoAgent",
    "DemoRun",
    "ScriptedVaultLLM",
    "build_demo_crew",
    "build_two_agent_crew",
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


@dataclass(frozen=True)
class DemoAgent:
    """One agent of the two-agent demo crew: who it is, what it may and will read."""

    role: str
    client_id: str
    grants: tuple[str, ...]
    plan: tuple[tuple[str, str], ...]
    goal: str


DEMO_AGENTS: tuple[DemoAgent, ...] = (
    DemoAgent(
        role="Analyst",
        client_id="11111111-1111-4111-8111-111111111111",
        grants=("read:records",),
        plan=(("secure-vault/records", "read:records"), ("secure-vault/metrics", "read:metrics")),
        goal="Brief the security lead on who is on file in the secure vault",
    ),
    DemoAgent(
        role="Writer",
        client_id="22222222-2222-4222-8222-222222222222",
        grants=("read:metrics",),
        plan=(("secure-vault/metrics", "read:metrics"), ("secure-vault/records", "read:records")),
        goal="Write the quarter's numbers for the board from the vault's metrics",
    ),
)
"""The demo crew: each agent its own (obviously fake) client id and delegation.

Each plan asks for what the agent may read and for what only the other may:
the second read must be refused before the API sees a request."""


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


def build_two_agent_crew(
    tool: AuthSecSecureFetchTool,
    *,
    native: bool = True,
    agents: Sequence[DemoAgent] = DEMO_AGENTS,
) -> Crew:
    """The demo crew: one task per agent, ``tool`` acting as each agent's own identity.

    Every agent is given the same ``tool``; :func:`assign_identities` then
    replaces it, per agent, by a copy acting as that agent's client id (by
    role), all of them on one broker.
    """
    members: list[Any] = []
    tasks: list[Task] = []
    for member in agents:
        agent = Agent(
            role=member.role,
            goal=member.goal,
            backstory="You read protected data through AuthSec delegation tokens and never "
            "guess at data you were refused.",
            llm=ScriptedVaultLLM(native=native, plan=list(member.plan)),
            tools=[tool],
            allow_delegation=False,
            verbose=False,
            max_iter=6,
        )
        reads = " and ".join(f"{endpoint} (scope {scope})" for endpoint, scope in member.plan)
        tasks.append(
            Task(
                description=f"Read {reads}, then write a short briefing. Report any refusal "
                "as it is.",
                expected_output="A short briefing with the facts read and the refusals.",
                agent=agent,
            )
        )
        members.append(agent)
    crew = Crew(agents=members, tasks=tasks, verbose=False)
    assign_identities(crew, agents={member.role: member.client_id for member in agents})
    return crew


@dataclass
class DemoRun:
    """What the demo did: each agent's answer, the token and fetch log, the tokens."""

    answers: dict[str, str]
    """Role -> that agent's briefing."""
    mode: str
    events: list[dict[str, Any]]
    tokens: dict[str, list[DelegationToken]]
    """Role -> the tokens the broker holds for that agent."""
    agents: tuple[DemoAgent, ...]
    seconds: float

    @property
    def answer(self) -> str:
        """All briefings, one after the other."""
        return "\n\n".join(f"{role}:\n{text}" for role, text in self.answers.items())


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


def run_demo(*, native: bool = True) -> DemoRun:
    """Run the two-agent demo crew in mock mode and report what happened.

    Mock mode is forced, whatever ``AUTHSEC_*`` says: the demo must never
    reach a real server or depend on a user's allowlists. The mock authority
    knows the two agents and refuses any other client id.
    """
    settings = AuthSecSettings(
        mode="mock",
        base_url=None,
        api_base_url=None,
        allowed_scopes=None,
        allowed_endpoints=None,
        allowed_methods=["GET"],
        agents={},
        cassette=None,
    )
    transport = MockTransport(
        authority=MockAuthority(
            agents={member.client_id: member.grants for member in DEMO_AGENTS},
            unknown_agents="refuse",
        )
    )
    tool = AuthSecSecureFetchTool(settings=settings, transport=transport)
    started = time.monotonic()
    crew = build_two_agent_crew(tool, native=native)
    with _capture(("token.", "fetch.")) as events:
        output = crew.kickoff()
    assert isinstance(output, CrewOutput)  # not streaming: the crew was built without stream=
    answers = {
        member.role: task_output.raw
        for member, task_output in zip(DEMO_AGENTS, output.tasks_output, strict=True)
    }
    tokens: dict[str, list[DelegationToken]] = {}
    for agent in crew.agents:
        (bound,) = [t for t in agent.tools or () if isinstance(t, AuthSecSecureFetchTool)]
        held: dict[str, DelegationToken] = {}
        for scope in sorted({scope for member in DEMO_AGENTS for _, scope in member.plan}):
            with suppress(errors.ScopeNotGrantedError):  # the other agent's scope: refused
                token = bound.broker.cached_token(scope, agent=bound.client_id)
                if token is not None:
                    held.setdefault(token.fingerprint, token)
        tokens[agent.role] = list(held.values())
    return DemoRun(
        answers=answers,
        mode=settings.resolved_mode,
        events=events,
        tokens=tokens,
        agents=DEMO_AGENTS,
        seconds=time.monotonic() - started,
    )
