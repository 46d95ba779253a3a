"""A fleet of real processes as OAuth clients of the test authorization server.

Every worker (fleet_worker.py) builds its broker from AUTHSEC_* settings in
``oauth`` mode, as an application would; half run on asyncio, half on trio.
The server (uvicorn, in this test process) counts what reaches it and revokes
a whole refresh-token family the moment a refresh token is presented twice.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _redis import RedisServer
from fleetkit import Worker, mixed, start_fleet, stop_fleet
from joserfc.jwk import RSAKey
from oauthkit import AGENT_KEY_ID, BASIC_CLIENT, JWT_CLIENT, PUBLIC_CLIENT, SECRET, OAuthKit

KEY_TEXT = base64.urlsafe_b64encode(os.urandom(32)).decode()
Fleet = Callable[..., list[Worker]]


@pytest.fixture
def fleet(oauth: OAuthKit) -> Iterator[Fleet]:
    started: list[Worker] = []

    def start(count: int, store: str, **extra: str) -> list[Worker]:
        env = {
            "AUTHSEC_MODE": "oauth",
            "AUTHSEC_OAUTH_ISSUER": oauth.issuer,
            "AUTHSEC_RESOURCE": oauth.resource,
            "AUTHSEC_STORE": store,
            "AUTHSEC_STORE_KEY": KEY_TEXT,
            **extra,
        }
        workers = start_fleet(mixed(count), env)
        started.extend(workers)
        return workers

    yield start
    stop_fleet(started, graceful=False)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tokens.db'}"
    redis: RedisServer = request.getfixturevalue("redis_server")
    return redis.url


def _herd(workers: list[Worker], n: int, scope: str = "read:records") -> list[dict[str, object]]:
    for worker in workers:
        worker.send(op="herd", n=n, scope=scope)
    return [worker.answer() for worker in workers]


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.mark.parametrize("method", ["client_secret_basic", "private_key_jwt"])
def test_a_cold_fleet_makes_one_client_credentials_request(
    oauth: OAuthKit,
    store_url: str,
    fleet: Fleet,
    method: str,
    client_key: RSAKey,
    tmp_path: Path,
) -> None:
    pem = client_key.as_pem(private=True)
    (tmp_path / "agent.pem").write_bytes(pem)
    credentials = (
        {"AUTHSEC_CLIENT_ID": BASIC_CLIENT, "AUTHSEC_CLIENT_SECRET": SECRET}
        if method == "client_secret_basic"
        else {
            "AUTHSEC_CLIENT_ID": JWT_CLIENT,
            "AUTHSEC_CLIENT_KEY": str(tmp_path / "agent.pem"),
            "AUTHSEC_CLIENT_KEY_ID": AGENT_KEY_ID,
        }
    )
    workers = fleet(8, store_url, AUTHSEC_LOG_LEVEL="DEBUG", **credentials)
    answers = _herd(workers, 200)
    assert [a["served"] for a in answers] == [200] * 8, [w.stderr()[-2000:] for w in workers]
    assert len({fp for a in answers for fp in a["fingerprints"]}) == 1  # type: ignore[attr-defined]
    assert oauth.token_requests == 1
    (grant,) = oauth.authority.grants
    assert grant.resources == (oauth.resource,) and grant.auth_method == method
    key_line = pem.decode().splitlines()[1]
    for worker in workers:
        logged = worker.stderr()
        assert SECRET not in logged and key_line not in logged


def test_a_rotating_chain_is_spent_once_per_turn_by_six_processes(
    oauth: OAuthKit, tmp_path: Path, fleet: Fleet
) -> None:
    lifetime, seconds = 3.0, 10.0
    oauth.authority.lifetime = lifetime
    seed = oauth.authority.issue_refresh_token(
        PUBLIC_CLIENT, ["read:records"], resources=[oauth.resource]
    )
    workers = fleet(
        6,
        f"sqlite:///{tmp_path / 'tokens.db'}",
        AUTHSEC_CLIENT_ID=PUBLIC_CLIENT,
        AUTHSEC_OAUTH_REFRESH_TOKEN=seed,  # the same deployment secret everywhere
    )
    for worker in workers:  # through several expiries, never stopping short of one
        worker.send(op="poll", seconds=seconds, every=0.05, before_exp=-1e9)
    answers = [worker.answer(timeout=60) for worker in workers]
    assert all(not a["errors"] for a in answers), answers
    assert all(int(a["served"]) > 20 for a in answers)
    presented = oauth.authority.refresh_presented
    assert set(presented.values()) == {1}, presented  # no refresh token seen twice
    assert not oauth.authority.revoked_families
    grants = len(oauth.authority.grants)
    expiries = seconds / lifetime
    # About one grant per token life for the whole fleet, not one per process (6
    # processes refreshing on their own would make ~6x as many). A token is refreshed
    # in its advisory window, ~20% (plus jitter) before it expires, so a turn lasts
    # ~0.8 of a life: 10 s of 3 s tokens measured 6 grants, the first included.
    assert expiries <= grants <= 2 * expiries + 1, grants
    for worker in workers:
        assert seed not in worker.stderr()


@pytest.mark.parametrize("grace", [0.0, 60.0], ids=["strict-server", "reuse-grace-server"])
def test_sigkill_between_the_refresh_grant_and_the_store_write(
    oauth: OAuthKit, tmp_path: Path, fleet: Fleet, grace: float
) -> None:
    """The holder dies after the server rotated, before the rotated token was kept.

    What the design does: the chain still holds the spent token, marked "being
    spent". The next process (once the dead holder's leases run out) warns and
    presents it again. A strict server (RFC 9700 reuse detection) then revokes
    the family and every caller gets InvalidGrantError saying the chain was lost
    in an interrupted refresh (not silently, and not retried); a server with a
    reuse grace period answers again and the chain goes on.
    """
    oauth.authority.reuse_grace = grace
    seed = oauth.authority.issue_refresh_token(PUBLIC_CLIENT, ["read:records"])
    holder, survivor = fleet(
        2,
        f"sqlite:///{tmp_path / 'tokens.db'}",
        AUTHSEC_CLIENT_ID=PUBLIC_CLIENT,
        AUTHSEC_OAUTH_REFRESH_TOKEN=seed,
        AUTHSEC_TIMEOUT="3",
        AUTHSEC_RETRY_BUDGET="2",  # the chain's lease: 3 + 5 s
        AUTHSEC_STORE_LEASE="2",
    )
    oauth.authority.answer_delay = 2.5  # the rotated token is on its way back...
    holder.send(op="herd", n=5)
    _wait_for(lambda: len(oauth.authority.grants) == 1)  # ...the server has rotated
    holder.kill()  # SIGKILL: nothing of the holder runs again
    oauth.authority.answer_delay = 0.0
    answer = survivor.ask(op="herd", n=5, timeout=60)
    logged = survivor.stderr()
    assert "authsec.oauth.chain.interrupted" in logged  # the window is seen and said
    if grace:
        assert answer["served"] == 5, logged[-3000:]
        assert not oauth.authority.revoked_families
        assert survivor.ask(op="stats")["stats"]["fetches"] >= 1
        return
    assert answer["served"] == 0 and answer["error_count"] == 5
    errors_seen = " ".join(answer["errors"])
    assert "InvalidGrantError" in errors_seen and "interrupted refresh" in errors_seen
    assert "sign in again" in errors_seen.lower()
    assert oauth.authority.revoked_families  # what the strict server did
    requests = oauth.token_requests
    again = survivor.ask(op="herd", n=5, timeout=60)
    assert again["error_count"] == 5
    assert "InvalidGrantError" in " ".join(again["errors"])
    assert oauth.token_requests == requests  # never retried in a loop
    assert seed not in logged
