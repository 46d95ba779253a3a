"""Adapters for agent frameworks other than CrewAI, and for httpx2 clients, one small
module each.

Each is behind an optional extra and imports its framework only when imported
itself (``import authsec_crewai`` never loads any of them, and only :mod:`.mcp`
needs crewai):

- :mod:`.langchain` (``pip install 'authsec-crewai[langchain]'``): a
  ``StructuredTool`` for LangChain and LangGraph, sync and async;
- :mod:`.pydantic_ai` (``[pydantic-ai]``): a ``Tool`` for ``run`` and ``run_sync``;
- :mod:`.openai_agents` (``[openai-agents]``): a ``FunctionTool`` for
  ``Runner.run`` and ``Runner.run_sync``;
- :mod:`.httpx2` (``[httpx2]``): ``BrokerAuth`` for httpx2 clients;
- :mod:`.mcp_server` (``[mcp]``): the secure fetch tool as an MCP server
  (``authsec-crewai serve-mcp``);
- :mod:`.mcp` (``[mcp]`` and ``[crewai]``): an MCP server's tools as CrewAI
  tools, each call authorized with the broker's token.

The tools are made in one call from the settings and stand on the same shared
broker runtime as the CrewAI tools (:mod:`authsec_crewai._toolruntime`); all of
them call :func:`authsec_crewai.toolspec.fetch_text`: the same name, arguments,
description, guards, results and errors as the CrewAI tools.
"""
