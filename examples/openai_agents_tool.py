"""The secure fetch tool in the OpenAI Agents SDK, made in one call from the settings.

Offline (mock mode, no API key): a scripted ``Model`` asks for records,
metrics and a scope the delegation does not grant, then summarises the tool's
answers. ``Runner.run_sync`` runs a loop of its own; the tool's calls run on
the library's shared broker (``await Runner.run(...)`` works alike). Drop
``model=`` (and set OPENAI_API_KEY) for a real agent::

    pip install 'authsec-crewai[openai-agents]'
    AUTHSEC_MODE=mock python examples/openai_agents_tool.py
"""

from __future__ import annotations

import json
from typing import Any

from agents import Agent, RunConfig, Runner
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import (
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseOutputText,
)

from authsec_crewai.integrations.openai_agents import secure_fetch_tool

READS = [
    ("secure-vault/records", "read:records"),
    ("secure-vault/metrics", "read:metrics"),
    ("secure-vault/audit-log", "read:audit"),  # not delegated: refused before the API
]


class ScriptedAnalyst(Model):
    """Every read at once, then one line per tool output."""

    async def get_response(
        self, system_instructions: Any, input: Any, *args: Any, **kw: Any
    ) -> ModelResponse:
        items = input if isinstance(input, list) else []
        outputs = [
            i for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"
        ]
        if not outputs:
            calls: list[Any] = [
                ResponseFunctionToolCall(
                    id=f"fc_{i}",
                    call_id=f"call_{i}",
                    name="authsec_secure_vault_fetcher",
                    arguments=json.dumps({"endpoint": e, "scope": s, "params": None}),
                    type="function_call",
                )
                for i, (e, s) in enumerate(READS)
            ]
            return ModelResponse(output=calls, usage=Usage(), response_id=None)
        lines = []
        for output in outputs:
            result = json.loads(output["output"])
            ok = result["status"] == "ok"
            lines.append(f"{result['endpoint']}: ok" if ok else f"refused: {result['error']}")
        text = ResponseOutputText(text="\n".join(lines), type="output_text", annotations=[])
        message = ResponseOutputMessage(
            id="msg_1", role="assistant", status="completed", type="message", content=[text]
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kw: Any) -> Any:
        raise NotImplementedError("this scripted model does not stream")


agent = Agent(name="vault analyst", model=ScriptedAnalyst(), tools=[secure_fetch_tool()])


def main() -> str:
    result = Runner.run_sync(
        agent,
        "Brief me on the secure vault",
        run_config=RunConfig(tracing_disabled=True),  # offline: no trace upload
    )
    print(result.final_output)
    return str(result.final_output)


if __name__ == "__main__":
    main()
