"""The ``authsec-crewai`` command: help, ``token`` in mock and live mode, failures
as one line without a traceback, and ``serve-mock`` as a real process."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import uuid

import httpx
import pytest
from _server import MockServer
from click.testing import CliRunner, Result

from authsec_crewai.cli import main
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.testing import TOKEN_PATH

pytestmark = pytest.mark.usefixtures("clean_env")


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def _assert_one_line_failure(result: Result, exit_code: int, *fragments: str) -> None:
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0]


# --- help --------------------------------------------------------------------------------------


def test_help_explains_the_modes_and_lists_the_commands() -> None:
    result = _run("--help")
    assert result.exit_code == 0
    for text in ("AUTHSEC_BASE_URL", "AUTHSEC_CLIENT_ID", "MOCK", "token", "serve-mock"):
        assert text in result.output


@pytest.mark.parametrize("command", ["token", "serve-mock", "doctor"])
def test_each_command_has_help(command: str) -> None:
    result = _run(command, "--help")
    assert result.exit_code == 0
    assert "Usage: " in result.output
    assert len(result.output.splitlines()) > 5


def test_version() -> None:
    from authsec_crewai import __version__

    assert __version__ in _run("--version").output


# --- token -------------------------------------------------------------------------------------


def test_token_in_mock_mode_prints_the_facts_not_the_token() -> None:
    result = _run("token", "--scope", "read:records", env={"AUTHSEC_MODE": "mock"})
    assert result.exit_code == 0, result.output
    for label in ("mode", "fingerprint", "jti", "permissions", "SPIFFE id", "expires at"):
        assert label in result.stdout
    assert "mock" in result.stdout
    assert "read:records" in result.stdout
    assert "eyJ" not in result.output  # no JWT, not even a piece of one


def test_token_in_auto_mode_says_it_is_a_mock_token() -> None:
    result = _run("token")
    assert result.exit_code == 0, result.output
    assert "MOCK token" in result.stderr


def test_token_json_in_mock_mode() -> None:
    result = _run("token", "--json", env={"AUTHSEC_MODE": "mock"})
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["mode"] == "mock"
    assert len(facts["fingerprint"]) == 12
    assert "read:records" in facts["permissions"]
    assert "eyJ" not in result.output


@pytest.mark.parametrize("log_format", ["console", "json"])
def test_authsec_log_level_shows_log_lines_on_stderr_and_stdout_stays_data(
    log_format: str,
) -> None:
    env = {"AUTHSEC_MODE": "mock", "AUTHSEC_LOG_LEVEL": "debug", "AUTHSEC_LOG_FORMAT": log_format}
    result = _run("token", "--json", env=env)
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)  # nothing but the command's JSON
    assert "token.issued" in result.stderr and "token.refresh.start" in result.stderr
    assert facts["fingerprint"] in result.stderr
    if log_format == "json":
        events = [json.loads(line)["event"] for line in result.stderr.splitlines()]
        assert "token.issued" in events
    assert "eyJ" not in result.output


def test_without_authsec_log_level_the_cli_logs_only_errors() -> None:
    result = _run("token", "--json", env={"AUTHSEC_MODE": "mock"})
    assert result.exit_code == 0, result.output
    assert result.stderr == ""


def test_a_bad_authsec_log_level_is_one_line_and_exit_2() -> None:
    result = _run("token", env={"AUTHSEC_MODE": "mock", "AUTHSEC_LOG_LEVEL": "LOUD"})
    _assert_one_line_failure(result, 2, "AUTHSEC_LOG_LEVEL", "LOUD")


def _live_env(server: MockServer, client_id: str) -> dict[str, str]:
    return {
        "AUTHSEC_MODE": "live",
        "AUTHSEC_BASE_URL": server.url,
        "AUTHSEC_CLIENT_ID": client_id,
        "AUTHSEC_RETRY_BUDGET": "0",
    }


def test_token_in_live_mode_against_the_loopback_server(
    authsec_server: MockServer, client_id: str
) -> None:
    result = _run("token", "--json", env=_live_env(authsec_server, client_id))
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    stored = authsec_server.authority.token_answer(client_id)[1]
    assert facts["mode"] == "live"
    assert facts["client_id"] == client_id
    assert facts["spiffe_id"] == stored["spiffe_id"]
    assert authsec_server.count(TOKEN_PATH) == 1


def test_a_revoked_delegation_is_one_line_and_exit_1(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.authority.delegate(client_id)
    authsec_server.authority.revoke(client_id)
    result = _run("token", env=_live_env(authsec_server, client_id))
    _assert_one_line_failure(result, 1, "administrator", "[not_delegated]")


def test_live_mode_without_a_base_url_is_a_configuration_error() -> None:
    result = _run("token", env={"AUTHSEC_MODE": "live"})
    _assert_one_line_failure(result, 2, "AUTHSEC_BASE_URL")


def test_invalid_settings_become_one_line() -> None:
    result = _run("token", env={"AUTHSEC_MODE": "live", "AUTHSEC_BASE_URL": "ftp://x",
                                "AUTHSEC_CLIENT_ID": "not-a-uuid"})  # fmt: skip
    _assert_one_line_failure(result, 2, "AUTHSEC_BASE_URL", "AUTHSEC_CLIENT_ID")


@pytest.mark.parametrize(("scope", "code"), [('bad"scope', 2), ("admin:all", 1)])
def test_bad_or_ungranted_scopes(scope: str, code: int) -> None:
    result = _run("token", "--scope", scope, env={"AUTHSEC_MODE": "mock"})
    _assert_one_line_failure(result, code, "scope" if code == 2 else "admin:all")


def test_an_unreachable_server_is_one_line(client_id: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"AUTHSEC_MODE": "live", "AUTHSEC_BASE_URL": f"http://127.0.0.1:{port}",
           "AUTHSEC_CLIENT_ID": client_id, "AUTHSEC_RETRY_BUDGET": "0"}  # fmt: skip
    _assert_one_line_failure(_run("token", env=env), 1, "could not talk to AuthSec")


# --- serve-mock --------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org"])
def test_serve_mock_refuses_non_loopback_hosts(host: str) -> None:
    _assert_one_line_failure(_run("serve-mock", "--host", host), 2, "loopback")


def test_serve_mock_refuses_a_non_uuid_client_id() -> None:
    _assert_one_line_failure(_run("serve-mock", "--client-id", "agent-7"), 2, "UUID")


def test_serve_mock_reports_a_busy_port_in_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        _assert_one_line_failure(_run("serve-mock", "--port", port), 1, port, "--port")


def test_serve_mock_serves_and_prints_the_env_vars(client_id: str) -> None:
    command = [sys.executable, "-m", "authsec_crewai.cli", "serve-mock", "--port", "0",
               "--client-id", client_id, "--ttl", "600"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:  # fmt: skip
        try:
            exports: dict[str, str] = {}
            assert proc.stdout is not None
            for line in proc.stdout:  # the banner ends with the Ctrl-C hint
                if line.strip().startswith("export "):
                    name, _, value = line.strip().removeprefix("export ").partition("=")
                    exports[name] = value
                if "Ctrl-C" in line:
                    break
            assert exports["AUTHSEC_MODE"] == "live"
            assert exports["AUTHSEC_CLIENT_ID"] == client_id
            base = exports["AUTHSEC_BASE_URL"]
            assert base.startswith("http://127.0.0.1:")
            answer = httpx.get(f"{base}{TOKEN_PATH}", params={"client_id": client_id})
            assert answer.status_code == 200
            assert answer.json()["ttl_seconds"] == 600
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()


def test_serve_mock_serves_a_crew_of_agents_each_with_its_own_delegation() -> None:
    command = [sys.executable, "-m", "authsec_crewai.cli", "serve-mock", "--port", "0",
               "--agent", "Records analyst=read:records",
               "--agent", "Writer=read:metrics,read:incidents"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as proc:  # fmt: skip
        try:
            exports: dict[str, str] = {}
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip().startswith("export "):
                    name, _, value = line.strip().removeprefix("export ").partition("=")
                    exports[name] = shlex.split(value)[0]
                if "Ctrl-C" in line:
                    break
            roles = AuthSecSettings(agents=exports["AUTHSEC_AGENTS"]).agents
            assert set(roles) == {"Records analyst", "Writer"}
            base = exports["AUTHSEC_BASE_URL"]

            def permissions(client_id: str) -> tuple[int, list[str] | None]:
                answer = httpx.get(f"{base}{TOKEN_PATH}", params={"client_id": client_id})
                return answer.status_code, answer.json().get("permissions")

            assert permissions(roles["Records analyst"]) == (200, ["read:records"])
            assert permissions(roles["Writer"]) == (200, ["read:incidents", "read:metrics"])
            assert permissions(exports["AUTHSEC_CLIENT_ID"])[0] == 200  # still delegated
            assert permissions(str(uuid.uuid4())) == (404, None)  # nobody delegated it
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()


@pytest.mark.parametrize(
    ("agents", "message"),
    [(("Writer",), "expected ROLE=PERMISSION"), (("=read:x",), "expected ROLE=PERMISSION"),
     (("W=a", "w=b"), "given twice")],
)  # fmt: skip
def test_serve_mock_refuses_malformed_agents(agents: tuple[str, ...], message: str) -> None:
    args = [arg for agent in agents for arg in ("--agent", agent)]
    _assert_one_line_failure(_run("serve-mock", *args), 2, message)
