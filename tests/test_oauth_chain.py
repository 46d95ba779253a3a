"""A rotating refresh-token chain in a shared store: spent exactly once per turn.

Each broker here stands for a process (its own store connection, its own
chain object, one seed from "the deployment's configuration"); the test AS
revokes the whole family the moment a refresh token is presented twice, so
any double spend shows up as a failure. test_oauth_fleet.py repeats the
important ones with real processes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import anyio
import pytest
from _redis import RedisServer
from oauthkit import PUBLIC_CLIENT, OAuthKit
from structlog.testing import capture_logs

from authsec_crewai import errors
from authsec_crewai.broker import TokenBroker
from authsec_crewai.stores import SQLiteStore, TokenStore
from authsec_crewai.stores.chain import ChainState, SharedRefreshChain
from authsec_crewai.testing import oauth_error
from authsec_crewai.testing.oauthserver import TOKEN_ENDPOINT
from authsec_crewai.transports import OAuthTransport

pytestmark = pytest.mark.anyio

KEY = b"c" * 32
SCOPES = ("read:records", "write:records")


class Fleetlet:
    """Brokers on one shared store (SQLite, or Redis when ``redis_url``), each with its
    own store connection and its own chain on the same seed."""

    def __init__(self, oauth: OAuthKit, path: Path, seed: str, redis_url: str = "") -> None:
        self.oauth, self.path, self.seed, self.redis_url = oauth, path, seed, redis_url

    def store(self) -> TokenStore:
        if self.redis_url:
            from authsec_crewai.stores.redis import RedisStore

            return RedisStore(self.redis_url, keys=[KEY])
        return SQLiteStore(self.path, keys=[KEY])

    def broker(self, seed: str | None = None, **chain: Any) -> TokenBroker:
        store = self.store()
        refresh = SharedRefreshChain(
            seed or self.seed,
            store,
            issuer=self.oauth.issuer,
            client_id=PUBLIC_CLIENT,
            lease_seconds=chain.pop("lease_seconds", 8.0),
            **chain,
        )
        transport = OAuthTransport(
            issuer=self.oauth.issuer, client_id=PUBLIC_CLIENT, refresh_chain=refresh, timeout=5
        )
        return TokenBroker(transport, client_id=PUBLIC_CLIENT, store=store)


@pytest.fixture
def fleetlet(oauth: OAuthKit, tmp_path: Path) -> Fleetlet:
    seed = oauth.authority.issue_refresh_token(PUBLIC_CLIENT, SCOPES)
    return Fleetlet(oauth, tmp_path / "tokens.db", seed)


@pytest.fixture(params=["sqlite", "redis"])
def any_fleetlet(request: pytest.FixtureRequest, oauth: OAuthKit, tmp_path: Path) -> Fleetlet:
    seed = oauth.authority.issue_refresh_token(PUBLIC_CLIENT, SCOPES)
    if request.param == "sqlite":
        return Fleetlet(oauth, tmp_path / "tokens.db", seed)
    redis: RedisServer = request.getfixturevalue("redis_server")
    return Fleetlet(oauth, tmp_path / "unused.db", seed, redis_url=redis.url)


async def _stored(fleetlet: Fleetlet) -> ChainState | None:
    """The chain as the store holds it, read by a process of its own."""
    async with SQLiteStore(fleetlet.path, keys=[KEY]) as store:
        chain = SharedRefreshChain(
            fleetlet.seed, store, issuer=fleetlet.oauth.issuer, client_id=PUBLIC_CLIENT
        )
        return await chain.read()


def _chain(broker: TokenBroker) -> SharedRefreshChain:
    transport = broker.transport
    assert isinstance(transport, OAuthTransport)
    chain = transport._chain
    assert isinstance(chain, SharedRefreshChain)
    return chain


async def test_brokers_sharing_a_seed_spend_each_refresh_token_once(
    any_fleetlet: Fleetlet, oauth: OAuthKit
) -> None:
    fleetlet = any_fleetlet
    brokers = [fleetlet.broker() for _ in range(4)]
    errors_seen: list[BaseException] = []
    async with contextlib.AsyncExitStack() as stack:
        for broker in brokers:
            await stack.enter_async_context(broker)

        async def ask(broker: TokenBroker, scopes: str) -> None:
            try:
                await broker.token(scopes)
            except errors.AuthSecError as exc:  # pragma: no cover (what the test forbids)
                errors_seen.append(exc)

        # Different scope sets: different cache keys, so the brokers' own single flight
        # does not serialise them; only the chain's lease does.
        async with anyio.create_task_group() as tg:
            for broker in brokers:
                for scopes in ("read:records", "write:records", "read:records write:records"):
                    for _ in range(5):
                        tg.start_soon(ask, broker, scopes)
        state = await _chain(brokers[0]).read()
    assert errors_seen == []
    assert set(oauth.authority.refresh_presented.values()) == {1}
    assert not oauth.authority.revoked_families
    grants = [g for g in oauth.authority.grants if g.grant_type == "refresh_token"]
    assert state is not None and state.generation == len(grants) and state.spending is None
    if not fleetlet.redis_url:
        stored = fleetlet.path.read_bytes()
        assert fleetlet.seed.encode() not in stored and state.token.encode() not in stored


async def test_a_process_started_later_with_the_spent_seed_joins_the_chain(
    fleetlet: Fleetlet, oauth: OAuthKit
) -> None:
    async with fleetlet.broker() as first:
        await first.token("read:records")
    async with fleetlet.broker() as later:  # the same configuration, seed long spent
        await later.token("write:records")
    assert set(oauth.authority.refresh_presented.values()) == {1}
    assert len(oauth.authority.refresh_presented) == 2


async def test_invalid_grant_ends_the_chain_for_every_process_without_asking_again(
    fleetlet: Fleetlet, oauth: OAuthKit
) -> None:
    oauth.faults.add(oauth_error("invalid_grant", "revoked by an admin"), path=TOKEN_ENDPOINT)
    async with fleetlet.broker() as one, fleetlet.broker() as two:
        with pytest.raises(errors.InvalidGrantError) as first:
            await one.token("read:records")
        for _ in range(3):
            with pytest.raises(errors.InvalidGrantError) as later:
                await two.token("write:records")
    assert first.value.terminal
    assert "Sign in again" in str(first.value)
    assert "AUTHSEC_OAUTH_REFRESH_TOKEN" in str(first.value)
    assert "chain is over" in str(later.value)
    assert oauth.token_requests == 1  # never retried, by anyone
    assert fleetlet.seed not in str(first.value) + str(later.value)


async def test_a_new_sign_in_revives_a_dead_chain(fleetlet: Fleetlet, oauth: OAuthKit) -> None:
    oauth.faults.add(oauth_error("invalid_grant"), path=TOKEN_ENDPOINT)
    async with fleetlet.broker() as broker:
        with pytest.raises(errors.InvalidGrantError):
            await broker.token("read:records")
    fresh = oauth.authority.issue_refresh_token(PUBLIC_CLIENT, SCOPES)
    async with fleetlet.broker(seed=fresh) as broker:
        token = await broker.token("read:records")
    assert token.permissions == {"read:records"}
    async with fleetlet.broker() as stale:  # still configured with the old seed: joins
        await stale.token("write:records")
    assert set(oauth.authority.refresh_presented.values()) == {1}


async def test_a_spend_interrupted_after_the_server_rotated_is_never_lost_silently(
    fleetlet: Fleetlet, oauth: OAuthKit
) -> None:
    oauth.authority.answer_delay = 5.0
    # The "process" stops (its broker closes, cancelling the grant) while the rotated
    # token is on its way back.
    async with fleetlet.broker() as victim, anyio.create_task_group() as tg:
        tg.start_soon(victim.token, "read:records")
        while not oauth.authority.grants:  # noqa: ASYNC110 (the server's thread)
            await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    oauth.authority.answer_delay = 0.0
    state = await _stored(fleetlet)
    assert state is not None and state.spending is not None  # the evidence survives
    with capture_logs() as logs:
        async with fleetlet.broker() as survivor:
            with pytest.raises(errors.InvalidGrantError, match="interrupted refresh"):
                await survivor.token("read:records")
    assert any(line["event"] == "authsec.oauth.chain.interrupted" for line in logs)


async def test_a_server_with_a_reuse_grace_period_lets_the_chain_survive_the_window(
    fleetlet: Fleetlet, oauth: OAuthKit
) -> None:
    oauth.authority.reuse_grace = 60.0
    oauth.authority.answer_delay = 5.0
    async with fleetlet.broker() as victim, anyio.create_task_group() as tg:
        tg.start_soon(victim.token, "read:records")
        while not oauth.authority.grants:  # noqa: ASYNC110 (the server's thread)
            await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    oauth.authority.answer_delay = 0.0
    async with fleetlet.broker() as survivor:
        await survivor.token("read:records")
        await survivor.token("write:records")
    assert not oauth.authority.revoked_families
    assert max(oauth.authority.refresh_presented.values()) == 2  # the seed, in the window
