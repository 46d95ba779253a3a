"""Adapters for agent frameworks other than CrewAI, one small module each.

Each is behind an optional extra and imports its framework only when imported
itself (``import authsec_crewai`` never loads any of them):

- :mod:`.langchain` (``pip install 'authsec-crewai[langchain]'``): a
  ``StructuredTool`` with a native coroutine;
- :mod:`.pydantic_ai` (``[pydantic-ai]``): a ``Tool`` whose fetcher comes
  from the agent's dependencies;
- :mod:`.openai_agents` (``[openai-agents]``): a ``FunctionTool``.

All of them call :func:`authsec_crewai.toolspec.fetch_text` on a
:class:`~authsec_crewai.fetch.SecureFetcher`: the same name, arguments,
description, guards, results and errors as the CrewAI tools.
"""
