"""The secure fetch tool in LangChain: a scripted chat model asks for three reads.

Offline (mock mode, no API key): ``GenericFakeChatModel`` plays the model and
asks for records, metrics and a scope the delegation does not grant; the tool
answers each call as the CrewAI tools do. Swap in any chat model that supports
tool calling (``model.bind_tools([tool])``) for a real agent::

    pip install 'authsec-crewai[langchain]'
    AUTHSEC_MODE=mock python examples/langchain_tool.py
"""

from __future__ import annotations

import json

import anyio
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from authsec_crewai import AuthSecSettings, build_broker, build_fetcher
from authsec_crewai.integrations.langchain import secure_fetch_tool

READS = [
    ("secure-vault/records", "read:records"),
    ("secure-vault/metrics", "read:metrics"),
    ("secure-vault/audit-log", "read:audit"),  # not delegated: refused before the API
]


async def run() -> list[dict[str, object]]:
    settings = AuthSecSettings()
    async with build_broker(settings) as broker:
        tool = secure_fetch_tool(build_fetcher(broker, settings))
        calls = [
            {"name": tool.name, "args": {"endpoint": e, "scope": s}, "id": f"call_{i}"}
            for i, (e, s) in enumerate(READS)
        ]
        model = GenericFakeChatModel(messages=iter([AIMessage(content="", tool_calls=calls)]))
        asked = await model.ainvoke([HumanMessage("Brief me on the secure vault")])
        answers: list[ToolMessage] = [await tool.ainvoke(call) for call in asked.tool_calls]
    results = [json.loads(str(answer.content)) for answer in answers]
    for (endpoint, _), result in zip(READS, results, strict=True):
        print(f"{endpoint}: {result['status']} {result.get('error', '')}".rstrip())
    return results


def main() -> None:
    anyio.run(run)


if __name__ == "__main__":
    main()
