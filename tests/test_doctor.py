"""``authsec-crewai doctor``: right set-ups pass, each broken one fails its own check with the
exit status a script can act on, and ``--canary`` catches a leak planted in the library."""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from _redis import RedisServer
from _server import MockServer
from click.testing import CliRunner, Result

from authsec_crewai.cli import main
from authsec_crewai.doctor import EXIT_CONFIGURATION, EXIT_FAILED, EXIT_OK
from authsec_crewai.stores import SQLiteStore
from authsec_crewai.testing import TOKEN_PATH, MockAuthority

pytestmark = pytest.mark.usefixtures("clean_env")


def _doctor(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["doctor", *args], env=env, catch_exceptions=False)


def _report(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    result = _doctor("--json", *args, env=env)
    report = json.loads(result.stdout)
    assert report["exit_code"] == result.exit_code
    return result.exit_code, {check["name"]: check for check in report["checks"]}


def _status(checks: dict[str, Any]) -> dict[str, str]:
    return {name: check["status"] for name, check in checks.items()}


def _live(url: str, client_id: str, **extra: str) -> dict[str, str]:
    return {
        "AUTHSEC_MODE": "live",
        "AUTHSEC_BASE_URL": url,
        "AUTHSEC_CLIENT_ID": client_id,
        **extra,
    }


def _key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


# --- settings and servers ----------------------------------------------------------------


def test_against_the_mock_server_everything_passes(
    authsec_server: MockServer, client_id: str
) -> None:
    code, checks = _report(env=_live(authsec_server.url, client_id))
    assert code == EXIT_OK
    assert _status(checks) == {
        "settings": "ok",
        "authsec": "ok",
        "authsec.tls": "warn",  # plaintext, but on loopback
        "authsec.clock": "ok",
        "api": "ok",
        "api.tls": "warn",
        "api.clock": "ok",
        "store": "ok",
    }
    assert checks["settings"]["summary"] == "live mode: AUTHSEC_MODE=live"
    assert checks["authsec"]["details"]["fingerprint"] in checks["authsec"]["summary"]
    assert abs(checks["authsec.clock"]["details"]["skew_seconds"]) < 2
    assert authsec_server.count(TOKEN_PATH) == 1


def test_the_text_report_fits_80_columns_and_shows_no_token(
    authsec_server: MockServer, client_id: str
) -> None:
    result = _doctor(
        env=_live(
            authsec_server.url,
            client_id,
            AUTHSEC_API_BASE_URL=authsec_server.url + "/a/much/longer/prefix/of/the/protected/api",
            COLUMNS="80",  # what rich assumes when standard output is not a terminal
        )
    )
    assert result.exit_code == EXIT_OK, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[-1].endswith("all good (exit 0)")
    assert "eyJ" not in result.output


def test_auto_mode_says_why_it_chose_mock() -> None:
    code, checks = _report()
    assert code == EXIT_OK  # a warning, not a failure
    assert checks["settings"]["status"] == "warn"
    assert "AUTHSEC_BASE_URL and AUTHSEC_CLIENT_ID not set" in checks["settings"]["summary"]
    assert checks["authsec"]["status"] == "skip"


def test_verification_turned_off_is_a_warning() -> None:
    code, checks = _report(env={"AUTHSEC_MODE": "mock", "AUTHSEC_VERIFY": "false"})
    assert code == EXIT_OK
    assert checks["settings.verify"]["status"] == "warn"
    _, checks = _report(env={"AUTHSEC_MODE": "mock"})
    assert "settings.verify" not in checks


def test_settings_that_do_not_resolve_exit_2() -> None:
    code, checks = _report(env={"AUTHSEC_MODE": "live"})
    assert code == EXIT_CONFIGURATION
    assert checks["settings"]["status"] == "fail"
    assert "AUTHSEC_BASE_URL" in checks["settings"]["summary"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_dead_base_url_fails_reaching_it(client_id: str) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    code, checks = _report(env=_live(url, client_id))
    assert code == EXIT_FAILED
    assert checks["authsec"]["status"] == "fail"
    assert "cannot reach" in checks["authsec"]["summary"]
    assert "AUTHSEC_BASE_URL" in checks["authsec"]["summary"]
    assert checks["api"]["status"] == "fail"
    assert "authsec.clock" not in checks  # nothing answered, nothing to compare


def test_a_wrong_path_is_named(authsec_server: MockServer, client_id: str) -> None:
    code, checks = _report(env=_live(authsec_server.url + "/not-authsec", client_id))
    assert code == EXIT_FAILED
    assert checks["authsec"]["status"] == "fail"
    assert checks["authsec"]["details"]["kind"] == "endpoint_not_found"
    assert "AUTHSEC_BASE_URL" in checks["authsec"]["summary"]


def test_a_revoked_delegation_fails_and_an_echoed_api_token_is_masked(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.authority.delegate(client_id)
    authsec_server.authority.revoke(client_id)
    api_token = "doctor-api-token-" + uuid.uuid4().hex
    code, checks = _report(env=_live(authsec_server.url, client_id, AUTHSEC_API_TOKEN=api_token))
    assert code == EXIT_FAILED
    assert checks["authsec"]["details"]["kind"] == "not_delegated"
    assert api_token not in json.dumps(checks)


class _SkewedServer(ThreadingHTTPServer):
    """A token server whose Date header is ``skew`` seconds off this host's clock."""

    def __init__(self, authority: MockAuthority, skew: float) -> None:
        self.authority, self.skew = authority, skew
        super().__init__(("127.0.0.1", 0), _SkewedHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _SkewedHandler(BaseHTTPRequestHandler):
    server: _SkewedServer

    def date_time_string(self, timestamp: float | None = None) -> str:
        return formatdate(time.time() + self.server.skew, usegmt=True)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == TOKEN_PATH:
            client = parse_qs(url.query).get("client_id", [""])[0]
            status, body = self.server.authority.token_answer(client)
        else:
            status, body = 404, {"error": "not found"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def skewed(request: pytest.FixtureRequest) -> Iterator[_SkewedServer]:
    server = _SkewedServer(MockAuthority(), float(request.param))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("skewed", "status", "code"),
    [(3600, "fail", EXIT_FAILED), (-600, "fail", EXIT_FAILED), (12, "warn", EXIT_OK)],
    indirect=["skewed"],
)
def test_a_skewed_server_clock_is_measured(
    skewed: _SkewedServer, status: str, code: int, client_id: str
) -> None:
    exit_code, checks = _report(env=_live(skewed.url, client_id))
    assert exit_code == code
    assert checks["authsec"]["status"] == "ok"  # it answered; only its clock is off
    clock = checks["authsec.clock"]
    assert clock["status"] == status
    assert abs(clock["details"]["skew_seconds"] - skewed.skew) < 2
    assert ("ahead of" if skewed.skew > 0 else "behind") in clock["summary"]


# --- the store ---------------------------------------------------------------------------


def _sqlite_with_an_entry(path: Path, key: str) -> None:
    from authsec_crewai.settings import AuthSecSettings
    from authsec_crewai.wiring import store_keys

    keys = store_keys(AuthSecSettings(mode="mock", store_key=key))

    async def write() -> None:
        async with SQLiteStore(path, keys=keys) as store:
            await store.put("entry", store.codec.seal(b"identity", b"a token"), 60)

    anyio.run(write)


def _store_env(path: Path, key: str) -> dict[str, str]:
    return {"AUTHSEC_MODE": "mock", "AUTHSEC_STORE": f"sqlite:///{path}", "AUTHSEC_STORE_KEY": key}


def test_a_store_with_the_right_key_passes(tmp_path: Path) -> None:
    key, path = _key(), tmp_path / "tokens.db"
    _sqlite_with_an_entry(path, key)
    code, checks = _report(env=_store_env(path, key))
    assert code == EXIT_OK, checks
    assert (
        _status(checks).items()
        >= {"store.encryption": "ok", "store.file": "ok", "store": "ok"}.items()
    )
    assert checks["store"]["details"] == {"entries": 1, "refused": 0}
    assert key not in json.dumps(checks)


def test_a_store_with_a_wrong_key_fails(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    _sqlite_with_an_entry(path, _key())
    other = _key()
    code, checks = _report(env=_store_env(path, other))
    assert code == EXIT_FAILED
    assert checks["store"]["status"] == "fail"
    assert "a key this process does not have" in checks["store"]["summary"]
    assert "AUTHSEC_STORE_KEY" in checks["store"]["summary"]
    assert other not in json.dumps(checks)


def test_a_store_file_others_can_read_fails(tmp_path: Path) -> None:
    key, path = _key(), tmp_path / "tokens.db"
    _sqlite_with_an_entry(path, key)
    path.chmod(0o644)
    code, checks = _report(env=_store_env(path, key))
    assert code == EXIT_FAILED
    assert checks["store.file"]["status"] == "fail"
    assert "tokens.db is 0644" in checks["store.file"]["summary"]


def test_a_malformed_store_key_is_a_configuration_error(tmp_path: Path) -> None:
    code, checks = _report(env=_store_env(tmp_path / "tokens.db", "not-a-key"))
    assert code == EXIT_CONFIGURATION
    assert checks["store"]["status"] == "fail"


def test_store_encryption_off_is_a_warning(tmp_path: Path) -> None:
    env = {**_store_env(tmp_path / "t.db", ""), "AUTHSEC_STORE_ENCRYPTION": "off"}
    del env["AUTHSEC_STORE_KEY"]
    code, checks = _report(env=env)
    assert code == EXIT_OK
    assert checks["store.encryption"]["status"] == "warn"


# --- the canary --------------------------------------------------------------------------

CANARY_SINKS = ("canary.logs", "canary.spans", "canary.cassette", "canary.result")


def test_the_canary_passes_through_every_sink() -> None:
    code, checks = _report("--canary", env={"AUTHSEC_MODE": "mock"})
    assert code == EXIT_OK, checks
    assert {name: checks[name]["status"] for name in CANARY_SINKS} == dict.fromkeys(
        CANARY_SINKS, "ok"
    )


def test_a_leak_planted_in_a_log_line_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test-only sink: the live transport 'debugs' the raw token to stdlib logging."""
    from authsec_crewai.transports.live import LiveTransport

    original = LiveTransport.fetch_token

    async def leaky(self: LiveTransport, request: Any) -> Any:
        token = await original(self, request)
        logging.getLogger("authsec_crewai.transports.live").debug("got %s", token.value)
        return token

    monkeypatch.setattr(LiveTransport, "fetch_token", leaky)
    result = _doctor("--canary", env={"AUTHSEC_MODE": "mock"})
    assert result.exit_code == EXIT_FAILED
    assert "LEAK" in result.stdout and "canary.logs" in result.stdout
    assert "authsec_crewai.transports.live" in result.stdout  # where it leaked
    assert "eyJ" not in result.output  # the doctor never shows what it found
    _, checks = _report("--canary", env={"AUTHSEC_MODE": "mock"})
    assert checks["canary.logs"]["status"] == "fail"
    assert "the canary token" in checks["canary.logs"]["details"]["leaked"]
    assert checks["canary.result"]["status"] == "ok"


def test_a_span_exported_unscrubbed_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from authsec_crewai.otel_scrub import ScrubbingSpanExporter

    monkeypatch.setattr(
        ScrubbingSpanExporter, "export", lambda self, spans: self.exporter.export(spans)
    )
    code, checks = _report("--canary", env={"AUTHSEC_MODE": "mock"})
    assert code == EXIT_FAILED
    assert checks["canary.spans"]["status"] == "fail"
    assert checks["canary.logs"]["status"] == "ok"


def test_a_tool_result_that_echoes_the_token_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from authsec_crewai import toolspec

    monkeypatch.setattr(toolspec, "render_result", lambda payload, **kw: json.dumps(payload))
    monkeypatch.setattr("authsec_crewai.fetch.scrub_secrets", lambda text, secrets=(): text)
    code, checks = _report("--canary", env={"AUTHSEC_MODE": "mock"})
    assert code == EXIT_FAILED
    assert checks["canary.result"]["status"] == "fail"


def test_a_redis_store_with_a_wrong_key_fails_and_the_right_one_passes(
    redis_server: RedisServer,
) -> None:
    from authsec_crewai.stores import RedisStore
    from authsec_crewai.stores.base import decode_key

    key = _key()

    async def write() -> None:
        async with RedisStore(redis_server.url, keys=[decode_key(key)]) as store:
            await store.put("entry", store.codec.seal(b"identity", b"a token"), 60)

    anyio.run(write)
    env = {"AUTHSEC_MODE": "mock", "AUTHSEC_STORE": redis_server.url, "AUTHSEC_STORE_KEY": key}
    code, checks = _report(env=env)
    assert code == EXIT_OK, checks
    assert checks["store"]["details"] == {"entries": 1, "refused": 0}
    code, checks = _report(env={**env, "AUTHSEC_STORE_KEY": _key()})
    assert code == EXIT_FAILED
    assert "a key this process does not have" in checks["store"]["summary"]


def test_a_dead_redis_store_fails_reaching_it() -> None:
    env = {
        "AUTHSEC_MODE": "mock",
        "AUTHSEC_STORE": f"redis://127.0.0.1:{_closed_port()}/0",
        "AUTHSEC_STORE_KEY": _key(),
    }
    code, checks = _report(env=env)
    assert code == EXIT_FAILED
    assert checks["store"]["status"] == "fail"
    assert "cannot open the redis store" in checks["store"]["summary"]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_the_doctor_and_its_canary_run_under_asyncio_and_trio(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from authsec_crewai.doctor import run_doctor

    monkeypatch.setenv("AUTHSEC_MODE", "mock")
    report = anyio.run(functools.partial(run_doctor, canary=True), backend=backend)
    assert report.exit_code == EXIT_OK, report.to_dict()
    assert {c.name: c.status for c in report.checks if c.name.startswith("canary.")} == (
        dict.fromkeys(CANARY_SINKS, "ok")
    )


def test_replay_reads_the_cassette_and_record_needs_a_writable_place(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    code, checks = _report(env={"AUTHSEC_MODE": "replay", "AUTHSEC_CASSETTE": str(missing)})
    assert code == EXIT_FAILED
    assert checks["cassette"]["status"] == "fail"
    assert checks["api"]["status"] == "skip"
    target = tmp_path / "new.json"
    code, checks = _report(env={"AUTHSEC_MODE": "record", "AUTHSEC_CASSETTE": str(target)})
    assert code == EXIT_OK
    assert checks["cassette"]["status"] == "ok"
    assert checks["authsec"]["status"] == "skip"  # recording the mock: nothing to reach
    unwritable = tmp_path / "no" / "such" / "dir.json"
    code, checks = _report(env={"AUTHSEC_MODE": "record", "AUTHSEC_CASSETTE": str(unwritable)})
    assert code == EXIT_FAILED
    assert checks["cassette"]["status"] == "fail"
