"""Many agent identities in one process: what each one costs.

For 1, 10, 100 and 1,000 agent identities (client ids) in one process:

- threads: how many threads N sync tools (``AuthSecSecureFetchTool(client_id=...)``,
  one per identity, each called once) add to the process. One runtime serves
  them all, so the answer must be 1 whatever N is;
- memory per identity: what the broker holds per agent once each has its
  token (tracemalloc, in a pass of its own);
- time to first token per identity: a cold ``SyncTokenBroker.token(scope,
  agent=...)``, median and p95 (includes the mock authority signing an RS256
  token and the broker verifying it: the real server signs too);
- cache-hit cost with N identities held: ``await broker.token(scope,
  agent=...)`` and the sync ``cached_token`` fast path for one agent (it must
  not grow with N), and ``await broker.token()`` cycling through all N
  agents (which adds what N agents' state costs the CPU's caches).

For comparison, the same first calls through one broker per identity (what a
tool per client id cost before one broker served many agents), for 1, 10 and
100 identities.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import statistics
import threading
import time
import tracemalloc
import uuid

import anyio
import structlog

os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")

from authsec_crewai.broker import TokenBroker
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.sync import SyncTokenBroker
from authsec_crewai.tools import AuthSecSecureFetchTool, close_shared_brokers
from authsec_crewai.transports.mock import MockTransport

SIZES = (1, 10, 100, 1_000)
BASELINE_SIZES = (1, 10, 100)
SCOPE = "read:metrics"
HITS = 10_000
"""Hits per sample: short samples, many rounds, the best kept (a shared machine
disturbs a long sample almost surely, a short one often not at all)."""
ROUNDS = 40


def identities(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def threads_for_tools(count: int) -> tuple[int, float]:
    """Threads added by ``count`` sync tools, one identity each, each called once."""
    close_shared_brokers()
    gc.collect()
    settings = AuthSecSettings(mode="mock")
    transport = MockTransport()
    before = threading.active_count()
    started = time.perf_counter()
    for client_id in identities(count):
        tool = AuthSecSecureFetchTool(settings=settings, transport=transport, client_id=client_id)
        result = tool._run(endpoint="secure-vault/metrics", scope=SCOPE)
        if not result.startswith('{"status": "ok"'):
            raise RuntimeError(result[:200])
    elapsed = time.perf_counter() - started
    added = threading.active_count() - before
    close_shared_brokers()
    return added, elapsed / count


def first_tokens(count: int) -> list[float]:
    """Cold first-token times (seconds) for ``count`` identities on one sync broker."""
    with SyncTokenBroker(MockTransport()) as broker:
        broker.token(SCOPE, agent=str(uuid.uuid4()))  # verifier and key set: not per identity
        times = []
        for client_id in identities(count):
            started = time.perf_counter()
            broker.token(SCOPE, agent=client_id)
            times.append(time.perf_counter() - started)
    return times


def memory_per_identity(count: int) -> float:
    """Bytes the broker keeps per identity once each holds its token."""
    broker = SyncTokenBroker(MockTransport())
    broker.start()
    broker.token(SCOPE, agent=str(uuid.uuid4()))  # verifier and key set: not per identity
    ids = identities(count)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for client_id in ids:
        broker.token(SCOPE, agent=client_id)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    broker.close()
    return grown / count


async def hit_costs() -> dict[int, tuple[float, float, float]]:
    """ns per cache hit for a broker holding N identities, for every N in SIZES.

    Measured in one process and interleaved (round by round across the N), so
    a noisy machine disturbs every N alike. Per N: ``await broker.token()``
    for one agent, the sync ``cached_token`` fast path for one agent, and
    ``await broker.token()`` cycling through all N agents (which also pays for
    N agents' state no longer fitting in the CPU's caches).
    """
    best: dict[int, list[float]] = {n: [float("inf")] * 3 for n in SIZES}
    async with contextlib.AsyncExitStack() as stack:
        brokers = {}
        for count in SIZES:
            broker = await stack.enter_async_context(TokenBroker(MockTransport()))
            ids = identities(count)
            for client_id in ids:
                await broker.token(SCOPE, agent=client_id)
            brokers[count] = (broker, ids)
        for _ in range(ROUNDS):
            for count, (broker, ids) in brokers.items():
                one = ids[0]
                started = time.perf_counter_ns()
                for _ in range(HITS):
                    await broker.token(SCOPE, agent=one)
                single = (time.perf_counter_ns() - started) / HITS
                started = time.perf_counter_ns()
                for _ in range(HITS):
                    broker.cached_token(SCOPE, agent=one)
                sync = (time.perf_counter_ns() - started) / HITS
                rounds = max(1, HITS // count)
                started = time.perf_counter_ns()
                for _ in range(rounds):
                    for client_id in ids:
                        await broker.token(SCOPE, agent=client_id)
                cycling = (time.perf_counter_ns() - started) / (rounds * count)
                measured = (single, sync, cycling)
                best[count] = [min(a, b) for a, b in zip(best[count], measured, strict=True)]
    return {count: (a, b, c) for count, (a, b, c) in best.items()}


def one_broker_per_identity(count: int) -> tuple[int, float]:
    """The old shape: each identity its own SyncTokenBroker (thread and loop)."""
    gc.collect()
    before = threading.active_count()
    brokers = []
    started = time.perf_counter()
    for client_id in identities(count):
        broker = SyncTokenBroker(MockTransport(), client_id=client_id)
        broker.token(SCOPE)
        brokers.append(broker)
    elapsed = time.perf_counter() - started
    added = threading.active_count() - before
    for broker in brokers:
        broker.close()
    return added, elapsed / count


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    hits = anyio.run(hit_costs)
    rows = []
    for count in SIZES:
        threads, _ = threads_for_tools(count)
        times = sorted(first_tokens(count))
        memory = memory_per_identity(count)
        p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
        rows.append((count, threads, memory / 1024, statistics.median(times), p95, *hits[count]))
    print("Agent identities in one process (mock transport, one broker runtime)")
    print(
        "  identities  threads  KiB/identity  first token ms  "
        "hit ns: async  sync  async, cycling all"
    )
    for count, threads, kib, p50, p95, single, sync, cycling in rows:
        print(
            f"  {count:>10,}  {threads:>7}  {kib:>12.1f}  {p50 * 1000:>5.2f} / {p95 * 1000:<6.2f}"
            f"  {single:>12.0f}  {sync:>4.0f}  {cycling:>18.0f}"
        )
    print("One broker per identity (the shape before), for comparison")
    print("  identities  threads  first token ms (mean)")
    for count in BASELINE_SIZES:
        threads, per_identity = one_broker_per_identity(count)
        print(f"  {count:>10,}  {threads:>7}  {per_identity * 1000:>21.2f}")
    smallest, largest = rows[0], rows[-1]
    print(
        f"  -> a hit with {largest[0]:,} identities costs {largest[5] / smallest[5]:.2f}x "
        f"(async), {largest[6] / smallest[6]:.2f}x (sync) a hit with {smallest[0]:,} "
        "(target: ~1x); first token columns: p50 / p95"
    )


if __name__ == "__main__":
    main()
