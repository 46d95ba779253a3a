"""Redis client connections a fleet opens: per process, by agents served and processes.

Not a speed benchmark: it counts. N worker processes (tests/fleet_worker.py,
asyncio and trio alternating) each serve A agents cold and at once (200 tasks
per agent), against a real redis-server on a free port and the mock AuthSec
server on 127.0.0.1 (20 ms per answer). Connections are counted with
``CLIENT LIST`` after the herd (the counting connection itself excluded).
Without the binary it says so.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path

import structlog

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from _redis import RedisServer  # noqa: E402
from fleetkit import mixed, start_fleet, stop_fleet  # noqa: E402

from authsec_crewai.testing import LoopbackServer, MockAuthority, MockFaults, create_app  # noqa: E402

KEY_TEXT = base64.urlsafe_b64encode(os.urandom(32)).decode()
SHAPES = ((1, 1), (1, 10), (8, 1), (8, 10))  # (processes, agents per process)


def connections(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"CLIENT LIST\r\n")
        data = b""
        while not data.endswith(b"\r\n") or data.count(b"\n") < 2:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    lines = [line for line in data.decode().splitlines()[1:] if line.startswith("id=")]
    return len(lines) - 1  # this connection


def measure(server: LoopbackServer, redis: RedisServer, processes: int, agents: int) -> int:
    app = create_app(MockAuthority(), faults=MockFaults(latency=0.02))
    server.app = app
    env = {
        "AUTHSEC_MODE": "live",
        "AUTHSEC_BASE_URL": server.url,
        "AUTHSEC_CLIENT_ID": str(uuid.uuid4()),
        "AUTHSEC_STORE": redis.url,
        "AUTHSEC_STORE_KEY": KEY_TEXT,
    }
    workers = start_fleet(mixed(processes), env)
    try:
        names = [str(uuid.uuid4()) for _ in range(agents)]
        for worker in workers:
            for name in names:
                worker.send(op="herd", n=200, agent=name)
        for worker in workers:
            for _ in names:
                worker.answer()
        return connections(redis.port)
    finally:
        stop_fleet(workers)


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed: nothing to count")
        return
    print("| processes | agents each | Redis connections | per process |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, LoopbackServer() as server:
        for processes, agents in SHAPES:
            redis = RedisServer(binary, Path(tmp)).start()
            try:
                count = measure(server, redis, processes, agents)
            finally:
                redis.stop()
            print(f"| {processes} | {agents} | {count} | {count / processes:.1f} |", flush=True)


if __name__ == "__main__":
    main()
