"""The pytest plugin, exercised the way users meet it: through pytester runs that load
it from its ``pytest11`` entry point."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cassettekit import problems_in, scan_written_cassettes  # noqa: F401

from authsec_crewai.cassettes import dumps, load, new_document

pytest_plugins = ["pytester"]

HEADER = """
import httpx
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def vault(broker, transport, *paths):
    async with broker as b:
        token = await b.token("read:records")
        async with httpx.AsyncClient(
            transport=transport.api(), base_url="http://authsec-mock.invalid"
        ) as client:
            out = []
            for path in paths:
                r = await client.get(path, headers={"authorization": f"Bearer {token.value}"})
                out.append((r.status_code, r.json()))
    return token.jti, out
"""

RECORDS_TEST = (
    HEADER
    + """

@pytest.mark.authsec_cassette("vault")
async def test_records(authsec_broker, authsec_transport, authsec_cassette):
    jti, out = await vault(authsec_broker, authsec_transport, "/secure-vault/records")
    assert out[0][0] == 200
    mode, source = authsec_transport.info.mode, authsec_cassette.record_mode_source
    print(f"MODE={mode} JTI={jti} SOURCE={source}")
"""
)


@pytest.fixture(autouse=True)
def clean_environment(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, clean_env: None
) -> None:
    """A clean AUTHSEC_* environment (``clean_env``); inner runs without pytest-asyncio
    (its configuration warning would otherwise surface in this run's summary)."""
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester")  # it clears PYTEST_ADDOPTS: set ours after
        monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:asyncio -p no:cacheprovider")


def _cassette(pytester: pytest.Pytester, module: str, name: str) -> Path:
    return pytester.path / "cassettes" / module / f"{name}.json"


def _outcome_line(result: pytest.RunResult, key: str) -> str:
    """The first output line with ``key`` as a word of its own (not AUTHSEC_MODE=...)."""
    pattern = re.compile(rf"(?<![A-Za-z_]){re.escape(key)}")
    lines = [line for line in result.outlines if pattern.search(line)]
    assert lines, result.stdout.str()
    return lines[0]


def _assert_no_traceback(result: pytest.RunResult) -> None:
    text = result.stdout.str()
    assert "Traceback" not in text
    assert "pytest_plugin.py" not in text  # no frame of the plugin is shown
    assert "def authsec_transport" not in text


def test_record_once_then_replay_offline(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_vault=RECORDS_TEST)
    recorded = pytester.runpytest("-s", "--authsec-record-mode=once")
    recorded.assert_outcomes(passed=1)
    path = _cassette(pytester, "test_vault", "vault")
    assert load(path).counts() == {"token": 1, "key_set": 1, "api": 1}
    assert problems_in(path.read_text(encoding="utf-8")) == []
    first = _outcome_line(recorded, "MODE=")
    assert "MODE=record" in first and "SOURCE=--authsec-record-mode" in first
    assert "authsec-crewai cassettes: record mode once" in recorded.stdout.str()

    replayed = pytester.runpytest("-s")  # default: none, replay only, network blocked
    replayed.assert_outcomes(passed=1)
    second = _outcome_line(replayed, "MODE=")
    assert "MODE=replay" in second and "SOURCE=default" in second
    assert first.split("JTI=")[1].split()[0] == second.split("JTI=")[1].split()[0]


def test_a_missing_cassette_in_mode_none_is_one_clear_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_vault=RECORDS_TEST)
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*authsec_cassette: cassette */cassettes/test_vault/vault.json does not exist, and "
            "the record mode is 'none' (from default); record it with "
            "--authsec-record-mode=once*"
        ]
    )
    _assert_no_traceback(result)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{ not json", "is not valid JSON (line 1, column 3*"),
        (json.dumps({"format": "authsec-cassette", "version": 7}), "*cassette format version 7*"),
        ('{"some": "other json"}', "*is not an authsec-crewai cassette*"),
    ],
)
def test_a_corrupt_or_future_cassette_is_one_clear_line(
    pytester: pytest.Pytester, content: str, message: str
) -> None:
    pytester.makepyfile(test_vault=RECORDS_TEST)
    path = _cassette(pytester, "test_vault", "vault")
    path.parent.mkdir(parents=True)
    path.write_text(content, encoding="utf-8")
    for options in ((), ("--authsec-record-mode=once",), ("--authsec-record-mode=new_episodes",)):
        result = pytester.runpytest(*options)
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines([f"*authsec_cassette: cassette {path}*{message}"])
        _assert_no_traceback(result)


def test_the_command_line_wins_over_the_marker_and_says_so(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_vault=RECORDS_TEST.replace(
            '@pytest.mark.authsec_cassette("vault")',
            '@pytest.mark.authsec_cassette("vault", record_mode="none")',
        )
    )
    refused = pytester.runpytest()
    refused.assert_outcomes(errors=1)
    refused.stdout.fnmatch_lines(["*the record mode is 'none' (from marker)*"])

    result = pytester.runpytest("-s", "--authsec-record-mode=all")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*AuthSecCassetteWarning: --authsec-record-mode=all overrides this test's "
            "@pytest.mark.authsec_cassette(record_mode='none')*"
        ]
    )
    assert "MODE=record" in _outcome_line(result, "MODE=")


def test_the_marker_wins_over_the_ini_option(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nauthsec_record_mode = once\n")
    pytester.makepyfile(test_vault=RECORDS_TEST)
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)
    assert "SOURCE=ini" in _outcome_line(result, "MODE=")
    pytester.makeini("[pytest]\nauthsec_record_mode = sometimes\n")
    bad = pytester.runpytest()
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*authsec_record_mode = 'sometimes'*is not a record mode*"])


def test_an_unknown_record_mode_option_is_refused_by_pytest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_vault=RECORDS_TEST)
    result = pytester.runpytest("--authsec-record-mode=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*invalid choice: 'sometimes'*"])


def test_the_network_is_blocked_while_replaying(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_net=HEADER
        + """
import socket

from authsec_crewai.testing import AuthSecCassetteWarning


@pytest.mark.authsec_cassette("net")
def test_blocked(authsec_transport):
    with pytest.raises(OSError, match="the network is blocked while .*test_blocked replays"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


@pytest.mark.authsec_cassette("net", block_network=False)
def test_allowed(authsec_transport):
    with pytest.raises(OSError) as caught:
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    assert "blocked" not in str(caught.value)


def test_unblocked_afterwards():
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
"""
    )
    path = _cassette(pytester, "test_net", "net")
    path.parent.mkdir(parents=True)
    document = new_document(recorded_at=1_800_000_000.0, settings={}, interactions=[])
    path.write_text(dumps(document), encoding="utf-8")
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines(["*1 network connection(s) were refused during replay*"])


def test_strict_unused_fails_the_test_at_teardown(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_strict=HEADER
        + """

@pytest.mark.authsec_cassette("vault", record_mode="once")
async def test_record(authsec_broker, authsec_transport):
    await vault(authsec_broker, authsec_transport, "/secure-vault/records", "/secure-vault/metrics")


@pytest.mark.authsec_cassette("vault", strict_unused=True)
async def test_uses_less(authsec_transport):
    async with httpx.AsyncClient(
        transport=authsec_transport.api(), base_url="http://x.invalid"
    ) as client:
        assert (await client.get("/secure-vault/records")).status_code == 200
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_uses_less*",
            "*2 recorded interaction(s) were never used (strict_unused=True): "
            "#0 token for client * with scopes read:records; #3 GET /secure-vault/metrics*",
        ]
    )


def test_an_unmatched_request_fails_the_test_naming_the_closest(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_unmatched=HEADER
        + """

@pytest.mark.authsec_cassette("vault", record_mode="once")
async def test_a(authsec_broker, authsec_transport):
    await vault(authsec_broker, authsec_transport, "/secure-vault/records")


@pytest.mark.authsec_cassette("vault")
async def test_b(authsec_broker, authsec_transport):
    await vault(authsec_broker, authsec_transport, "/secure-vault/metrics")
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*CassetteError: cassette */vault.json: GET /secure-vault/metrics is not in the "
            "cassette; the closest recorded request is GET /secure-vault/records (it differs "
            "in path)*"
        ]
    )


def test_marker_misuse_is_one_clear_line(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_misuse="""
import pytest


@pytest.mark.authsec_cassette("x", recordmode="all")
def test_typo(authsec_transport):
    pass


@pytest.mark.authsec_cassette("../escape")
def test_escape(authsec_transport):
    pass


@pytest.mark.authsec_cassette(record_mode="sometimes")
def test_mode(authsec_transport):
    pass


@pytest.fixture
def authsec_cassette_options():
    return {"placeholder": {}}


@pytest.mark.authsec_cassette(record_mode="all")
def test_options(authsec_transport):
    pass
"""
    )
    result = pytester.runpytest()
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines_random(
        [
            "*authsec_cassette: unknown option(s) recordmode; the marker takes a name and*",
            "*cassette name '../escape' is not a plain relative name*",
            "*record_mode='sometimes' is not one of none, once, new_episodes, all*",
            "*authsec_cassette_options has unknown key(s) placeholder; allowed: metadata, "
            "placeholders, scrub, secrets*",
        ]
    )
    _assert_no_traceback(result)


def test_default_names_and_overridable_options(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_names=HEADER
        + """

@pytest.fixture
def authsec_cassette_options():
    return {"metadata": {"ticket": "ISSUE-5"}, "scrub": [lambda item: item]}


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.authsec_cassette(record_mode="all")
async def test_param(n, authsec_broker, authsec_transport, authsec_cassette):
    assert authsec_cassette.name == f"test_param_{n}"
    await vault(authsec_broker, authsec_transport, "/secure-vault/records")
"""
    )
    pytester.runpytest().assert_outcomes(passed=2)
    for n in (1, 2):
        cassette = load(_cassette(pytester, "test_names", f"test_param_{n}"))
        assert cassette.metadata == {"ticket": "ISSUE-5"}


def test_importing_the_plugin_stays_light() -> None:
    code = (
        "import sys, authsec_crewai.testing.pytest_plugin\n"
        "print([m for m in ('crewai', 'httpx', 'authsec_crewai.broker', 'structlog', "
        "'authsec_crewai.transports.replay') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_the_plugin_is_registered_as_an_entry_point() -> None:
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="pytest11") if ep.name == "authsec_crewai"]
    assert [ep.value for ep in found] == ["authsec_crewai.testing.pytest_plugin"]
