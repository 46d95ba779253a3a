"""Shared token stores in one process: several brokers, one store, real SQLite and Redis.

Each broker here stands for a process (its own store connection, its own cache);
the multi-process tests in test_fleet.py repeat the important ones with real
processes. Every test runs under asyncio and trio.
"""

from __future__ import annotations

import base64
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from _redis import RedisServer
from brokerkit import SIGNING_KEY
from structlog.testing import capture_logs

from authsec_crewai import errors
from authsec_crewai.broker import TokenBroker
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.stores import MemoryStore, SealedCodec, SQLiteStore
from authsec_crewai.stores.base import (
    EntryRejected,
    agent_identity,
    cache_identity,
    entry_name,
    latest_name,
)
from authsec_crewai.testing import MockAuthority
from authsec_crewai.token import DelegationToken, TokenRequest
from authsec_crewai.transports.mock import MockTransport
from authsec_crewai.wiring import build_store

pytestmark = pytest.mark.anyio

KEY = os.urandom(32)
OLD_KEY = os.urandom(32)
SCOPE = "read:records"


def CountingTransport(authority: MockAuthority, latency: float = 0.0) -> MockTransport:
    """A mock transport; its ``calls`` counts fetches (what single flight is proved by)."""
    return MockTransport(authority=authority, latency=latency)


StoreFactory = Callable[..., Any]


def _factory(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if kind == "memory":
        shared = MemoryStore(keys=[KEY])
        return lambda **_: shared
    if kind == "sqlite":
        path = tmp_path / "tokens.db"
        return lambda keys=(KEY,), **kw: SQLiteStore(path, keys=keys, **kw)
    redis: RedisServer = request.getfixturevalue("redis_server")
    from authsec_crewai.stores.redis import RedisStore

    return lambda keys=(KEY,), **kw: RedisStore(redis.url, keys=keys, encryption=bool(keys), **kw)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Builds store objects on one shared backend: one per simulated process."""
    return _factory(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def make_shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """The same, for the stores that take keys per process (encryption on or off)."""
    return _factory(request.param, request, tmp_path)


@pytest.fixture
def authority() -> MockAuthority:
    return MockAuthority(key=SIGNING_KEY)


def broker_on(transport: MockTransport, client_id: str, store: Any) -> TokenBroker:
    return TokenBroker(transport, client_id=client_id, store=store, close_transport=False)


def names_of(client_id: str, scopes: str) -> list[str]:
    """Where a token fetched for ``scopes`` is kept: under its key and as the agent's latest."""
    request = TokenRequest.create(client_id, scopes)
    return [entry_name(cache_identity(request)), latest_name(agent_identity(request))]


async def items_of(store: Any) -> dict[str, bytes]:
    found = store.items()
    if hasattr(found, "__await__"):
        found = await found
    return dict(found)


async def test_brokers_sharing_a_store_fetch_once(
    make_store: StoreFactory, authority: MockAuthority, client_id: str
) -> None:
    transport = CountingTransport(authority, latency=0.05)
    tokens: list[DelegationToken] = []
    brokers = [broker_on(transport, client_id, make_store()) for _ in range(4)]
    async with (
        brokers[0] as b0,
        brokers[1] as b1,
        brokers[2] as b2,
        brokers[3] as b3,
        anyio.create_task_group() as tg,
    ):

        async def ask(broker: TokenBroker) -> None:
            tokens.append(await broker.token(SCOPE))

        for broker in (b0, b1, b2, b3):
            for _ in range(50):
                tg.start_soon(ask, broker)
    assert transport.calls == 1
    assert len(tokens) == 200
    assert len({token.value for token in tokens}) == 1
    stats = [broker.stats for broker in brokers]
    assert sum(s.fetches for s in stats) == 1
    assert sum(s.store_hits for s in stats) == 3
    assert sum(s.lease_waits for s in stats) >= 1
    assert all(s.store_errors == 0 for s in stats)


class CountingStore(MemoryStore):
    """A MemoryStore that counts reads: a cache hit must cause none."""

    def __init__(self) -> None:
        super().__init__(keys=[KEY])
        self.reads = 0

    async def get(self, names: Any) -> list[bytes | None]:
        self.reads += 1
        return await super().get(names)


async def test_a_late_holder_cannot_release_its_successors_lease(make_store: StoreFactory) -> None:
    async with make_store() as store:
        assert await store.acquire("l:x", "first", 0.1)
        assert not await store.acquire("l:x", "second", 5)
        await anyio.sleep(0.25)  # the first holder's lease ran out
        assert await store.acquire("l:x", "second", 5)
        await store.release("l:x", "first")  # compare-and-delete: not the first's any more
        assert not await store.acquire("l:x", "third", 5)
        await store.release("l:x", "second")
        assert await store.acquire("l:x", "third", 5)


async def test_a_cache_hit_never_touches_the_store(
    authority: MockAuthority, client_id: str
) -> None:
    store = CountingStore()
    async with broker_on(CountingTransport(authority), client_id, store) as broker:
        await broker.token(SCOPE)
        reads = store.reads
        for _ in range(1000):
            await broker.token(SCOPE)
            broker.cached_token(SCOPE)
        assert store.reads == reads
        assert broker.stats.hits == 2000


async def test_a_stored_token_serves_the_scopes_it_covers(
    make_store: StoreFactory, authority: MockAuthority, client_id: str
) -> None:
    transport = CountingTransport(authority)
    async with broker_on(transport, client_id, make_store()) as broker:
        wide = await broker.token([SCOPE, "read:metrics"])
    async with broker_on(transport, client_id, make_store()) as broker:
        narrow = await broker.token(SCOPE)  # another key, covered by the agent's latest token
        assert broker.stats.store_hits == 1
    assert narrow.value == wide.value
    assert transport.calls == 1


async def test_nothing_readable_in_the_store(
    make_store: StoreFactory, authority: MockAuthority, client_id: str
) -> None:
    store = make_store()
    async with broker_on(CountingTransport(authority), client_id, store) as broker:
        token = await broker.token([SCOPE, "read:metrics"])
        broker.invalidate(token)  # also leaves a revocation mark behind
        await anyio.sleep(0.05)
        token = await broker.token(SCOPE)
        await anyio.sleep(0.05)  # the entry is written after the callers have their token
        found = await items_of(store)
    assert len(found) >= 2  # at least the entry and the revocation mark
    _, payload, signature = token.value.split(".")
    secrets = [token.value, payload, signature, client_id, SCOPE, "read:metrics"]
    secrets += [token.spiffe_id, authority.tenant_id, str(token.jti)]
    for name, value in found.items():
        for secret in secrets:
            assert secret not in name
            assert secret.encode() not in value
            assert base64.b64encode(secret.encode()) not in value


async def test_a_tampered_entry_is_dropped_and_refetched(
    make_store: StoreFactory,
    authority: MockAuthority,
    client_id: str,
) -> None:
    transport = CountingTransport(authority)
    store = make_store()
    async with broker_on(transport, client_id, store) as broker:
        await broker.token(SCOPE)
    async with make_store() as raw:
        for name in names_of(client_id, SCOPE):  # the key's entry and the agent's latest
            (blob,) = await raw.get([name])
            assert blob is not None
            await raw.put(name, blob[:-1] + bytes([blob[-1] ^ 1]), 60)
    with capture_logs() as logs:
        async with broker_on(transport, client_id, make_store()) as broker:
            token = await broker.token(SCOPE)
            assert broker.stats.store_hits == 0
    assert transport.calls == 2
    assert token.client_id == client_id
    assert [log["event"] for log in logs].count("store.entry_rejected") == 2


async def test_an_entry_moved_to_another_agent_is_refused(
    make_store: StoreFactory, authority: MockAuthority
) -> None:
    """A valid sealed entry copied under another agent's name fails to open (AAD)."""
    victim, attacker = str(uuid.uuid4()), str(uuid.uuid4())
    transport = CountingTransport(authority)
    async with broker_on(transport, attacker, make_store()) as broker:
        attacker_token = await broker.token(SCOPE)
    source = entry_name(cache_identity(TokenRequest.create(attacker, SCOPE)))
    target = entry_name(cache_identity(TokenRequest.create(victim, SCOPE)))
    async with make_store() as raw:
        (blob,) = await raw.get([source])
        assert blob is not None
        await raw.put(target, blob, 60)
    async with broker_on(transport, victim, make_store()) as broker:
        token = await broker.token(SCOPE)
    assert token.value != attacker_token.value
    assert token.client_id == victim
    assert transport.calls == 2


async def test_an_entry_signed_by_someone_else_is_never_served(
    make_shared_store: StoreFactory, authority: MockAuthority, client_id: str
) -> None:
    """With encryption off, a forged entry (right shape, wrong signer) is caught by the verifier."""
    forger = MockAuthority(tenant_id=authority.tenant_id)  # its own RSA key
    forged = await MockTransport(authority=forger).fetch_token(
        TokenRequest.create(client_id, SCOPE)
    )
    transport = CountingTransport(authority)
    identity = cache_identity(TokenRequest.create(client_id, SCOPE))
    from authsec_crewai.stores.base import StoredEntry

    plain = SealedCodec(())
    import time

    async with make_shared_store(keys=()) as raw:
        await raw.put(
            entry_name(identity),
            plain.seal(identity, StoredEntry(forged, time.time()).encode()),
            60,
        )
    async with broker_on(transport, client_id, make_shared_store(keys=())) as broker:
        token = await broker.token(SCOPE)
    assert token.value != forged.value
    assert transport.calls == 1


async def test_rotation_opens_entries_sealed_with_the_old_key(
    make_shared_store: StoreFactory, authority: MockAuthority, client_id: str
) -> None:
    transport = CountingTransport(authority)
    async with broker_on(transport, client_id, make_shared_store(keys=(OLD_KEY,))) as broker:
        await broker.token(SCOPE)
    async with broker_on(transport, client_id, make_shared_store(keys=(KEY, OLD_KEY))) as broker:
        await broker.token(SCOPE)
        assert broker.stats.store_hits == 1
    assert transport.calls == 1
    async with make_shared_store(keys=(KEY,)) as raw:
        await raw.delete(names_of(client_id, SCOPE))
    async with broker_on(transport, client_id, make_shared_store(keys=(OLD_KEY,))) as broker:
        await broker.token(SCOPE)  # sealed with OLD_KEY again
    async with broker_on(transport, client_id, make_shared_store(keys=(KEY,))) as broker:
        await broker.token(SCOPE)  # the old key is gone: refused, fetched
        assert broker.stats.store_hits == 0
    assert transport.calls == 3


async def test_revocation_reaches_the_other_brokers(
    make_store: StoreFactory, authority: MockAuthority, client_id: str
) -> None:
    transport = CountingTransport(authority)
    async with (
        broker_on(transport, client_id, make_store()) as first,
        broker_on(transport, client_id, make_store()) as second,
    ):
        await anyio.sleep(0.2)  # both listeners subscribed
        token = await first.token(SCOPE)
        assert (await second.token(SCOPE)).value == token.value
        assert first.invalidate(token)
        with anyio.fail_after(2):
            while second.cached_token(SCOPE) is not None:  # noqa: ASYNC110 (polled on purpose)
                await anyio.sleep(0.005)
        # The shared entry went too: the next caller asks the server again.
        await second.token(SCOPE)
    assert transport.calls == 2


async def test_a_terminal_answer_reaches_the_other_brokers(
    make_store: StoreFactory, authority: MockAuthority, client_id: str
) -> None:
    transport = CountingTransport(authority)
    async with (
        broker_on(transport, client_id, make_store()) as first,
        broker_on(transport, client_id, make_store()) as second,
    ):
        await anyio.sleep(0.2)
        await first.token(SCOPE)
        await second.token(SCOPE)
        await first.token("read:metrics")  # a second key in the first broker only
        authority.revoke(client_id)
        first.invalidate(await first.token(SCOPE))  # local drop only for this key...
        with pytest.raises(errors.NotDelegatedError):
            await first.token(SCOPE)  # ...the server's 404 is terminal
        with anyio.fail_after(2):
            while second.cached_token(SCOPE) is not None:  # noqa: ASYNC110 (polled on purpose)
                await anyio.sleep(0.005)
        with pytest.raises(errors.NotDelegatedError):
            await second.token("read:metrics")  # the stored entry is void: asked the server


async def test_an_unreachable_store_is_not_an_outage(
    authority: MockAuthority, client_id: str
) -> None:
    from authsec_crewai.stores.redis import RedisStore

    with anyio_socket() as port:
        pass  # the port is free again: nothing listens there
    transport = CountingTransport(authority)
    store = RedisStore(f"redis://127.0.0.1:{port}/0", keys=[KEY], timeout=0.2)
    with capture_logs() as logs:
        async with broker_on(transport, client_id, store) as broker:
            with anyio.fail_after(5):
                first = await broker.token(SCOPE)
                broker.invalidate(first)
                tokens = [first, await broker.token(SCOPE)]
            stats = broker.stats
    assert all(token.client_id == client_id for token in tokens)
    assert transport.calls == 2
    assert stats.store_errors >= 1
    assert [log["event"] for log in logs].count("store.unavailable") == 1


async def test_a_hung_store_is_waited_on_only_as_long_as_its_timeout(
    redis_server: RedisServer, authority: MockAuthority, client_id: str
) -> None:
    from authsec_crewai.stores.redis import RedisStore

    transport = CountingTransport(authority)
    store = RedisStore(redis_server.url, keys=[KEY], timeout=0.2)
    async with broker_on(transport, client_id, store) as broker:
        await broker.token(SCOPE)
        broker.invalidate(await broker.token(SCOPE))
        await anyio.sleep(0.1)
        redis_server.pause()
        try:
            with anyio.fail_after(3):  # one store timeout, one fetch: far less than this
                token = await broker.token(SCOPE)
        finally:
            redis_server.resume()
        stats = broker.stats
    assert token.client_id == client_id
    assert transport.calls == 2
    assert stats.store_errors >= 1


class anyio_socket:
    """A free loopback port, released on exit."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        return int(self._sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


# --- the codec, the file and the settings (no event loop needed) ---------------------------


def test_codec_binds_the_value_to_its_cache_key() -> None:
    codec = SealedCodec([KEY])
    sealed = codec.seal(b"key-a", b"secret")
    assert codec.open(b"key-a", sealed) == b"secret"
    with pytest.raises(EntryRejected):
        codec.open(b"key-b", sealed)
    with pytest.raises(EntryRejected):
        SealedCodec([OLD_KEY]).open(b"key-a", sealed)
    with pytest.raises(EntryRejected):
        SealedCodec(()).open(b"key-a", sealed)  # encryption off refuses a sealed value
    framed = SealedCodec(()).seal(b"key-a", b"secret")
    with pytest.raises(EntryRejected):
        codec.open(b"key-a", framed)  # encryption on refuses an unsealed value
    with pytest.raises(EntryRejected):
        SealedCodec(()).open(b"key-b", framed)


async def test_the_sqlite_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    async with SQLiteStore(path, keys=[KEY]) as store:
        await store.put("x", b"y", 10)
        journals = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
        assert all(stat.S_IMODE(j.stat().st_mode) == 0o600 for j in journals)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    planted = tmp_path / "planted.db"
    planted.symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(OSError):
        async with SQLiteStore(planted, keys=[KEY]):
            pass
    assert not (tmp_path / "elsewhere.db").exists()
    loose = tmp_path / "loose.db"
    loose.touch(mode=0o644)
    loose.chmod(0o644)
    async with SQLiteStore(loose, keys=[KEY]):
        pass
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600


def _key_text(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def test_build_store_from_settings(tmp_path: Path) -> None:
    assert build_store(AuthSecSettings(store="memory:")) is None
    assert build_store(AuthSecSettings()) is None
    db = f"sqlite:///{tmp_path}/t.db"
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_STORE_KEY"):
        build_store(AuthSecSettings(store=db))
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_STORE_KEY"):
        build_store(AuthSecSettings(store="redis://127.0.0.1:1/0"))
    with pytest.raises(errors.ConfigurationError, match="32 random bytes"):
        build_store(AuthSecSettings(store=db, store_key="c2hvcnQ="))
    off = build_store(AuthSecSettings(store="redis://127.0.0.1:1/0", store_encryption="off"))
    assert off is not None and not off.codec.encrypts
    rotated = build_store(
        AuthSecSettings(
            store=db, store_key=f"{_key_text(KEY)},{_key_text(OLD_KEY)}", store_timeout=0.25
        )
    )
    assert isinstance(rotated, SQLiteStore) and rotated.timeout == 0.25
    sealed = SealedCodec([OLD_KEY]).seal(b"k", b"v")
    assert rotated.codec.open(b"k", sealed) == b"v"
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_STORE"):
        AuthSecSettings(store="postgres://db/tokens")


def test_settings_errors_never_echo_the_key() -> None:
    secret = "x" * 46  # decodes, but to 34 bytes
    with pytest.raises(errors.ConfigurationError) as caught:
        build_store(AuthSecSettings(store="sqlite:///t.db", store_key=secret))
    assert secret not in str(caught.value)


def test_a_missing_redis_server_skips_locally_and_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import _redis

    monkeypatch.setattr(_redis.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y redis-server"):
        _redis.require_redis_server()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        _redis.require_redis_server()


async def test_build_broker_shares_through_the_configured_store(tmp_path: Path) -> None:
    from authsec_crewai.wiring import build_broker

    settings = AuthSecSettings(
        mode="mock", store=f"sqlite:///{tmp_path}/t.db", store_key=_key_text(KEY)
    )
    # One authority for both, as one AuthSec serves a fleet (two mocks would sign with
    # two keys, and each broker's verifier would rightly refuse the other's token).
    transport = MockTransport(authority=MockAuthority(key=SIGNING_KEY))
    first, second = build_broker(settings, transport), build_broker(settings, transport)
    assert isinstance(first.store, SQLiteStore)
    async with first, second:
        token = await first.token(SCOPE)
        assert (await second.token(SCOPE)).value == token.value
        assert second.stats.store_hits == 1
        assert second.stats.fetches == 0


async def test_one_broker_many_agents_share_and_revoke_per_agent(
    make_store: StoreFactory, authority: MockAuthority
) -> None:
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    transport = CountingTransport(authority)
    first = TokenBroker(transport, store=make_store(), close_transport=False)
    second = TokenBroker(transport, store=make_store(), close_transport=False)
    async with first, second:
        await anyio.sleep(0.2)  # both listeners subscribed
        for agent in (alice, bob):
            token = await first.token(SCOPE, agent)
            assert (await second.token(SCOPE, agent)).value == token.value
        assert transport.calls == 2  # one per agent, for both brokers
        assert second.stats.store_hits == 2
        first.invalidate(await first.token(SCOPE, alice))
        with anyio.fail_after(2):
            while second.agent(alice).cached_token(SCOPE) is not None:  # noqa: ASYNC110
                await anyio.sleep(0.005)
        assert second.agent(bob).cached_token(SCOPE) is not None  # another agent: untouched
