"""A whole ``Crew.kickoff()`` recorded against the AuthSec mock server in LIVE mode, then
replayed with the server stopped and the network blocked: the same tool results and
the same final answer.

The only test module of the record/replay suite that imports crewai (slow); the
model is the library's scripted, native function-calling ``ScriptedVaultLLM``.
"""

from __future__ import annotations

import os
import tempfile

for _name, _value in {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TESTING": "true",
    "CREWAI_TRACING_ENABLED": "false",
}.items():
    os.environ.setdefault(_name, _value)  # read by crewai at import time
os.environ.setdefault("CREWAI_STORAGE_DIR", tempfile.mkdtemp(prefix="authsec-replay-crew-"))

import json  # noqa: E402
import re  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from cassettekit import API_TOKEN, problems_in, scan_written_cassettes  # noqa: E402, F401
from joserfc.jwk import RSAKey  # noqa: E402
from pydantic import Field  # noqa: E402

from authsec_crewai.cassettes import load  # noqa: E402
from authsec_crewai.demo import ScriptedVaultLLM, build_demo_crew, observed_results  # noqa: E402
from authsec_crewai.settings import AuthSecSettings  # noqa: E402
from authsec_crewai.testing import (  # noqa: E402
    LoopbackServer,
    MockAuthority,
    block_network,
    create_app,
)
from authsec_crewai.tools import AuthSecSecureFetchTool, close_shared_brokers  # noqa: E402
from authsec_crewai.transports import LiveTransport, RecordingTransport  # noqa: E402

pytestmark = [pytest.mark.crew, pytest.mark.filterwarnings("ignore::DeprecationWarning:crewai")]
pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def sandbox(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clean_env: None) -> Iterator[None]:
    """A clean AUTHSEC_* environment, crewai storage per test, no shared broker left over."""
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "crewai-storage"))
    monkeypatch.chdir(tmp_path)
    close_shared_brokers()
    yield
    close_shared_brokers()


class WatchingLLM(ScriptedVaultLLM):
    """The scripted analyst, keeping every tool result it was shown."""

    seen: list[dict[str, Any]] = Field(default_factory=list)

    def call(self, messages: Any, tools: Any = None, *args: Any, **kwargs: Any) -> Any:
        results = observed_results(messages)
        if results:
            self.seen[:] = results
        return super().call(messages, tools, *args, **kwargs)


def kickoff(tool: AuthSecSecureFetchTool) -> tuple[str, list[dict[str, Any]]]:
    """Run the crew; the tool's shared broker is closed after it (writing a recording)."""
    llm = WatchingLLM()
    try:
        output = build_demo_crew(tool, llm).kickoff()
    finally:
        close_shared_brokers()
    return str(getattr(output, "raw", output)), list(llm.seen)


def test_a_recorded_crew_replays_identically_offline(
    tmp_path: Path, rsa_key: RSAKey, client_id: str
) -> None:
    authority = MockAuthority(key=rsa_key)
    authority.delegate(client_id)
    cassette = tmp_path / "crew.json"

    app = create_app(authority, api_token=API_TOKEN)
    with LoopbackServer(app) as server:
        live_settings = AuthSecSettings(
            mode="live", base_url=server.url, client_id=client_id, api_token=API_TOKEN
        )
        recording = RecordingTransport(
            LiveTransport(server.url, api_token=API_TOKEN), cassette, record_mode="all"
        )
        tool = AuthSecSecureFetchTool(settings=live_settings, transport=recording)
        recorded_answer, recorded_results = kickoff(tool)

    read = sorted(r["endpoint"] for r in recorded_results if r["status"] == "ok")
    assert read == ["secure-vault/metrics", "secure-vault/records"]
    refused = [r for r in recorded_results if r["status"] == "error"]
    assert [r["error"] for r in refused] == ["insufficient_scope"]  # read:audit: not granted
    assert app.state.counts["/secure-vault/records"] == 1  # really served over the socket
    text = cassette.read_text(encoding="utf-8")
    assert problems_in(text) == [] and API_TOKEN not in text
    assert load(cassette).counts()["api"] == 2  # the refused read never reached the API

    # The server is gone. Replay through the settings, as an application would.
    replay_settings = AuthSecSettings(mode="replay", cassette=cassette, api_base_url=server.url)
    with block_network() as attempts:
        replayed_answer, replayed_results = kickoff(
            AuthSecSecureFetchTool(settings=replay_settings)
        )
    assert attempts == []  # nothing in the crew even tried the network
    assert json.dumps(replayed_results, sort_keys=True) == json.dumps(
        recorded_results, sort_keys=True
    )
    assert replayed_answer == recorded_answer
    assert "2 of 3 reads succeeded" in replayed_answer


def test_the_plugin_tool_fixture_records_and_replays(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_tool="""
import json

import pytest


@pytest.mark.authsec_cassette("tool")
def test_tool(authsec_tool, authsec_transport):
    result = json.loads(authsec_tool.run(endpoint="secure-vault/metrics", scope="read:metrics"))
    assert result["status"] == "ok", result
    print(f"MODE={authsec_transport.info.mode} DATA={json.dumps(result['data'], sort_keys=True)}")
"""
    )
    recorded = pytester.runpytest("-s", "-p", "no:asyncio", "--authsec-record-mode=once")
    recorded.assert_outcomes(passed=1)
    assert "auto_mock" not in recorded.stdout.str()  # the fixture's settings are complete
    replayed = pytester.runpytest("-s", "-p", "no:asyncio")
    replayed.assert_outcomes(passed=1)

    def seen(result: pytest.RunResult) -> tuple[str, str]:
        # The print may share its line with "test_tool.py " or follow log lines.
        found = re.search(r"MODE=(\w+) DATA=(.*)$", result.stdout.str(), re.M)
        assert found is not None, result.stdout.str()
        return found.group(1), found.group(2)

    assert seen(recorded)[0] == "record" and seen(replayed)[0] == "replay"
    assert seen(recorded)[1] == seen(replayed)[1]
    cassette = pytester.path / "cassettes" / "test_tool" / "tool.json"
    assert load(cassette).counts()["api"] == 1
