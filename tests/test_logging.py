"""No secret reaches a log line: a hostile corpus through every way of configuring structlog."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from authsec_crewai.logging import (
    REDACTED,
    _guarded,
    configure,
    get_logger,
    redact_secrets,
    redact_value,
)
from authsec_crewai.redact import fingerprint, mask_jwt
from authsec_crewai.token import DelegationToken


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(alg: str, claims: dict[str, Any], signature: bytes) -> str:
    header = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}.{_b64(signature)}"


JWT = _jwt(
    "RS256",
    {"sub": "spiffe://example.org/agents/crewai/x", "jti": "corpus-1", "permissions": ["r:x"]},
    b"\x8f" * 256,
)
NESTED_JWT = _jwt("RS256", {"jti": "corpus-nested"}, b"\x01\x02" * 100)
EXC_JWT = _jwt("RS256", {"jti": "corpus-exception"}, b"\x03" * 200)
LOCAL_JWT = _jwt("RS256", {"j": 7}, b"\x04" * 12)  # short: rich cuts longer locals
CONTEXT_JWT = _jwt("RS256", {"jti": "corpus-context"}, b"\x05" * 200)
NONE_JWT = _jwt("none", {"sub": "spiffe://example.org/agents/crewai/x"}, b"")
assert NONE_JWT.endswith(".")
SHORT_BEARER = "Bearer xyz"
LONG_BEARER = "Bearer opaque-bearer-credential-0123456789"
BASIC = "Basic dXNlcjpodW50ZXIy"
API_TOKEN = "plain-api-token-value-that-is-not-a-jwt"
OPAQUE_TOKEN = "opaque-token-value-42"

SECRETS = [
    JWT,
    NESTED_JWT,
    EXC_JWT,
    LOCAL_JWT,
    CONTEXT_JWT,
    NONE_JWT.rstrip("."),
    SHORT_BEARER,
    "opaque-bearer-credential-0123456789",
    "dXNlcjpodW50ZXIy",
    API_TOKEN,
    OPAQUE_TOKEN,
]
# Pieces that identify a token even when its other parts are gone.
SECRET_PARTS = [
    part for token in (JWT, NESTED_JWT, EXC_JWT, LOCAL_JWT) for part in token.split(".")[1:]
]


class Leaky:
    """An object whose repr carries a token (a client, a request, a half-built header)."""

    def __repr__(self) -> str:
        return f"Leaky(header='Bearer {JWT}')"


class BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError(JWT)


def _fail_with_local_secret() -> None:
    secret_local = LOCAL_JWT  # rich tracebacks print locals; this one must not appear
    raise PermissionError(f"refused {secret_local[:0]}")


def emit_corpus(log: Any, *, broken_repr: bool = True) -> None:
    """Log every hostile shape once; each event name is a marker the test looks for.

    ``broken_repr=False`` leaves out the object whose ``repr`` raises, which
    crashes structlog's own renderers (ours survive it).
    """
    log.info(f"ev-event-text token={JWT}")
    log.info("ev-positional %s", JWT)
    log.info("ev-nested", data={"a": [{"b": ("x", NESTED_JWT)}], "c": {JWT: 1}})
    log.info("ev-bytes", body=JWT.encode(), raw=bytearray(NESTED_JWT.encode()))
    log.info("ev-alg-none", token_seen=NONE_JWT, note=f"got {NONE_JWT} from a client")
    log.info("ev-headers", headers={"Authorization": SHORT_BEARER, "X-Api-Key": API_TOKEN})
    log.info("ev-header-line", header=f"Authorization: {SHORT_BEARER}", other=LONG_BEARER)
    log.info(
        "ev-header-pairs", pairs=[("authorization", SHORT_BEARER), ("proxy-authorization", BASIC)]
    )
    log.info("ev-secret-keys", api_token=API_TOKEN, token=OPAQUE_TOKEN, access_token=JWT)
    log.info("ev-repr", client=Leaky(), broken=BrokenRepr() if broken_repr else 1, items=[Leaky()])
    log.error("ev-exception-field", error=RuntimeError(f"server said {EXC_JWT}"))
    try:
        raise ValueError(f"bad token {EXC_JWT}")
    except ValueError:
        log.exception("ev-exception")
    try:
        try:
            raise KeyError(EXC_JWT)
        except KeyError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as exc:
        log.error("ev-exc-info-object", exc_info=exc)
    try:
        _fail_with_local_secret()
    except PermissionError:
        log.exception("ev-locals")
    log.bind(auth=f"Bearer {JWT}").info("ev-bound")
    structlog.contextvars.bind_contextvars(request_header=f"Bearer {CONTEXT_JWT}")
    try:
        log.info("ev-contextvars")
    finally:
        structlog.contextvars.clear_contextvars()
    log.warning("ev-safe", fingerprint="0123456789ab", jti="j-1", scopes=["read:records"])


EVENTS = [
    "ev-event-text",
    "ev-positional",
    "ev-nested",
    "ev-bytes",
    "ev-alg-none",
    "ev-headers",
    "ev-header-line",
    "ev-header-pairs",
    "ev-secret-keys",
    "ev-repr",
    "ev-exception-field",
    "ev-exception",
    "ev-exc-info-object",
    "ev-locals",
    "ev-bound",
    "ev-contextvars",
    "ev-safe",
]


def assert_clean(output: str) -> None:
    for event in EVENTS:
        assert event in output, f"{event} was not logged at all; the test would prove nothing"
    for secret in SECRETS + SECRET_PARTS:
        assert secret not in output, f"leaked {secret[:30]}... in:\n{output}"
    assert mask_jwt(JWT) in output  # the fingerprint stays, for correlation
    assert "0123456789ab" in output and "j-1" in output  # safe fields untouched


@pytest.fixture(autouse=True)
def reset_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


# --- ways an application may have configured structlog --------------------------------


def _ours_console(buf: io.StringIO) -> None:
    configure("console", level="DEBUG", stream=buf)


def _ours_json(buf: io.StringIO) -> None:
    configure("json", level="DEBUG", stream=buf)


def _app_console(buf: io.StringIO) -> None:
    """structlog's default chain, rich tracebacks (with locals) included, no redaction."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.StackInfoRenderer(),
            structlog.dev.set_exc_info,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(
                colors=False,
                exception_formatter=structlog.dev.RichTracebackFormatter(
                    show_locals=True, color_system=None, width=200
                ),
            ),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=buf),
    )


def _app_json(buf: io.StringIO) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=buf),
    )


def _app_dict_tracebacks(buf: io.StringIO) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=buf),
    )


CONFIGS: dict[str, Callable[[io.StringIO], None]] = {
    "configure-console": _ours_console,
    "configure-json": _ours_json,
    "app-console-rich-locals": _app_console,
    "app-json": _app_json,
    "app-dict-tracebacks": _app_dict_tracebacks,
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_hostile_corpus_never_reaches_output(config: str) -> None:
    buf = io.StringIO()
    CONFIGS[config](buf)
    emit_corpus(get_logger("authsec_crewai.test"))
    assert_clean(buf.getvalue())


@pytest.mark.parametrize("config", ["configure-json", "app-json", "app-dict-tracebacks"])
def test_json_output_stays_valid_json(config: str) -> None:
    buf = io.StringIO()
    CONFIGS[config](buf)
    emit_corpus(get_logger("authsec_crewai.test"))
    lines = buf.getvalue().splitlines()
    assert len(lines) == len(EVENTS)
    for line in lines:
        json.loads(line)


def test_control_the_corpus_does_leak_without_redaction() -> None:
    """Proof that assert_clean can fail: the same corpus through a plain logger leaks."""
    buf = io.StringIO()
    _app_console(buf)
    emit_corpus(structlog.get_logger("plain"), broken_repr=False)
    with pytest.raises(AssertionError, match="leaked"):
        assert_clean(buf.getvalue())


def test_control_rich_tracebacks_print_locals() -> None:
    """Why exc_info is rendered by the processor: rich would show a local's value."""
    buf = io.StringIO()
    _app_console(buf)
    try:
        _fail_with_local_secret()
    except PermissionError:
        structlog.get_logger("plain").exception("ev-locals")
    assert LOCAL_JWT.split(".")[1] in buf.getvalue()

    buf.seek(0)
    buf.truncate()
    try:
        _fail_with_local_secret()
    except PermissionError:
        get_logger("authsec_crewai.test").exception("ev-locals")
    assert "ev-locals" in buf.getvalue()
    assert LOCAL_JWT.split(".")[1] not in buf.getvalue()
    assert "_fail_with_local_secret" in buf.getvalue()  # the traceback itself is kept


def test_without_structlog_configuration_events_go_to_stdlib_logging_redacted(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="authsec_crewai")
    emit_corpus(get_logger("authsec_crewai.test"))
    out, err = capfd.readouterr()
    assert out == ""
    records = [r for r in caplog.records if r.name == "authsec_crewai.test"]
    assert len(records) == len(EVENTS)
    structured = json.dumps([r.authsec for r in records], default=str)  # type: ignore[attr-defined]
    assert_clean(caplog.text + err + structured)
    assert all(r.exc_info is None for r in records)  # raw tracebacks never reach a handler
    assert records[-1].levelno == logging.WARNING
    assert records[-1].getMessage() == (
        'ev-safe fingerprint=0123456789ab jti=j-1 scopes=["read:records"]'
    )
    assert records[-1].funcName == "emit_corpus"  # the call site, not the logging module


def test_stdlib_logging_integration() -> None:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.dev.ConsoleRenderer(colors=False),
            ]
        )
    )
    std = logging.getLogger("authsec_crewai.test.stdlib")
    std.addHandler(handler)
    std.setLevel(logging.DEBUG)
    std.propagate = False
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    try:
        emit_corpus(get_logger("authsec_crewai.test.stdlib"))
    finally:
        std.removeHandler(handler)
    assert_clean(buf.getvalue())


def test_configure_defaults_to_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure("json")
    get_logger("authsec_crewai.test").info("to-stderr", token=JWT)
    out, err = capsys.readouterr()
    assert out == ""
    line = json.loads(err)
    assert line["event"] == "to-stderr"
    assert line["token"] == mask_jwt(JWT)
    assert line["level"] == "info"
    assert "timestamp" in line


def test_configure_level_filters() -> None:
    buf = io.StringIO()
    configure("console", level="WARNING", stream=buf)
    log = get_logger("authsec_crewai.test")
    log.debug("token.cache_hit")
    log.info("token.issued")
    log.warning("token.refresh.failed")
    assert "token.cache_hit" not in buf.getvalue()
    assert "token.issued" not in buf.getvalue()
    assert "token.refresh.failed" in buf.getvalue()


def test_configure_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure("xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="log level"):
        configure("json", level="LOUD")


def test_later_configuration_is_honoured() -> None:
    log = get_logger("authsec_crewai.test").bind(mode="mock")
    first, second = io.StringIO(), io.StringIO()
    configure("console", stream=first)
    log.info("token.issued", token=JWT)
    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(file=second),
    )
    log.info("token.invalidated", token=JWT)
    assert "token.issued" in first.getvalue() and "token.invalidated" not in first.getvalue()
    line = json.loads(second.getvalue())
    assert line == {"mode": "mock", "token": mask_jwt(JWT), "event": "token.invalidated"}


def test_bound_logger_context_operations() -> None:
    buf = io.StringIO()
    configure("json", stream=buf)
    log = get_logger("authsec_crewai.test", mode="live").bind(jti="j")
    log.try_unbind("mode").info("a")
    log.new(only="x").info("b")
    with pytest.raises(KeyError):
        log.unbind("missing")
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    assert lines[0]["jti"] == "j" and "mode" not in lines[0]
    assert lines[1]["only"] == "x" and "jti" not in lines[1]


def test_redaction_is_placed_first_and_before_the_renderer_once() -> None:
    renderer = structlog.processors.JSONRenderer()
    app_chain = [structlog.contextvars.merge_contextvars, renderer]
    assert _guarded(app_chain) == [
        redact_secrets,
        structlog.contextvars.merge_contextvars,
        redact_secrets,
        renderer,
    ]
    assert _guarded([]) == [redact_secrets]
    configure("json", stream=io.StringIO())
    ours = structlog.get_config()["processors"]
    assert _guarded(ours) == list(ours) and list(ours).count(redact_secrets) == 1


# --- the processor on its own ------------------------------------------------------------


def test_library_fields_pass_through_unchanged() -> None:
    event = {
        "event": "token.issued",
        "fingerprint": "0123456789ab",
        "jti": "6f1c-jti",
        "scopes": ["read:records"],
        "expires_in": 1799,
        "mode": "live",
        "background": True,
        "at": datetime(2026, 5, 20, tzinfo=UTC),
        "lifetime": timedelta(minutes=30),
        "nothing": None,
        "ratio": 0.25,
    }
    assert redact_secrets(None, "info", dict(event)) == event


def test_containers_keep_their_shape() -> None:
    value = {"l": [JWT], "t": (JWT,), "s": {JWT}, "f": frozenset({JWT}), "d": {"k": JWT}}
    out = redact_value(value)
    assert out == {
        "l": [mask_jwt(JWT)],
        "t": (mask_jwt(JWT),),
        "s": {mask_jwt(JWT)},
        "f": frozenset({mask_jwt(JWT)}),
        "d": {"k": mask_jwt(JWT)},
    }


def test_secret_keys_are_masked_whatever_their_value() -> None:
    event = {
        "Authorization": SHORT_BEARER,
        "api_token": API_TOKEN,
        "X-API-KEY": "k",
        "client_secret": 12345,
        "refresh_token": JWT,
        "cookie": "session=abc",
        "token": None,
    }
    out = redact_secrets(None, "info", event)
    assert out == {
        "Authorization": REDACTED,
        "api_token": REDACTED,
        "X-API-KEY": REDACTED,
        "client_secret": REDACTED,
        "refresh_token": mask_jwt(JWT),
        "cookie": REDACTED,
        "token": None,
    }


def test_a_delegation_token_under_a_secret_key_keeps_its_fingerprint() -> None:
    now = datetime.now(UTC)
    token = DelegationToken(
        value=JWT,
        permissions=frozenset({"read:records"}),
        expires_at=now + timedelta(minutes=5),
        issued_at=now,
        spiffe_id="spiffe://example.org/agents/crewai/x",
        client_id="c",
        jti="j",
    )
    out = redact_secrets(None, "info", {"token": token, "t": token})
    assert out["token"] == f"jwt:{token.fingerprint}" == mask_jwt(JWT)
    assert JWT not in out["t"] and token.fingerprint in out["t"]


def test_alg_none_and_bearer_shapes() -> None:
    assert redact_value(NONE_JWT) == mask_jwt(NONE_JWT)
    assert redact_value(f"x {SHORT_BEARER} y") == f"x Bearer {REDACTED} y"
    assert redact_value(f"Authorization: {BASIC}") == f"Authorization: Basic {REDACTED}"
    assert redact_value(f"bearer {JWT}") == f"bearer {mask_jwt(JWT)}"


def test_redaction_is_idempotent() -> None:
    event = {"event": f"{SHORT_BEARER} {JWT}", "n": [NONE_JWT, BASIC], "token": JWT}
    once = redact_secrets(None, "info", dict(event))
    assert redact_secrets(None, "info", dict(once)) == once


def test_exception_info_becomes_scrubbed_text() -> None:
    try:
        raise ValueError(EXC_JWT)
    except ValueError as exc:
        out = redact_secrets(None, "error", {"event": "x", "exc_info": exc})
    assert "exc_info" not in out
    assert "ValueError" in out["exception"] and "Traceback" in out["exception"]
    assert EXC_JWT not in out["exception"] and mask_jwt(EXC_JWT) in out["exception"]
    assert "exc_info" not in redact_secrets(None, "error", {"event": "x", "exc_info": False})


def test_cycles_and_depth_terminate() -> None:
    loop: dict[str, Any] = {"jwt": "x"}
    loop["self"] = loop
    deep: list[Any] = [JWT]
    for _ in range(50):
        deep = [deep]
    out = redact_value({"loop": loop, "deep": deep})
    assert out["loop"]["self"] == "[...]"
    assert JWT not in repr(out)


def test_unrepresentable_objects_do_not_break_logging() -> None:
    assert redact_value(BrokenRepr()) == "<unrepresentable BrokenRepr>"


def test_a_processor_placed_after_the_renderer_scrubs_the_string() -> None:
    assert redact_secrets(None, "info", f"rendered {JWT}") == f"rendered {mask_jwt(JWT)}"  # type: ignore[arg-type]


def test_fingerprint_matches_the_token_helper() -> None:
    assert mask_jwt(JWT) == f"jwt:{fingerprint(JWT)}"


# --- a library is quiet: a fresh process with no logging configuration -----------------------

_LIBRARY_USE = """
import logging, sys
import anyio
from authsec_crewai import AuthSecSettings, SecureFetcher
from authsec_crewai import build_broker, build_fetcher

if sys.argv[1:] == ["basic"]:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)

async def main():
    settings = AuthSecSettings()  # auto mode, nothing set: mock, with a warning
    async with build_broker(settings) as broker:
        token = await broker.token("read:records")
        await build_fetcher(broker, settings).fetch("secure-vault/records", "read:records")
        broker.invalidate(token)
        return token

token = anyio.run(main)
sys.stderr.write("VALUE:" + token.value + "\\n")
"""


def _run_library(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHSEC_", "PYTHON"))}
    return subprocess.run(
        [sys.executable, "-c", _LIBRARY_USE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_a_library_user_with_no_logging_set_up_sees_nothing_on_stdout() -> None:
    done = _run_library()
    assert done.stdout == ""
    # Python's last-resort handler: warnings and errors on stderr, nothing below.
    assert "settings.mode.auto_mock" in done.stderr
    for quiet in ("token.issued", "token.invalidated", "fetch.ok", "token.refresh"):
        assert quiet not in done.stderr


def test_the_applications_logging_set_up_decides_and_lines_stay_redacted() -> None:
    done = _run_library("basic")
    assert done.stdout == ""
    value = done.stderr.rsplit("VALUE:", 1)[1].strip()
    logged = done.stderr.rsplit("VALUE:", 1)[0]
    assert value.startswith("eyJ") and value not in logged
    for line in ("INFO:authsec_crewai.broker:token.issued", "INFO:authsec_crewai.fetch:fetch.ok"):
        assert line in logged
    assert f"fingerprint={fingerprint(value)}" in logged


def test_a_logger_follows_every_change_of_the_structlog_configuration(
    structlog_restored: None,
) -> None:
    """The logger built for the application's chain is reused, but never a stale one:
    ``capture_logs`` edits the processor list in place, ``configure`` replaces it."""
    import structlog
    from structlog.testing import capture_logs

    log = get_logger("authsec_crewai.test")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    with capture_logs() as first:
        log.debug("one")
    with capture_logs() as second:
        log.debug("two")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    with capture_logs() as quiet:
        log.debug("three")
        log.error("four")
    assert [e["event"] for e in first] == ["one"]
    assert [e["event"] for e in second] == ["two"]
    assert [e["event"] for e in quiet] == ["four"]
