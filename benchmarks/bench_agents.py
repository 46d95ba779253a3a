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
- cache-hit cost: ``await broker.token(scope, agent=...)``, and the sync
  ``cached_token`` fast path, cycling through every identity. It must not
  grow with N.

For comparison, the same first calls through one broker per identity (what a
tool per client id cost before one broker served many agents), for 1, 10 and
100 identities.
"""

from __future__ import annotations

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
HITS = 100_000


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


def first_tokens(count: int) -> tuple[list[float], SyncTokenBroker, list[str]]:
    """Cold first-token times (seconds) for ``count`` identities on one sync broker."""
    broker = SyncTokenBroker(MockTransport())
    broker.start()
    ids = identities(count)
    times = []
    for client_id in ids:
        started = time.perf_counter()
        broker.token(SCOPE, agent=client_id)
        times.append(time.perf_counter() - started)
    return times, broker, ids


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


def sync_hit_ns(broker: SyncTokenBroker, ids: list[str]) -> float:
    """ns per cache hit on the sync fast path (``cached_token``), cycling identities."""
    rounds = max(1, HITS // len(ids))

    def hits() -> float:
        started = time.perf_counter_ns()
        for _ in range(rounds):
            for client_id in ids:
                if broker.cached_token(SCOPE, agent=client_id) is None:
                    raise RuntimeError("a cached token was not served")
        return (time.perf_counter_ns() - started) / (rounds * len(ids))

    return min(hits() for _ in range(5))


async def async_hit_ns(count: int) -> float:
    """ns per ``await broker.token(scope, agent=...)`` hit, cycling ``count`` identities."""
    ids = identities(count)
    rounds = max(1, HITS // count)
    async with TokenBroker(MockTransport()) as broker:
        for client_id in ids:
            await broker.token(SCOPE, agent=client_id)
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter_ns()
            for _ in range(rounds):
                for client_id in ids:
                    await broker.token(SCOPE, agent=client_id)
            best = min(best, (time.perf_counter_ns() - started) / (rounds * count))
    return best


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
    rows = []
    for count in SIZES:
        threads, _ = threads_for_tools(count)
        times, broker, ids = first_tokens(count)
        try:
            sync_ns = sync_hit_ns(broker, ids)
        finally:
            broker.close()
        async_ns = anyio.run(async_hit_ns, count)
        memory = memory_per_identity(count)
        ordered = sorted(times)
        rows.append(
            (
                count,
                threads,
                memory / 1024,
                statistics.median(times) * 1000,
                ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000,
                async_ns,
                sync_ns,
            )
        )
    print("Agent identities in one process (mock transport, one broker runtime)")
    print(
        "  identities  threads  KiB/identity  first token ms (p50 / p95)  hit ns async  hit ns sync"
    )
    for count, threads, kib, p50, p95, async_ns, sync_ns in rows:
        print(
            f"  {count:>10,}  {threads:>7}  {kib:>12.1f}  {p50:>14.2f} / {p95:<8.2f}"
            f"  {async_ns:>12.0f}  {sync_ns:>11.0f}"
        )
    print("One broker per identity (the shape before), for comparison")
    print("  identities  threads  first token ms (mean)")
    for count in BASELINE_SIZES:
        threads, per_identity = one_broker_per_identity(count)
        print(f"  {count:>10,}  {threads:>7}  {per_identity * 1000:>21.2f}")
    smallest, largest = rows[0], rows[-1]
    print(
        f"  -> hit cost at {largest[0]:,} identities = {largest[5] / smallest[5]:.2f}x (async), "
        f"{largest[6] / smallest[6]:.2f}x (sync) the cost at {smallest[0]:,} (target: ~1x)"
    )


if __name__ == "__main__":
    main()
