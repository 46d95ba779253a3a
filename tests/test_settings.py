"""AuthSecSettings: reading, validation and mode resolution (building: test_wiring.py)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from authsec_crewai import errors, wiring
from authsec_crewai.settings import DEMO_CLIENT_ID, AuthSecSettings, env_var

ROOT = Path(__file__).resolve().parent.parent
CLIENT = "0b4c1a7e-1d1a-4f3e-9a51-2f7c7c7d6a10"
FAKE_JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzcGlmZmU6Ly94In0."
    "c2lnbmF0dXJlLXRoYXQtaXMtbm90LXJlYWwtYnV0LWxvb2tzLWxpa2Utb25l"
)


@pytest.fixture(autouse=True)
def default_logging(clean_env: None) -> None:
    """A clean AUTHSEC_* environment (``clean_env``) and structlog's defaults."""
    structlog.reset_defaults()


def make(**values: Any) -> AuthSecSettings:
    return AuthSecSettings(**values)


def config_error(**values: Any) -> str:
    with pytest.raises(errors.ConfigurationError) as info:
        AuthSecSettings(**values)
    return str(info.value)


# --- defaults and sources -------------------------------------------------------------


def test_defaults_are_the_documented_ones() -> None:
    s = make()
    assert s.mode == "auto"
    assert s.base_url is None and s.client_id is None and s.api_token is None
    assert s.api_base_url is None
    assert s.audience == []
    assert s.allowed_scopes is None and s.allowed_endpoints is None
    assert s.allowed_methods == ["GET"]
    assert s.max_response_bytes == 1024 * 1024
    assert s.verify is True
    assert (s.refresh_advisory_fraction, s.refresh_advisory_max) == (0.2, 900)
    assert (s.refresh_mandatory_fraction, s.refresh_mandatory_max) == (0.05, 300)
    assert s.refresh_jitter_fraction == 0.25
    assert (s.failure_memory, s.backoff_initial, s.backoff_max) == (1.0, 1.0, 60.0)
    assert s.cassette is None
    assert s.log_format == "console"


def test_reads_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHSEC_BASE_URL", "https://authsec.example.com/")
    monkeypatch.setenv("AUTHSEC_CLIENT_ID", CLIENT)
    monkeypatch.setenv("AUTHSEC_TIMEOUT", "2.5")
    monkeypatch.setenv("AUTHSEC_VERIFY", "false")
    monkeypatch.setenv("AUTHSEC_MODE", "LIVE")
    monkeypatch.setenv("AUTHSEC_LOG_FORMAT", "JSON")
    s = make()
    assert s.base_url == "https://authsec.example.com"  # trailing slash dropped
    assert s.client_id == CLIENT
    assert s.timeout == 2.5
    assert s.verify is False
    assert s.mode == "live"
    assert s.log_format == "json"


def test_client_id_also_read_from_the_sdk_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHSEC_AGENT_CLIENT_ID", CLIENT)
    assert make().client_id == CLIENT


def test_authsec_client_id_wins_over_the_sdk_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    other = str(uuid.uuid4())
    monkeypatch.setenv("AUTHSEC_AGENT_CLIENT_ID", other)
    monkeypatch.setenv("AUTHSEC_CLIENT_ID", CLIENT)
    assert make().client_id == CLIENT


def test_client_id_by_field_name_and_unprefixed_variable_is_ignored(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLIENT_ID", str(uuid.uuid4()))
    assert make().client_id is None
    assert make(client_id=CLIENT).client_id == CLIENT


def test_dotenv_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        f"AUTHSEC_BASE_URL=https://from-dotenv.example.com\n"
        f"AUTHSEC_AGENT_CLIENT_ID={CLIENT}\n"
        "AUTHSEC_TIMEOUT=3\n"
        "UNRELATED=1\n"
    )
    s = make()
    assert s.base_url == "https://from-dotenv.example.com"
    assert s.client_id == CLIENT
    monkeypatch.setenv("AUTHSEC_TIMEOUT", "7")
    assert make().timeout == 7
    assert make(_env_file=None).base_url is None


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BASE_URL", "CLIENT_ID", "API_TOKEN", "ALLOWED_SCOPES", "CASSETTE"):
        monkeypatch.setenv(f"AUTHSEC_{name}", "")
    s = make()
    assert s.base_url is None and s.client_id is None and s.api_token is None
    assert s.allowed_scopes is None and s.cassette is None


def test_settings_are_frozen() -> None:
    s = make()
    with pytest.raises(Exception, match="frozen"):
        s.base_url = "https://elsewhere.example.com"  # type: ignore[misc]


# --- secrets ---------------------------------------------------------------------------


def test_api_token_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHSEC_API_TOKEN", "super-secret-api-token-1234")
    s = make()
    for text in (repr(s), str(s), s.model_dump_json(), str(s.model_dump())):
        assert "super-secret-api-token-1234" not in text
    assert s.api_token_value() == "super-secret-api-token-1234"


def test_rejected_values_are_not_echoed() -> None:
    # A token pasted into the wrong variable must not reach the error message.
    message = config_error(client_id=FAKE_JWT)
    assert FAKE_JWT not in message
    assert "AUTHSEC_CLIENT_ID" in message


def test_error_is_a_configuration_error_without_pydantic_noise() -> None:
    with pytest.raises(errors.ConfigurationError) as info:
        make(timeout=0)
    assert info.value.__cause__ is None
    assert "AUTHSEC_TIMEOUT" in str(info.value)
    assert "errors.pydantic.dev" not in str(info.value)


# --- URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://authsec.example.com", "https://authsec.example.com"),
        ("https://authsec.example.com/", "https://authsec.example.com"),
        ("https://authsec.example.com:8443/prefix/", "https://authsec.example.com:8443/prefix"),
        ("http://127.0.0.1:7468", "http://127.0.0.1:7468"),
        ("  https://authsec.example.com  ", "https://authsec.example.com"),
    ],
)
def test_good_urls(url: str, expected: str) -> None:
    assert make(base_url=url).base_url == expected


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://authsec.example.com", "https://"),
        ("javascript:alert(1)", "https://"),
        ("authsec.example.com", "https://"),
        ("https://user:pass@authsec.example.com", "credentials"),
        ("https://token@authsec.example.com", "credentials"),
        ("https://", "no host"),
        ("https://authsec.example.com/?x=1", "query"),
        ("https://authsec.example.com/#frag", "fragment"),
        ("https://authsec.example.com:99999", "valid URL"),
        ("https://evil.example.com\\@authsec.example.com", "credentials"),
        ("https://authsec.example.com/a\\b", "backslash"),
    ],
)
@pytest.mark.parametrize("field", ["base_url", "api_base_url"])
def test_bad_urls_fail_at_construction(field: str, url: str, fragment: str) -> None:
    message = config_error(**{field: url})
    assert env_var(field) in message
    assert fragment in message


def test_bad_base_url_is_reported_once() -> None:
    message = config_error(base_url="ftp://x.example.com")
    assert message.count("AUTHSEC_BASE_URL") >= 1
    assert "AUTHSEC_API_BASE_URL" not in message


def test_api_base_url_defaults_to_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    assert make(base_url="https://a.example.com/").api_base_url == "https://a.example.com"
    s = make(base_url="https://a.example.com", api_base_url="https://api.example.com/v1/")
    assert s.api_base_url == "https://api.example.com/v1"
    monkeypatch.setenv("AUTHSEC_BASE_URL", "https://env.example.com")
    assert make().api_base_url == "https://env.example.com"
    monkeypatch.setenv("AUTHSEC_API_BASE_URL", "https://api.example.com")
    assert make().api_base_url == "https://api.example.com"


# --- client id ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["not-a-uuid", "123", CLIENT.replace("-", ""), "{" + CLIENT + "}", CLIENT + "0", "urn:uuid:x"],
)
def test_client_id_must_be_a_uuid(value: str) -> None:
    message = config_error(client_id=value)
    assert "AUTHSEC_CLIENT_ID" in message and "UUID" in message


def test_client_id_error_names_both_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHSEC_AGENT_CLIENT_ID", "agent-7")
    message = config_error()
    assert "AUTHSEC_AGENT_CLIENT_ID" in message and "AUTHSEC_CLIENT_ID" in message
    assert "agent-7" not in message


def test_client_id_is_trimmed_and_kept_as_given() -> None:
    assert make(client_id=f" {CLIENT.upper()} ").client_id == CLIENT.upper()


# --- lists -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("authsec-api", ["authsec-api"]),
        ("authsec-api, billing", ["authsec-api", "billing"]),
        ('["authsec-api", "billing"]', ["authsec-api", "billing"]),
        ("a,a,b", ["a", "b"]),
    ],
)
def test_audience_from_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]
) -> None:
    monkeypatch.setenv("AUTHSEC_AUDIENCE", raw)
    assert make().audience == expected


def test_audience_with_broken_json_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHSEC_AUDIENCE", '["authsec-api"')
    assert "not valid JSON" in config_error()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("read:records", ["read:records"]),
        ("read:records read:metrics", ["read:metrics", "read:records"]),
        ("read:records,read:metrics", ["read:metrics", "read:records"]),
        ('["read:records"]', ["read:records"]),
        ("[]", []),
    ],
)
def test_allowed_scopes(monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]) -> None:
    monkeypatch.setenv("AUTHSEC_ALLOWED_SCOPES", raw)
    assert make().allowed_scopes == expected


def test_malformed_scope_is_refused() -> None:
    assert "AUTHSEC_ALLOWED_SCOPES" in config_error(allowed_scopes=['read:"records'])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("secure-vault/", ["secure-vault/"]),
        ("/secure-vault/records", ["secure-vault/records"]),
        (
            "secure-vault/records,secure-vault/metrics",
            ["secure-vault/records", "secure-vault/metrics"],
        ),
    ],
)
def test_allowed_endpoints(monkeypatch: pytest.MonkeyPatch, raw: str, expected: list[str]) -> None:
    monkeypatch.setenv("AUTHSEC_ALLOWED_ENDPOINTS", raw)
    assert make().allowed_endpoints == expected


@pytest.mark.parametrize(
    "prefix",
    [
        "https://evil.example.com/",
        "//evil.example.com/",
        "../etc",
        "secure-vault/../admin",
        "%2e%2e/admin",
        "secure-vault\\admin",
        "@evil.example.com",
        "a//b",
        "/",
        "vault?x=1",
        "vault#frag",
        "vault\x00",
    ],
)
def test_hostile_endpoint_prefixes_are_refused(prefix: str) -> None:
    assert "AUTHSEC_ALLOWED_ENDPOINTS" in config_error(allowed_endpoints=[prefix])


def test_allowed_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHSEC_ALLOWED_METHODS", "get, post")
    assert make().allowed_methods == ["GET", "POST"]
    assert "FETCH" in config_error(allowed_methods=["FETCH"])
    assert "AUTHSEC_ALLOWED_METHODS" in config_error(allowed_methods=[])


# --- numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", 0),
        ("timeout", -1),
        ("max_response_bytes", 0),
        ("retry_budget", -0.1),
        ("verify_leeway", -1),
        ("verify_leeway", 3600),
        ("refresh_advisory_fraction", 0),
        ("refresh_advisory_fraction", 1),
        ("refresh_advisory_fraction", 1.5),
        ("refresh_mandatory_fraction", 0),
        ("refresh_mandatory_fraction", -0.01),
        ("refresh_advisory_max", 0),
        ("refresh_mandatory_max", -5),
        ("refresh_jitter_fraction", 1.01),
        ("refresh_jitter_fraction", -0.1),
        ("failure_memory", -1),
        ("backoff_initial", 0),
        ("backoff_max", 0),
    ],
)
def test_out_of_range_numbers_name_their_variable(field: str, value: float) -> None:
    assert env_var(field) in config_error(**{field: value})


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_infinite_and_nan_numbers_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("AUTHSEC_TIMEOUT", value)
    assert "AUTHSEC_TIMEOUT" in config_error()


def test_numbers_from_environment_are_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTHSEC_REFRESH_ADVISORY_FRACTION", "1.2")
    assert "AUTHSEC_REFRESH_ADVISORY_FRACTION" in config_error()
    monkeypatch.setenv("AUTHSEC_REFRESH_ADVISORY_FRACTION", "soon")
    assert "AUTHSEC_REFRESH_ADVISORY_FRACTION" in config_error()


def test_mandatory_fraction_must_be_below_advisory() -> None:
    message = config_error(refresh_advisory_fraction=0.1, refresh_mandatory_fraction=0.1)
    assert "AUTHSEC_REFRESH_MANDATORY_FRACTION" in message
    assert "AUTHSEC_REFRESH_ADVISORY_FRACTION" in message
    make(refresh_advisory_fraction=0.3, refresh_mandatory_fraction=0.29)


def test_mandatory_max_and_backoff_order() -> None:
    assert "AUTHSEC_REFRESH_MANDATORY_MAX" in config_error(
        refresh_advisory_max=100, refresh_mandatory_max=200
    )
    assert "AUTHSEC_BACKOFF_INITIAL" in config_error(backoff_initial=10, backoff_max=5)


def test_jitter_may_be_switched_off() -> None:
    assert make(refresh_jitter_fraction=0).refresh_jitter_fraction == 0


def test_unknown_mode_lists_the_choices() -> None:
    message = config_error(mode="production")
    assert "AUTHSEC_MODE" in message
    for choice in ("auto", "live", "mock", "record", "replay"):
        assert choice in message


# --- mode resolution ------------------------------------------------------------------


def test_auto_is_live_when_configured() -> None:
    s = make(base_url="https://authsec.example.com", client_id=CLIENT)
    with capture_logs() as logs:
        assert s.resolved_mode == "live"
    assert logs == []


@pytest.mark.parametrize(
    ("values", "missing"),
    [
        ({}, ["AUTHSEC_BASE_URL", "AUTHSEC_CLIENT_ID"]),
        ({"base_url": "https://authsec.example.com"}, ["AUTHSEC_CLIENT_ID"]),
        ({"client_id": CLIENT}, ["AUTHSEC_BASE_URL"]),
    ],
)
def test_auto_falls_back_to_mock_and_the_wiring_warns_once(
    values: dict[str, Any], missing: list[str]
) -> None:
    with capture_logs() as logs:
        s = make(**values)
        assert s.resolved_mode == "mock" and s.auto_chose_mock
        assert s.resolved_mode == "mock"
        assert make(**values).resolved_mode == "mock"
    assert logs == []  # resolving says nothing; building a mock from "auto" does
    with capture_logs() as logs:
        wiring.build_transport(s)
        wiring.build_transport(make(**values))
    assert len(logs) == 1, logs
    (entry,) = logs
    assert entry["log_level"] == "warning"
    assert entry["missing"] == missing
    assert entry["mode"] == "mock"
    for name in missing:
        assert name in entry["message"]
    assert "AUTHSEC_MODE=mock" in entry["message"]


def test_explicit_mock_does_not_warn() -> None:
    with capture_logs() as logs:
        s = make(mode="mock")
        assert s.resolved_mode == "mock" and not s.auto_chose_mock
        wiring.build_transport(s)
    assert logs == []


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({}, "AUTHSEC_BASE_URL"),
        ({"client_id": CLIENT}, "AUTHSEC_BASE_URL"),
        ({"base_url": "https://authsec.example.com"}, "AUTHSEC_CLIENT_ID"),
    ],
)
@pytest.mark.parametrize("mode", ["live", "record"])
def test_live_with_missing_values_is_an_error_never_mock(
    values: dict[str, Any], variable: str, mode: str
) -> None:
    if mode == "record" and not values:
        # With nothing configured, record records the mock (see tests/test_replay.py);
        # only half a live configuration is an error.
        assert make(mode=mode, cassette="session.json").resolved_mode == "record"
        return
    with pytest.raises(errors.ConfigurationError, match=rf"^{variable} is not set"):
        make(mode=mode, cassette="session.json", **values)


@pytest.mark.parametrize("mode", ["record", "replay"])
def test_record_and_replay_need_a_cassette(mode: str) -> None:
    with pytest.raises(errors.ConfigurationError, match=r"^AUTHSEC_CASSETTE is not set"):
        make(mode=mode, base_url="https://authsec.example.com", client_id=CLIENT)


def test_the_mode_is_resolved_once_and_copies_are_validated_again() -> None:
    s = make(base_url="https://authsec.example.com", client_id=CLIENT)
    assert s.resolved_mode == "live"
    assert s.model_copy().resolved_mode == "live"
    assert s.model_copy(update={"mode": "mock"}).resolved_mode == "mock"
    with pytest.raises(errors.ConfigurationError, match=r"^AUTHSEC_CASSETTE is not set"):
        s.model_copy(update={"mode": "replay"})
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_TIMEOUT"):
        s.model_copy(update={"timeout": -1})
    with pytest.raises(errors.ConfigurationError, match=r"^AUTHSEC_BASE_URL is not set"):
        s.model_copy(update={"mode": "live", "base_url": None})


def test_the_demo_client_id_is_a_valid_client_id() -> None:
    uuid.UUID(DEMO_CLIENT_ID)
    assert make(mode="mock", client_id=DEMO_CLIENT_ID).client_id == DEMO_CLIENT_ID


# --- packaging ---------------------------------------------------------------------------


def test_settings_reference_documents_every_variable() -> None:
    """docs/settings.md is hand-written; this keeps it true to the model."""
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`(AUTHSEC_[A-Z_]+)`", text))
    from authsec_crewai.logging import HTTP_LOG_FILTER_VARIABLE

    # ... and the variables read outside the model: the SDKs' name for the client
    # id, and the HTTP log filter's opt-out (read when a client is built, settings or not).
    expected = {env_var(name) for name in AuthSecSettings.model_fields} | {
        "AUTHSEC_AGENT_CLIENT_ID",
        HTTP_LOG_FILTER_VARIABLE,
    }
    assert expected - documented == set(), "undocumented variables"
    assert documented - expected == set(), "documented variables that do not exist"


def test_settings_reference_defaults_match() -> None:
    text = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    rows = {
        m.group(1): m.group(2).strip()
        for m in re.finditer(r"^\| `(AUTHSEC_[A-Z_]+)` \|[^|]*\| ([^|]*) \|", text, re.M)
    }
    defaults = make(_env_file=None)
    for name in AuthSecSettings.model_fields:
        value = getattr(defaults, name)
        documented = rows.get(env_var(name))
        assert documented is not None, env_var(name)
        first = documented.replace("`", "").split(" ")[0]
        if value is None or value == []:
            assert first in ("unset", "[]"), (env_var(name), documented)
        elif isinstance(value, bool):
            assert first == str(value).lower(), (env_var(name), documented)
        elif isinstance(value, int | float):
            assert float(first) == value, (env_var(name), documented)
        elif isinstance(value, list | dict):
            assert json.loads(first) == value, (env_var(name), documented)
        else:
            assert first == value, (env_var(name), documented)
