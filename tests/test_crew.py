"""Real ``Crew.kickoff()`` / ``akickoff()`` runs with scripted models and the real tools.

Only the model is scripted (``ScriptedVaultLLM``, ``ParallelCallsLLM``): CrewAI's
own agent loop parses its answers, runs the tools (native calls in parallel
worker threads, ReAct actions one by one) and feeds the results back, and the
model writes its answer from those results. Live runs go to the mock AuthSec
server over loopback, whose counters prove what reached it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from _server import MockServer
from click.testing import CliRunner
from crewkit import (  # noqa: F401 (autouse fixtures)
    CREWAI_ENV,
    ParallelCallsLLM,
    crew_for,
    crewai_env,
    shared_brokers_closed,
)

from authsec_crewai.cli import main
from authsec_crewai.demo import ScriptedVaultLLM
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.testing import TOKEN_PATH, Fault
from authsec_crewai.tools import AsyncAuthSecSecureFetchTool, AuthSecSecureFetchTool
from authsec_crewai.transports import MockTransport

pytestmark = pytest.mark.crew

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXPECTED = (
    "secure-vault/records: 6 people on file (2 confidential, 1 internal, 2 secret, 1 top-secret).",
    "secure-vault/metrics: 2026-Q2 revenue $31,240,000 of $48,500,000 (64%); 182,340 active "
    "users; degraded: search_cluster.",
    "refused: insufficient_scope (not retried): refused without calling the API",
    "2 of 3 reads succeeded; every refusal happened before the API saw a request.",
)


def kickoff(crew: Any, entry: str) -> str:
    output = crew.kickoff() if entry == "kickoff" else asyncio.run(crew.akickoff())
    return str(output.raw)


@pytest.mark.parametrize("entry", ["kickoff", "akickoff"])
@pytest.mark.parametrize("mode", ["mock", "live"])
@pytest.mark.parametrize("native", [True, False], ids=["native", "react"])
@pytest.mark.parametrize("tool_cls", [AuthSecSecureFetchTool, AsyncAuthSecSecureFetchTool])
def test_a_crew_reads_the_vault_and_is_refused_a_scope(
    tool_cls: type[AuthSecSecureFetchTool],
    native: bool,
    mode: str,
    entry: str,
    authsec_server: MockServer,
    client_id: str,
) -> None:
    transport = MockTransport()
    if mode == "live":
        settings = AuthSecSettings(mode="live", base_url=authsec_server.url, client_id=client_id)
        tool = tool_cls(settings=settings)
    else:
        tool = tool_cls(settings=AuthSecSettings(mode="mock"), transport=transport)
    answer = kickoff(crew_for(tool, ScriptedVaultLLM(native=native)), entry)
    for line in EXPECTED:
        assert line in answer, answer
    if mode == "live":
        counts = authsec_server.counts
        assert counts["/secure-vault/records"] == 1 and counts["/secure-vault/metrics"] == 1
        assert counts["/secure-vault/audit-log"] == 0  # refused before the API
        scopes = Counter(
            r.query.get("scope") for r in authsec_server.requests if r.path == TOKEN_PATH
        )
        assert set(scopes.values()) == {1}  # never twice for one scope set
        token = authsec_server.authority.token_answer(client_id)[1]["token"]
        assert token not in answer
    else:
        assert authsec_server.counts == Counter()  # mock mode never touches a network
        # One token covers records and metrics; read:audit costs a request only when it
        # is asked before that token is known (parallel native calls), else none.
        assert 1 <= transport.calls <= 3


def test_8_agents_with_50_parallel_tool_calls_each_make_one_token_request_per_scope_set(
    authsec_server: MockServer, client_id: str
) -> None:
    """Eight crews run at once (``akickoff`` on one loop); each agent's model asks for 50
    tool calls in one turn, which CrewAI runs in parallel worker threads (8 per agent)."""
    authsec_server.faults.add(Fault.slow(0.3), count=10)  # a slow token answer: callers pile up
    authsec_server.faults.add(Fault.slow(0.005), count=400, path="/secure-vault/")
    settings = AuthSecSettings(mode="live", base_url=authsec_server.url, client_id=client_id)
    in_flight, peak, lock = [0], [0], threading.Lock()

    class GaugedTool(AuthSecSecureFetchTool):
        def _run(self, endpoint: str, scope: str, params: Any = None) -> str:
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            try:
                return super()._run(endpoint, scope, params)
            finally:
                with lock:
                    in_flight[0] -= 1

    crews = []
    for index in range(8):
        resource = "records" if index < 4 else "metrics"
        llm = ParallelCallsLLM(
            calls=50, endpoint=f"secure-vault/{resource}", scope=f"read:{resource}"
        )
        tool = GaugedTool(settings=settings)  # type: ignore[call-arg]
        crews.append(crew_for(tool, llm, role=f"analyst {index}"))

    async def all_crews() -> list[Any]:
        return await asyncio.gather(*(crew.akickoff() for crew in crews))

    started = time.monotonic()
    outputs = asyncio.run(all_crews())
    elapsed = time.monotonic() - started
    assert [o.raw for o in outputs] == ["ok=50 error=0 kinds="] * 8
    assert authsec_server.count("/secure-vault/records") == 200
    assert authsec_server.count("/secure-vault/metrics") == 200
    scopes = Counter(r.query.get("scope") for r in authsec_server.requests if r.path == TOKEN_PATH)
    assert set(scopes.values()) == {1}, scopes  # exactly one request per scope set
    assert sum(scopes.values()) <= 2
    assert peak[0] >= 16, peak  # calls really overlapped, across agents
    print(f"8 agents x 50 calls: {elapsed:.2f}s, peak {peak[0]} in flight, tokens {dict(scopes)}")


def test_the_demo_command_runs_a_crew_offline() -> None:
    result = CliRunner().invoke(main, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for text in ("MOCK", "Token log", "token.issued", "fetch.refused", "jwt:", "The crew's answer"):
        assert text in result.stdout
    for line in EXPECTED[:2]:
        assert line.split(":")[0] in result.stdout
    assert "6 people on file" in result.stdout and "insufficient_scope" in result.stdout
    assert "eyJ" not in result.output  # no JWT, not even a header
    assert not (Path.cwd() / ".crewai").exists()


def test_the_demo_reads_well_at_80_columns_with_identifiers_whole() -> None:
    result = CliRunner().invoke(
        main, ["demo"], env={"COLUMNS": "80", "AUTHSEC_LOG_LEVEL": "INFO"}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    jtis = re.findall(r"jti ([0-9a-f-]{36})\b", result.stdout)
    assert jtis, result.stdout  # each held token's jti, whole on one line
    for jti in jtis:
        assert f"jti={jti}" in result.stderr  # and the same id is in the log lines
    for endpoint in ("secure-vault/records", "secure-vault/metrics", "secure-vault/audit-log"):
        assert any(endpoint in line and "fetch." in line for line in lines), endpoint
    assert any("Crew.kickoff()" in line and re.search(r"\d\.\d\ds", line) for line in lines)
    # AUTHSEC_LOG_LEVEL=INFO: the library's lines, on stderr only
    assert "token.issued" in result.stderr and "fingerprint=" in result.stderr
    assert "eyJ" not in result.output


def _load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_crew_example_runs_in_mock_mode(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTHSEC_MODE", "mock")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    _load_example("seed_crew").main()
    out = capsys.readouterr().out
    assert "6 people on file" in out and "insufficient_scope" in out


def test_async_app_example_runs_in_mock_mode(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTHSEC_MODE", "mock")
    _load_example("async_app").main()
    out = capsys.readouterr().out
    assert "secure-vault/records: ok" in out and "insufficient_scope" in out


def test_async_app_example_runs_as_a_script(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSEC_")}
    env.update(CREWAI_ENV, AUTHSEC_MODE="mock", CREWAI_STORAGE_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "async_app.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "secure-vault/records: ok" in done.stdout


def test_seed_crew_example_makes_no_network_attempt_offline(tmp_path: Path) -> None:
    """Offline, CrewAI's telemetry held the program for 10-15 s after its answer, trying
    to reach its servers. Run as a user would (no CrewAI variable set), with every
    connection refused and reported: the example must not try at all."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AUTHSEC_", "CREWAI_", "OTEL_", "OPENAI_"))
    }
    env["AUTHSEC_MODE"] = "mock"
    runner = (
        "import runpy, sys\n"
        "from authsec_crewai.testing import block_network\n"
        "with block_network('the example runs offline') as attempts:\n"
        f"    runpy.run_path({str(EXAMPLES / 'seed_crew.py')!r}, run_name='__main__')\n"
        "print('ATTEMPTS', attempts)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", runner],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "6 people on file" in done.stdout
    assert "ATTEMPTS []" in done.stdout, done.stdout[-2000:]
