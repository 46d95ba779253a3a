"""Redis beyond one node: a real 3-master Cluster and a master, replica and Sentinel.

In-process brokers (each its own store, as a process would have) on real
servers started by fixtures on 127.0.0.1; the fleets of real processes are in
test_fleet.py. Every test runs under asyncio and trio.
"""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

import anyio
import pytest
from _redis import RedisClusterServers, RedisSentinelServers
from brokerkit import SIGNING_KEY

from authsec_crewai.broker import TokenBroker
from authsec_crewai.testing import MockAuthority
from authsec_crewai.transports.mock import MockTransport

pytestmark = pytest.mark.anyio

KEY = os.urandom(32)
SCOPE = "read:records"


def redis_store(url: str, **options: Any) -> Any:
    from authsec_crewai.stores.redis import RedisStore

    return RedisStore(url, keys=[KEY], **options)


def broker_on(transport: MockTransport, client_id: str, store: Any) -> TokenBroker:
    return TokenBroker(transport, client_id=client_id, store=store, close_transport=False)


async def node_items(port: int) -> dict[bytes, bytes]:
    """Every key and value one node holds (what an attacker reading it sees)."""
    import coredis

    out: dict[bytes, bytes] = {}
    async with coredis.Redis("127.0.0.1", port) as node:
        async for name in node.scan_iter(match="*"):
            kind = await node.type(name)
            if kind in ("string", b"string"):
                value = await node.get(name)
                if value is not None:
                    out[name] = value
    return out


async def test_brokers_on_a_cluster_share_revoke_and_leave_nothing_readable(
    redis_cluster: RedisClusterServers,
) -> None:
    authority = MockAuthority(key=SIGNING_KEY)
    transport = MockTransport(authority=authority)
    agents = [str(uuid.uuid4()) for _ in range(6)]  # their names spread over the slots
    async with (
        TokenBroker(transport, store=redis_store(redis_cluster.url), close_transport=False) as a,
        TokenBroker(transport, store=redis_store(redis_cluster.url), close_transport=False) as b,
    ):
        await anyio.sleep(0.3)  # both listeners subscribed
        tokens = {agent: await a.token(SCOPE, agent) for agent in agents}
        for agent in agents:
            assert (await b.token(SCOPE, agent)).value == tokens[agent].value
        assert transport.calls == len(agents)
        assert b.stats.store_hits == len(agents)
        assert a.stats.store_errors == b.stats.store_errors == 0
        found: dict[bytes, bytes] = {}
        for node in redis_cluster.nodes:
            found.update(await node_items(node.port))
        assert a.invalidate(tokens[agents[0]])
        with anyio.fail_after(2):
            while b.agent(agents[0]).cached_token(SCOPE) is not None:  # noqa: ASYNC110
                await anyio.sleep(0.005)
        assert b.agent(agents[1]).cached_token(SCOPE) is not None
    assert len(found) >= 2 * len(agents)
    for agent, token in tokens.items():
        _, payload, signature = token.value.split(".")
        for secret in (token.value, payload, signature, agent, SCOPE, str(token.jti)):
            for name, value in found.items():
                assert secret.encode() not in name
                assert secret.encode() not in value
                assert base64.b64encode(secret.encode()) not in value


async def test_a_sentinel_master_is_found_and_found_again_after_a_failover(
    redis_sentinel: RedisSentinelServers, client_id: str
) -> None:
    authority = MockAuthority(key=SIGNING_KEY)
    transport = MockTransport(authority=authority)
    url = redis_sentinel.url
    async with (
        broker_on(transport, client_id, redis_store(url, timeout=1.0)) as first,
        broker_on(transport, client_id, redis_store(url, timeout=1.0)) as second,
    ):
        await anyio.sleep(0.3)
        token = await first.token(SCOPE)
        assert (await second.token(SCOPE)).value == token.value
        await anyio.to_thread.run_sync(redis_sentinel.failover)
        shared = False
        with anyio.fail_after(30):
            while not shared:  # the store may be out for a moment: never a caller's error
                other = str(uuid.uuid4())
                await first.token(SCOPE, other)
                await second.token(SCOPE, other)
                shared = second.stats_for(other).fetches == 0  # served by the new master
                await anyio.sleep(0.2)
        assert first.invalidate(token)  # and the listener follows the new master
        with anyio.fail_after(5):
            while second.cached_token(SCOPE) is not None:  # noqa: ASYNC110
                await anyio.sleep(0.01)
