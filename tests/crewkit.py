"""Helpers for the tests that import crewai (test_tools.py, test_crew.py).

Importing this module quiets crewai *before* crewai is imported (some of its
settings are read at import): no telemetry, no tracing prompt, test mode, and
storage in a temporary directory. The ``crewai_env`` fixture pins the same
variables per test, with a per-test storage directory.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CREWAI_ENV = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TESTING": "true",
    "CREWAI_TRACING_ENABLED": "false",
}

for _name, _value in CREWAI_ENV.items():
    os.environ.setdefault(_name, _value)
if "CREWAI_STORAGE_DIR" not in os.environ:
    _storage = tempfile.mkdtemp(prefix="authsec-crewai-tests-")
    os.environ["CREWAI_STORAGE_DIR"] = _storage
    atexit.register(shutil.rmtree, _storage, True)

import json  # noqa: E402
from typing import Any  # noqa: E402

from crewai import Agent, BaseLLM, Crew, Task  # noqa: E402

from authsec_crewai.demo import observed_results  # noqa: E402
from authsec_crewai.tools import close_shared_brokers  # noqa: E402

__all__ = ["CREWAI_ENV", "ParallelCallsLLM", "crew_for", "crewai_env", "shared_brokers_closed"]


@pytest.fixture(autouse=True)
def crewai_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, clean_env: None) -> None:
    """crewai quiet and sandboxed, in a clean AUTHSEC_* environment (``clean_env``)."""
    for name, value in CREWAI_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CREWAI_STORAGE_DIR", str(tmp_path / "crewai-storage"))


@pytest.fixture(autouse=True)
def shared_brokers_closed() -> Iterator[None]:
    """Every test starts and ends without shared brokers (and their loop threads)."""
    close_shared_brokers()
    yield
    close_shared_brokers()


class ParallelCallsLLM(BaseLLM):
    """A native function-calling model that asks for ``calls`` tool calls in one turn.

    Each call gets a distinct ``page`` parameter (CrewAI stops an agent that
    repeats an identical call). The final answer counts the results it saw:
    ``"ok=<n> error=<m> kinds=<sorted error kinds>"``.
    """

    model: str = "scripted-parallel"
    calls: int = 50
    endpoint: str = "secure-vault/records"
    scope: str = "read:records"

    def __init__(self, **data: Any) -> None:
        data.setdefault("model", "scripted-parallel")  # BaseLLM wants it as an argument
        super().__init__(**data)

    def supports_function_calling(self) -> bool:
        return True

    def get_context_window_size(self) -> int:
        return 1_000_000

    def get_input_tokens_count(
        self, messages: Any, tools: Any = None, response_model: Any = None
    ) -> int:
        return len(json.dumps(messages, default=str)) // 4

    def call(
        self,
        messages: Any,
        tools: list[dict[str, Any]] | None = None,
        callbacks: list[Any] | None = None,
        available_functions: dict[str, Any] | None = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> Any:
        results = observed_results(messages)
        if results or not tools:
            ok = sum(1 for r in results if r["status"] == "ok")
            kinds = sorted({str(r.get("error")) for r in results if r["status"] == "error"})
            return f"ok={ok} error={len(results) - ok} kinds={','.join(kinds)}"
        name = tools[0]["function"]["name"]
        return [
            {
                "id": f"call_{index}",
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": json.dumps(
                        {
                            "endpoint": self.endpoint,
                            "scope": self.scope,
                            "params": [{"name": "page", "value": str(index)}],
                        }
                    ),
                },
            }
            for index in range(self.calls)
        ]


def crew_for(tool: Any, llm: BaseLLM, *, role: str = "Vault analyst") -> Crew:
    """One agent with ``tool`` and ``llm``, one task."""
    agent = Agent(
        role=role,
        goal="Read the secure vault through the AuthSec tool",
        backstory="A careful analyst.",
        llm=llm,
        tools=[tool],
        allow_delegation=False,
        verbose=False,
        max_iter=8,
    )
    task = Task(
        description="Read the vault and report what you found.",
        expected_output="A report.",
        agent=agent,
    )
    return Crew(agents=[agent], tasks=[task], verbose=False)
