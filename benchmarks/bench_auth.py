"""``BrokerAuth`` on httpx and httpx2 clients, against the same clients with a fixed bearer.

1,000 concurrent GETs (100 at a time, queued in anyio as a careful application
would: httpcore rescans its whole queue whenever a connection frees up) per
side, alternating, best of several rounds, against one mock server that
``authsec-crewai serve-mock`` runs in its own process on 127.0.0.1. The floor
sends a bearer header fixed in advance; ``BrokerAuth`` takes the broker's
token for each request, and again as each request's headers are written (the
send-time look that keeps tokens from expiring in the client's queue).
Target: ``BrokerAuth`` reaches at least 90% of its client's floor.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import anyio
import httpx
import httpx2
import structlog

from authsec_crewai import BrokerAuth, TokenBroker
from authsec_crewai.integrations.httpx2 import BrokerAuth as Httpx2BrokerAuth
from authsec_crewai.transports import LiveTransport

CALLS = 1_000
ROUNDS = 5
PATH = "/secure-vault/records"


async def timed_batch(call: Callable[[], Awaitable[None]]) -> float:
    limiter = anyio.CapacityLimiter(100)

    async def one() -> None:
        async with limiter:
            await call()

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(CALLS):
            tg.start_soon(one)
    return time.perf_counter() - start


def getter(client: Any) -> Callable[[], Awaitable[None]]:
    async def get() -> None:
        response = await client.get(PATH)
        if response.status_code != 200:
            raise RuntimeError(f"status {response.status_code}")

    return get


async def side_by_side(http: ModuleType, auth_class: type[Any], url: str, client_id: str) -> Any:
    async with TokenBroker(LiveTransport(url, retry_budget=0), client_id=client_id) as broker:
        bearer = f"Bearer {(await broker.token('read:records')).value}"
        async with (
            http.AsyncClient(base_url=url, headers={"Authorization": bearer}) as fixed,
            http.AsyncClient(base_url=url, auth=auth_class(broker, "read:records")) as brokered,
        ):
            sides = {"fixed bearer": getter(fixed), "BrokerAuth": getter(brokered)}
            for call in sides.values():
                await timed_batch(call)  # warm: pools open
            best = dict.fromkeys(sides, float("inf"))
            for _ in range(ROUNDS):
                for name, call in sides.items():
                    best[name] = min(best[name], await timed_batch(call))
    return {name: CALLS / elapsed for name, elapsed in best.items()}


async def run(url: str, client_id: str) -> dict[str, dict[str, float]]:
    return {
        "httpx": await side_by_side(httpx, BrokerAuth, url, client_id),
        "httpx2": await side_by_side(httpx2, Httpx2BrokerAuth, url, client_id),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve_mock(port: int, client_id: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-c", "from authsec_crewai.cli import main; main()"]
    args = ["serve-mock", "--port", str(port), "--client-id", client_id]
    server = subprocess.Popen([*command, *args], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/.well-known/jwks.json", timeout=1)
            return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the mock server did not start")


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    client_id = str(uuid.uuid4())
    port = free_port()
    server = serve_mock(port, client_id)
    try:
        result = anyio.run(run, f"http://127.0.0.1:{port}", client_id)
    finally:
        server.terminate()
        server.wait(10)
    print(f"BrokerAuth ({CALLS} concurrent GETs, 100 at a time, best of {ROUNDS}, serve-mock)")
    for client, rates in result.items():
        share = rates["BrokerAuth"] / rates["fixed bearer"]
        print(
            f"  {client:6}  BrokerAuth {rates['BrokerAuth']:7.0f} req/s   fixed bearer "
            f"{rates['fixed bearer']:7.0f} req/s   -> {share * 100:.0f}% of the floor "
            "(target >= 90%)"
        )


if __name__ == "__main__":
    main()
