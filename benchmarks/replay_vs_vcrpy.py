"""Replaying a 1,000-interaction session: ReplayTransport vs vcrpy, with their floor.

One session is recorded twice from the same loopback mock server, once by each
tool: a delegation-token fetch through ``LiveTransport`` and 999 protected-API
GETs (``/secure-vault/{records,metrics}?page=<0..99>``, so most requests are
repeated identically several times). Each cassette is then replayed with the
server stopped:

- ``floor``: the same 999 GETs answered by a canned ``httpx.MockTransport``
  (no cassette at all: what any replay costs at least);
- ``authsec``: ``ReplayTransport`` (load the JSON cassette, then serve);
- ``vcrpy``: ``vcr.use_cassette`` (load the YAML cassette, patch httpx, serve),
  matching on method, path, query and body like ours.

Time is the best of several runs (five; two for vcrpy, whose replay of this
session takes tens of seconds), without tracemalloc; peak memory is
tracemalloc's peak over one run, cassette loading included. The table also
counts what each cassette file holds that it should not: JWT signatures and
Authorization headers (vcrpy's defaults keep both).

vcrpy is only needed here, never by the library or its tests:
``.venv/bin/pip install vcrpy``. Without it the vcrpy rows are skipped.
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import structlog

from authsec_crewai.testing import LoopbackServer, MockAuthority, create_app
from authsec_crewai.token import TokenRequest
from authsec_crewai.transports import LiveTransport, RecordingTransport, ReplayTransport

CLIENT_ID = str(uuid.uuid4())
API_CALLS = 999  # + 1 token fetch = 1,000 interactions
REPEATS = 5

try:
    import vcr
except ImportError:  # pragma: no cover - depends on the benchmark environment
    vcr = None


def quiet_logs() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    logging.getLogger("vcr").setLevel(logging.ERROR)


def paths() -> list[tuple[str, dict[str, str]]]:
    return [
        (f"/secure-vault/{'records' if i % 2 else 'metrics'}", {"page": str(i % 100)})
        for i in range(API_CALLS)
    ]


async def session(transport: Any, base_url: str, api: httpx.AsyncBaseTransport | None) -> int:
    """One token, then every API call with it; returns the bytes received (a checksum)."""
    request = TokenRequest.create(CLIENT_ID, ["read:records", "read:metrics"])
    token = await transport.fetch_token(request)
    headers = {"authorization": f"Bearer {token.value}"}
    received = 0
    async with httpx.AsyncClient(transport=api, base_url=base_url) as client:
        for path, params in paths():
            response = await client.get(path, params=params, headers=headers)
            if response.status_code != 200:
                raise SystemExit(f"unexpected {response.status_code} for {path}")
            received += len(response.content)
    return received


def record(directory: Path) -> tuple[Path, Path | None, str]:
    """Record the session with both tools; the server is stopped on return."""
    authority = MockAuthority()
    authority.delegate(CLIENT_ID)
    ours = directory / "authsec.json"
    theirs = directory / "vcrpy.yaml"
    with LoopbackServer(create_app(authority)) as server:
        url = server.url

        async def with_authsec() -> None:
            recording = RecordingTransport(LiveTransport(url), ours, record_mode="all")
            try:
                await session(recording, url, recording.api())
            finally:
                await recording.aclose()

        anyio.run(with_authsec)
        if vcr is not None:

            async def with_vcrpy() -> None:
                live = LiveTransport(url)
                try:
                    await session(live, url, live.api())
                finally:
                    await live.aclose()

            with _vcr().use_cassette(str(theirs), record_mode="all"):
                anyio.run(with_vcrpy)
    return ours, (theirs if vcr is not None else None), url


def _vcr() -> Any:
    return vcr.VCR(match_on=["method", "path", "query", "body"])


def replay_floor(url: str) -> Callable[[], Awaitable[int]]:
    canned = httpx.Response(200, json={"records": [], "count": 0})

    class Canned:
        async def fetch_token(self, request: TokenRequest) -> Any:
            return type("T", (), {"value": "x.y.z"})()

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=canned.content, headers=canned.headers)

    async def run() -> int:
        return await session(Canned(), url, httpx.MockTransport(answer))

    return run


def replay_authsec(path: Path, url: str) -> Callable[[], Awaitable[int]]:
    async def run() -> int:
        replay = ReplayTransport(path, allow_playback_repeats=False)
        return await session(replay, url, replay.api())

    return run


def replay_vcrpy(path: Path, url: str) -> Callable[[], Awaitable[int]]:
    async def run() -> int:
        with _vcr().use_cassette(str(path), record_mode="none", allow_playback_repeats=False):
            live = LiveTransport(url)
            try:
                return await session(live, url, live.api())
            finally:
                await live.aclose()

    return run


def measure(run: Callable[[], Awaitable[int]], repeats: int = REPEATS) -> tuple[float, float, int]:
    """(best seconds, peak MiB, bytes received)."""
    best = float("inf")
    received = 0
    for _ in range(repeats):
        started = time.perf_counter()
        received = anyio.run(run)
        best = min(best, time.perf_counter() - started)
    tracemalloc.start()
    try:
        anyio.run(run)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return best, peak / 2**20, received


_SIGNED_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.(?!REDACTED\b)[\w-]{16,}")


def leaks(path: Path) -> tuple[int, int]:
    """(signed JWTs, Authorization headers) in a cassette file."""
    text = path.read_text(encoding="utf-8")
    return len(_SIGNED_JWT.findall(text)), len(re.findall(r"(?im)^\s*-?\s*\"?authorization", text))


def main() -> int:
    quiet_logs()
    with tempfile.TemporaryDirectory(prefix="replay-bench-") as tmp:
        ours, theirs, url = record(Path(tmp))
        rows: list[tuple[str, float, float, int, str, str]] = []
        floor_s, floor_mb, _ = measure(replay_floor(url))
        rows.append(("floor (canned httpx.MockTransport)", floor_s, floor_mb, 0, "-", "-"))
        ours_s, ours_mb, ours_bytes = measure(replay_authsec(ours, url))
        signed, auth = leaks(ours)
        rows.append(
            ("authsec-crewai ReplayTransport", ours_s, ours_mb, ours.stat().st_size, str(signed),
             str(auth))
        )  # fmt: skip
        if theirs is not None:
            # Two runs, not five: one takes tens of seconds (its matching is quadratic).
            theirs_s, theirs_mb, theirs_bytes = measure(replay_vcrpy(theirs, url), repeats=2)
            if theirs_bytes != ours_bytes:
                print(f"warning: replays differ ({ours_bytes} vs {theirs_bytes} bytes received)")
            signed, auth = leaks(theirs)
            rows.append(
                (f"vcrpy {vcr.__version__} use_cassette", theirs_s, theirs_mb,
                 theirs.stat().st_size, str(signed), str(auth))
            )  # fmt: skip
        else:
            print("vcrpy is not installed: skipping its rows (.venv/bin/pip install vcrpy)")

    print(f"\nReplaying 1 token fetch + {API_CALLS} API calls (1,000 interactions), "
          f"Python {sys.version.split()[0]}\n")  # fmt: skip
    header = ("replay", "time", "x floor", "peak mem", "file", "signed JWTs", "Authorization")
    print(f"{header[0]:<36} {header[1]:>9} {header[2]:>8} {header[3]:>10} {header[4]:>10} "
          f"{header[5]:>12} {header[6]:>14}")  # fmt: skip
    for name, seconds, mib, size, signed_jwts, auth_headers in rows:
        file_size = f"{size / 1024:.0f} KiB" if size else "-"
        print(
            f"{name:<36} {seconds * 1000:>7.0f}ms {seconds / floor_s:>7.1f}x {mib:>7.1f} MiB "
            f"{file_size:>10} {signed_jwts:>12} {auth_headers:>14}"
        )
    if theirs is not None:
        print(f"\nauthsec-crewai vs vcrpy: {theirs_s / ours_s:.1f}x faster, "
              f"{theirs_mb / ours_mb:.1f}x less peak memory")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
