"""An async application (no crew) calling ``AsyncAuthSecSecureFetchTool`` concurrently.

Four calls run at once in an anyio task group: two the delegation allows, one
scope it does not grant, and one hostile endpoint. Refusals come back as JSON
results, like successes, so one loop handles both. Works on asyncio and trio::

    AUTHSEC_MODE=mock python examples/async_app.py          # asyncio
    AUTHSEC_MODE=mock python examples/async_app.py trio     # trio

With ``AUTHSEC_BASE_URL`` and ``AUTHSEC_CLIENT_ID`` set it runs in live mode
(try ``authsec-crewai serve-mock`` in another shell).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio

from authsec_crewai.logging import configure
from authsec_crewai.tools import AsyncAuthSecSecureFetchTool, close_shared_brokers

CALLS = [
    ("secure-vault/records", "read:records"),
    ("secure-vault/metrics", "read:metrics"),
    ("secure-vault/audit-log", "read:audit"),  # not delegated: refused before the API
    ("../admin", "read:records"),  # hostile: refused before any token is requested
]


def describe(result: dict[str, Any]) -> str:
    if result["status"] == "ok":
        data = result["data"]
        size = data.get("count", len(data)) if isinstance(data, dict) else len(str(data))
        return f"ok ({size} items)"
    return f"error {result['error']} (retryable: {str(result['retryable']).lower()})"


async def run() -> dict[str, dict[str, Any]]:
    tool = AsyncAuthSecSecureFetchTool()  # AUTHSEC_* settings from the environment
    results: dict[str, dict[str, Any]] = {}

    async def fetch(endpoint: str, scope: str) -> None:
        results[endpoint] = json.loads(await tool.arun(endpoint=endpoint, scope=scope))

    async with anyio.create_task_group() as tg:
        for endpoint, scope in CALLS:
            tg.start_soon(fetch, endpoint, scope)

    for endpoint, _ in CALLS:
        print(f"{endpoint}: {describe(results[endpoint])}")
    print(f"broker: {tool.broker.stats}")
    return results


def main(backend: str = "asyncio") -> None:
    configure(level="WARNING")
    try:
        anyio.run(run, backend=backend)
    finally:
        close_shared_brokers()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "asyncio")
