"""Defects of the broker found by a full read, each pinned by a test that failed before.

- a flight answered before a revocation but landing after it must not un-revoke
  the agent (an epoch per agent fences it);
- ``invalidate()`` fences a background refresh still in the air;
- leaving ``async with TokenBroker`` inside a cancelled scope still closes the
  transport and the store;
- one tenant's hung key endpoint never stalls another tenant's verification;
- the shared store's writes are not on the waiters' path;
- ``BrokerThread.start()`` gives up on a broker whose entry hangs;
- rules that had drifted apart (policy, client ids, the public error names);
- the fast path: covered, tuple, frozenset and list hits take no lock, log
  nothing, and never serve a dropped token.
"""

from __future__ import annotations

import gc
import threading
import tracemalloc
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.lowlevel
import pytest
from brokerkit import SIGNING_KEY, FakeClock, broker, mock, settle
from structlog.testing import capture_logs

import authsec_crewai
from authsec_crewai import errors
from authsec_crewai.broker import MEMO_LIMIT, RefreshPolicy, TokenBroker
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.stores import MemoryStore
from authsec_crewai.stores.fleet import Fleet
from authsec_crewai.sync import SyncTokenBroker
from authsec_crewai.testing import MockAuthority
from authsec_crewai.token import DelegationToken, TokenRequest
from authsec_crewai.transports import KeySet, MockTransport, TransportInfo
from authsec_crewai.verify import TokenVerifier

pytestmark = pytest.mark.anyio

RECORDS, METRICS = "read:records", "read:metrics"
IN_ADVISORY = 850.0  # a 1000 s token with no jitter: advisory from 800 s, mandatory from 950 s


class GatedTransport:
    """Answers at once, then holds the answer for ``gated`` scope sets until released:
    a flight that the server answered before something happened, landing after it."""

    def __init__(self, inner: MockTransport) -> None:
        self.inner = inner
        self.gated: set[frozenset[str]] = set()
        self.answered = anyio.Event()
        self.release = anyio.Event()
        self.calls = 0

    @property
    def info(self) -> TransportInfo:
        return self.inner.info

    @property
    def authority(self) -> MockAuthority:
        return self.inner.authority

    def hold(self, scopes: str) -> None:
        self.gated.add(frozenset(scopes.split()))
        self.answered, self.release = anyio.Event(), anyio.Event()

    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        self.calls += 1
        token = await self.inner.fetch_token(request)
        if request.scopes in self.gated:
            self.gated.discard(request.scopes)
            self.answered.set()
            await self.release.wait()
        return token

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        return await self.inner.fetch_key_set(tenant_id)

    def api(self) -> Any:
        return self.inner.api()

    async def aclose(self) -> None:
        await self.inner.aclose()


def two_scope_mock(clock: FakeClock) -> MockTransport:
    transport = mock(clock)
    transport.authority.permissions = (RECORDS, METRICS)
    return transport


# --- fail closed: flights older than a revocation or an invalidation --------------------------


async def test_a_stale_success_does_not_un_revoke_the_agent(client_id: str) -> None:
    clock = FakeClock()
    transport = GatedTransport(two_scope_mock(clock))
    outcome: list[object] = []

    async def ask_records() -> None:
        try:
            outcome.append(await b.token(RECORDS))
        except errors.AuthSecError as exc:
            outcome.append(exc)

    async with broker(transport, client_id, clock) as b, anyio.create_task_group() as tg:
        transport.hold(RECORDS)
        tg.start_soon(ask_records)
        await transport.answered.wait()  # the server answered the records flight...
        transport.authority.revoke(client_id)  # ...then the delegation was revoked
        with pytest.raises(errors.NotDelegatedError):
            await b.token(METRICS)  # another flight meets the revocation
        transport.release.set()  # the old answer lands after it
        await settle()
        assert len(outcome) == 1 and isinstance(outcome[0], errors.NotDelegatedError)
        assert b.cached_token(RECORDS) is None
        with pytest.raises(errors.NotDelegatedError):
            await b.token(RECORDS)
        with pytest.raises(errors.NotDelegatedError):
            await b.token(f"{RECORDS} {METRICS}")
    assert transport.calls == 2


async def test_invalidate_fences_a_background_refresh_in_the_air(client_id: str) -> None:
    clock = FakeClock()
    transport = GatedTransport(mock(clock))
    async with broker(transport, client_id, clock) as b:
        refused = await b.token(RECORDS)
        clock.advance(IN_ADVISORY)
        transport.hold(RECORDS)
        assert await b.token(RECORDS) is refused  # served, and a background refresh starts
        await transport.answered.wait()  # the server hands out the same token again
        assert b.invalidate(refused)  # the API refused it meanwhile
        transport.release.set()
        await settle()
        assert b.cached_token(RECORDS) is None  # the refused token is not cached again
    assert transport.calls == 2


async def test_a_revocation_seen_elsewhere_fences_flights_in_the_air(client_id: str) -> None:
    """Another process revokes while this one's fetch is in the air: what that fetch
    brings back is neither cached nor shared; the waiter gets a token fetched after."""
    clock = FakeClock()
    store = MemoryStore(monotonic=clock.monotonic)
    transport = GatedTransport(mock(clock))
    got: list[DelegationToken] = []

    async def ask() -> None:
        got.append(await a.token(RECORDS))

    async with TokenBroker(transport, client_id=client_id, clock=clock, store=store) as a:
        transport.hold(RECORDS)
        async with anyio.create_task_group() as tg:
            tg.start_soon(ask)
            await transport.answered.wait()
            await Fleet(store, clock=clock).revoke(client_id, [], None)  # another process
            await settle()
            transport.release.set()
    assert transport.calls == 2  # the fenced answer was dropped, and asked for again
    assert len(got) == 1


# --- closing under cancellation -----------------------------------------------------------


class ClosingTransport(MockTransport):
    """A transport whose close awaits before it is done, as a pool's close does."""

    closed = False

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()
        await super().aclose()
        self.closed = True


class ClosingStore(MemoryStore):
    entered = closed = False

    async def __aenter__(self) -> Self:
        await anyio.lowlevel.checkpoint()
        self.entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await anyio.lowlevel.checkpoint()
        self.closed = True


@pytest.mark.parametrize("how", ["cancel", "move_on_after"])
async def test_leaving_a_broker_in_a_cancelled_scope_still_closes_everything(
    client_id: str, how: str
) -> None:
    transport, store = ClosingTransport(), ClosingStore()
    with anyio.move_on_after(5 if how == "cancel" else 0.2) as scope:
        async with TokenBroker(transport, client_id=client_id, store=store) as b:
            await b.token(RECORDS)
            if how == "cancel":
                scope.cancel()
            await anyio.sleep(30)
    assert scope.cancelled_caught
    assert store.entered and store.closed
    assert transport.closed
    with pytest.raises(errors.BrokerClosedError):
        await b.token(METRICS)


# --- verification: one tenant never stalls another ------------------------------------------


class TenantKeys:
    """Key sets per tenant; one tenant's endpoint hangs until released."""

    info = TransportInfo(mode="tenants")

    def __init__(self, sets: dict[str, KeySet], hung: str) -> None:
        self.sets = sets
        self.hung = hung
        self.asked = anyio.Event()
        self.release = anyio.Event()

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        if tenant_id == self.hung:
            self.asked.set()
            await self.release.wait()
        assert tenant_id is not None
        return self.sets[tenant_id]


async def test_a_hung_key_endpoint_of_one_tenant_does_not_stall_another(client_id: str) -> None:
    authorities = [MockAuthority(key=SIGNING_KEY) for _ in range(2)]
    tokens = [
        await MockTransport(authority=a).fetch_token(TokenRequest.create(client_id, RECORDS))
        for a in authorities
    ]
    sets = {a.tenant_id: a.key_set() for a in authorities}
    keys = TenantKeys(sets, hung=authorities[0].tenant_id)
    verifier = TokenVerifier(keys)  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        tg.start_soon(verifier.verify, tokens[0])
        await keys.asked.wait()
        with anyio.fail_after(10):  # a hang detector: the other tenant must not wait
            await verifier.verify(tokens[1])
        keys.release.set()


# --- the shared store is written after the waiters are woken --------------------------------


class StuckWrites(MemoryStore):
    """A store whose writes hang (a brown-out) until released."""

    def __init__(self) -> None:
        super().__init__(timeout=30.0)
        self.writing = anyio.Event()
        self.unstick = anyio.Event()

    async def put(self, name: str, value: bytes, ttl: float) -> None:
        self.writing.set()
        await self.unstick.wait()
        await super().put(name, value, ttl)


async def test_store_writes_are_not_on_the_waiters_path(client_id: str) -> None:
    store = StuckWrites()
    transport = MockTransport()
    async with TokenBroker(transport, client_id=client_id, store=store) as b:
        with anyio.fail_after(10):  # a hang detector: the put hangs for 30 s
            token = await b.token(RECORDS)
        assert store.writing.is_set()  # the write was under way, not done
        assert b.cached_token(RECORDS) is token
        store.unstick.set()
        await settle()
    assert transport.calls == 1


# --- a broker thread whose broker never finishes entering -------------------------------------


class HangingStore(MemoryStore):
    async def __aenter__(self) -> Self:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


def test_a_broker_thread_gives_up_on_a_broker_whose_entry_hangs(client_id: str) -> None:
    sync = SyncTokenBroker(
        MockTransport(), client_id=client_id, store=HangingStore(), start_timeout=0.5
    )
    raised: list[BaseException] = []

    def start() -> None:
        try:
            sync.start()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(20)
    assert not thread.is_alive(), "start() waited for ever"
    assert len(raised) == 1 and isinstance(raised[0], errors.BrokerClosedError)
    assert "did not start within 0.5" in str(raised[0])
    ours = [t for t in threading.enumerate() if t.name == "authsec-crewai-broker"]
    assert ours, "the hung start left no thread behind: nothing to prove"
    sync.close()  # closing cancels the hanging start: its thread ends, none is left behind
    for leftover in ours:
        leftover.join(10)
    assert not any(t.is_alive() for t in ours)


# --- rules in one place ---------------------------------------------------------------------


def test_settings_refuse_the_policies_the_broker_refuses() -> None:
    for values in (
        {"refresh_advisory_max": 300, "refresh_mandatory_max": 300},
        {"backoff_initial": 10, "backoff_max": 5},
    ):
        with pytest.raises(errors.ConfigurationError) as info:
            AuthSecSettings(mode="mock", **values)  # type: ignore[arg-type]
        assert "AUTHSEC_" in str(info.value)
    with pytest.raises(ValueError, match="backoff_initial"):
        RefreshPolicy(backoff_initial=10, backoff_max=5)


@pytest.mark.parametrize(
    "form",
    [
        "{0b4c1a7e-1d1a-4f3e-9a51-2f7c7c7d6a10}",
        "urn:uuid:0b4c1a7e-1d1a-4f3e-9a51-2f7c7c7d6a10",
        "0b4c1a7e1d1a4f3e9a512f7c7c7d6a10",
    ],
)
def test_broker_and_settings_share_one_client_id_rule(form: str) -> None:
    with pytest.raises(errors.ConfigurationError, match="client_id"):
        TokenBroker(MockTransport(), client_id=form)
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_CLIENT_ID"):
        AuthSecSettings(mode="mock", client_id=form)


def test_every_error_is_public() -> None:
    assert set(errors.__all__) <= set(authsec_crewai.__all__)
    for name in errors.__all__:
        assert getattr(authsec_crewai, name) is getattr(errors, name)


# --- every hit a crew makes is on the fast path ------------------------------------------------


class CountingLock:
    """The broker's lock, counting how often it is taken."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.taken = 0

    def __enter__(self) -> None:
        self.taken += 1
        self.inner.acquire()

    def __exit__(self, *exc: object) -> None:
        self.inner.release()


ASKED: Sequence[Callable[[], object]] = (
    lambda: RECORDS,
    lambda: METRICS,  # covered by the one token the agent holds
    lambda: (RECORDS,),
    lambda: frozenset({RECORDS}),
    lambda: [RECORDS, METRICS],
)


async def test_covered_tuple_frozenset_and_list_hits_take_no_lock_and_log_nothing(
    client_id: str,
) -> None:
    clock = FakeClock()
    transport = two_scope_mock(clock)
    async with broker(transport, client_id, clock) as b:
        await b.token(f"{RECORDS} {METRICS}")
        view = b.agent(client_id)
        for asked in ASKED:  # the first hit of each form decides, under the lock
            await b.token(asked())  # type: ignore[arg-type]
        lock = CountingLock(b._lock)
        b._lock = lock  # type: ignore[assignment]
        with capture_logs() as logs:
            for _ in range(50):
                for asked in ASKED:
                    await b.token(asked())  # type: ignore[arg-type]
                    await view.token(asked())  # type: ignore[arg-type]
                    assert b.cached_token(asked()) is not None  # type: ignore[arg-type]
        assert lock.taken == 0
        assert [line for line in logs if str(line["event"]).startswith("token.")] == []
        assert b.stats.hits >= 50 * 3 * len(ASKED)
    assert transport.calls == 1


async def test_a_remembered_covered_hit_is_dropped_with_its_token(client_id: str) -> None:
    clock = FakeClock()
    transport = two_scope_mock(clock)
    async with broker(transport, client_id, clock) as b:
        wide = await b.token([RECORDS, METRICS])
        assert await b.token(METRICS) is wide  # remembered under "read:metrics"
        assert await b.token((METRICS,)) is wide
        assert b.invalidate(wide)
        assert b.cached_token(METRICS) is None
        assert b.cached_token((METRICS,)) is None
        assert b.cached_token([RECORDS, METRICS]) is None
        again = await b.token(METRICS)
        assert again is not wide and transport.calls == 2


_SPACES = " \t\n\r\x0b\x0c\u2000\u2001"  # what str.split() splits on


def _held_bytes() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def test_remembered_asked_forms_are_bounded(client_id: str) -> None:
    clock = FakeClock()
    transport = two_scope_mock(clock)
    async with broker(transport, client_id, clock) as b:
        await b.token([RECORDS, METRICS])

        async def variants(start: int, count: int) -> None:
            for n in range(start, start + count):  # distinct texts of one length, one scope set
                gap = "".join(_SPACES[n // len(_SPACES) ** i % len(_SPACES)] for i in range(5))
                await b.token(f"{RECORDS}{gap}{METRICS}")

        tracemalloc.start()
        try:
            await variants(0, 2 * MEMO_LIMIT)
            first = _held_bytes()
            await variants(2 * MEMO_LIMIT, 8 * MEMO_LIMIT)
            second = _held_bytes()
        finally:
            tracemalloc.stop()
    # Unbounded, 8,192 more remembered texts (each with its entry) hold megabytes.
    assert second - first < 1_000_000
    assert transport.calls == 1
