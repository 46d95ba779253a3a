"""One process of a fleet: a broker built from AUTHSEC_* settings, driven over stdin.

Run as ``python fleet_worker.py asyncio|trio``. It prints ``{"ready": true}``
once its broker runs, then answers one JSON line per command:

- ``{"op": "herd", "n": 200, "scope": "...", "agent": "..."}``: n concurrent
  ``broker.token()`` (for ``agent`` when given, else the configured one); answers
  how many were served, the errors, the distinct fingerprints, stats.
- ``{"op": "poll", "seconds": s, "every": e, "before_exp": b}``: ask every e
  seconds for s seconds, stopping b seconds before the token expires (a caller
  living through a token's windows).
- ``{"op": "watch", "scope": "..."}``: answers with the wall time at which the
  cached token is gone (dropped by a revocation seen elsewhere).
- ``{"op": "invalidate", "scope": "..."}``: invalidate the cached token.
- ``{"op": "token", "scope": "..."}``: the cached token's value and client id.
- ``{"op": "stats"}``; ``quit`` (or end of input) stops the process.

Used by test_fleet.py and benchmarks/bench_stores.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

import anyio
import anyio.to_thread

from authsec_crewai.logging import configure
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.wiring import build_broker


def skew_the_clock() -> None:
    """``FLEET_CLOCK_SKEW=60``: this process's wall clock runs 60 s ahead (a host whose
    clock is off; negative: behind). Everything in the process reads the skewed time."""
    skew = float(os.environ.get("FLEET_CLOCK_SKEW", "0") or 0)
    if skew:
        real = time.time
        time.time = lambda: real() + skew


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def main() -> None:
    settings = AuthSecSettings()
    configure("json", settings.log_level)  # to stderr, where the tests read it
    async with build_broker(settings) as broker:

        def stats() -> dict[str, int]:
            return dataclasses.asdict(broker.stats)

        async def herd(n: int, scope: str, agent: str | None) -> None:
            served, failures, prints = 0, [], set()
            started = time.perf_counter()

            async def one() -> None:
                nonlocal served
                try:
                    token = await broker.token(scope, agent)
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                else:
                    served += 1
                    prints.add(token.fingerprint)

            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(one)
            say(
                {
                    "op": "herd",
                    "served": served,
                    "errors": failures[:5],
                    "error_count": len(failures),
                    "fingerprints": sorted(prints),
                    "elapsed": time.perf_counter() - started,
                    "done_at": time.time(),
                    "stats": stats(),
                }
            )

        async def poll(seconds: float, every: float, scope: str, before_exp: float) -> None:
            served, failures = 0, []
            deadline = time.time() + seconds
            while time.time() < deadline:
                try:
                    token = await broker.token(scope)
                    served += 1
                    # Stop short of the token's expiry: past it, a new one is due anyway.
                    deadline = min(deadline, token.expires_at_ts - before_exp)
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                await anyio.sleep(every)
            say({"op": "poll", "served": served, "errors": failures[:5], "stats": stats()})

        async def watch(scope: str) -> None:
            while broker.cached_token(scope) is not None:  # noqa: ASYNC110 (no event to wait on)
                await anyio.sleep(0.001)
            say({"op": "watch", "dropped_at": time.time()})

        async with anyio.create_task_group() as tg:
            say({"ready": True})
            while True:
                line = await anyio.to_thread.run_sync(sys.stdin.readline)
                if not line or line.strip() == "quit":
                    tg.cancel_scope.cancel()
                    break
                command = json.loads(line)
                op, scope = command["op"], command.get("scope", "read:records")
                if op == "herd":
                    tg.start_soon(herd, int(command["n"]), scope, command.get("agent"))
                elif op == "poll":
                    seconds, every = float(command["seconds"]), float(command["every"])
                    before_exp = float(command.get("before_exp", 0.0))
                    tg.start_soon(poll, seconds, every, scope, before_exp)
                elif op == "watch":
                    tg.start_soon(watch, scope)
                elif op == "invalidate":
                    token = broker.cached_token(scope)
                    at = time.time()
                    dropped = token is not None and broker.invalidate(token)
                    say({"op": "invalidate", "at": at, "dropped": dropped})
                elif op == "token":  # the cached token, for tests that look for it in the store
                    cached = broker.cached_token(scope)
                    say(
                        {
                            "op": "token",
                            "value": None if cached is None else cached.value,
                            "client_id": None if cached is None else cached.client_id,
                        }
                    )
                elif op == "stats":
                    say({"op": "stats", "stats": stats()})


if __name__ == "__main__":
    skew_the_clock()
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
