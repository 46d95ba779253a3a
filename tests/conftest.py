"""Shared fixtures. Every async test runs under asyncio and trio (anyio plugin)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client_id() -> str:
    return str(uuid.uuid4())
