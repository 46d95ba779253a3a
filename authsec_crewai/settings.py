"""Configuration: one validated object, read from ``AUTHSEC_*`` variables or ``.env``.

Why a settings object rather than loose ``os.environ`` reads: every value is
checked once, at construction, with a message that names the variable to fix;
the mode is resolved once, by a validator (``resolved_mode``), so "live is
configured but broken" can never quietly become "mock". Objects are built from
it in one place, :mod:`authsec_crewai.wiring`, so the tools, the CLI, the pytest
plugin and user code cannot disagree about what the configuration means.

Importing this module is cheap: it imports neither the transports nor the broker.
"""

from __future__ import annotations

import importlib
import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic import model_validator as _model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ._urls import check_base_url
from .errors import ConfigurationError
from .identity import OPAQUE_ID_LIMIT, is_opaque_id, is_uuid_text
from .policy import policy_problem
from .token import canonical_scopes

__all__ = [
    "DEMO_CLIENT_ID",
    "ENV_PREFIX",
    "AuthSecSettings",
    "LogFormat",
    "Mode",
    "ResolvedMode",
    "client_id_for_role",
    "env_var",
    "parse_agents",
    "role_key",
]

Mode = Literal["auto", "live", "mock", "record", "replay", "oauth"]
ResolvedMode = Literal["live", "mock", "record", "replay", "oauth"]
LogFormat = Literal["console", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

ENV_PREFIX = "AUTHSEC_"

DEMO_CLIENT_ID = "00000000-0000-4000-8000-000000000001"
"""The client id mock mode uses when none is configured.

A fixed, obviously fake UUID: mock tokens are then reproducible in shape, and
nobody mistakes them for a real agent's identity.
"""

_POLICY_SETTINGS = {
    "advisory_fraction": "refresh_advisory_fraction",
    "advisory_max": "refresh_advisory_max",
    "mandatory_fraction": "refresh_mandatory_fraction",
    "mandatory_max": "refresh_mandatory_max",
    "jitter_fraction": "refresh_jitter_fraction",
    "failure_memory": "failure_memory",
    "backoff_initial": "backoff_initial",
    "backoff_max": "backoff_max",
}
"""Each field of :class:`~authsec_crewai.policy.RefreshPolicy` and the setting it comes from."""
_HTTP_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


def env_var(field_name: str) -> str:
    """The environment variable that sets ``field_name`` (``base_url`` -> ``AUTHSEC_BASE_URL``)."""
    return ENV_PREFIX + field_name.upper()


# --- parsing helpers ------------------------------------------------------------------


def _empty_to_none(value: Any) -> Any:
    """An exported-but-empty variable (``AUTHSEC_BASE_URL=``) means "not set"."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _split_list(value: Any, *, separators: str = ",") -> Any:
    """Accept a JSON array or a separated string from the environment.

    ``NoDecode`` stops pydantic-settings from insisting on JSON, so
    ``AUTHSEC_AUDIENCE=authsec-api,billing`` works as people expect while
    ``AUTHSEC_AUDIENCE='["authsec-api"]'`` still does too.
    """
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"looks like JSON but is not valid JSON ({exc.msg})") from None
    return [part for part in re.split(f"[{re.escape(separators)}]", text) if part.strip()]


def role_key(role: str) -> str:
    """How agent roles are compared: case and runs of whitespace do not matter.

    ``"Secure Vault  Analyst"`` in ``AUTHSEC_AGENTS`` names the agent whose
    CrewAI role is ``"secure vault analyst"``: a role is a label people type
    twice, and a mismatch in case should not cost an agent its identity.
    """
    return " ".join(role.split()).casefold()


def client_id_for_role(agents: Mapping[str, str], role: str) -> str | None:
    """The client id ``agents`` (role -> client id) gives ``role``, compared by :func:`role_key`."""
    wanted = role_key(role)
    for name, client_id in agents.items():
        if role_key(name) == wanted:
            return client_id
    return None


def parse_agents(value: Any) -> Any:
    """``AUTHSEC_AGENTS`` as ``{role: client_id}``, from JSON or ``role=uuid,role=uuid``.

    Every entry is checked here, so each message names the role at fault; the
    roles are kept as written (they are shown to people), compared by
    :func:`role_key`.
    """
    if isinstance(value, bytes):
        value = value.decode()
    value = _empty_to_none(value)
    if value is None:
        return {}
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"looks like JSON but is not valid JSON ({exc.msg})") from None
        else:
            pairs: list[tuple[str, str]] = []
            for item in (part for part in text.split(",") if part.strip()):
                role, sep, client_id = item.partition("=")
                if not sep:
                    raise ValueError(
                        f"entry {item.strip()[:60]!r} is not role=client-id; write e.g. "
                        f"'analyst={DEMO_CLIENT_ID},writer=<uuid>' or a JSON object"
                    )
                pairs.append((role, client_id))
            value = pairs
    if isinstance(value, dict):
        value = list(value.items())
    if not isinstance(value, list):
        raise ValueError("must map agent roles to client ids: a JSON object or role=uuid,...")
    agents: dict[str, str] = {}
    seen: dict[str, str] = {}
    for role, client_id in value:
        if not isinstance(role, str) or not role.strip():
            raise ValueError("an agent role is empty; every entry needs a role name")
        name = " ".join(role.split())
        if not isinstance(client_id, str) or not is_uuid_text(client_id.strip()):
            raise ValueError(
                f"the client id of role {name[:60]!r} must be the agent's UUID (like "
                f"{DEMO_CLIENT_ID}); AuthSec answers 400 to anything else"
            )
        key = role_key(name)
        if key in seen:
            raise ValueError(
                f"roles {seen[key][:60]!r} and {name[:60]!r} are the same role (roles are "
                "compared without regard to case and spacing); name each agent once"
            )
        seen[key] = name
        agents[name] = client_id.strip()
    return agents


def _check_path_prefix(value: str) -> str:
    """A relative path prefix such as ``secure-vault/``: no scheme, host, ``..`` or escapes."""
    text = value.strip()
    stripped = text.lstrip("/")
    segments = stripped.split("/")
    body = segments[:-1] if segments and segments[-1] == "" else segments
    if (
        not stripped
        or text.startswith("//")
        or not body
        or any(not _PATH_SEGMENT.fullmatch(seg) or seg in (".", "..") for seg in body)
    ):
        raise ValueError(
            f"endpoint prefix {text[:60]!r} is not a plain relative path; use letters, digits, "
            "'.', '_', '~', '-' separated by '/', e.g. 'secure-vault/'"
        )
    return stripped


class AuthSecSettings(BaseSettings):
    """Every knob of the library, from ``AUTHSEC_*`` variables, a ``.env`` file or arguments.

    Precedence (highest first): keyword arguments, environment, ``.env`` in the
    current directory, defaults. Invalid values raise
    :class:`~authsec_crewai.errors.ConfigurationError` at construction, naming
    the variable. The object is frozen: build a new one to change a value, so a
    validated configuration cannot be made invalid later.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        validate_default=True,
        allow_inf_nan=False,  # "inf" seconds is a typo, not a policy
    )

    mode: Mode = Field(
        "auto",
        description="auto | live | mock | record | replay | oauth. auto is live when base_url "
        "and client_id are set, else mock (with a warning); oauth is any OAuth 2.0 "
        "authorization server (the AUTHSEC_OAUTH_* block).",
    )
    base_url: str | None = Field(
        None, description="The AuthSec server, e.g. https://authsec.example.com."
    )
    client_id: str | None = Field(
        None,
        validation_alias=AliasChoices("AUTHSEC_CLIENT_ID", "AUTHSEC_AGENT_CLIENT_ID"),
        description="The agent's client id (a UUID; in oauth mode the OAuth client id, any "
        "string). Also read from AUTHSEC_AGENT_CLIENT_ID, the name the existing AuthSec SDKs "
        "use; AUTHSEC_CLIENT_ID wins when both are set.",
    )
    agents: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Each CrewAI agent's own client id, by role: a JSON object or "
        "'role=uuid,role=uuid'. Tools used by an agent listed here act as that agent.",
    )
    api_token: SecretStr | None = Field(
        None,
        description="API token sent as 'Authorization: Bearer' to the AuthSec server "
        "(required by the newest server generation).",
    )
    api_base_url: str | None = Field(
        None,
        description="Origin (and optional path prefix) of the protected API the tools call. "
        "The token is only ever sent here. Defaults to base_url.",
    )
    audience: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Expected token audience(s); comma-separated or a JSON array.",
    )
    allowed_scopes: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="If set, the only scopes a tool may request; comma/space-separated or JSON.",
    )
    allowed_endpoints: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="If set, the only path prefixes (relative to api_base_url) a tool may call.",
    )
    allowed_methods: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["GET"],
        description="HTTP methods a tool may use; GET only unless widened on purpose.",
    )
    max_response_bytes: int = Field(
        1_048_576, gt=0, description="Protected-API answers larger than this are refused."
    )
    timeout: float = Field(
        10.0, gt=0, description="Seconds for one whole HTTP exchange, body included."
    )
    retry_budget: float = Field(
        30.0, ge=0, description="Seconds one token fetch may take, retries included (0: none)."
    )
    verify: bool = Field(True, description="Verify token signatures and claims when keys exist.")
    verify_leeway: float = Field(
        30.0, ge=0, le=300, description="Clock skew allowed when checking exp/nbf/iat, seconds."
    )
    refresh_advisory_fraction: float = Field(
        0.2, gt=0, lt=1, description="Advisory window as a fraction of the token's lifetime."
    )
    refresh_advisory_max: float = Field(900.0, gt=0, description="Advisory window cap, seconds.")
    refresh_mandatory_fraction: float = Field(
        0.05, gt=0, lt=1, description="Mandatory window as a fraction of the token's lifetime."
    )
    refresh_mandatory_max: float = Field(300.0, gt=0, description="Mandatory window cap, seconds.")
    refresh_jitter_fraction: float = Field(
        0.25, ge=0, le=1, description="Random share of the advisory window, per token (0: none)."
    )
    failure_memory: float = Field(
        1.0, ge=0, description="Seconds a mandatory failure is remembered and re-raised."
    )
    backoff_initial: float = Field(
        1.0, gt=0, description="First back-off after a failed advisory refresh, seconds."
    )
    backoff_max: float = Field(60.0, gt=0, description="Back-off ceiling, seconds.")
    cassette: Path | None = Field(None, description="Cassette file for record and replay modes.")
    log_format: LogFormat = Field("console", description="console (for people) or json.")
    log_level: LogLevel = Field("INFO", description="Threshold for configure() (see logging).")
    store: str = Field(
        "memory:",
        # Not in repr: a Redis URL may carry a password (the store shows it masked).
        repr=False,
        description="Where tokens are shared beyond the process: memory: (this process "
        "only), sqlite:////abs/path/tokens.db or sqlite:///relative.db (processes on one "
        "host), redis://host:port/db, redis+cluster://host:port,... or "
        "redis+sentinel://host:port,.../service/db, rediss... for TLS (processes on many "
        "hosts).",
    )
    store_key: SecretStr | None = Field(
        None,
        description="AES-256 key sealing tokens in a shared store: urlsafe base64 of 32 "
        "random bytes. 'new,old' also opens entries sealed with the old key (rotation).",
    )
    store_old_key: SecretStr | None = Field(
        None, description="A previous store key that still opens entries (rotation)."
    )
    store_encryption: bool = Field(
        True,
        description="off stores tokens unencrypted in a shared store (a deliberate choice; "
        "otherwise a shared store without AUTHSEC_STORE_KEY is a configuration error).",
    )
    store_timeout: float = Field(
        0.5, gt=0, le=30, description="Longest one store operation may take, seconds."
    )
    store_lease: float = Field(
        10.0, gt=0, le=300, description="Fetch lease: a dead holder is replaced after this."
    )

    # --- shared store: high availability, TLS, failure policy (issue 19) ---------------
    store_required: bool = Field(
        False,
        description="on: a shared store that cannot be reached when the broker starts is a "
        "configuration error (the process does not start) instead of an outage during "
        "which each process fetches on its own.",
    )
    store_tls_ca: Path | None = Field(
        None, description="CA bundle (PEM) that signed the Redis server's certificate."
    )
    store_tls_cert: Path | None = Field(
        None, description="Client certificate (PEM) for Redis servers that ask for one."
    )
    store_tls_key: Path | None = Field(
        None, description="The client certificate's private key (PEM), if not in the cert file."
    )
    store_max_connections: int = Field(
        2,
        ge=1,
        le=64,
        description="Redis command connections per process (per node in a Cluster); "
        "pub/sub adds one.",
    )

    # --- OAuth 2.0 (AUTHSEC_MODE=oauth): any authorization server ------------------------
    # AuthSec's own AS for MCP servers, Auth0, Okta, Keycloak. Secrets are given as the
    # value, or as the path of a file holding it (an absolute path that exists, or
    # file:<path>); they are read once here and never shown (SecretStr).

    oauth_issuer: str | None = Field(
        None,
        description="The authorization server's issuer (RFC 8414), e.g. "
        "https://auth.example.com; discovered from AUTHSEC_RESOURCE when unset (RFC 9728).",
    )
    resource: str | None = Field(
        None,
        description="The protected resource the tokens are for (RFC 8707), e.g. "
        "https://mcp.example.com/mcp; part of every cache key, and the default API origin.",
    )
    client_secret: SecretStr | None = Field(
        None, description="The OAuth client secret (client_secret_basic or _post), or its file."
    )
    client_key: SecretStr | None = Field(
        None,
        description="The path of the client's RSA private key in PEM form (private_key_jwt), "
        "or the PEM itself.",
    )
    client_key_id: str | None = Field(
        None, description="The kid the server registered for AUTHSEC_CLIENT_KEY."
    )
    oauth_auth_method: (
        Literal["client_secret_basic", "client_secret_post", "private_key_jwt", "none"] | None
    ) = Field(
        None,
        description="Client authentication; by default the strongest the server advertises "
        "that the configured secret or key can do.",
    )
    oauth_refresh_token: SecretStr | None = Field(
        None,
        description="A refresh token from a user's sign-in, or its file: seeds the rotating "
        "chain the fleet then keeps (sealed) in AUTHSEC_STORE and spends once per turn.",
    )

    def __init__(self, **values: Any) -> None:
        # Re-raise pydantic's error as our ConfigurationError: one exception tree
        # for callers, messages that name AUTHSEC_* variables, and no echo of the
        # rejected input (which could be a secret).
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(_explain(exc)) from None

    # --- validators ----------------------------------------------------------------

    @_model_validator(mode="before")
    @classmethod
    def _default_api_base_url(cls, data: Any) -> Any:
        """``api_base_url`` defaults to ``base_url``: most deployments serve both."""
        if isinstance(data, dict) and not _empty_to_none(data.get("api_base_url")):
            base = _empty_to_none(data.get("base_url"))
            if base is None and str(data.get("mode", "")).strip().lower() == "oauth":
                base = _empty_to_none(data.get("resource"))  # tokens are good only there
            if isinstance(base, str):
                try:
                    check_base_url(base)
                except ValueError:
                    return data  # reported once, against AUTHSEC_BASE_URL
                data = {**data, "api_base_url": base}
        return data

    @field_validator("mode", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("base_url", "api_base_url", mode="before")
    @classmethod
    def _url(cls, value: Any) -> Any:
        return _empty_to_none(value)

    @field_validator("base_url", "api_base_url")
    @classmethod
    def _check_urls(cls, value: str | None) -> str | None:
        return None if value is None else check_base_url(value)

    @field_validator("store")
    @classmethod
    def _check_store(cls, value: str) -> str:
        text = value.strip() or "memory:"
        scheme = text.partition(":")[0].lower()
        if text.lower() in ("memory", "memory:"):
            return "memory:"
        if scheme == "sqlite":
            if not text.startswith("sqlite:///") or len(text) <= len("sqlite:///"):
                raise ValueError("a SQLite store is sqlite:///path/to/tokens.db (three slashes)")
            return text
        if scheme.startswith(("redis", "rediss")):
            from ._redis_urls import parse_redis_url

            parse_redis_url(text)  # its ValueError never quotes the URL (a password)
            return text
        raise ValueError(
            "choose memory:, sqlite:///path/to/tokens.db, redis://host:port/db, "
            "redis+cluster://host:port,... or redis+sentinel://host:port/service/db"
        )

    @field_validator(
        "store_key",
        "store_old_key",
        "store_tls_ca",
        "store_tls_cert",
        "store_tls_key",
        mode="before",
    )
    @classmethod
    def _optional_secret(cls, value: Any) -> Any:
        return _empty_to_none(value)

    @field_validator("client_id", "api_token", "cassette", mode="before")
    @classmethod
    def _optional(cls, value: Any) -> Any:
        return _empty_to_none(value)

    @field_validator("client_id")
    @classmethod
    def _check_client_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        text = value.strip()
        mode = info.data.get("mode")
        if mode == "oauth":
            return _check_oauth_client_id(text)  # opaque (RFC 6749 §2.2)
        if mode == "record" and not is_uuid_text(text):
            # Recording an OAuth server takes its opaque ids; whether this recording is
            # one is known only once its issuer or resource is read (see _resolve).
            return _check_oauth_client_id(text)
        if not is_uuid_text(text):
            raise ValueError(_NOT_A_UUID)
        return text

    @field_validator(
        "oauth_issuer",
        "resource",
        "client_secret",
        "client_key",
        "client_key_id",
        "oauth_auth_method",
        "oauth_refresh_token",
        mode="before",
    )
    @classmethod
    def _optional_oauth(cls, value: Any) -> Any:
        return _empty_to_none(value)

    @field_validator("oauth_issuer", "resource")
    @classmethod
    def _check_oauth_urls(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_base_url(value)
        return value.strip()  # kept exactly: RFC 8414 and 9728 compare it character by character

    @field_validator("client_secret", "oauth_refresh_token")
    @classmethod
    def _secret_or_file(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _read_secret(value.get_secret_value(), pem=False)

    @field_validator("client_key")
    @classmethod
    def _pem_or_file(cls, value: SecretStr | None) -> SecretStr | None:
        return None if value is None else _read_secret(value.get_secret_value(), pem=True)

    @field_validator("agents", mode="before")
    @classmethod
    def _agents(cls, value: Any) -> Any:
        return parse_agents(value)

    @field_validator("audience", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("allowed_scopes", "allowed_endpoints", mode="before")
    @classmethod
    def _optional_list(cls, value: Any) -> Any:
        # An empty variable means "no allowlist"; an explicit JSON [] means "allow nothing".
        value = _empty_to_none(value)
        return None if value is None else _split_list(value, separators=", \t")

    @field_validator("allowed_methods", mode="before")
    @classmethod
    def _methods_list(cls, value: Any) -> Any:
        return _split_list(value, separators=", \t")

    @field_validator("audience")
    @classmethod
    def _check_audience(cls, value: list[str]) -> list[str]:
        cleaned = [item.strip() for item in value if item.strip()]
        return list(dict.fromkeys(cleaned))

    @field_validator("allowed_scopes")
    @classmethod
    def _check_scopes(cls, value: list[str] | None) -> list[str] | None:
        if value is None or not value:
            return value
        return sorted(canonical_scopes(value))

    @field_validator("allowed_endpoints")
    @classmethod
    def _check_endpoints(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        return list(dict.fromkeys(_check_path_prefix(item) for item in value))

    @field_validator("allowed_methods")
    @classmethod
    def _check_methods(cls, value: list[str]) -> list[str]:
        methods = list(dict.fromkeys(item.strip().upper() for item in value if item.strip()))
        unknown = [m for m in methods if m not in _HTTP_METHODS]
        if unknown:
            raise ValueError(
                f"unknown HTTP method(s) {', '.join(unknown)}; choose from "
                f"{', '.join(sorted(_HTTP_METHODS))}"
            )
        if not methods:
            raise ValueError("at least one HTTP method is required, e.g. GET")
        return methods

    @_model_validator(mode="after")
    def _check_policy(self) -> AuthSecSettings:
        """Cross-field rules of the refresh policy: the broker's own rules
        (:func:`~authsec_crewai.policy.policy_problem`), named by variable."""
        values = self.refresh_policy_values()
        problem = policy_problem(values, lambda field: env_var(_POLICY_SETTINGS[field]))
        if problem is not None:
            raise ValueError(problem)
        return self

    _resolved_mode: ResolvedMode = PrivateAttr()

    @_model_validator(mode="after")
    def _resolve_mode(self) -> AuthSecSettings:
        """Decide the mode once, here: ``auto`` becomes live or mock, and a mode whose
        settings are missing is refused at construction, naming the variable.

        ``live`` with missing values must never turn into mock data. ``record``
        records an OAuth server when its issuer or resource is set (and then needs
        what ``oauth`` needs), the live server when ``base_url`` and the client id are set and
        the mock when neither is; one without the other is the same error as in
        ``live``. Says nothing: the auto -> mock warning is logged by the wiring
        when it builds a mock from these settings.
        """
        self._resolved_mode = _resolve(self)
        return self

    @property
    def resolved_mode(self) -> ResolvedMode:
        """The mode actually used (``auto`` resolved at construction; see ``_resolve_mode``)."""
        return self._resolved_mode

    def refresh_policy_values(self) -> dict[str, float]:
        """The :class:`~authsec_crewai.policy.RefreshPolicy` fields these settings give."""
        return {field: getattr(self, setting) for field, setting in _POLICY_SETTINGS.items()}

    def client_id_for_role(self, role: str) -> str | None:
        """The client id ``AUTHSEC_AGENTS`` gives the agent with this CrewAI role, if any."""
        return client_id_for_role(self.agents, role)

    @property
    def from_oauth_server(self) -> bool:
        """True when tokens come from an OAuth server: ``oauth`` mode, or a ``record``
        of one (its issuer or resource set). One answer for the wiring and the tools."""
        return self._resolved_mode == "oauth" or _records_oauth(self)

    @property
    def auto_chose_mock(self) -> bool:
        """True when ``auto`` resolved to mock because the server is not configured:
        the case the wiring warns about once and the command line notes."""
        return self.mode == "auto" and self._resolved_mode == "mock"

    def model_copy(
        self, *, update: Mapping[str, Any] | None = None, deep: bool = False
    ) -> AuthSecSettings:
        """A copy; with ``update``, a new configuration validated like any other.

        pydantic's own ``model_copy(update=...)`` skips validation, which would
        let a copy carry a value no constructor accepts, or the mode resolved
        for the values it replaced.
        """
        if not update:
            return super().model_copy(deep=deep)
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update(update)
        try:
            return type(self).model_validate(values)
        except ValidationError as exc:
            raise ConfigurationError(_explain(exc)) from None

    def api_token_value(self) -> str | None:
        """The raw API token, for the one place that sends it (the live transport)."""
        return None if self.api_token is None else self.api_token.get_secret_value()

    def oauth_secrets(self) -> tuple[str | None, str | None, str | None]:
        """The raw client secret, client key PEM and refresh token, for the one place
        that uses them (the OAuth transport's wiring)."""
        return tuple(  # type: ignore[return-value]
            None if item is None else item.get_secret_value()
            for item in (self.client_secret, self.client_key, self.oauth_refresh_token)
        )


_NOT_A_UUID = (
    f"the client id must be the agent's UUID (like {DEMO_CLIENT_ID}); AuthSec answers 400 "
    "to anything else. Copy it from the agent's page in the AuthSec console"
)


def _check_oauth_client_id(text: str) -> str:
    """An OAuth client id: opaque (RFC 6749 §2.2), but printable and of sane length."""
    if not is_opaque_id(text):
        raise ValueError(
            f"an OAuth client id must be printable text of at most {OPAQUE_ID_LIMIT} characters"
        )
    return text


def _read_secret(text: str, *, pem: bool) -> SecretStr:
    """A secret given as its value or as a file's path; the file read now, once.

    A value is taken as a path when it starts with ``file:``, or is an absolute path
    that exists (a base64 secret may start with "/"); a PEM key is a path unless it
    is PEM text. Messages never repeat the value.
    """
    value = text.strip()
    if pem and value.startswith("-----BEGIN"):
        return SecretStr(value)
    path = Path(value.removeprefix("file:")).expanduser()
    if value.startswith("file:") or pem or (value.startswith("/") and path.is_file()):
        try:
            content = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ValueError(f"cannot read the file it names ({reason})") from None
        if not content:
            raise ValueError("the file it names is empty")
        if pem and not content.startswith("-----BEGIN"):
            raise ValueError("the file it names is not PEM (-----BEGIN ...)")
        return SecretStr(content)
    return SecretStr(value)


def _resolve(settings: AuthSecSettings) -> ResolvedMode:
    mode = settings.mode
    if mode == "oauth":
        return _resolve_oauth(settings)
    oauth_recording = _records_oauth(settings)
    if oauth_recording:
        _resolve_oauth(settings)  # recording an OAuth server: its settings, its rules
    elif settings.client_id is not None and not is_uuid_text(settings.client_id):
        raise ConfigurationError(f"AUTHSEC_CLIENT_ID (or AUTHSEC_AGENT_CLIENT_ID): {_NOT_A_UUID}")
    has_identity = settings.client_id is not None or bool(settings.agents)
    if mode == "auto":
        return "live" if settings.base_url and has_identity else "mock"
    # record records the live server when it is configured and the mock when
    # nothing is; half a live configuration is a typo, never a quiet mock.
    if mode == "live" or (
        mode == "record" and not oauth_recording and (settings.base_url is not None or has_identity)
    ):
        missing = "base_url" if settings.base_url is None else None
        missing = missing or (None if has_identity else "client_id")
        if missing is not None:
            raise ConfigurationError(
                f"{env_var(missing)} is not set; AUTHSEC_MODE={mode} needs "
                f"{env_var('base_url')} and {env_var('client_id')} "
                "(or AUTHSEC_AGENT_CLIENT_ID, or AUTHSEC_AGENTS for several agents). "
                "Set them, or use AUTHSEC_MODE=mock for local development"
            )
    if mode in ("record", "replay") and settings.cassette is None:
        raise ConfigurationError(
            f"{env_var('cassette')} is not set; AUTHSEC_MODE={mode} needs the path "
            "of the cassette file to " + ("write" if mode == "record" else "read")
        )
    return mode


def _records_oauth(settings: AuthSecSettings) -> bool:
    """``record`` of an OAuth server: its issuer or resource is set."""
    return settings.mode == "record" and bool(settings.oauth_issuer or settings.resource)


def _resolve_oauth(settings: AuthSecSettings) -> ResolvedMode:
    """OAuth mode (and recording an OAuth server) needs a client, where to find its
    server, and a way to get tokens."""
    if settings.client_id is None:
        raise ConfigurationError(
            f"{env_var('client_id')} is not set; AUTHSEC_MODE={settings.mode} needs the OAuth "
            "client id"
        )
    if settings.oauth_issuer is None and settings.resource is None:
        raise ConfigurationError(
            f"AUTHSEC_MODE=oauth needs {env_var('oauth_issuer')}, or {env_var('resource')} "
            "to discover the issuer from (RFC 9728)"
        )
    if (
        settings.client_secret is None
        and settings.client_key is None
        and settings.oauth_refresh_token is None
    ):
        raise ConfigurationError(
            f"AUTHSEC_MODE={settings.mode} needs {env_var('client_secret')} or "
            f"{env_var('client_key')} (client credentials), or "
            f"{env_var('oauth_refresh_token')} (a user's sign-in)"
        )
    return "oauth"


def _explain(exc: ValidationError) -> str:
    """A ValidationError as lines a person can act on, without the rejected secrets."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = error.get("loc") or ()
        field = str(loc[0]) if loc else ""
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        if field.upper() in ("CLIENT_ID", "AUTHSEC_CLIENT_ID", "AUTHSEC_AGENT_CLIENT_ID"):
            # pydantic reports the first alias whichever one was read; name both.
            lines.append(f"AUTHSEC_CLIENT_ID (or AUTHSEC_AGENT_CLIENT_ID): {message}")
        elif field in AuthSecSettings.model_fields:
            lines.append(f"{env_var(field)}: {message}")
        else:  # a cross-field rule; its message names the variables itself
            lines.append(message)
    return "invalid AuthSec configuration:\n  " + "\n  ".join(lines)


_MOVED_TO_WIRING = frozenset({"build_broker", "build_transport", "refresh_policy"})


def __getattr__(name: str) -> Any:
    """``build_broker``, ``build_transport`` and ``refresh_policy`` moved to
    :mod:`authsec_crewai.wiring`; the old names still work, with a warning."""
    if name in _MOVED_TO_WIRING:
        warnings.warn(
            f"authsec_crewai.settings.{name} moved to authsec_crewai.wiring.{name}",
            DeprecationWarning,
            stacklevel=2,
        )
        # Looked up by name, not imported: settings sit below the wiring that builds
        # from them, and this forwarding goes when the old names do.
        return getattr(importlib.import_module(f"{__package__}.wiring"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
