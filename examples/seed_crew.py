"""The seed crew of authsec-crewai 0.1, on the new tool.

One analyst agent reads the secure vault through ``AuthSecSecureFetchTool``
and reports. The tool is configured from the environment, as before:

- LIVE mode with ``AUTHSEC_BASE_URL`` and ``AUTHSEC_CLIENT_ID`` (or
  ``AUTHSEC_AGENT_CLIENT_ID``) set, e.g. against ``authsec-crewai serve-mock``;
- MOCK mode otherwise (with a warning), or with ``AUTHSEC_MODE=mock``.

Unlike 0.1, a live failure is reported as an error and never replaced by mock
data, the ``scope`` argument is enforced, and the endpoint must be a path
under the protected API.

The model: a real one when ``OPENAI_API_KEY`` is set (``CREWAI_MODEL``,
default ``gpt-4o-mini``), otherwise the scripted offline model of
``authsec-crewai demo``, so this file runs anywhere::

    python examples/seed_crew.py

CrewAI's anonymous telemetry and trace upload are off unless you turn them on
(``CREWAI_DISABLE_TELEMETRY=false``, ``CREWAI_TRACING_ENABLED=true``): offline,
they would hold the program for many seconds after its answer, trying to
reach their servers.
"""

from __future__ import annotations

import os

# Read by crewai when it is imported, so set before the import below.
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

from crewai import LLM, Agent, BaseLLM, Crew, Task

from authsec_crewai.demo import ScriptedVaultLLM
from authsec_crewai.logging import configure
from authsec_crewai.tools import AuthSecSecureFetchTool


def choose_llm() -> BaseLLM:
    """A real model when an API key is configured, else the offline scripted one."""
    if os.environ.get("OPENAI_API_KEY"):
        return LLM(model=os.environ.get("CREWAI_MODEL", "gpt-4o-mini"))
    print("OPENAI_API_KEY is not set: using the scripted offline model")
    return ScriptedVaultLLM()


def build_crew(llm: BaseLLM | None = None) -> Crew:
    secure_tool = AuthSecSecureFetchTool()  # AUTHSEC_* settings from the environment

    analyst = Agent(
        role="Secure Data Analyst",
        goal="Retrieve protected records and metrics with least-privilege delegation tokens "
        "and summarise them for the security lead",
        backstory="You work for a security-conscious company. You only access data through "
        "the AuthSec secure fetcher, asking for exactly the scope each endpoint needs, and "
        "you report refusals instead of guessing.",
        tools=[secure_tool],
        llm=llm or choose_llm(),
        allow_delegation=False,
        verbose=False,
    )
    task = Task(
        description="Use the AuthSec secure fetcher to read secure-vault/records with scope "
        "read:records and secure-vault/metrics with scope read:metrics. Also try "
        "secure-vault/audit-log with scope read:audit. Summarise the personnel records "
        "(count, clearance levels), the key metrics (revenue against target, active users, "
        "infrastructure status) and any access that was refused.",
        expected_output="A short briefing: personnel summary, key metrics, refused access.",
        agent=analyst,
    )
    return Crew(agents=[analyst], tasks=[task], verbose=False)


def main() -> None:
    configure(level="WARNING")  # the library's log lines: warnings and errors only
    result = build_crew().kickoff()
    print(result)


if __name__ == "__main__":
    main()
