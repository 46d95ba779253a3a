"""The secure fetch tool in a PydanticAI agent, made in one call from the settings.

Offline (mock mode, no API key): a ``FunctionModel`` plays the model, asks for
records, metrics and a scope the delegation does not grant, then summarises
what the tool returned. ``agent.run_sync`` runs a loop of its own; the tool's
calls run on the library's shared broker, so it needs no broker of yours
(``await agent.run(...)`` works alike; a fetcher in the run's deps is used
when there is one). Pass a real model name to ``Agent`` for a real agent::

    pip install 'authsec-crewai[pydantic-ai]'
    AUTHSEC_MODE=mock python examples/pydantic_ai_agent.py
"""

from __future__ import annotations

import json

from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from authsec_crewai.integrations.pydantic_ai import secure_fetch_tool

READS = [
    ("secure-vault/records", "read:records"),
    ("secure-vault/metrics", "read:metrics"),
    ("secure-vault/audit-log", "read:audit"),  # not delegated: refused before the API
]


def analyst(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """The scripted model: every read at once, then one line per result."""
    returned = [
        part for message in messages for part in message.parts if isinstance(part, ToolReturnPart)
    ]
    if not returned:
        tool = info.function_tools[0].name
        return ModelResponse(
            parts=[
                ToolCallPart(tool, {"endpoint": endpoint, "scope": scope})
                for endpoint, scope in READS
            ]
        )
    lines = []
    for part in returned:
        result = json.loads(str(part.content))
        lines.append(
            f"{result.get('endpoint', '?')}: ok"
            if result["status"] == "ok"
            else f"refused: {result['error']}"
        )
    return ModelResponse(parts=[TextPart("\n".join(lines))])


agent = Agent(FunctionModel(analyst), tools=[secure_fetch_tool()])  # AUTHSEC_* settings


def main() -> str:
    output = agent.run_sync("Brief me on the secure vault").output
    print(output)
    return output


if __name__ == "__main__":
    main()
