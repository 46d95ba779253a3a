"""TokenBroker behaviour under asyncio and trio: single flight, zones, failures."""

from __future__ import annotations

import gc
import logging
import random
import tracemalloc

import anyio
import pytest
import structlog
from brokerkit import NO_JITTER, SIGNING_KEY, FakeClock, HeldTransport, broker, mock, settle
from structlog.testing import capture_logs

import authsec_crewai.broker as broker_module
from authsec_crewai import errors
from authsec_crewai.broker import RefreshPolicy, TokenBroker
from authsec_crewai.testing import MockAuthority
from authsec_crewai.token import DelegationToken
from authsec_crewai.transports import MockTransport

pytestmark = pytest.mark.anyio

# A 1000 s token with NO_JITTER: advisory from 800 s, mandatory from 950 s.
IN_FRESH, IN_ADVISORY, IN_MANDATORY, PAST_EXPIRY = 100.0, 850.0, 960.0, 1001.0


async def test_cold_herd_of_10000_makes_one_fetch(client_id: str) -> None:
    clock = FakeClock()
    held = HeldTransport(mock(clock))
    held.arm()
    results: list[DelegationToken] = []

    async def call() -> None:
        results.append(await b.token("read:records"))

    async with broker(held, client_id, clock) as b, anyio.create_task_group() as tg:
        for _ in range(10_000):
            tg.start_soon(call)
        await held.started.wait()
        await settle()
        held.release()
    assert held.calls == 1
    assert len(results) == 10_000
    assert len({t.value for t in results}) == 1
    stats = b.stats
    assert (stats.fetches, stats.misses, stats.coalesced) == (1, 10_000, 9_999)


async def test_cancelled_leader_does_not_cancel_the_shared_fetch(client_id: str) -> None:
    clock = FakeClock()
    held = HeldTransport(mock(clock))
    held.arm()
    results: list[DelegationToken] = []
    leader_scope = anyio.CancelScope()

    async def leader() -> None:
        with leader_scope:
            await b.token("read:records")
        results.append(None)  # type: ignore[arg-type]  # reached only if not cancelled

    async def follower() -> None:
        results.append(await b.token("read:records"))

    async with broker(held, client_id, clock) as b:
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader)
            await held.started.wait()
            for _ in range(999):
                tg.start_soon(follower)
            await settle()
            leader_scope.cancel()
            await settle()
            held.release()
        assert held.calls == 1
        assert leader_scope.cancelled_caught
        assert len(results) == 1000  # the leader appended its None after being cancelled
        tokens = [t for t in results if t is not None]
        assert len(tokens) == 999 and len({t.value for t in tokens}) == 1


async def test_every_waiter_cancelled_still_caches_the_token(client_id: str) -> None:
    clock = FakeClock()
    held = HeldTransport(mock(clock))
    held.arm()
    async with broker(held, client_id, clock) as b:
        with anyio.move_on_after(0.05) as scope:
            async with anyio.create_task_group() as tg:
                for _ in range(100):
                    tg.start_soon(b.token, "read:records")
        assert scope.cancelled_caught
        held.release()
        await settle()
        await b.token("read:records")
        assert held.calls == 1
        assert b.stats.hits == 1


async def test_waiters_on_a_failing_fetch_share_one_error_and_memory(client_id: str) -> None:
    clock = FakeClock()
    inner = mock(clock)
    held = HeldTransport(inner)
    held.arm()
    inner.fail_next(1, 500)
    caught: list[BaseException] = []

    async def call() -> None:
        try:
            await b.token("read:records")
        except errors.ServerError as exc:
            caught.append(exc)

    async with broker(held, client_id, clock) as b:
        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(call)
            await held.started.wait()
            await settle()
            held.release()
        assert len(caught) == 1000
        assert len({id(exc) for exc in caught}) == 1
        assert held.calls == 1
        # Within the failure memory the herd is answered without a new fetch.
        with pytest.raises(errors.ServerError):
            await b.token("read:records")
        assert held.calls == 1
        # After it, the next caller gets a fresh try.
        clock.advance(b.policy.failure_memory + 0.01)
        token = await b.token("read:records")
        assert held.calls == 2
        assert token.covers(frozenset({"read:records"}))
        assert b.stats.failures == 1


async def test_fresh_zone_is_served_from_cache(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with broker(transport, client_id, clock) as b:
        first = await b.token("read:records")
        clock.advance(IN_FRESH)
        assert await b.token("read:records") is first
        await settle()
        assert transport.calls == 1
        assert b.stats.background_refreshes == 0


async def test_advisory_zone_serves_at_once_and_refreshes_once_in_background(
    client_id: str,
) -> None:
    clock = FakeClock()
    held = HeldTransport(mock(clock))
    async with broker(held, client_id, clock) as b:
        first = await b.token("read:records")
        held.arm()
        clock.advance(IN_ADVISORY)
        for _ in range(500):
            assert await b.token("read:records") is first  # nobody waits
        await held.started.wait()
        assert held.calls == 2
        assert b.stats.background_refreshes == 1
        held.release()
        await settle()
        # The server re-confirmed the same token: not churn, no refresh storm.
        for _ in range(100):
            await b.token("read:records")
        await settle()
        assert held.calls == 2
        assert b.stats.background_refreshes == 1


async def test_advisory_refresh_that_gets_a_new_token_replaces_it(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with broker(transport, client_id, clock) as b:
        first = await b.token("read:records")
        clock.advance(IN_ADVISORY)
        transport.authority.delegate(client_id)  # an administrator re-delegates
        assert await b.token("read:records") is first
        await settle()
        second = await b.token("read:records")
        assert second.jti != first.jti
        assert transport.calls == 2


async def test_mandatory_zone_makes_callers_wait_for_the_refresh(client_id: str) -> None:
    clock = FakeClock()
    held = HeldTransport(mock(clock))
    async with broker(held, client_id, clock) as b:
        await b.token("read:records")
        held.arm()
        clock.advance(IN_MANDATORY)
        done: list[DelegationToken] = []

        async def call() -> None:
            done.append(await b.token("read:records"))

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(call)
            await held.started.wait()
            await settle()
            assert done == []  # everyone is waiting on the one refresh
            held.release()
        assert len(done) == 50
        assert held.calls == 2


async def test_expired_token_is_never_served(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with broker(transport, client_id, clock) as b:
        first = await b.token("read:records")
        clock.advance(PAST_EXPIRY)
        second = await b.token("read:records")
        assert second.jti != first.jti
        assert second.expires_in(clock()) > 0
        assert transport.calls == 2


async def test_advisory_failure_keeps_serving_and_backs_off(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    policy = RefreshPolicy(jitter_fraction=0.0, backoff_initial=5.0, backoff_max=5.0)
    async with broker(transport, client_id, clock, policy) as b:
        first = await b.token("read:records")
        transport.fail_next(1, 503)
        clock.advance(IN_ADVISORY)
        assert await b.token("read:records") is first
        await settle()
        assert transport.calls == 2 and b.stats.failures == 1
        for _ in range(20):  # backing off: served, no new attempt
            assert await b.token("read:records") is first
        await settle()
        assert transport.calls == 2
        assert b.stats.stale_served >= 20
        clock.advance(5.01)  # past the back-off: one more background attempt
        await b.token("read:records")
        await settle()
        assert transport.calls == 3


async def test_mandatory_failure_reaches_every_waiter(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with broker(transport, client_id, clock) as b:
        await b.token("read:records")
        clock.advance(IN_MANDATORY)
        transport.fail_next(1, "timeout")
        caught: list[type[BaseException]] = []

        async def call() -> None:
            with pytest.raises(errors.TransportTimeoutError) as info:
                await b.token("read:records")
            caught.append(info.type)

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(call)
        assert len(caught) == 100
        assert transport.calls == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, errors.AuthenticationError),
        (404, errors.NotDelegatedError),
        (410, errors.DelegationExpiredError),
    ],
)
async def test_terminal_answers_drop_the_cached_token(
    client_id: str, status: int, error: type[errors.TokenError]
) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with broker(transport, client_id, clock) as b:
        await b.token("read:records")
        await b.token("read:metrics")  # served by superset reuse of the same token
        clock.advance(IN_ADVISORY)
        transport.fail_next(1, status)
        await b.token("read:records")  # still valid: served, refresh in background
        await settle()
        assert transport.calls == 2
        # Fail closed: no scope set is served from the withdrawn delegation.
        with pytest.raises(error):
            await b.token("read:records")
        with pytest.raises(error):
            await b.token("read:metrics")
        assert transport.calls == 2  # answered from the failure memory


async def test_revocation_is_noticed_on_the_next_refresh(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with broker(transport, client_id, clock) as b:
        await b.token("read:records")
        transport.authority.revoke(client_id)
        clock.advance(IN_MANDATORY)
        with pytest.raises(errors.NotDelegatedError, match="administrator"):
            await b.token("read:records")


async def test_invalidate_an_old_token_keeps_a_newer_one(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with broker(transport, client_id, clock) as b:
        old = await b.token("read:records")
        transport.authority.delegate(client_id)
        assert b.invalidate(old) is True
        new = await b.token("read:records")
        assert new.jti != old.jti
        assert b.invalidate(old) is False
        assert await b.token("read:records") is new
        assert transport.calls == 2


async def test_scope_superset_reuse_and_refusal(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with broker(transport, client_id, clock) as b:
        records = await b.token("read:records")
        assert await b.token("read:metrics") is records
        assert await b.token(["read:metrics", "read:records"]) is records
        assert await b.token("read:records read:metrics") is records
        assert transport.calls == 1
        for _ in range(2):
            with pytest.raises(errors.ScopeNotGrantedError) as info:
                await b.token("write:records")
            assert info.value.missing == {"write:records"}
        assert transport.calls == 1  # the delegation's grants are known: no fetch at all


@pytest.mark.parametrize("bad", ["", "   ", "read records\x00", ['"quoted"'], []])
async def test_malformed_scopes_are_refused_before_any_fetch(client_id: str, bad: object) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with broker(transport, client_id, clock) as b:
        with pytest.raises(ValueError, match="scope"):
            await b.token(bad)  # type: ignore[arg-type]
    assert transport.calls == 0


async def test_advisory_start_is_jittered_per_token(client_id: str) -> None:
    """Brokers with the same token lifetime do not all refresh at the same moment."""
    refreshed = 0
    for seed in range(40):
        clock = FakeClock()
        transport = mock(clock)
        policy = RefreshPolicy(jitter_fraction=0.5)  # advisory window 200 s + up to 100 s
        b = TokenBroker(
            transport,
            client_id=client_id,
            policy=policy,
            clock=clock,
            monotonic=clock.monotonic,
            rng=random.Random(seed),
        )
        async with b:
            await b.token("read:records")
            clock.advance(750.0)  # 250 s left: inside the jitter band
            await b.token("read:records")
            await settle()
            refreshed += b.stats.background_refreshes
    assert 5 < refreshed < 35


async def test_a_broken_transport_fails_waiters_instead_of_hanging(client_id: str) -> None:
    class Broken(HeldTransport):
        async def fetch_token(self, request):  # type: ignore[no-untyped-def]
            raise KeyError("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl")

    clock = FakeClock()
    async with broker(Broken(mock(clock)), client_id, clock) as b:
        with pytest.raises(errors.TransportError) as info:
            await b.token("read:records")
    assert "KeyError" in str(info.value)
    assert "eyJzdWIiOiJ4In0" not in str(info.value)


async def test_closing_fails_pending_waiters_and_refuses_new_calls(client_id: str) -> None:
    clock = FakeClock()
    held = HeldTransport(mock(clock))
    held.arm()
    b = broker(held, client_id, clock)
    outcome: list[BaseException] = []

    async def call() -> None:
        try:
            await b.token("read:records")
        except errors.BrokerClosedError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg, b:
        tg.start_soon(call)
        await held.started.wait()
    assert len(outcome) == 1
    with pytest.raises(errors.BrokerClosedError):
        await b.token("read:records")


async def test_unentered_broker_says_how_to_use_it(client_id: str) -> None:
    b = broker(mock(FakeClock()), client_id, FakeClock())
    with pytest.raises(errors.BrokerClosedError, match="async with"):
        await b.token("read:records")


async def test_logs_carry_fingerprints_never_the_token(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    with capture_logs() as logs:
        async with broker(transport, client_id, clock) as b:
            token = await b.token("read:records")
            clock.advance(IN_ADVISORY)
            transport.fail_next(1, 500)
            await b.token("read:records")
            await settle()
            b.invalidate(token)
    events = {line["event"] for line in logs}
    assert {"token.issued", "token.refresh.failed", "token.invalidated"} <= events
    assert any(line.get("fingerprint") == token.fingerprint for line in logs)
    flat = repr(logs)
    assert token.value not in flat
    assert token.value.split(".")[2] not in flat
    assert token.value not in repr(b) and token.value not in repr(token) + str(token)


def test_policy_windows_scale_with_lifetime() -> None:
    policy = RefreshPolicy()
    assert policy.windows(300) == (60.0, 15.0)  # a 5-minute token: a 1-minute window
    assert policy.windows(86_400) == (900.0, 300.0)  # a day: capped
    with pytest.raises(ValueError, match="mandatory_fraction"):
        RefreshPolicy(advisory_fraction=0.1, mandatory_fraction=0.2)
    assert NO_JITTER.jitter_fraction == 0


# --- what the delegation grants: made-up scopes cost nothing -------------------------------


async def test_made_up_scopes_are_refused_without_a_server_call(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with broker(transport, client_id, clock) as b:
        await b.token("read:records")
        for i in range(300):
            with pytest.raises(errors.ScopeNotGrantedError) as info:
                await b.token(f"made:up{i}")
            assert info.value.missing == {f"made:up{i}"}
        assert transport.calls == 1
        assert b.stats.cached == 1  # no entry per made-up scope
        with pytest.raises(errors.ScopeNotGrantedError):
            await b.token(["read:records", "made:up0"])  # a granted scope does not help
        assert transport.calls == 1


async def test_a_cold_made_up_scope_asks_once_then_knows(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with broker(transport, client_id, clock) as b:
        for i in range(50):
            with pytest.raises(errors.ScopeNotGrantedError):
                await b.token(f"made:up{i}")
        assert transport.calls == 1  # the first one learned what the delegation grants
        assert b.stats.cached == 0
        assert (await b.token("read:metrics")).covers(frozenset({"read:metrics"}))
        assert transport.calls == 2


async def test_a_re_delegation_is_learned_on_the_next_refresh(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with broker(transport, client_id, clock) as b:
        first = await b.token("read:records")
        transport.authority.delegate(
            client_id, permissions=["read:records", "read:metrics", "write:records"]
        )
        with pytest.raises(errors.ScopeNotGrantedError):
            await b.token("write:records")  # still what the cached token says
        assert transport.calls == 1
        clock.advance(IN_ADVISORY)
        assert await b.token("read:records") is first  # and its refresh starts
        await settle()
        assert transport.calls == 2
        wider = await b.token("write:records")
        assert wider.jti != first.jti and "write:records" in wider.permissions
        assert transport.calls == 2


async def test_a_narrowed_delegation_refuses_what_it_no_longer_grants(client_id: str) -> None:
    clock = FakeClock()
    transport = mock(clock)
    async with broker(transport, client_id, clock) as b:
        await b.token("read:metrics")
        transport.authority.delegate(client_id, permissions=["read:records"])
        clock.advance(IN_MANDATORY)
        with pytest.raises(errors.ScopeNotGrantedError):
            await b.token("read:metrics")
        assert transport.calls == 2
        assert b.stats.cached == 0  # the entry it no longer covers is gone
        with pytest.raises(errors.ScopeNotGrantedError):
            await b.token("read:metrics")
        assert transport.calls == 2


async def test_the_cache_of_an_agent_is_bounded(client_id: str) -> None:
    """A cold herd of distinct granted scope sets cannot grow the cache without end."""
    clock = FakeClock()
    permissions = [f"read:r{i}" for i in range(10)]
    authority = MockAuthority(ttl_seconds=1000, clock=clock, key=SIGNING_KEY)
    authority.permissions = tuple(permissions)
    held = HeldTransport(MockTransport(authority=authority))
    held.arm()
    subsets = [
        [p for bit, p in enumerate(permissions) if mask >> bit & 1] for mask in range(1, 1024)
    ]
    async with broker(held, client_id, clock) as b:
        async with anyio.create_task_group() as tg:
            for scopes in subsets:
                tg.start_soon(b.token, scopes)
            await held.started.wait()
            await settle()
            held.release()
        assert held.calls == len(subsets)
        assert 0 < b.stats.cached <= broker_module.CACHE_LIMIT
        for scopes in subsets:  # every one is still served, from what is kept
            assert (await b.token(scopes)).covers(frozenset(scopes))
        assert held.calls == len(subsets)


def _held_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_distinct_inputs_do_not_grow_the_broker_without_bound(client_id: str) -> None:
    """Memo and failure memory keep a bounded number of entries, whatever is asked."""
    clock = FakeClock()
    transport = mock(clock)
    counter = iter(range(10**9))

    async def made_up(n: int) -> None:
        for _ in range(n):
            with pytest.raises(errors.ScopeNotGrantedError):
                await b.token(f"made:up{next(counter)}")

    async def failing(n: int) -> None:  # each distinct request fails at the server
        for _ in range(n):
            transport.fail_next(1, 503)
            with pytest.raises(errors.ServerError):
                await b.token(f"other:scope{next(counter)}")

    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    async with broker(transport, client_id, clock) as b:
        tracemalloc.start()
        try:
            await failing(400)  # nothing known yet: each distinct request is fetched
            first = _held_bytes()
            await failing(1200)
            second = _held_bytes()
            await b.token("read:records")
            await made_up(2000)  # the grants are known: refused without a fetch
            third = _held_bytes()
            await made_up(4000)
            fourth = _held_bytes()
        finally:
            tracemalloc.stop()
            structlog.configure(**saved)
        assert b.stats.failures == 1600
        assert b.stats.fetches == 1601
    # Unbounded, 1200 more remembered failures (and their memo entries) hold megabytes,
    # and so would 4000 more memo entries.
    assert second - first < 1_000_000
    assert fourth - third < 1_000_000


def test_an_impossible_policy_is_refused_where_it_is_built() -> None:
    with pytest.raises(ValueError, match="advisory_max"):
        RefreshPolicy(advisory_max=10)  # below the default mandatory cap of 300 s
    with pytest.raises(ValueError, match="advisory_max"):
        RefreshPolicy(advisory_max=300, mandatory_max=300)
    for policy in (RefreshPolicy(), RefreshPolicy(advisory_max=301, mandatory_max=300)):
        for lifetime in (1, 10, 300, 3600, 86_400, 10**7):
            advisory, mandatory = policy.windows(lifetime)
            assert advisory > mandatory > 0  # always an advisory window to refresh in
