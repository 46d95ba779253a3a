"""OAuthTransport, side by side in one run, against the test authorization server.

(a) cold fleets: N = 1, 2, 4, 8 worker processes x 200 tasks each, all asking
    at once for a client_credentials token (client_secret_basic, RFC 8707
    resource) from the test AS on 127.0.0.1 (uvicorn, 20 ms added latency),
    sharing a SQLite store: token requests that reached the server, and the
    time until every task was served;
(b) warm hits: ``await broker.token()`` with OAuthTransport against the same
    with the AuthSec (mock) transport, interleaved: the cache is the hot path,
    so the two should cost the same;
(c) per request, a token in hand: httpx with ``BrokerAuth`` against Authlib's
    ``AsyncOAuth2Client`` (on httpx2), each minus its bare client (the floor),
    both against an in-process transport answering 200;
(d) 1,000 concurrent requests meet an expired token, in one process: token
    requests made by Authlib's client and by the broker (the test AS counts).

Authlib is measured only when it is installed (``pip install authlib``); the
library never depends on it. Workers are tests/fleet_worker.py processes
(asyncio and trio alternating), started and ready before the clock starts.
"""

from __future__ import annotations

import base64
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import structlog

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from fleetkit import mixed, start_fleet, stop_fleet  # noqa: E402

from authsec_crewai.auth import BrokerAuth  # noqa: E402
from authsec_crewai.broker import TokenBroker  # noqa: E402
from authsec_crewai.testing import (  # noqa: E402
    LoopbackServer,
    MockFaults,
    OAuthAuthority,
    create_oauth_app,
)
from authsec_crewai.testing.oauthserver import TOKEN_ENDPOINT  # noqa: E402
from authsec_crewai.transports import OAuthTransport  # noqa: E402
from authsec_crewai.transports.mock import MockTransport  # noqa: E402

TASKS = 200
SIZES = (1, 2, 4, 8)
LATENCY = 0.02
CLIENT, SECRET, SCOPE = "bench-agent", "bench-secret", "read:records"
MOCK_CLIENT = "00000000-0000-4000-8000-000000000001"
KEY_TEXT = base64.urlsafe_b64encode(os.urandom(32)).decode()
CROWD = 1000


def quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))


def mount(server: LoopbackServer, *, latency: float = 0.0) -> OAuthAuthority:
    authority = OAuthAuthority()
    authority.register_client(CLIENT, secret=SECRET)
    authority.register_resource("/mcp", scope=[SCOPE])
    server.app = create_oauth_app(authority, faults=MockFaults(latency=latency))
    return authority


def cold_fleet(server: LoopbackServer, size: int, folder: Path) -> dict[str, float]:
    authority = mount(server, latency=LATENCY)
    env = {
        "AUTHSEC_MODE": "oauth",
        "AUTHSEC_OAUTH_ISSUER": server.url,
        "AUTHSEC_RESOURCE": server.url + "/mcp",
        "AUTHSEC_CLIENT_ID": CLIENT,
        "AUTHSEC_CLIENT_SECRET": SECRET,
        "AUTHSEC_STORE": f"sqlite:///{folder / f'fleet-{size}.db'}",
        "AUTHSEC_STORE_KEY": KEY_TEXT,
        "AUTHSEC_LOG_LEVEL": "ERROR",
    }
    workers = start_fleet(mixed(size), env)
    try:
        started = time.time()
        for worker in workers:
            worker.send(op="herd", n=TASKS)
        answers = [worker.answer(timeout=120) for worker in workers]
        served = sum(int(a["served"]) for a in answers)
        finished = max(float(a["done_at"]) for a in answers)
    finally:
        stop_fleet(workers)
    return {
        "served": served,
        "requests": server.app.state.counts[TOKEN_ENDPOINT],  # type: ignore[union-attr]
        "grants": len(authority.grants),
        "seconds": finished - started,
    }


async def per_call(call: Callable[[], Awaitable[Any]], n: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(n):
        await call()
    return (time.perf_counter_ns() - started) / n


async def warm_hits(server: LoopbackServer) -> tuple[float, float]:
    mount(server)
    oauth = OAuthTransport(
        issuer=server.url, resource=server.url + "/mcp", client_id=CLIENT, client_secret=SECRET
    )
    async with (
        TokenBroker(oauth, client_id=CLIENT) as a,
        TokenBroker(MockTransport(), client_id=MOCK_CLIENT) as b,
    ):
        await a.token(SCOPE)
        await b.token(SCOPE)
        rounds: list[tuple[float, float]] = []
        for _ in range(7):
            rounds.append(
                (
                    await per_call(lambda: a.token(SCOPE), 20_000),
                    await per_call(lambda: b.token(SCOPE), 20_000),
                )
            )
    return statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds)


async def per_request(server: LoopbackServer) -> dict[str, float] | None:
    try:
        import httpx2
        from authlib.integrations.httpx_client import AsyncOAuth2Client
    except ImportError:
        return None
    mount(server)
    oauth = OAuthTransport(
        issuer=server.url, resource=server.url + "/mcp", client_id=CLIENT, client_secret=SECRET
    )
    url = server.url + "/mcp"
    n = 3000
    async with TokenBroker(oauth, client_id=CLIENT) as broker:
        token = await broker.token(SCOPE)
        ours = httpx.AsyncClient(
            transport=httpx.MockTransport(lambda r: httpx.Response(200)),
            auth=BrokerAuth(broker, SCOPE),
        )
        bare = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
        theirs = AsyncOAuth2Client(
            client_id=CLIENT,
            client_secret=SECRET,
            token={
                "access_token": token.value,
                "token_type": "Bearer",
                "expires_at": int(time.time()) + 3600,
            },
            transport=httpx2.MockTransport(lambda r: httpx2.Response(200)),
        )
        bare2 = httpx2.AsyncClient(transport=httpx2.MockTransport(lambda r: httpx2.Response(200)))
        rounds = []
        for _ in range(5):
            rounds.append(
                (
                    await per_call(lambda: ours.get(url), n),
                    await per_call(lambda: bare.get(url), n),
                    await per_call(lambda: theirs.get(url), n),
                    await per_call(lambda: bare2.get(url), n),
                )
            )
        for client in (ours, bare, theirs, bare2):
            await client.aclose()
    med = [statistics.median(r[i] for r in rounds) for i in range(4)]
    return {"ours": med[0], "httpx": med[1], "authlib": med[2], "httpx2": med[3]}


async def crowd_meets_expired(server: LoopbackServer) -> dict[str, int] | None:
    try:
        import httpx2
        from authlib.integrations.httpx_client import AsyncOAuth2Client
    except ImportError:
        return None
    url = server.url + "/mcp"
    results: dict[str, int] = {}

    authority = mount(server)
    expired = {"access_token": "expired", "token_type": "Bearer", "expires_at": 1}
    async with (
        AsyncOAuth2Client(
            client_id=CLIENT,
            client_secret=SECRET,
            token=expired,
            token_endpoint=server.url + TOKEN_ENDPOINT,
            grant_type="client_credentials",
            scope=SCOPE,
            resource=url,
            limits=httpx2.Limits(max_connections=100),
            timeout=httpx2.Timeout(120),
        ) as theirs,
        anyio.create_task_group() as tg,
    ):
        for _ in range(CROWD):
            tg.start_soon(theirs.get, url)
    results["authlib"] = len(authority.grants)

    authority = mount(server)
    oauth = OAuthTransport(issuer=server.url, resource=url, client_id=CLIENT, client_secret=SECRET)
    async with (
        TokenBroker(oauth, client_id=CLIENT) as broker,
        httpx.AsyncClient(
            auth=BrokerAuth(broker, SCOPE),
            limits=httpx.Limits(max_connections=100),
            timeout=httpx.Timeout(120),
        ) as ours,
        anyio.create_task_group() as tg,
    ):
        for _ in range(CROWD):
            tg.start_soon(ours.get, url)
    results["broker"] = len(authority.grants)
    return results


def main() -> None:
    quiet_logs()
    with LoopbackServer() as server, tempfile.TemporaryDirectory() as folder:
        print(f"(a) cold fleets x {TASKS} tasks, test AS with {LATENCY * 1000:.0f} ms latency")
        print("    processes  served  token requests  seconds to serve all")
        for size in SIZES:
            row = cold_fleet(server, size, Path(folder))
            print(
                f"    {size:9d}  {int(row['served']):6d}  {int(row['requests']):14d}  "
                f"{row['seconds']:.3f}"
            )
        oauth_ns, mock_ns = anyio.run(warm_hits, server)
        print(
            "(b) warm hit, await broker.token(): "
            f"OAuthTransport {oauth_ns:.0f} ns, AuthSec (mock) transport {mock_ns:.0f} ns, "
            f"ratio {oauth_ns / mock_ns:.2f}"
        )
        costs = anyio.run(per_request, server)
        if costs is None:
            print("(c) Authlib is not installed: per-request comparison skipped")
        else:
            ours = costs["ours"] - costs["httpx"]
            theirs = costs["authlib"] - costs["httpx2"]
            print(
                "(c) per request with a token in hand (auth cost above the bare client): "
                f"BrokerAuth {ours / 1000:.1f} us (httpx {costs['httpx'] / 1000:.1f} us), "
                f"Authlib AsyncOAuth2Client {theirs / 1000:.1f} us "
                f"(httpx2 {costs['httpx2'] / 1000:.1f} us)"
            )
        crowd = anyio.run(crowd_meets_expired, server)
        if crowd is None:
            print("(d) Authlib is not installed: expired-token crowd skipped")
        else:
            print(
                f"(d) {CROWD} concurrent requests meet an expired token: token requests "
                f"Authlib {crowd['authlib']}, broker {crowd['broker']}"
            )


if __name__ == "__main__":
    main()
