"""Configuration: one validated object, read from ``AUTHSEC_*`` variables or ``.env``.

Why a settings object rather than loose ``os.environ`` reads: every value is
checked once, at construction, with a message that names the variable to fix;
the mode is chosen in one place (``resolved_mode``), so "live is configured but
broken" can never quietly become "mock"; and the factories below build the
transport and broker from the same object, so the tools, the CLI and user code
cannot disagree about what the configuration means.

Importing this module is cheap: transports and the broker are imported inside
the functions that need them, never at module level.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic import model_validator as _model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ConfigurationError
from .token import canonical_scopes

if TYPE_CHECKING:
    from .broker import RefreshPolicy, TokenBroker
    from .transports.base import Transport

__all__ = [
    "DEMO_CLIENT_ID",
    "ENV_PREFIX",
    "AuthSecSettings",
    "LogFormat",
    "Mode",
    "ResolvedMode",
    "build_broker",
    "build_transport",
    "env_var",
    "refresh_policy",
]

Mode = Literal["auto", "live", "mock", "record", "replay"]
ResolvedMode = Literal["live", "mock", "record", "replay"]
LogFormat = Literal["console", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

ENV_PREFIX = "AUTHSEC_"

DEMO_CLIENT_ID = "00000000-0000-4000-8000-000000000001"
"""The client id mock mode uses when none is configured.

A fixed, obviously fake UUID: mock tokens are then reproducible in shape, and
nobody mistakes them for a real agent's identity.
"""

_UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_HTTP_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE"})
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")

_auto_mock_warned = threading.Event()
"""Set once the auto -> mock warning was logged: it is said once per process,
not once per tool instance (a crew builds many)."""


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


def _check_url(value: str) -> str:
    """An http(s) URL with a host and no credentials, query or fragment; no trailing slash.

    Credentials in a URL end up in logs, proxies and error messages; a query or
    fragment would be silently mangled when paths are appended to it.
    """
    text = value.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        raise ValueError("is not a valid URL; expected e.g. https://authsec.example.com") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(
            "must start with https:// (or http:// for local testing); "
            f"got scheme {parts.scheme or '(none)'!r}"
        )
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(
            "must not contain credentials (user:password@); put the API token in "
            f"{env_var('api_token')} instead"
        )
    if not parts.hostname:
        raise ValueError("has no host; expected e.g. https://authsec.example.com")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ValueError("must not have a query string or fragment")
    if "\\" in text or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise ValueError("must not contain backslashes, whitespace or control characters")
    return text.rstrip("/")


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
        description="auto | live | mock | record | replay. auto is live when base_url and "
        "client_id are set, else mock (with a warning).",
    )
    base_url: str | None = Field(
        None, description="The AuthSec server, e.g. https://authsec.example.com."
    )
    client_id: str | None = Field(
        None,
        validation_alias=AliasChoices("AUTHSEC_CLIENT_ID", "AUTHSEC_AGENT_CLIENT_ID"),
        description="The agent's client id (a UUID). Also read from AUTHSEC_AGENT_CLIENT_ID, "
        "the name the existing AuthSec SDKs use; AUTHSEC_CLIENT_ID wins when both are set.",
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
            if isinstance(base, str):
                try:
                    _check_url(base)
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
        return None if value is None else _check_url(value)

    @field_validator("client_id", "api_token", "cassette", mode="before")
    @classmethod
    def _optional(cls, value: Any) -> Any:
        return _empty_to_none(value)

    @field_validator("client_id")
    @classmethod
    def _check_client_id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        text = value.strip()
        if not _UUID_TEXT.fullmatch(text):
            raise ValueError(
                "the client id must be the agent's UUID (like "
                f"{DEMO_CLIENT_ID}); AuthSec answers 400 to anything else. Copy it from "
                "the agent's page in the AuthSec console"
            )
        return text

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
        """Cross-field rules of the refresh policy, named by variable."""
        if self.refresh_mandatory_fraction >= self.refresh_advisory_fraction:
            raise ValueError(
                f"{env_var('refresh_mandatory_fraction')} ({self.refresh_mandatory_fraction}) "
                f"must be smaller than {env_var('refresh_advisory_fraction')} "
                f"({self.refresh_advisory_fraction}): the mandatory window sits inside the "
                "advisory one"
            )
        if self.refresh_mandatory_max > self.refresh_advisory_max:
            raise ValueError(
                f"{env_var('refresh_mandatory_max')} ({self.refresh_mandatory_max}) must not "
                f"exceed {env_var('refresh_advisory_max')} ({self.refresh_advisory_max})"
            )
        if self.backoff_initial > self.backoff_max:
            raise ValueError(
                f"{env_var('backoff_initial')} ({self.backoff_initial}) must not exceed "
                f"{env_var('backoff_max')} ({self.backoff_max})"
            )
        return self

    # --- derived values ------------------------------------------------------------

    @property
    def resolved_mode(self) -> ResolvedMode:
        """The mode actually used; ``auto`` decided here, and nowhere else.

        ``live`` with missing values raises ``ConfigurationError`` naming the
        variable: an explicit request for the real server must never turn into
        mock data. ``record`` records the live server when ``base_url`` and the
        client id are set and the mock when neither is; one without the other
        is the same error as in ``live``.
        """
        mode = self.mode
        if mode == "auto":
            if self.base_url and self.client_id:
                return "live"
            _warn_auto_mock(self)
            return "mock"
        # record records the live server when it is configured and the mock when
        # nothing is; half a live configuration is a typo, never a quiet mock.
        if mode == "live" or (
            mode == "record" and (self.base_url is not None or self.client_id is not None)
        ):
            for name in ("base_url", "client_id"):
                if getattr(self, name) is None:
                    raise ConfigurationError(
                        f"{env_var(name)} is not set; AUTHSEC_MODE={self.mode} needs "
                        f"{env_var('base_url')} and {env_var('client_id')} "
                        f"(or AUTHSEC_AGENT_CLIENT_ID). Set them, or use AUTHSEC_MODE=mock "
                        "for local development"
                    )
        if mode in ("record", "replay") and self.cassette is None:
            raise ConfigurationError(
                f"{env_var('cassette')} is not set; AUTHSEC_MODE={self.mode} needs the path "
                "of the cassette file to " + ("write" if self.mode == "record" else "read")
            )
        return mode

    @property
    def effective_client_id(self) -> str:
        """The client id to ask for: the configured one, or the demo id in mock/replay."""
        if self.client_id is not None:
            return self.client_id
        if self.resolved_mode in ("mock", "replay", "record"):  # record: of the mock
            return DEMO_CLIENT_ID
        raise ConfigurationError(  # pragma: no cover - resolved_mode raised already
            f"{env_var('client_id')} is not set"
        )

    def api_token_value(self) -> str | None:
        """The raw API token, for the one place that sends it (the live transport)."""
        return None if self.api_token is None else self.api_token.get_secret_value()


def _warn_auto_mock(settings: AuthSecSettings) -> None:
    if _auto_mock_warned.is_set():
        return
    _auto_mock_warned.set()
    missing = [
        "AUTHSEC_BASE_URL" if settings.base_url is None else None,
        "AUTHSEC_CLIENT_ID" if settings.client_id is None else None,
    ]
    names = [name for name in missing if name]
    from .logging import get_logger

    get_logger("authsec_crewai.settings").warning(
        "settings.mode.auto_mock",
        mode="mock",
        missing=names,
        message=(
            f"{' and '.join(names)} not set: using MOCK mode with demo tokens and demo data. "
            "Set them to reach the AuthSec server, or set AUTHSEC_MODE=mock to make this "
            "choice explicit (and silence this warning)."
        ),
    )


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


# --- factories ------------------------------------------------------------------------


def build_transport(settings: AuthSecSettings) -> Transport:
    """The transport for ``settings.resolved_mode``, importing only what that mode needs."""
    mode = settings.resolved_mode
    if mode == "mock":
        from .transports.mock import MockTransport

        return MockTransport()
    if mode == "live":
        return _live_transport(settings)
    if importlib.util.find_spec(f"{__package__}.transports.replay") is None:
        raise ConfigurationError(
            f"AUTHSEC_MODE={mode} is not available yet in this version of authsec-crewai; "
            "use live or mock"
        )
    replay = importlib.import_module(f"{__package__}.transports.replay")
    if mode == "record":
        # The live server when configured, else the mock (resolved_mode refused half a
        # live configuration). "all": AUTHSEC_MODE=record asks for a fresh recording;
        # shared: every broker of this process (a crew builds one per tool) records
        # into the one cassette instead of overwriting it on close.
        if settings.base_url is not None and settings.client_id is not None:
            inner = _live_transport(settings)
        else:
            from .transports.mock import MockTransport

            inner = MockTransport()
        transport: Transport = replay.open_cassette_transport(
            inner, settings.cassette, record_mode="all", shared=True
        )
        return transport
    transport = replay.ReplayTransport(settings.cassette)
    return transport


def _live_transport(settings: AuthSecSettings) -> Transport:
    from .transports.live import LiveTransport

    assert settings.base_url is not None  # resolved_mode guarantees it
    return LiveTransport(
        settings.base_url,
        api_token=settings.api_token_value(),
        timeout=settings.timeout,
        retry_budget=settings.retry_budget,
    )


def refresh_policy(settings: AuthSecSettings) -> RefreshPolicy:
    """The broker's refresh policy from the ``AUTHSEC_REFRESH_*`` and back-off settings."""
    from .broker import RefreshPolicy

    return RefreshPolicy(
        advisory_fraction=settings.refresh_advisory_fraction,
        advisory_max=settings.refresh_advisory_max,
        mandatory_fraction=settings.refresh_mandatory_fraction,
        mandatory_max=settings.refresh_mandatory_max,
        jitter_fraction=settings.refresh_jitter_fraction,
        failure_memory=settings.failure_memory,
        backoff_initial=settings.backoff_initial,
        backoff_max=settings.backoff_max,
    )


def build_broker(settings: AuthSecSettings, transport: Transport | None = None) -> TokenBroker:
    """A broker wired from ``settings``; pass ``transport`` to override the mode's default.

    The broker is not started: use it with ``async with``.
    """
    from .broker import TokenBroker

    chosen = transport if transport is not None else build_transport(settings)
    options: dict[str, Any] = {}
    client_id = settings.client_id
    if getattr(chosen, "mode", None) in ("record", "replay"):
        # A cassette's tokens live on the cassette's time; a replay asks as the
        # client the session was recorded with unless one is configured.
        options["clock"] = chosen.clock  # type: ignore[attr-defined]
        if client_id is None and chosen.mode == "replay":  # type: ignore[attr-defined]
            client_id = getattr(chosen, "client_id", None)
    return TokenBroker(
        chosen,
        client_id=client_id or settings.effective_client_id,
        audience=tuple(settings.audience),
        policy=refresh_policy(settings),
        verify=settings.verify,
        verify_leeway=settings.verify_leeway,
        **options,
    )
