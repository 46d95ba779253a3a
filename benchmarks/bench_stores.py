"""Shared token stores, side by side in one run: memory (no sharing), SQLite, Redis.

(a) cold fleets: N = 1, 2, 4, 8 worker processes x 200 tasks each, all asking
    at once for one agent's token from a real mock AuthSec server on 127.0.0.1
    (uvicorn, 20 ms added latency per answer): requests that reached the server
    and the time until every task was served;
(b) warm cache hits per store: ``await broker.token()`` against a dict lookup
    in a coroutine (the floor), measured interleaved;
(c) revocation propagation: one process invalidates, the others watch; the
    delay until each drops its copy, p50 and p99.

Workers are tests/fleet_worker.py processes (asyncio and trio alternating),
started and ready before the clock starts. Redis runs as a real redis-server
on a free port; without the binary its rows say so.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
import structlog

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from _redis import RedisServer  # noqa: E402
from fleetkit import mixed, start_fleet, stop_fleet  # noqa: E402

from authsec_crewai.broker import TokenBroker  # noqa: E402
from authsec_crewai.stores import MemoryStore, SQLiteStore  # noqa: E402
from authsec_crewai.testing import (  # noqa: E402
    TOKEN_PATH,
    LoopbackServer,
    MockAuthority,
    MockFaults,
    create_app,
)
from authsec_crewai.transports.mock import MockTransport  # noqa: E402

TASKS = 200
SIZES = (1, 2, 4, 8)
LATENCY = 0.02
REVOCATION_ROUNDS = 15
KEY = os.urandom(32)
KEY_TEXT = base64.urlsafe_b64encode(KEY).decode()
SCOPE = "read:records"


def quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


def cold_fleet(server: LoopbackServer, store_url: str, size: int) -> dict[str, float]:
    faults = MockFaults(latency=LATENCY)
    app = create_app(MockAuthority(), faults=faults)
    server.app = app
    env = {
        "AUTHSEC_MODE": "live",
        "AUTHSEC_BASE_URL": server.url,
        "AUTHSEC_CLIENT_ID": str(uuid.uuid4()),
        "AUTHSEC_STORE": store_url,
        "AUTHSEC_STORE_KEY": KEY_TEXT,
        "AUTHSEC_LOG_LEVEL": "ERROR",
    }
    workers = start_fleet(mixed(size), env)
    try:
        started = time.time()
        for worker in workers:
            worker.send(op="herd", n=TASKS)
        answers = [worker.answer() for worker in workers]
        served = sum(int(a["served"]) for a in answers)
        if served != TASKS * size:
            raise RuntimeError(f"only {served} of {TASKS * size} served: {answers}")
        finished = max(float(a["done_at"]) for a in answers)
        return {"requests": app.state.counts[TOKEN_PATH], "ms": (finished - started) * 1000}
    finally:
        stop_fleet(workers)


def revocation(server: LoopbackServer, store_url: str) -> list[float]:
    app = create_app(MockAuthority())
    server.app = app
    env = {
        "AUTHSEC_MODE": "live",
        "AUTHSEC_BASE_URL": server.url,
        "AUTHSEC_CLIENT_ID": str(uuid.uuid4()),
        "AUTHSEC_STORE": store_url,
        "AUTHSEC_STORE_KEY": KEY_TEXT,
    }
    workers = start_fleet(mixed(4), env)
    delays: list[float] = []
    try:
        revoker, *others = workers
        for _ in range(REVOCATION_ROUNDS):
            for worker in workers:
                worker.send(op="herd", n=1)
            for worker in workers:
                worker.answer()
            for worker in others:
                worker.send(op="watch")
            time.sleep(0.05)
            revoked = revoker.ask(op="invalidate")
            delays += [float(w.answer()["dropped_at"]) - float(revoked["at"]) for w in others]
    finally:
        stop_fleet(workers)
    return delays


async def per_call_ns(call: Any, count: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(count):
        await call()
    return (time.perf_counter_ns() - start) / count


async def cache_hit(store: Any) -> dict[str, float]:
    table = {SCOPE: object()}

    async def floor() -> object:
        return table[SCOPE]

    broker = TokenBroker(MockTransport(), client_id=str(uuid.uuid4()), store=store)
    async with broker:
        await broker.token(SCOPE)
        hit_ns = floor_ns = float("inf")
        for _ in range(7):
            hit_ns = min(hit_ns, await per_call_ns(lambda: broker.token(SCOPE), 50_000))
            floor_ns = min(floor_ns, await per_call_ns(floor, 50_000))
    return {"hit_ns": hit_ns, "floor_ns": floor_ns, "ratio": hit_ns / floor_ns}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def main() -> None:
    quiet_logs()
    with tempfile.TemporaryDirectory() as tmp, LoopbackServer() as server:
        redis: RedisServer | None = None
        binary = shutil.which("redis-server")
        if binary is not None:
            redis = RedisServer(binary, Path(tmp)).start()
        try:
            stores: dict[str, str | None] = {
                "memory": "memory:",
                "sqlite": f"sqlite:///{tmp}/tokens.db",
                "redis": redis.url if redis else None,
            }
            latency_ms = LATENCY * 1000
            print(
                f"(a) cold fleets: N processes x {TASKS} tasks, server latency {latency_ms:.0f} ms"
            )
            print("| processes | " + " | ".join(f"{name}: requests, ms" for name in stores) + " |")
            print("|---|" + "---|" * len(stores))
            for size in SIZES:
                cells = []
                for url in stores.values():
                    if url is None:
                        cells.append("no redis-server")
                        continue
                    row = cold_fleet(server, url, size)
                    cells.append(f"{row['requests']:.0f}, {row['ms']:.0f}")
                print(f"| {size} | " + " | ".join(cells) + " |", flush=True)

            print("\n(b) warm cache hit, await broker.token() vs a dict lookup in a coroutine")
            print("| store | hit ns | floor ns | ratio |")
            print("|---|---|---|---|")
            hit_stores: dict[str, Any] = {
                "none (memory:)": None,
                "MemoryStore": MemoryStore(),
                "SQLiteStore": SQLiteStore(Path(tmp) / "hits.db", keys=[KEY]),
            }
            if redis is not None:
                from authsec_crewai.stores.redis import RedisStore

                hit_stores["RedisStore"] = RedisStore(redis.url, keys=[KEY])
            for name, store in hit_stores.items():
                for backend in ("asyncio", "trio"):
                    hit = anyio.run(cache_hit, store, backend=backend)
                    print(
                        f"| {name} [{backend}] | {hit['hit_ns']:.0f} | {hit['floor_ns']:.0f} "
                        f"| {hit['ratio']:.2f}x |",
                        flush=True,
                    )

            print("\n(c) revocation propagation to 3 other processes")
            print("| store | p50 ms | p99 ms | samples |")
            print("|---|---|---|---|")
            for name in ("sqlite", "redis"):
                url = stores[name]
                if url is None:
                    print(f"| {name} | no redis-server | | |")
                    continue
                delays = [d * 1000 for d in revocation(server, url)]
                print(
                    f"| {name} | {statistics.median(delays):.1f} "
                    f"| {percentile(delays, 0.99):.1f} | {len(delays)} |",
                    flush=True,
                )
        finally:
            if redis is not None:
                redis.stop()


if __name__ == "__main__":
    main()
