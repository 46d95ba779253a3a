"""The CrewAI tools: ``AuthSecSecureFetchTool`` (sync) and ``AsyncAuthSecSecureFetchTool``.

This is the only module of the library that imports crewai (which takes
seconds to import); ``import authsec_crewai`` never loads it.

Both tools stand on a :class:`~authsec_crewai._toolruntime.ToolBinding`, as
every framework's tool of this library does: one shared broker per
configuration and process, every agent its own identity on it, a sync call
safe from any thread and an async one on the caller's loop. What they add:

- **CrewAI's callers.** CrewAI calls the sync ``_run`` in worker threads,
  under both ``kickoff()`` and ``akickoff()``; async applications await
  ``_arun`` on asyncio or trio, on any thread.
- **Identities by role** (:meth:`~_SecureFetchTool.for_agent`,
  :func:`assign_identities`), from ``AUTHSEC_AGENTS``.
- **Failures are answers.** A refusal or failure is *returned* as JSON telling
  the model what went wrong and whether retrying can help, instead of raised:
  CrewAI would otherwise feed the exception text back and let the model repeat
  a refused call; and CrewAI's cache keeps only successes. A live failure is an
  error, never mock data (fail closed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Self

from pydantic import BaseModel, Field, PrivateAttr

from . import errors
from ._lazy import requires_extra
from ._toolruntime import ToolBinding, close_shared_brokers
from .broker import TokenBroker
from .fetch import OK_PREFIX, ParamsLike
from .settings import AuthSecSettings, client_id_for_role, env_var, parse_agents
from .sync import SyncTokenBroker
from .toolspec import DEFAULT_TOOL_NAME, QueryParam, SecureFetchArgs, describe_tool

with requires_extra("crewai", "the CrewAI tools"):
    from crewai.tools import BaseTool, EnvVar

if TYPE_CHECKING:
    from .transports.base import Transport

__all__ = [
    "DEFAULT_TOOL_NAME",
    "AsyncAuthSecSecureFetchTool",
    "AuthSecSecureFetchTool",
    "QueryParam",
    "SecureFetchArgs",
    "assign_identities",
    "close_shared_brokers",
    "describe_tool",
]


def _env_vars() -> list[EnvVar]:
    def var(field: str, description: str, default: str | None = None) -> EnvVar:
        return EnvVar(name=env_var(field), description=description, required=False, default=default)

    return [
        var(
            "mode",
            "auto | live | mock | record | replay (auto: live when the server and client "
            "id are set, else mock with a warning).",
            "auto",
        ),
        var("base_url", "The AuthSec server, e.g. https://authsec.example.com."),
        var("client_id", "The agent's client id (a UUID); AUTHSEC_AGENT_CLIENT_ID is read too."),
        EnvVar(
            name="AUTHSEC_AGENT_CLIENT_ID",
            description="The client id under the name the existing AuthSec SDKs use.",
            required=False,
        ),
        var(
            "agents",
            "Each agent's own client id by CrewAI role (role=uuid,role=uuid or JSON), used by "
            "assign_identities(crew) and tool.for_agent(role).",
        ),
        var("api_token", "API token for the AuthSec server (newest server generation)."),
        var(
            "api_base_url",
            "The protected API's origin; the token is only sent there. Defaults to "
            "AUTHSEC_BASE_URL.",
        ),
        var("allowed_scopes", "If set, the only scopes the tool may request."),
        var("allowed_endpoints", "If set, the only path prefixes the tool may call."),
    ]


def cache_successes(_args: Any = None, result: Any = None) -> bool:
    """CrewAI's tool cache keeps only successful answers.

    A cached failure would answer a later, legitimate retry of a transient
    error (a timeout, a 503) with the stale error.
    """
    return isinstance(result, str) and result.startswith(OK_PREFIX)


# --- identities ---------------------------------------------------------------------------------


def _client_id_for_role(
    role: str, settings: AuthSecSettings, agents: Mapping[str, str] | None
) -> str:
    if agents is None:
        mapping, source = settings.agents, env_var("agents")
    else:
        try:
            mapping, source = parse_agents(dict(agents)), "agents="
        except ValueError as exc:
            raise errors.ConfigurationError(f"agents=: {exc}") from None
    client_id = client_id_for_role(mapping, role)
    if client_id is not None:
        return client_id
    known = ", ".join(repr(name) for name in mapping) or "none"
    raise errors.ConfigurationError(
        f"the agent with role {role[:80]!r} has no client id in {source} (roles there: "
        f"{known}); add it, e.g. {env_var('agents')}='{role[:40]}=<its client id>'"
    )


def assign_identities(crew: Any, *, agents: Mapping[str, str] | None = None) -> None:
    """Give each agent of ``crew`` its own AuthSec identity, by role.

    Every AuthSec tool of every agent (and of every task, whose tools CrewAI
    uses instead of its agent's) is replaced by a copy acting as that agent:
    the client id comes from ``agents`` (role -> client id), else from
    ``AUTHSEC_AGENTS``. A tool given ``client_id=`` explicitly keeps it. An
    agent with AuthSec tools and no client id is a ``ConfigurationError``.
    ``crew`` is a ``Crew``, or an iterable of agents. The copies share one
    broker runtime, whatever the number of agents.
    """

    def bound(tools: Iterable[Any], agent: Any) -> list[Any]:
        return [_bound(tool, agent, agents) for tool in tools]

    members = getattr(crew, "agents", crew)
    for agent in members:
        if agent.tools:
            agent.tools = bound(agent.tools, agent)
    for task in getattr(crew, "tasks", ()):
        if task.tools and task.agent is not None:
            task.tools = bound(task.tools, task.agent)


def _bound(tool: Any, agent: Any, agents: Mapping[str, str] | None) -> Any:
    """``tool`` acting as ``agent``, if it is an AuthSec tool without an explicit identity.

    Other tools of this library that act for an agent (the MCP tools of
    :mod:`authsec_crewai.integrations.mcp`) say so with an
    ``assign_identity(agent, agents=...)`` method: this module cannot import
    them (they need the ``mcp`` extra).
    """
    if isinstance(tool, _SecureFetchTool):
        return tool.for_agent(agent, agents=agents) if tool._binding.client_id is None else tool
    assign = getattr(tool, "assign_identity", None)
    return assign(agent, agents=agents) if callable(assign) else tool


def client_id_for_agent(
    agent: Any, settings: AuthSecSettings, agents: Mapping[str, str] | None = None
) -> str:
    """The client id of ``agent`` (a CrewAI agent, or its role) by role, from ``agents``
    or ``AUTHSEC_AGENTS``; a role with none is a ``ConfigurationError``."""
    role = agent if isinstance(agent, str) else getattr(agent, "role", None)
    if not isinstance(role, str):
        raise TypeError(f"for_agent() takes a CrewAI agent or its role, not {type(agent)!r}")
    return _client_id_for_role(role, settings, agents)


# --- the tools ----------------------------------------------------------------------------------


class _SecureFetchTool(BaseTool):
    """What both tools share: arguments, wiring, and turning outcomes into JSON."""

    name: str = DEFAULT_TOOL_NAME
    description: str = ""
    args_schema: type[BaseModel] = SecureFetchArgs
    env_vars: list[EnvVar] = Field(default_factory=_env_vars)

    _binding: ToolBinding = PrivateAttr()

    def __init__(
        self,
        *,
        settings: AuthSecSettings | None = None,
        broker: TokenBroker | SyncTokenBroker | None = None,
        transport: Transport | None = None,
        client_id: str | None = None,
        **data: Any,
    ) -> None:
        """Wire the tool by hand, or not at all.

        - nothing: ``AuthSecSettings()`` from the environment (and ``.env``);
        - ``settings=``: that configuration;
        - ``broker=``: a running ``TokenBroker`` or ``SyncTokenBroker`` you
          own (the tool never closes it); ``settings`` then only sets policy;
        - ``transport=``: a transport of yours; a broker is built on it from
          ``settings``;
        - ``client_id=``: the agent this tool acts for, when it is not the
          settings' (one tool per agent, each with its own identity; see
          also :meth:`for_agent` and :func:`assign_identities`).

        Tools given the same configuration, broker or transport share one
        broker. Other keyword arguments are CrewAI's (``name``,
        ``description``, ``result_as_answer``, ...); any other keyword is a
        ``TypeError`` that names it, never a silently ignored option.
        """
        unknown = sorted(set(data) - set(type(self).model_fields))
        if unknown:
            raise TypeError(
                f"{type(self).__name__}() got unexpected keyword argument(s) "
                f"{', '.join(repr(name) for name in unknown)}; it takes settings, broker, "
                "transport, client_id and CrewAI's tool options "
                f"({', '.join(sorted(type(self).model_fields))})"
            )
        # A broken configuration fails here, not mid-crew: settings validate at construction.
        binding = ToolBinding.create(
            settings=settings, broker=broker, transport=transport, client_id=client_id
        )
        if not data.get("description"):
            data["description"] = describe_tool(binding.settings)
        data.setdefault("cache_function", cache_successes)
        super().__init__(**data)
        self._binding = binding

    def for_agent(self, agent: Any, *, agents: Mapping[str, str] | None = None) -> Self:
        """A copy of this tool acting as ``agent`` (a CrewAI agent, or its role).

        The client id comes from ``agents`` (role -> client id), else from
        ``AUTHSEC_AGENTS``; roles match without regard to case and spacing. A
        role with no client id is a ``ConfigurationError``: an agent never
        quietly borrows another identity. The copy shares this tool's broker.
        """
        client_id = client_id_for_agent(agent, self.settings, agents)
        copy = self.model_copy()
        copy._binding = self._binding.as_agent(client_id)
        return copy

    @property
    def client_id(self) -> str | None:
        """The client id of the agent this tool acts for (None: your broker's default agent)."""
        return self._binding.agent_id()

    @property
    def settings(self) -> AuthSecSettings:
        """The configuration this tool was built with (policy, and the broker's if shared)."""
        return self._binding.settings

    @property
    def broker(self) -> TokenBroker:
        """The (shared) broker this tool gets its tokens from; starts it if needed."""
        return self._binding.runtime().broker

    def _run(self, endpoint: str, scope: str, params: ParamsLike = None) -> str:
        """Fetch synchronously; safe from any thread, also one running an event loop.

        Returns the result as JSON text; failures are returned, not raised.
        """
        return self._binding.call(endpoint, scope, params, tool=self.name)


class AuthSecSecureFetchTool(_SecureFetchTool):
    """Fetch from an AuthSec-protected API with a scoped delegation token (sync).

    The drop-in successor of authsec-crewai 0.1's tool: same name
    (``authsec_secure_vault_fetcher``) and arguments (``endpoint``, ``scope``),
    plus optional ``params``; guarded, shared-broker, fail-closed.
    """

    def __init__(
        self,
        *,
        settings: AuthSecSettings | None = None,
        broker: TokenBroker | SyncTokenBroker | None = None,
        transport: Transport | None = None,
        client_id: str | None = None,
        **data: Any,
    ) -> None:
        # Spelled out (not inherited) so type checkers see these keywords: they
        # synthesise a pydantic model's __init__ from its fields otherwise.
        super().__init__(
            settings=settings, broker=broker, transport=transport, client_id=client_id, **data
        )


class AsyncAuthSecSecureFetchTool(_SecureFetchTool):
    """The same tool with a native ``_arun`` for async applications (asyncio or trio).

    ``await tool.arun(endpoint=..., scope=...)`` does not block the event loop
    and works from any loop on any thread. Its ``_run`` stays truly sync,
    because CrewAI calls ``_run`` in worker threads under both ``kickoff()``
    and ``akickoff()``, and ``BaseTool.run`` would hand a coroutine to
    ``asyncio.run``, which fails inside a running loop.
    """

    def __init__(
        self,
        *,
        settings: AuthSecSettings | None = None,
        broker: TokenBroker | SyncTokenBroker | None = None,
        transport: Transport | None = None,
        client_id: str | None = None,
        **data: Any,
    ) -> None:
        super().__init__(
            settings=settings, broker=broker, transport=transport, client_id=client_id, **data
        )

    async def _arun(self, endpoint: str, scope: str, params: ParamsLike = None) -> str:
        """Fetch asynchronously; returns the result as JSON text, failures included."""
        return await self._binding.acall(endpoint, scope, params, tool=self.name)
