"""What every agent-framework tool of this library shares: name, arguments, description
and the one call that turns a fetch into the text a model reads.

The CrewAI tools (:mod:`authsec_crewai.tools`) and the adapters for other
frameworks (:mod:`authsec_crewai.integrations`) are thin wrappers around
these, so a model sees the same tool, the same guards and the same results
and errors whichever framework runs it. Nothing here imports a framework.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .fetch import error_result, render_result
from .logging import get_logger

if TYPE_CHECKING:
    from .fetch import ParamsLike, SecureFetcher

__all__ = [
    "DEFAULT_TOOL_NAME",
    "QueryParam",
    "SecureFetchArgs",
    "ToolPolicy",
    "describe_tool",
    "failure_text",
    "fetch_text",
    "fetcher_from",
]

DEFAULT_TOOL_NAME: Final = "authsec_secure_vault_fetcher"
"""The name the authsec-crewai 0.1 tool had, so existing prompts and crews keep working."""

_log = get_logger("authsec_crewai.tools")


class QueryParam(BaseModel):
    """One query parameter.

    A list of name/value objects rather than a free-form object, because
    strict function-calling schemas (OpenAI ``strict: true``) cannot express an
    object with arbitrary keys: a model would only ever be able to send ``{}``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Parameter name, e.g. 'page'.")
    value: str = Field(description="Parameter value, as text, e.g. '2'.")

    @field_validator("value", mode="before")
    @classmethod
    def _scalar_to_text(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        return value


class SecureFetchArgs(BaseModel):
    """The tool's arguments, as the model sees them."""

    endpoint: str = Field(
        description="Path relative to the protected API, e.g. 'secure-vault/records'. "
        "Never a full URL or host; no '..', '?', '#' or percent-escapes."
    )
    scope: str = Field(
        description="The permission this call needs, shaped 'resource:action', "
        "e.g. 'read:records' or 'read:metrics'."
    )
    params: list[QueryParam] | None = Field(
        default=None,
        description="Optional query parameters, e.g. [{'name': 'page', 'value': '2'}].",
    )

    @field_validator("params", mode="before")
    @classmethod
    def _object_to_pairs(cls, value: Any) -> Any:
        """Accept ``{"page": "2"}`` too: people (and ReAct models) write it that way."""
        if isinstance(value, Mapping):
            return [{"name": key, "value": item} for key, item in value.items()]
        return value


class ToolPolicy(Protocol):
    """What a tool's description says about its policy (settings and fetchers have it)."""

    @property
    def allowed_endpoints(self) -> Sequence[str] | None: ...
    @property
    def allowed_scopes(self) -> Collection[str] | None: ...
    @property
    def allowed_methods(self) -> Collection[str]: ...


def describe_tool(policy: ToolPolicy) -> str:
    """The description the model reads: what endpoints and scopes look like, and the result.

    ``policy`` is the settings a tool is built from, or the fetcher it calls
    through. Configured allowlists are spelled out, so a model does not have
    to learn them by being refused.
    """
    lines = [
        "Fetches data from the AuthSec-protected API with a short-lived delegation token "
        "limited to the scope of this call, and returns the API's JSON answer.",
        "endpoint: a path relative to the API, e.g. 'secure-vault/records' or "
        "'secure-vault/metrics'; never a full URL or host name, and no '..', '?', '#' or "
        "percent-escapes.",
        "scope: the one permission the call needs, shaped 'resource:action', e.g. "
        "'read:records' for secure-vault/records and 'read:metrics' for secure-vault/metrics.",
        "params: optional query parameters, a list of {name, value}.",
        'The result is JSON: {"status": "ok", "endpoint": ..., "scope": ..., "data": ...} or '
        '{"status": "error", "error": <kind>, "message": ..., "retryable": true|false}. '
        'Read the message; do not repeat a call whose error has "retryable": false.',
    ]
    if policy.allowed_endpoints is not None:
        prefixes = ", ".join(repr(p) for p in policy.allowed_endpoints) or "none"
        lines.append(f"Allowed endpoint prefixes: {prefixes}.")
    if policy.allowed_scopes is not None:
        lines.append(f"Allowed scopes: {', '.join(sorted(policy.allowed_scopes)) or 'none'}.")
    if set(policy.allowed_methods) != {"GET"}:
        lines.append(f"Allowed methods: {', '.join(sorted(policy.allowed_methods))}.")
    return "\n".join(lines)


def fetcher_from(deps: Any) -> SecureFetcher:
    """The fetcher in a framework's run context: the context itself, or its ``fetcher``.

    For frameworks that hand tools the application's dependencies at run time
    (PydanticAI's ``deps``, the OpenAI Agents SDK's ``context``).
    """
    from .errors import ConfigurationError
    from .fetch import SecureFetcher

    found = deps if isinstance(deps, SecureFetcher) else getattr(deps, "fetcher", None)
    if not isinstance(found, SecureFetcher):
        raise ConfigurationError(
            "the secure fetch tool needs a SecureFetcher: pass one when creating the tool, "
            "or run the agent with one (or an object with a `fetcher` attribute) as its "
            f"deps / context; got {type(deps).__name__}"
        )
    return found


def _plain(params: ParamsLike | Sequence[BaseModel]) -> ParamsLike:
    """Parameters a framework validated into ``QueryParam`` models, as plain pairs."""
    if isinstance(params, Sequence) and not isinstance(params, str | bytes):
        return [(p.name, p.value) if isinstance(p, QueryParam) else p for p in params]
    return params


async def fetch_text(
    fetcher: SecureFetcher,
    endpoint: str,
    scope: str,
    params: ParamsLike | Sequence[QueryParam] = None,
    *,
    tool: str = DEFAULT_TOOL_NAME,
) -> str:
    """One guarded call as the JSON text a model reads; failures are answers, not raised.

    A refusal or failure comes back as ``{"status": "error", ...}`` telling the
    model what went wrong and whether retrying can help: a raised exception
    would reach the model as a stack trace, or end the agent's run.
    """
    try:
        result = await fetcher.fetch(endpoint, scope, params=_plain(params))
    except Exception as exc:
        return failure_text(exc, tool=tool)
    return render_result(result.to_dict())


def failure_text(exc: Exception, *, tool: str = DEFAULT_TOOL_NAME) -> str:
    """A failure as the JSON text a model reads; one that is not the library's is logged
    with its traceback (it is a bug, and the model only sees ``internal_error``)."""
    from .errors import AuthSecError

    if not isinstance(exc, AuthSecError):
        _log.error("tools.unexpected_error", tool=tool, exc_info=exc)
    return render_result(error_result(exc))
