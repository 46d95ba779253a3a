"""A real ``redis-server`` for tests: a free port on 127.0.0.1, a temporary directory.

Where the binary is missing the Redis tests skip with a reason that says how to
install it; in CI (``CI=true``) a missing server is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

__all__ = ["RedisServer", "require_binary", "require_redis_server"]

INSTALL_HINT = (
    "redis-server is not installed; install it to run the Redis store tests: "
    "`sudo apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis` (macOS)"
)


def require_redis_server() -> str:
    """The path of ``redis-server``, or skip (fail in CI) with how to install it."""
    return require_binary("redis-server")


def require_binary(name: str) -> str:
    """The path of ``name`` (redis-server, redis-cli, redis-sentinel), or skip (fail in
    CI): Debian's redis-server package brings all three (redis-tools, redis-sentinel)."""
    binary = shutil.which(name)
    if binary is None:
        hint = INSTALL_HINT.replace("redis-server is not installed", f"{name} is not installed")
        if name == "redis-sentinel":
            hint += " (Debian: also `sudo apt-get install -y redis-sentinel`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {hint}")
        pytest.skip(hint)
    return binary


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process without persistence; stop and start it at will."""

    def __init__(self, binary: str, directory: Path, *extra: str, port: int | None = None) -> None:
        self.binary = binary
        self.directory = directory
        self.port = port or _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.extra = extra  # more redis-server arguments: --requirepass, --user, --cluster-...
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self._process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def pause(self) -> None:
        """SIGSTOP: the server accepts connections but never answers (a hung store)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
