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

__all__ = [
    "RedisClusterServers",
    "RedisSentinelServers",
    "RedisServer",
    "require_binary",
    "require_redis_server",
]

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


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (the port + 10000) exists and is free too."""
    while True:
        port = _free_port()
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


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


def _command(port: int, *args: str) -> str:
    """One command on a raw socket (RESP), the reply as text: enough for fixtures."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(request.encode())
        chunks = b""
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            chunks += chunk
            if not chunk or chunks.endswith(b"\r\n"):
                break
        return chunks.decode(errors="replace")


class RedisClusterServers:
    """Three masters of a real Redis Cluster on free loopback ports (no replicas)."""

    def __init__(self, directory: Path, masters: int = 3) -> None:
        self.binary = require_redis_server()
        self.cli = require_binary("redis-cli")
        self.nodes: list[RedisServer] = []
        for index in range(masters):
            node_dir = directory / f"node{index}"
            node_dir.mkdir()
            args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            args += ("--cluster-node-timeout", "2000")
            port = _free_cluster_port()
            self.nodes.append(RedisServer(self.binary, node_dir, *args, port=port))
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        self.url = f"redis+cluster://{hosts}"

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in _command(n.port, "CLUSTER", "INFO") for n in self.nodes):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the Redis Cluster did not become ready")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class RedisSentinelServers:
    """A master, a replica and one Sentinel watching them, on free loopback ports."""

    SERVICE = "authsec"

    def __init__(self, directory: Path) -> None:
        binary = require_redis_server()
        self.sentinel_binary = require_binary("redis-sentinel")
        (directory / "master").mkdir()
        (directory / "replica").mkdir()
        self.master = RedisServer(binary, directory / "master")
        self.replica = RedisServer(
            binary, directory / "replica", "--replicaof", "127.0.0.1", str(self.master.port)
        )
        self.directory = directory
        self.sentinel_port = _free_port()
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.SERVICE}/0"
        self._sentinel: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisSentinelServers:
        self.master.start()
        self.replica.start()
        config = self.directory / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.directory}\n"
            f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.SERVICE} 1000\n"
            f"sentinel failover-timeout {self.SERVICE} 5000\n"
        )
        self._sentinel = subprocess.Popen(
            [self.sentinel_binary, str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                replicated = "master_link_status:up" in _command(
                    self.replica.port, "INFO", "replication"
                )
                known = str(self.master.port) in _command(
                    self.sentinel_port, "SENTINEL", "get-master-addr-by-name", self.SERVICE
                )
                replicas = _command(self.sentinel_port, "SENTINEL", "replicas", self.SERVICE)
                if replicated and known and str(self.replica.port) in replicas:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("the Sentinel set-up did not become ready")

    def master_port(self) -> int:
        reply = _command(self.sentinel_port, "SENTINEL", "get-master-addr-by-name", self.SERVICE)
        return int(reply.split("\r\n")[-2])

    def failover(self) -> None:
        """``SENTINEL FAILOVER``: the replica becomes the master; wait until it has."""
        before = self.master_port()
        reply = _command(self.sentinel_port, "SENTINEL", "FAILOVER", self.SERVICE)
        assert reply.startswith("+OK"), reply
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.master_port() != before:
                return
            time.sleep(0.05)
        raise RuntimeError("the failover did not complete")

    def stop(self) -> None:
        process, self._sentinel = self._sentinel, None
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
        self.replica.stop()
        self.master.stop()
