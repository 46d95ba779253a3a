"""One TokenBroker, many agent identities: each agent its own cache, flights and failures."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import anyio
import anyio.lowlevel
import httpx
import pytest
from _server import LoopbackServer, MockServer
from brokerkit import NO_JITTER, FakeClock, HeldTransport, mock, settle
from joserfc.jwk import RSAKey
from structlog.testing import capture_logs

from authsec_crewai import DelegationToken, SyncTokenBroker, TokenBroker, errors
from authsec_crewai.testing import TOKEN_PATH, MockAuthority, MockFaults, create_app
from authsec_crewai.transports import LiveTransport

pytestmark = pytest.mark.anyio

SCOPE = "read:records"
ADMIN_AGENTS = "/authsec/uflow/admin/agents"  # the contract's administration paths
# A 1000 s token with NO_JITTER: advisory from 800 s, mandatory from 950 s.
IN_ADVISORY, IN_MANDATORY = 850.0, 960.0


def new_agent() -> str:
    return str(uuid.uuid4())


def many_agents(
    transport: object, clock: FakeClock, *, client_id: str | None = None
) -> TokenBroker:
    return TokenBroker(
        transport,  # type: ignore[arg-type]
        client_id=client_id,
        policy=NO_JITTER,
        clock=clock,
        monotonic=clock.monotonic,
    )


# --- the API ---------------------------------------------------------------------------------


async def test_each_agent_gets_its_own_token_through_either_api(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    other = new_agent()
    async with many_agents(transport, clock, client_id=client_id) as broker:
        mine = await broker.token(SCOPE)  # the default agent, as before
        theirs = await broker.token(SCOPE, agent=other)
        assert (mine.client_id, theirs.client_id) == (client_id, other)
        assert mine.value != theirs.value
        view = broker.agent(other)
        assert view.client_id == other
        assert await view.token(SCOPE) is theirs
        assert view.cached_token(SCOPE) is theirs
        assert await broker.agent(client_id).token(SCOPE) is mine
        assert transport.calls == 2
        assert set(broker.agent_ids) == {client_id, other}


async def test_a_broker_without_a_default_agent_serves_named_ones() -> None:
    clock = FakeClock()
    transport = mock(clock)
    agent = new_agent()
    async with many_agents(transport, clock) as broker:
        with pytest.raises(errors.ConfigurationError, match="no default agent"):
            await broker.token(SCOPE)
        with pytest.raises(errors.ConfigurationError, match="no default agent"):
            broker.cached_token(SCOPE)
        token = await broker.token(SCOPE, agent=agent)
        assert token.client_id == agent
    assert transport.calls == 1


@pytest.mark.parametrize("bad", ["", "agent-7", "1234", "../etc", "x" * 500])
async def test_agent_ids_that_are_not_uuids_are_refused_before_any_fetch(bad: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with many_agents(transport, clock) as broker:
        with pytest.raises(errors.ConfigurationError, match="client_id") as info:
            await broker.token(SCOPE, agent=bad)
        assert len(str(info.value)) < 200
        with pytest.raises(errors.ConfigurationError, match="client_id"):
            broker.agent(bad)
        with pytest.raises(errors.ConfigurationError, match="client_id"):
            broker.stats_for(bad)
        assert broker.agent_ids == ()
    with pytest.raises(errors.ConfigurationError, match="client_id"):
        TokenBroker(transport, client_id=bad)
    assert transport.calls == 0


# --- isolation -------------------------------------------------------------------------------


async def test_single_flight_is_per_agent(client_id: str) -> None:
    clock = FakeClock()
    held = HeldTransport(mock(clock))
    held.arm()
    agents = [new_agent() for _ in range(20)]
    got: dict[str, list[DelegationToken]] = {agent: [] for agent in agents}

    async def call(agent: str) -> None:
        got[agent].append(await broker.agent(agent).token(SCOPE))

    async with many_agents(held, clock) as broker:
        async with anyio.create_task_group() as tg:
            for _ in range(30):
                for agent in agents:
                    tg.start_soon(call, agent)
            await held.started.wait()
            await settle()
            held.release()
        assert held.calls == 20
        for agent in agents:
            assert len(got[agent]) == 30
            assert {t.value for t in got[agent]} == {got[agent][0].value}
            assert got[agent][0].client_id == agent
            stats = broker.stats_for(agent)
            assert (stats.fetches, stats.misses, stats.coalesced) == (1, 30, 29)
        total = broker.stats
        assert (total.fetches, total.misses, total.coalesced) == (20, 600, 580)


async def test_a_terminal_answer_drops_one_agents_tokens_and_never_anothers() -> None:
    clock = FakeClock()
    transport = mock(clock)
    a, b = new_agent(), new_agent()
    async with many_agents(transport, clock) as broker:
        await broker.token(SCOPE, agent=a)
        clock.advance(500)
        b_token = await broker.token(SCOPE, agent=b)  # B's token is 500 s younger
        transport.authority.revoke(a)
        clock.advance(IN_MANDATORY - 500)  # A must refresh; B is FRESH
        with pytest.raises(errors.NotDelegatedError):
            await broker.token(SCOPE, agent=a)
        assert broker.cached_token(SCOPE, agent=a) is None
        assert broker.stats_for(a).cached == 0
        assert await broker.token(SCOPE, agent=b) is b_token
        assert broker.cached_token(SCOPE, agent=b) is b_token
        assert transport.calls == 3
        with pytest.raises(errors.NotDelegatedError):  # fails closed, from memory
            await broker.token("read:metrics", agent=a)
        assert transport.calls == 3


async def test_one_agents_failure_memory_never_delays_another() -> None:
    clock = FakeClock()
    transport = mock(clock)
    a, b = new_agent(), new_agent()
    async with many_agents(transport, clock) as broker:
        transport.fail_next(1, 503)
        with pytest.raises(errors.ServerError):
            await broker.token(SCOPE, agent=a)
        token = await broker.token(SCOPE, agent=b)  # at once: A's memory is A's
        assert token.client_id == b
        with pytest.raises(errors.ServerError):
            await broker.token(SCOPE, agent=a)  # A is still inside its memory
        assert transport.calls == 2
        assert (broker.stats_for(a).failures, broker.stats_for(b).failures) == (1, 0)


async def test_what_one_delegation_grants_never_refuses_another() -> None:
    clock = FakeClock()
    transport = mock(clock)
    reader, writer = new_agent(), new_agent()
    transport.authority.delegate(reader, permissions=["read:records"])
    transport.authority.delegate(writer, permissions=["read:records", "write:records"])
    async with many_agents(transport, clock) as broker:
        await broker.token(SCOPE, agent=reader)
        with pytest.raises(errors.ScopeNotGrantedError):
            await broker.token("write:records", agent=reader)
        granted = await broker.token("write:records", agent=writer)
        assert granted.client_id == writer
        for i in range(100):
            with pytest.raises(errors.ScopeNotGrantedError):
                await broker.token(f"made:up{i}", agent=writer)
        assert transport.calls == 2
        assert broker.stats_for(writer).refused == 100
        assert broker.stats_for(reader).refused == 1


async def test_invalidating_through_a_view_touches_only_that_agent() -> None:
    clock = FakeClock()
    transport = mock(clock)
    a, b = new_agent(), new_agent()
    async with many_agents(transport, clock) as broker:
        a_token = await broker.token(SCOPE, agent=a)
        b_token = await broker.token(SCOPE, agent=b)
        assert broker.agent(b).invalidate(a_token) is False
        assert broker.agent(a).invalidate(a_token) is True
        assert broker.cached_token(SCOPE, agent=b) is b_token
        assert broker.invalidate(b_token) is True  # the broker finds any agent's token
        assert broker.cached_token(SCOPE, agent=b) is None


async def test_every_broker_event_names_its_agent_and_never_the_token() -> None:
    clock = FakeClock()
    transport = mock(clock)
    a, b = new_agent(), new_agent()
    with capture_logs() as logs:
        async with many_agents(transport, clock) as broker:
            tokens = [await broker.token(SCOPE, agent=agent) for agent in (a, b)]
            with pytest.raises(errors.ScopeNotGrantedError):
                await broker.token("made:up", agent=a)
            clock.advance(IN_ADVISORY)
            transport.fail_next(1, 500)
            await broker.token(SCOPE, agent=a)
            await settle()
            broker.agent(b).invalidate(tokens[1])
            transport.authority.revoke(a)
            clock.advance(IN_MANDATORY - IN_ADVISORY)
            with pytest.raises(errors.NotDelegatedError):
                await broker.token(SCOPE, agent=a)
    events = [line for line in logs if str(line["event"]).startswith("token.")]
    assert {e["event"] for e in events} >= {
        "token.issued",
        "token.refresh.start",
        "token.refresh.failed",
        "token.invalidated",
        "token.cache_hit",
        "token.refused",
    }
    assert all(e.get("client_id") in {a, b} for e in events), events
    flat = repr(logs)
    for token in tokens:
        assert token.value not in flat and token.value.split(".")[2] not in flat


def test_a_sync_broker_serves_agents_from_many_threads() -> None:
    transport = mock(time.time, latency=0.05)
    agents = [new_agent() for _ in range(8)]
    got: dict[str, list[DelegationToken]] = {agent: [] for agent in agents}
    lock = threading.Lock()
    barrier = threading.Barrier(32)
    with SyncTokenBroker(transport) as broker:

        def call(agent: str, via_view: bool) -> None:
            barrier.wait()
            if via_view:
                token = broker.agent(agent).token(SCOPE)
            else:
                token = broker.token(SCOPE, agent=agent)
            with lock:
                got[agent].append(token)

        threads = [
            threading.Thread(target=call, args=(agents[i % 8], i % 2 == 0)) for i in range(32)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
            assert not thread.is_alive()
        assert transport.calls == 8
        assert broker.agent(agents[0]).stats.fetches == 1
        assert broker.stats_for(agents[1]).fetches == 1
        assert broker.stats.fetches == 8
        view = broker.agent(agents[2])
        token = view.cached_token(SCOPE)
        assert token is not None and view.invalidate(token) is True
    for agent in agents:
        assert len(got[agent]) == 4 and {t.client_id for t in got[agent]} == {agent}


# --- against a real server (uvicorn on loopback, LiveTransport) --------------------------------


async def test_200_agents_x_50_cold_callers_make_one_request_per_agent(
    authsec_server: MockServer,
) -> None:
    agents = [new_agent() for _ in range(200)]
    got: dict[str, list[DelegationToken]] = {agent: [] for agent in agents}

    async def call(agent: str, via_view: bool) -> None:
        if via_view:
            token = await broker.agent(agent).token(SCOPE)
        else:
            token = await broker.token(SCOPE, agent=agent)
        got[agent].append(token)

    async with TokenBroker(LiveTransport(authsec_server.url)) as broker:
        async with anyio.create_task_group() as tg:
            for caller in range(50):
                for agent in agents:
                    tg.start_soon(call, agent, caller % 2 == 0)
        stats = broker.stats
    asked = Counter(
        r.query.get("client_id") for r in authsec_server.requests if r.path == TOKEN_PATH
    )
    assert asked == dict.fromkeys(agents, 1)
    for agent in agents:
        assert len(got[agent]) == 50
        assert {t.value for t in got[agent]} == {got[agent][0].value}
        assert got[agent][0].client_id == agent
    assert (stats.fetches, stats.misses, stats.coalesced) == (200, 10_000, 9_800)


async def test_a_revoked_agent_fails_closed_at_once_while_another_keeps_working(
    loopback_server: LoopbackServer, rsa_key: RSAKey
) -> None:
    clock = FakeClock()
    authority = MockAuthority(key=rsa_key, clock=clock, ttl_seconds=1000)
    app = create_app(authority, faults=MockFaults())
    loopback_server.app = app
    a, b = new_agent(), new_agent()
    served_b = 0
    refused_b: list[BaseException] = []

    def asked(agent: str) -> int:
        return sum(
            1
            for r in app.state.requests
            if r.path == TOKEN_PATH and r.query.get("client_id") == agent
        )

    b_target, b_reached = 0, anyio.Event()

    async def keep_b_working(stop: anyio.Event) -> None:
        nonlocal served_b
        while not stop.is_set():
            try:
                token = await broker.token(SCOPE, agent=b)
                assert token.client_id == b
                served_b += 1
            except BaseException as exc:
                refused_b.append(exc)
                raise
            if b_target and served_b >= b_target:
                b_reached.set()
            await anyio.lowlevel.checkpoint()

    try:
        transport = LiveTransport(loopback_server.url, clock=clock)
        async with many_agents(transport, clock) as broker:
            agent_a = broker.agent(a)
            await agent_a.token(SCOPE)
            await broker.token(SCOPE, agent=b)
            b_misses = broker.stats_for(b).misses
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(keep_b_working, stop)
                await anyio.sleep(0.05)
                async with httpx.AsyncClient(base_url=loopback_server.url) as admin:
                    answer = await admin.post(f"{ADMIN_AGENTS}/{a}/revoke-token")
                assert answer.status_code == 200 and answer.json()["status"] == "revoked"
                clock.advance(IN_ADVISORY)  # both tokens are refreshed in the background now
                with anyio.fail_after(10):  # a guard against a hang, not a speed limit
                    while True:
                        try:
                            await agent_a.token(SCOPE)  # still valid: served until the 404 lands
                        except errors.NotDelegatedError:
                            break
                        await anyio.sleep(0.005)
                a_asked = asked(a)
                for _ in range(100):  # fails closed at once: no wait, no server call
                    with pytest.raises(errors.NotDelegatedError):
                        await agent_a.token(SCOPE)
                assert agent_a.cached_token(SCOPE) is None
                b_target = served_b + 200  # and B keeps being served after it
                with anyio.fail_after(10):
                    await b_reached.wait()
                    while asked(b) < 2:  # noqa: ASYNC110  # B's background refresh lands
                        await anyio.sleep(0.005)
                stop.set()
            assert asked(a) == a_asked == 2
            assert agent_a.stats.cached == 0 and agent_a.stats.failures == 1
            b_stats = broker.stats_for(b)
            assert b_stats.misses == b_misses  # B never waited for a fetch
            assert b_stats.failures == 0 and b_stats.cached == 1
            assert broker.cached_token(SCOPE, agent=b) is not None
    finally:
        loopback_server.app = None
    assert refused_b == []
    assert served_b > 200
    assert asked(b) == 2  # its first fetch and its one background refresh
