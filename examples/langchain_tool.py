"""The secure fetch tool in LangChain: a scripted chat model asks for three reads.

Offline (mock mode, no API key): ``GenericFakeChatModel`` plays the model and
asks for records, metrics and a scope the delegation does not grant; the tool,
made in one call from the ``AUTHSEC_*`` settings, answers each call as the
CrewAI tools do (a refusal is a ``ToolMessage`` with ``status="error"``). Swap
in any chat model that supports tool calling (``model.bind_tools([tool])``), or
hand the tool to a LangGraph ``ToolNode``, for a real agent::

    pip install 'authsec-crewai[langchain]'
    AUTHSEC_MODE=mock python examples/langchain_tool.py
"""

from __future__ import annotations

import json

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from authsec_crewai.integrations.langchain import secure_fetch_tool

READS = [
    ("secure-vault/records", "read:records"),
    ("secure-vault/metrics", "read:metrics"),
    ("secure-vault/audit-log", "read:audit"),  # not delegated: refused before the API
]


def main() -> list[ToolMessage]:
    tool = secure_fetch_tool()  # from the AUTHSEC_* settings; invoke and ainvoke both work
    calls = [
        {"name": tool.name, "args": {"endpoint": e, "scope": s}, "id": f"call_{i}"}
        for i, (e, s) in enumerate(READS)
    ]
    model = GenericFakeChatModel(messages=iter([AIMessage(content="", tool_calls=calls)]))
    asked = model.invoke([HumanMessage("Brief me on the secure vault")])
    answers: list[ToolMessage] = [tool.invoke(call) for call in asked.tool_calls]
    for (endpoint, _), answer in zip(READS, answers, strict=True):
        result = json.loads(str(answer.content))
        print(f"{endpoint}: {result['status']} {result.get('error', '')}".rstrip())
    return answers


if __name__ == "__main__":
    main()
