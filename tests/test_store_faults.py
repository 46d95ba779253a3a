"""Shared stores under the faults a fleet meets: skewed clocks, revoked agents, foreign
keys, broken files, hostile events, refused credentials, slow fetches.

Each broker stands for a process (its own store object, its own cache), on one
real backend: SQLite in a temporary folder, a real redis-server on 127.0.0.1,
or an in-process MemoryStore. Every test runs under asyncio and trio.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from _redis import RedisServer, require_binary, require_redis_server
from brokerkit import SIGNING_KEY
from structlog.testing import capture_logs

from authsec_crewai import errors
from authsec_crewai.broker import RefreshPolicy, TokenBroker
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.stores import MemoryStore, SQLiteStore
from authsec_crewai.stores.base import agent_digest, cache_identity, lease_name
from authsec_crewai.stores.events import MAX_EVENT_BYTES, EventRejected, EventSigner
from authsec_crewai.testing import MockAuthority
from authsec_crewai.token import TokenRequest
from authsec_crewai.transports.mock import MockTransport
from authsec_crewai.wiring import build_store

pytestmark = pytest.mark.anyio

KEY = os.urandom(32)
OTHER_KEY = os.urandom(32)
SCOPE = "read:records"

StoreFactory = Callable[..., Any]


@pytest.fixture
def authority() -> MockAuthority:
    return MockAuthority(key=SIGNING_KEY)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Store objects on one backend, one per simulated process; ``keys`` may differ."""
    if request.param == "memory":
        shared = MemoryStore(keys=[KEY])
        return lambda **_: shared
    if request.param == "sqlite":
        path = tmp_path / "tokens.db"
        return lambda keys=(KEY,), **kw: SQLiteStore(path, keys=keys, **kw)
    redis: RedisServer = request.getfixturevalue("redis_server")
    from authsec_crewai.stores.redis import RedisStore

    return lambda keys=(KEY,), **kw: RedisStore(redis.url, keys=keys, **kw)


@pytest.fixture(params=["sqlite", "redis"])
def make_shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """The stores where processes really are apart (each its own connection)."""
    if request.param == "sqlite":
        path = tmp_path / "tokens.db"
        return lambda keys=(KEY,), **kw: SQLiteStore(path, keys=keys, **kw)
    redis: RedisServer = request.getfixturevalue("redis_server")
    from authsec_crewai.stores.redis import RedisStore

    return lambda keys=(KEY,), **kw: RedisStore(redis.url, keys=keys, **kw)


def broker_on(
    transport: MockTransport, client_id: str, store: Any, skew: float = 0.0, **options: Any
) -> TokenBroker:
    """A broker whose clock is ``skew`` seconds off (its verifier allows for it)."""
    return TokenBroker(
        transport,
        client_id=client_id,
        store=store,
        close_transport=False,
        clock=lambda: time.time() + skew,
        verify_leeway=120,
        **options,
    )


def fleet_of(broker: TokenBroker) -> Any:
    """The broker's view of its store (where dropped events are counted)."""
    fleet = broker._shared._fleet if broker._shared is not None else None
    assert fleet is not None
    return fleet


# --- one clock: the store's ------------------------------------------------------------


async def test_a_revocation_voids_every_entry_of_the_agent_whatever_the_clocks(
    make_shared_store: StoreFactory, authority: MockAuthority, client_id: str
) -> None:
    """An entry written by a process 60 s ahead, revoked by one 30 s behind through
    another scope set (so the entry itself is not among those it deletes): void."""
    transport = MockTransport(authority=authority)
    async with broker_on(transport, client_id, make_shared_store(), skew=60) as ahead:
        await ahead.token(SCOPE)
    assert transport.calls == 1
    async with broker_on(transport, client_id, make_shared_store(), skew=-30) as behind:
        token = await behind.token("read:metrics")  # the agent's latest token covers it
        assert behind.stats.store_hits == 1
        assert behind.invalidate(token)
        await anyio.sleep(0.2)  # the revocation is written in the background
    async with broker_on(transport, client_id, make_shared_store()) as fresh:
        await fresh.token(SCOPE)  # not served from the store: revoked
        assert fresh.stats.store_hits == 0
    assert transport.calls == 2


async def test_skewed_processes_share_a_fresh_token(
    make_shared_store: StoreFactory, authority: MockAuthority
) -> None:
    """A token written by a process 60 s ahead is fresh for one 30 s behind, and back."""
    transport = MockTransport(authority=authority)
    for writer, reader in ((60, -30), (-30, 60)):
        agent = str(uuid.uuid4())
        async with broker_on(transport, agent, make_shared_store(), skew=writer) as first:
            await first.token(SCOPE)
        async with broker_on(transport, agent, make_shared_store(), skew=reader) as second:
            await second.token(SCOPE)
            assert second.stats.store_hits == 1
    assert transport.calls == 2


async def test_a_process_ahead_does_not_take_over_a_lease_others_hold(tmp_path: Path) -> None:
    """SQLite leases run on SQLite's clock: a lease taken for 5 s holds for 5 s."""
    async with SQLiteStore(tmp_path / "t.db", keys=[KEY]) as first:
        assert await first.acquire("l:x", "holder", 5)
        assert not await first.acquire("l:x", "ahead", 5)
        assert await first.renew("l:x", "holder", 5)
        assert not await first.renew("l:x", "ahead", 5)
        before = time.time()
        assert abs(await first.now() - before) < 5  # this host's clock, not a caller's


# --- terminal answers ------------------------------------------------------------------


async def test_a_terminal_answer_is_shared_instead_of_asked_again(
    make_store: StoreFactory, authority: MockAuthority, client_id: str
) -> None:
    transport = MockTransport(authority=authority)
    quick = RefreshPolicy(failure_memory=0.05)  # each process forgets a failure at once
    async with (
        broker_on(transport, client_id, make_store(), policy=quick) as first,
        broker_on(transport, client_id, make_store(), policy=quick) as second,
    ):
        token = await first.token(SCOPE)
        assert (await second.token(SCOPE)).value == token.value
        authority.revoke(client_id)
        first.invalidate(token)
        with pytest.raises(errors.NotDelegatedError):
            await first.token(SCOPE)
        assert transport.calls == 2
        for _ in range(3):
            await anyio.sleep(0.1)  # past each process's own failure memory
            with pytest.raises(errors.NotDelegatedError, match="another process"):
                await second.token(SCOPE)
            with pytest.raises(errors.NotDelegatedError):
                await first.token("read:metrics")
        assert transport.calls == 2  # the fleet asked once


# --- foreign keys ----------------------------------------------------------------------


async def test_a_different_store_key_is_reported_and_destroys_nothing(
    make_shared_store: StoreFactory, authority: MockAuthority, client_id: str
) -> None:
    transport = MockTransport(authority=authority)
    async with broker_on(transport, client_id, make_shared_store()) as first:
        await first.token(SCOPE)
    with capture_logs() as logs:
        async with broker_on(transport, client_id, make_shared_store(keys=(OTHER_KEY,))) as odd:
            await anyio.sleep(0.1)  # the key check at start
            await odd.token(SCOPE)  # cannot open it: fetches for itself
            assert odd.stats.store_hits == 0
    assert transport.calls == 2
    mismatches = [log for log in logs if log["event"] == "store.key_mismatch"]
    assert mismatches and mismatches[0]["log_level"] == "error"
    assert "AUTHSEC_STORE_KEY" in mismatches[0]["message"]
    async with broker_on(transport, client_id, make_shared_store()) as again:
        await again.token(SCOPE)  # the first key's entry is still there
        assert again.stats.store_hits == 1
    assert transport.calls == 2


# --- SQLite files ----------------------------------------------------------------------


def test_sqlite_urls_follow_one_convention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four slashes: absolute (SQLAlchemy's rule); three: relative to the working directory,
    resolved once; a folder that does not exist is refused, never created."""
    key = "A" * 43
    absolute = build_store(AuthSecSettings(store=f"sqlite:///{tmp_path}/t.db", store_key=key))
    assert isinstance(absolute, SQLiteStore) and absolute.path == tmp_path / "t.db"
    monkeypatch.chdir(tmp_path)
    relative = build_store(AuthSecSettings(store="sqlite:///rel.db", store_key=key))
    assert isinstance(relative, SQLiteStore) and relative.path == tmp_path / "rel.db"
    assert relative.path.is_absolute()
    with pytest.raises(errors.ConfigurationError, match="four slashes"):
        build_store(AuthSecSettings(store="sqlite:///var/lib/app/tokens.db", store_key=key))
    assert not (tmp_path / "var").exists()
    with pytest.raises(errors.ConfigurationError, match="does not exist"):
        SQLiteStore(tmp_path / "missing" / "t.db", keys=[KEY])
    assert not (tmp_path / "missing").exists()


async def test_an_unreadable_sqlite_file_is_an_outage_not_a_crash(
    tmp_path: Path, authority: MockAuthority, client_id: str
) -> None:
    path = tmp_path / "tokens.db"
    path.write_bytes(b"this is not a database, it never was" * 200)
    path.chmod(0o600)
    transport = MockTransport(authority=authority)
    with capture_logs() as logs:
        async with broker_on(transport, client_id, SQLiteStore(path, keys=[KEY])) as broker:
            token = await broker.token(SCOPE)
            assert broker.stats.store_errors >= 1
    assert token.client_id == client_id
    unavailable = [log for log in logs if log["event"] == "store.unavailable"]
    assert unavailable and "not a usable SQLite database" in unavailable[0]["message"]
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_STORE_REQUIRED"):
        async with broker_on(transport, client_id, SQLiteStore(path, keys=[KEY], required=True)):
            pass


async def test_a_replaced_sqlite_file_is_noticed(
    tmp_path: Path, authority: MockAuthority, client_id: str
) -> None:
    path, other = tmp_path / "tokens.db", str(uuid.uuid4())
    transport = MockTransport(authority=authority)
    with capture_logs() as logs:
        async with broker_on(transport, client_id, SQLiteStore(path, keys=[KEY])) as old:
            await old.token(SCOPE)
            for suffix in ("", "-wal", "-shm"):
                os.unlink(f"{path}{suffix}")
            async with broker_on(transport, client_id, SQLiteStore(path, keys=[KEY])) as new:
                await new.token(SCOPE, other)  # written to the new file
                await anyio.sleep(1.1)  # the old process looks at its file once a second
                await old.token(SCOPE, other)  # ...and finds the new file's entry
                assert old.stats.store_hits == 1
    assert transport.calls == 2
    assert any(log["event"] == "store.file_replaced" for log in logs)


# --- leases ----------------------------------------------------------------------------


class LostReplyStore(MemoryStore):
    """Takes the lease, then the reply is lost: the caller's acquire times out."""

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        taken = await super().acquire(name, owner, ttl)
        await anyio.sleep(1.0)
        return taken


async def test_a_timed_out_lease_acquire_is_released(
    authority: MockAuthority, client_id: str
) -> None:
    store = LostReplyStore(keys=[KEY], timeout=0.1, lease_seconds=30)
    async with broker_on(MockTransport(authority=authority), client_id, store) as broker:
        token = await broker.token(SCOPE)
        assert broker.stats.store_errors >= 1
    assert token.client_id == client_id
    lease = lease_name(cache_identity(TokenRequest.create(client_id, SCOPE)))
    assert await MemoryStore.acquire(store, lease, "someone else", 5)  # free, not held 30 s


async def test_a_slow_fetch_keeps_its_lease(
    make_shared_store: StoreFactory, authority: MockAuthority, client_id: str
) -> None:
    """The holder renews its lease while the transport takes longer than the lease."""
    transport = MockTransport(authority=authority, latency=1.2)
    async with (
        broker_on(transport, client_id, make_shared_store(lease_seconds=0.4)) as first,
        broker_on(transport, client_id, make_shared_store(lease_seconds=0.4)) as second,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(first.token, SCOPE)
        await anyio.sleep(0.1)
        tg.start_soon(second.token, SCOPE)
    assert transport.calls == 1
    assert second.stats.store_hits == 1


# --- events ----------------------------------------------------------------------------


async def test_hostile_events_change_nothing_and_a_real_revocation_still_arrives(
    make_store: StoreFactory, authority: MockAuthority, client_id: str
) -> None:
    transport = MockTransport(authority=authority)
    async with (
        broker_on(transport, client_id, make_store()) as first,
        broker_on(transport, client_id, make_store()) as second,
    ):
        await anyio.sleep(0.3)  # both listeners subscribed
        token = await first.token(SCOPE)
        assert (await second.token(SCOPE)).value == token.value
        store, agent = second.store, agent_digest(client_id)
        assert store is not None
        now = time.time()
        genuine = EventSigner([KEY], store.channel)
        valid = genuine.seal("revoke", ["intruder", agent, "-"], now)
        hostile: list[str] = [
            f"revoke intruder {agent} -",  # the old, unauthenticated form
            EventSigner([OTHER_KEY], store.channel).seal("revoke", ["x", agent, "-"], now),
            EventSigner([KEY], "another-deployment:events").seal("revoke", ["x", agent, "-"], now),
            genuine.seal("revoke", ["x", agent, "-"], now - 3600),  # captured an hour ago
            valid[:-10],  # truncated
            valid[:-1] + ("0" if valid[-1] != "0" else "1"),  # one bit of the MAC
            valid.replace("revoke", "ready", 1),  # another kind under the same MAC
            valid + " " + "A" * MAX_EVENT_BYTES,  # oversized
            "\x00\xff" * 300,
            "",
        ]
        for message in hostile:
            await store.publish(message)
        await anyio.sleep(0.5)  # SQLite polls every 0.1 s
        assert second.cached_token(SCOPE) is not None  # nothing acted on
        fleet = fleet_of(second)
        assert sum(fleet.events_dropped.values()) >= len(hostile) - 1
        assert first.invalidate(token)  # a real revocation
        with anyio.fail_after(3):
            while second.cached_token(SCOPE) is not None:  # noqa: ASYNC110 (polled on purpose)
                await anyio.sleep(0.005)


async def test_a_replayed_event_is_acted_on_once(
    make_store: StoreFactory, authority: MockAuthority, client_id: str
) -> None:
    transport = MockTransport(authority=authority)
    async with broker_on(transport, client_id, make_store()) as broker:
        await anyio.sleep(0.3)
        store = broker.store
        assert store is not None
        message = EventSigner([KEY], store.channel).seal("ready", ["t:nothing"], time.time())
        await store.publish(message)
        await store.publish(message)
        await anyio.sleep(0.4)
        fleet = fleet_of(broker)
        assert fleet.events_dropped.get("replayed") == 1


# --- Redis credentials and connections ------------------------------------------------


@pytest.fixture
def redis_with_password(tmp_path_factory: pytest.TempPathFactory) -> Any:
    binary = require_redis_server()
    cli = require_binary("redis-cli")
    directory = Path(tmp_path_factory.mktemp("redis"))
    server = RedisServer(binary, directory, "--requirepass", "default-s3cret").start()
    try:
        acl = ["ACL", "SETUSER", "fleet", "on", ">fleet-s3cret", "~authsec:*", "&*", "+@all"]
        subprocess.run(
            [cli, "-p", str(server.port), "--no-auth-warning", "-a", "default-s3cret", *acl],
            check=True,
            capture_output=True,
        )
        yield server
    finally:
        server.stop()


async def test_redis_credentials_in_the_url_and_a_wrong_one_never_shown(
    redis_with_password: RedisServer, authority: MockAuthority, client_id: str
) -> None:
    from authsec_crewai.stores.redis import RedisStore

    port = redis_with_password.port
    transport = MockTransport(authority=authority)
    for url in (
        f"redis://:default-s3cret@127.0.0.1:{port}/0",  # requirepass
        f"redis://fleet:fleet-s3cret@127.0.0.1:{port}/0",  # an ACL user
    ):
        async with (
            broker_on(transport, client_id, RedisStore(url, keys=[KEY])) as first,
            broker_on(transport, client_id, RedisStore(url, keys=[KEY])) as second,
        ):
            await first.token(SCOPE)
            await second.token(SCOPE)
            assert second.stats.store_hits == 1
            assert second.stats.store_errors == 0
        transport = MockTransport(authority=authority)
    wrong = f"redis://fleet:not-the-pa55word@127.0.0.1:{port}/0"
    store = RedisStore(wrong, keys=[KEY])
    assert "not-the-pa55word" not in repr(store)
    assert "fleet:***@" in repr(store)
    with capture_logs() as logs, pytest.raises(errors.ConfigurationError) as caught:
        async with broker_on(transport, client_id, store):
            pass
    assert "refused the credentials" in str(caught.value)
    assert "not-the-pa55word" not in str(caught.value)
    assert "not-the-pa55word" not in repr(logs)
    settings = AuthSecSettings(store=wrong, store_key="A" * 43)
    assert "not-the-pa55word" not in repr(settings)


async def test_connections_do_not_grow_with_agents(
    redis_server: RedisServer, authority: MockAuthority
) -> None:
    """One broker serving ten agents at once opens its bounded pool and one listener."""
    import coredis

    from authsec_crewai.stores.redis import DEFAULT_MAX_CONNECTIONS, RedisStore

    transport = MockTransport(authority=authority, latency=0.05)
    agents = [str(uuid.uuid4()) for _ in range(10)]
    store = RedisStore(redis_server.url, keys=[KEY])
    async with (
        coredis.Redis("127.0.0.1", redis_server.port) as admin,
        TokenBroker(transport, store=store, close_transport=False) as broker,
    ):
        async with anyio.create_task_group() as tg:
            for agent in agents:
                for _ in range(20):
                    tg.start_soon(broker.token, SCOPE, agent)
        clients = (await admin.client_list()) or []
        others = [c for c in clients if c.get("cmd") not in ("client|list", "client")]
    assert transport.calls == 10
    assert len(others) <= DEFAULT_MAX_CONNECTIONS + 1, others


# --- TLS ---------------------------------------------------------------------------------


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def issue(
        name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, Any], ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(issuer[0])
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(issuer[1], hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = issue("test CA", ca_key, (ca_name, ca_key), ca=True)
    files: dict[str, Path] = {}
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue(role, key, (ca_name, ca_key), ca=False)
        files[f"{role}_cert"] = directory / f"{role}.pem"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"] = directory / f"{role}.key"
        files[f"{role}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    files["ca"] = directory / "ca.pem"
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return files


@pytest.fixture
def redis_tls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A redis-server that speaks TLS (and asks for a client certificate) on ``tls_port``."""
    binary = require_redis_server()
    directory = Path(tmp_path_factory.mktemp("redis-tls"))
    files = _certificates(directory)
    tls_port = _free_tcp_port()
    server = RedisServer(
        binary,
        directory,
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(files["server_cert"]),
        "--tls-key-file",
        str(files["server_key"]),
        "--tls-ca-cert-file",
        str(files["ca"]),
        "--tls-auth-clients",
        "yes",
    ).start()
    try:
        yield tls_port, files
    finally:
        server.stop()


def _free_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_rediss_with_a_ca_bundle_and_a_client_certificate(
    redis_tls: Any, authority: MockAuthority, client_id: str
) -> None:
    from authsec_crewai.stores.redis import RedisStore

    port, files = redis_tls
    url = f"rediss://127.0.0.1:{port}/0"
    tls = {"tls_ca": files["ca"], "tls_cert": files["client_cert"], "tls_key": files["client_key"]}
    transport = MockTransport(authority=authority)
    async with (
        broker_on(transport, client_id, RedisStore(url, keys=[KEY], **tls)) as first,
        broker_on(transport, client_id, RedisStore(url, keys=[KEY], **tls)) as second,
    ):
        await first.token(SCOPE)
        await second.token(SCOPE)
        assert second.stats.store_hits == 1
        assert second.stats.store_errors == 0
    # The server's CA is not in the system's trust store: a configuration error, said so.
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_STORE_TLS_CA"):
        async with broker_on(transport, client_id, RedisStore(url, keys=[KEY])):
            pass
    with pytest.raises(errors.ConfigurationError, match="rediss://"):
        RedisStore(f"redis://127.0.0.1:{port}/0", keys=[KEY], tls_ca=files["ca"])


# --- URLs and event keys (no event loop) -----------------------------------------------


@pytest.mark.parametrize(
    ("url", "topology", "hosts", "masked"),
    [
        ("redis://h:6379/2", "node", [("h", 6379)], "redis://h:6379/2"),
        ("rediss://u:p%40ss@h/0", "node", [("h", 6379)], "rediss://u:***@h:6379/0"),
        ("redis://:pw@h:1/0", "node", [("h", 1)], "redis://:***@h:1/0"),
        (
            "redis+cluster://u:pw@a:7000,b:7001,[::1]:7002",
            "cluster",
            [("a", 7000), ("b", 7001), ("::1", 7002)],
            "redis+cluster://u:***@a:7000,b:7001,[::1]:7002",
        ),
        (
            "rediss+sentinel://:pw@s1,s2:26380/svc/3",
            "sentinel",
            [("s1", 26379), ("s2", 26380)],
            "rediss+sentinel://:***@s1:26379,s2:26380/svc/3",
        ),
    ],
)
def test_redis_urls_are_read_one_way_and_shown_masked(
    url: str, topology: str, hosts: list[tuple[str, int]], masked: str
) -> None:
    from authsec_crewai._redis_urls import parse_redis_url

    target = parse_redis_url(url)
    assert target.topology == topology
    assert list(target.hosts) == hosts
    assert target.masked() == masked
    assert "pw" not in repr(target) and "p@ss" not in repr(target)
    AuthSecSettings(store=url, store_key="A" * 43)  # the settings accept what the store reads


@pytest.mark.parametrize(
    "url",
    [
        "redis://a:1,b:2/0",  # several hosts for one node
        "redis+sentinel://:s3cr3t-pw@h:26379",  # no service
        "redis+cluster://:s3cr3t-pw@h:7000/4",  # a Cluster has only db 0
        "redis://:s3cr3t-pw@h:notaport/0",
        "redis://:s3cr3t-pw@h:6379/zero",
        "redis+unknown://:s3cr3t-pw@h",
    ],
)
def test_a_wrong_redis_url_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(errors.ConfigurationError) as caught:
        AuthSecSettings(store=url)
    assert "s3cr3t-pw" not in str(caught.value)
    assert "AUTHSEC_STORE" in str(caught.value)


def test_events_verify_under_every_key_of_a_rotation() -> None:
    old, new = os.urandom(32), os.urandom(32)
    sent = EventSigner([old], "authsec:events").seal("ready", ["t:x"], time.time())
    assert EventSigner([new, old], "authsec:events").open(sent, time.time()).args == ("t:x",)
    rotated = EventSigner([new, old], "authsec:events").seal("ready", ["t:y"], time.time())
    assert EventSigner([new], "authsec:events").open(rotated, time.time()).args == ("t:y",)
    with pytest.raises(EventRejected, match="key mismatch"):
        EventSigner([old], "authsec:events").open(rotated, time.time())


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
async def test_an_unreachable_redis_is_an_outage_unless_the_store_is_required(
    scheme: str, authority: MockAuthority, client_id: str
) -> None:
    from authsec_crewai.stores.redis import RedisStore

    url = f"{scheme}://:pa55-in-url@127.0.0.1:{_free_tcp_port()}"  # nothing listens there
    transport = MockTransport(authority=authority)
    with capture_logs() as logs:
        store = RedisStore(url, keys=[KEY], timeout=0.2)
        async with broker_on(transport, client_id, store) as broker:
            token = await broker.token(SCOPE)  # fetched on its own
    assert token.client_id == client_id
    assert transport.calls == 1
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_STORE_REQUIRED") as caught:
        async with broker_on(transport, client_id, RedisStore(url, keys=[KEY], required=True)):
            pass
    assert "pa55-in-url" not in str(caught.value) and "pa55-in-url" not in repr(logs)
