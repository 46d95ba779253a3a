"""``SQLiteStore``: processes on one host share tokens through one file, no server.

The file is created owner-only (0600; SQLite gives its ``-wal`` and ``-shm``
files the same mode). Leases are rows taken in an ``IMMEDIATE`` transaction,
so two processes cannot both win one. Events (a token is ready, an agent was
revoked) are rows in an append-only table that every listener polls, which
bounds how late a revocation is seen by the poll interval (0.1 s by default).

``sqlite3`` blocks, so every operation runs in a worker thread; the fleet
layer bounds each one with the store's timeout, and SQLite's own busy timeout
is set to the same bound.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import anyio
import anyio.to_thread

from .base import DEFAULT_LEASE_SECONDS, DEFAULT_TIMEOUT_SECONDS, SealedCodec

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    name TEXT PRIMARY KEY, value BLOB NOT NULL, until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, message TEXT NOT NULL, at REAL NOT NULL
);
"""
_EVENT_MEMORY = 60.0  # seconds an event row is kept for listeners that poll late


class SQLiteStore:
    """A token store in one SQLite file, for processes on one host."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keys: Sequence[bytes] = (),
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_interval: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.codec = SealedCodec(keys)
        self.timeout = timeout
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, used by one worker thread at a time

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, encrypted={self.codec.encrypts})"

    # --- life cycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await anyio.to_thread.run_sync(self._open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _open(self) -> None:
        _create_private(self.path)
        conn = sqlite3.connect(
            self.path,
            timeout=self.timeout,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        with self._lock:
            self._conn = conn

    async def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                if self._conn is None:
                    raise sqlite3.ProgrammingError("the store is not open")
                return operation(self._conn)

        return await anyio.to_thread.run_sync(locked, abandon_on_cancel=True)

    # --- the protocol -----------------------------------------------------------------

    def items(self) -> dict[str, bytes]:
        """Every name and value in the file (what an attacker reading it would see)."""
        with self._lock:
            assert self._conn is not None
            rows = self._conn.execute("SELECT name, value FROM entries").fetchall()
        return {str(name): bytes(value) for name, value in rows}

    async def get(self, names: Sequence[str]) -> list[bytes | None]:
        now = self._clock()
        marks = ",".join("?" * len(names))

        def read(conn: sqlite3.Connection) -> list[bytes | None]:
            rows = conn.execute(
                f"SELECT name, value FROM entries WHERE name IN ({marks}) AND until > ?",  # noqa: S608
                (*names, now),
            ).fetchall()
            found = {str(name): bytes(value) for name, value in rows}
            return [found.get(name) for name in names]

        return await self._run(read)

    async def put(self, name: str, value: bytes, ttl: float) -> None:
        until = self._clock() + ttl

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO entries (name, value, until) VALUES (?, ?, ?)",
                (name, value, until),
            )

        await self._run(write)

    async def delete(self, names: Sequence[str]) -> None:
        def remove(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM entries WHERE name = ?", [(n,) for n in names])

        await self._run(remove)

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        now = self._clock()

        def take(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM leases WHERE name = ? AND until <= ?", (name, now))
                taken = conn.execute(
                    "INSERT OR IGNORE INTO leases (name, owner, until) VALUES (?, ?, ?)",
                    (name, owner, now + ttl),
                ).rowcount
                # Expired entries go while the write lock is held anyway.
                conn.execute("DELETE FROM entries WHERE until <= ?", (now,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return taken == 1

        return await self._run(take)

    async def release(self, name: str, owner: str) -> None:
        def give_back(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

        await self._run(give_back)

    async def publish(self, message: str) -> None:
        now = self._clock()

        def append(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT INTO events (message, at) VALUES (?, ?)", (message, now))
                conn.execute("DELETE FROM events WHERE at < ?", (now - _EVENT_MEMORY,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

        await self._run(append)

    async def listen(self, on_message: Callable[[str], None]) -> None:
        def newest(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
            return int(row[0])

        last = await self._bounded(newest)
        while True:
            await anyio.sleep(self.poll_interval)

            def since(conn: sqlite3.Connection, after: int = last) -> list[tuple[int, str]]:
                rows = conn.execute(
                    "SELECT seq, message FROM events WHERE seq > ? ORDER BY seq", (after,)
                ).fetchall()
                return [(int(seq), str(message)) for seq, message in rows]

            for seq, message in await self._bounded(since):
                last = seq
                on_message(message)

    async def _bounded(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        with anyio.fail_after(self.timeout):
            return await self._run(operation)


def _create_private(path: Path) -> None:
    """Create the database file owner-only before SQLite opens it; tighten an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # O_NOFOLLOW: a symlink planted at the path must not redirect the tokens elsewhere.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
