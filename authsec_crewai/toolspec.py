"""What every agent-framework tool of this library shares: name, arguments, description
and the one call that turns a fetch into the text a model reads.

The CrewAI tools (:mod:`authsec_crewai.tools`) and the adapters for other
frameworks (:mod:`authsec_crewai.integrations`) are thin wrappers around
these, so a model sees the same tool, the same guards and the same results
and errors whichever framework runs it. Nothing here imports a framework.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .fetch import error_result, render_result
from .logging import get_logger

if TYPE_CHECKING:
    from .fetch import ParamsLike, SecureFetcher

__all__ = [
    "ARGUMENT_DESCRIPTIONS",
    "DEFAULT_TOOL_NAME",
    "QueryParam",
    "SecureFetchArgs",
    "ToolPolicy",
    "arguments_schema",
    "describe_tool",
    "failure_text",
    "fetch_text",
    "fetcher_from",
    "fetcher_in",
]

DEFAULT_TOOL_NAME: Final = "authsec_secure_vault_fetcher"
"""The name the authsec-crewai 0.1 tool had, so existing prompts and crews keep working."""

_log = get_logger("authsec_crewai.tools")


# A list of name/value objects rather than a free-form object, because strict
# function-calling schemas (OpenAI ``strict: true``) cannot express an object with
# arbitrary keys: a model would only ever be able to send ``{}``. The classes'
# docstrings are for developers; what a model reads of them is their
# ``json_schema_extra`` description, and every argument's ``Field`` description.


def _model_facing(description: str | None) -> Callable[[dict[str, Any]], None]:
    """A ``json_schema_extra`` that puts ``description`` (or none) in place of the
    class docstring pydantic would otherwise show the model."""

    def extra(schema: dict[str, Any]) -> None:
        schema.pop("description", None)
        if description is not None:
            schema["description"] = description

    return extra


class QueryParam(BaseModel):
    """One query parameter of a fetch (see the comment above for its shape)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra=_model_facing("One query parameter: its name and its value."),
    )

    name: str = Field(description="The parameter's name, e.g. 'page'.")
    value: str = Field(description="The parameter's value, as text, e.g. '2'.")

    @field_validator("value", mode="before")
    @classmethod
    def _scalar_to_text(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        return value


ARGUMENT_DESCRIPTIONS: Final[Mapping[str, str]] = {
    "endpoint": "The path to fetch, relative to the protected API, e.g. "
    "'secure-vault/records'. Never a full URL or host name; no '..', '?', '#' or "
    "percent-escapes.",
    "scope": "The one permission this call needs, shaped 'resource:action', e.g. "
    "'read:records' for secure-vault/records or 'read:metrics' for secure-vault/metrics.",
    "params": "Query parameters, a list of {name, value} objects, e.g. "
    "[{'name': 'page', 'value': '2'}], or null for none.",
}
"""What the model reads about each argument: one text, shared by every framework's tool."""


class SecureFetchArgs(BaseModel):
    """The tool's arguments; every framework's tool validates the model's call with it."""

    model_config = ConfigDict(json_schema_extra=_model_facing(None))

    endpoint: str = Field(description=ARGUMENT_DESCRIPTIONS["endpoint"])
    scope: str = Field(description=ARGUMENT_DESCRIPTIONS["scope"])
    params: list[QueryParam] | None = Field(
        default=None, description=ARGUMENT_DESCRIPTIONS["params"]
    )

    @field_validator("params", mode="before")
    @classmethod
    def _object_to_pairs(cls, value: Any) -> Any:
        """Accept ``{"page": "2"}`` too: people (and ReAct models) write it that way."""
        if isinstance(value, Mapping):
            return [{"name": key, "value": item} for key, item in value.items()]
        return value


def arguments_schema(*, strict: bool = False) -> dict[str, Any]:
    """The JSON schema of the arguments, as a model reads it.

    ``strict``: every property required (``params`` may be null) and no others
    allowed, as OpenAI's strict function calling wants.
    """
    schema = SecureFetchArgs.model_json_schema()
    if strict:
        schema["required"] = list(schema["properties"])
        schema["additionalProperties"] = False
    return schema


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
        *(f"{name}: {text}" for name, text in ARGUMENT_DESCRIPTIONS.items()),
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


def fetcher_in(deps: Any) -> SecureFetcher | None:
    """The fetcher a framework's run context carries, if any: the context itself, or its
    ``fetcher`` attribute (PydanticAI's ``deps``, the OpenAI Agents SDK's ``context``)."""
    from .fetch import SecureFetcher

    found = deps if isinstance(deps, SecureFetcher) else getattr(deps, "fetcher", None)
    return found if isinstance(found, SecureFetcher) else None


def fetcher_from(deps: Any) -> SecureFetcher:
    """The fetcher in a framework's run context (see :func:`fetcher_in`); a context
    without one is a :class:`~authsec_crewai.errors.ConfigurationError`."""
    from .errors import ConfigurationError

    found = fetcher_in(deps)
    if found is None:
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
