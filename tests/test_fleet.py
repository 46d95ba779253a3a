"""A fleet of real processes sharing one store, asking a real server on 127.0.0.1.

Each worker (fleet_worker.py) is its own Python process with its own broker,
built from AUTHSEC_* settings exactly as an application would; half the fleet
runs on asyncio and half on trio, so one fleet proves both backends and that
they interoperate. Requests are counted where they arrive: at the mock AuthSec
server (uvicorn, in this test process).
"""

from __future__ import annotations

import base64
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from _redis import RedisServer
from fleetkit import Worker, mixed, start_fleet, stop_fleet
from joserfc.jwk import RSAKey

from authsec_crewai.testing import (
    TOKEN_PATH,
    Fault,
    LoopbackServer,
    MockAuthority,
    MockFaults,
    create_app,
)

KEY_TEXT = base64.urlsafe_b64encode(os.urandom(32)).decode()


@dataclass
class Server:
    url: str
    faults: MockFaults
    counts: Callable[[], int]


@pytest.fixture
def make_server(
    loopback_server: LoopbackServer, rsa_key: RSAKey
) -> Iterator[Callable[..., Server]]:
    def make(ttl: float = 1800) -> Server:
        faults = MockFaults()
        app = create_app(MockAuthority(key=rsa_key, ttl_seconds=ttl), faults=faults)
        loopback_server.app = app
        return Server(loopback_server.url, faults, lambda: int(app.state.counts[TOKEN_PATH]))

    yield make
    loopback_server.app = None


@dataclass
class Store:
    kind: str
    url: str
    redis: RedisServer | None = None


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        return Store("sqlite", f"sqlite:///{tmp_path / 'tokens.db'}")
    redis: RedisServer = request.getfixturevalue("redis_server")
    return Store("redis", redis.url, redis)


@pytest.fixture
def fleet() -> Iterator[Callable[..., list[Worker]]]:
    started: list[Worker] = []

    def start(count: int, server: Server, store: Store, **extra: str) -> list[Worker]:
        env = {
            "AUTHSEC_MODE": "live",
            "AUTHSEC_BASE_URL": server.url,
            "AUTHSEC_CLIENT_ID": extra.pop("client_id", None) or str(uuid.uuid4()),
            "AUTHSEC_STORE": store.url,
            "AUTHSEC_STORE_KEY": KEY_TEXT,
            **extra,
        }
        workers = start_fleet(mixed(count), env)
        started.extend(workers)
        return workers

    yield start
    stop_fleet(started, graceful=False)  # what was tested has been tested: no need to wait


def herd_all(
    workers: list[Worker], n: int, scope: str = "read:records", agent: str | None = None
) -> list[dict[str, Any]]:
    for worker in workers:
        worker.send(op="herd", n=n, scope=scope, agent=agent)
    return [worker.answer() for worker in workers]


def node_contents(port: int) -> dict[bytes, bytes]:
    """Every string key and value one Redis node holds: what an attacker reading it sees."""

    async def read() -> dict[bytes, bytes]:
        import coredis

        out: dict[bytes, bytes] = {}
        async with coredis.Redis("127.0.0.1", port) as node:
            async for name in node.scan_iter(match="*"):
                if await node.type(name) in ("string", b"string"):
                    value = await node.get(name)
                    if value is not None:
                        out[name] = value
        return out

    return anyio.run(read)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_cold_fleet_asks_once(make_server: Callable[..., Server], store: Store, fleet) -> None:
    server = make_server()
    workers = fleet(8, server, store)
    answers = herd_all(workers, 200)
    assert [a["served"] for a in answers] == [200] * 8, [w.stderr() for w in workers]
    assert sum(a["error_count"] for a in answers) == 0
    assert len({fp for a in answers for fp in a["fingerprints"]}) == 1
    assert server.counts() == 1
    stats = [a["stats"] for a in answers]
    assert sum(s["fetches"] for s in stats) == 1
    assert sum(s["store_hits"] for s in stats) == 7


def test_an_advisory_window_is_refreshed_once_for_the_fleet(
    make_server: Callable[..., Server], store: Store, fleet
) -> None:
    # A 6 s token: ADVISORY for its last ~3 s (with jitter), MANDATORY for its last 0.3 s.
    # backoff_initial=10 keeps a re-confirmed token from being re-checked in the window.
    server = make_server(ttl=6)
    workers = fleet(
        3,
        server,
        store,
        AUTHSEC_REFRESH_ADVISORY_FRACTION="0.5",
        AUTHSEC_BACKOFF_INITIAL="10",
    )
    herd_all(workers, 20)
    assert server.counts() == 1
    for worker in workers:
        worker.send(op="poll", seconds=10, every=0.02, before_exp=0.1)  # through MANDATORY
    answers = [worker.answer() for worker in workers]
    assert all(not a["errors"] for a in answers), answers
    stats = [a["stats"] for a in answers]
    assert sum(s["background_refreshes"] for s in stats) >= 3
    assert server.counts() - 1 <= 1  # at most one refresh at the server for the whole fleet


def test_a_killed_lease_holder_is_replaced(
    make_server: Callable[..., Server], store: Store, fleet
) -> None:
    lease = 1.5
    server = make_server()
    server.faults.add(Fault.slow(5.0))  # the first fetch hangs at the server
    holder, *others = fleet(3, server, store, AUTHSEC_STORE_LEASE=str(lease))
    holder.send(op="herd", n=10)
    wait_for(lambda: server.counts() == 1)  # the holder is mid-fetch, lease taken
    started = time.time()
    for worker in others:
        worker.send(op="herd", n=100)
    time.sleep(0.2)
    holder.kill()
    answers = [worker.answer() for worker in others]
    assert [a["served"] for a in answers] == [100, 100], [w.stderr() for w in others]
    assert server.counts() == 2  # one more request: the new holder's
    slowest = max(float(a["done_at"]) for a in answers) - started
    assert slowest < lease + 3.0  # the lease, one fetch, and a noisy machine's slack
    assert sum(a["stats"]["lease_waits"] for a in answers) >= 1


def test_a_revocation_reaches_every_process(
    make_server: Callable[..., Server], store: Store, fleet
) -> None:
    bound = 0.1 if store.kind == "redis" else 1.0
    server = make_server()
    revoker, *others = fleet(3, server, store)
    herd_all([revoker, *others], 10)
    assert server.counts() == 1
    for worker in others:
        worker.send(op="watch")
    time.sleep(0.3)
    revoked = revoker.ask(op="invalidate")
    assert revoked["dropped"] is True
    delays = [float(w.answer(timeout=10)["dropped_at"]) - float(revoked["at"]) for w in others]
    assert max(delays) < bound, delays
    herd_all([revoker, *others], 10)
    assert server.counts() == 2  # the shared entry went too; the fleet refetched once


def test_redis_stopping_and_starting_is_not_an_outage(
    make_server: Callable[..., Server], redis_server: RedisServer, fleet
) -> None:
    server = make_server()
    store = Store("redis", redis_server.url, redis_server)
    workers = fleet(3, server, store, AUTHSEC_STORE_TIMEOUT="0.2")
    redis_server.stop()
    down = herd_all(workers, 100)
    assert [a["served"] for a in down] == [100] * 3, [w.stderr() for w in workers]
    assert sum(a["error_count"] for a in down) == 0
    assert server.counts() <= 3  # at most one request per process while the store is down
    assert all(a["stats"]["store_errors"] >= 1 for a in down)
    redis_server.start()
    time.sleep(2.5)  # the store's back-off and the listeners' reconnect
    requests_before = server.counts()
    revoker, *others = workers
    for worker in others:
        worker.send(op="watch")
    assert revoker.ask(op="invalidate")["dropped"] is True
    for worker in others:
        worker.answer(timeout=10)  # revocations travel again
    again = herd_all(workers, 100)
    assert [a["served"] for a in again] == [100] * 3
    assert server.counts() == requests_before + 1  # sharing resumed
    for worker in workers:
        logged = worker.stderr()
        assert logged.count("store.unavailable") == 1  # one warning per outage
        assert logged.count("store.recovered") == 1


def test_clock_skewed_workers_share_hold_leases_and_honour_revocations(
    make_server: Callable[..., Server], store: Store, fleet
) -> None:
    """One worker 60 s ahead, one 30 s behind: one clock (the store's) for all."""
    server = make_server()
    server.faults.add(Fault.slow(1.5))  # the first fetch is slow: its lease is held meanwhile
    agent, leeway = str(uuid.uuid4()), {"AUTHSEC_VERIFY_LEEWAY": "120"}
    (normal,) = fleet(1, server, store, client_id=agent, **leeway)
    (ahead,) = fleet(1, server, store, client_id=agent, FLEET_CLOCK_SKEW="60", **leeway)
    (behind,) = fleet(1, server, store, client_id=agent, FLEET_CLOCK_SKEW="-30", **leeway)
    normal.send(op="herd", n=10)
    wait_for(lambda: server.counts() == 1)  # the normal worker holds the lease, mid-fetch
    answers = [*herd_all([ahead, behind], 50), normal.answer()]
    logs = [w.stderr()[-2000:] for w in (ahead, behind, normal)]
    assert [a["served"] for a in answers] == [50, 50, 10], logs
    assert server.counts() == 1, logs  # nobody took over the lease its holder still held
    assert len({fp for a in answers for fp in a["fingerprints"]}) == 1
    for worker in (normal, ahead):
        worker.send(op="watch")
    time.sleep(0.3)
    assert behind.ask(op="invalidate")["dropped"] is True  # revoked by the one behind
    for worker in (normal, ahead):
        worker.answer(timeout=10)
    again = herd_all([ahead, normal, behind], 20)
    assert [a["served"] for a in again] == [20] * 3
    assert server.counts() == 2  # the revoked entry was void for everyone: one refetch


def test_a_cold_fleet_on_a_redis_cluster_asks_once_and_hears_revocations(
    make_server: Callable[..., Server], redis_cluster: Any, fleet
) -> None:
    """8 processes x 200 tasks on a 3-master Cluster: one request, one token fleet-wide,
    nothing readable on any node, a revocation in every process within 100 ms."""
    server = make_server()
    workers = fleet(8, server, Store("cluster", redis_cluster.url))
    answers = herd_all(workers, 200)
    assert [a["served"] for a in answers] == [200] * 8, [w.stderr() for w in workers]
    assert sum(a["error_count"] for a in answers) == 0
    assert len({fp for a in answers for fp in a["fingerprints"]}) == 1
    assert server.counts() == 1
    assert all(a["stats"]["store_errors"] == 0 for a in answers)
    assert "ClusterCrossSlotError" not in "".join(w.stderr() for w in workers)
    nodes = [node_contents(node.port) for node in redis_cluster.nodes]
    assert sum(len(found) for found in nodes) >= 3  # entry, latest, key check
    client_id = workers[0].ask(op="token")["client_id"]
    token_value = workers[0].ask(op="token")["value"]
    for found in nodes:
        for secret in (token_value, *token_value.split(".")[1:], client_id):
            assert all(secret.encode() not in k + v for k, v in found.items())
    revoker, *others = workers
    for worker in others:
        worker.send(op="watch")
    time.sleep(0.5)
    revoked = revoker.ask(op="invalidate")
    assert revoked["dropped"] is True
    delays = [float(w.answer(timeout=10)["dropped_at"]) - float(revoked["at"]) for w in others]
    assert max(delays) < 0.1, delays


def test_a_sentinel_failover_mid_run_is_not_an_outage(
    make_server: Callable[..., Server], redis_sentinel: Any, fleet
) -> None:
    """Master, replica and Sentinel: a cold fleet asks once; SENTINEL FAILOVER while
    the fleet works costs no caller an error; sharing resumes on the new master."""
    server = make_server()
    workers = fleet(4, server, Store("sentinel", redis_sentinel.url), AUTHSEC_STORE_TIMEOUT="1")
    answers = herd_all(workers, 200)
    assert [a["served"] for a in answers] == [200] * 4, [w.stderr() for w in workers]
    assert server.counts() == 1
    during = str(uuid.uuid4())
    failover = threading.Thread(target=redis_sentinel.failover)
    failover.start()
    mid = herd_all(workers, 200, agent=during)  # a cold key while the master changes
    failover.join(timeout=60)
    assert [a["served"] for a in mid] == [200] * 4, [w.stderr() for w in workers]
    assert sum(a["error_count"] for a in mid) == 0
    asked_during = server.counts() - 1
    assert 1 <= asked_during <= len(workers)
    resumed = False
    deadline = time.monotonic() + 20
    while not resumed and time.monotonic() < deadline:  # store back-offs run out
        before = server.counts()
        again = herd_all(workers, 50, agent=str(uuid.uuid4()))
        assert sum(a["error_count"] for a in again) == 0
        resumed = server.counts() == before + 1
        time.sleep(0.5)
    assert resumed, [w.stderr()[-2000:] for w in workers]
