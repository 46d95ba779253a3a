"""``SQLiteStore``: processes on one host share tokens through one file, no server.

The file is created owner-only (0600; SQLite gives its ``-wal`` and ``-shm``
files the same mode). Leases are rows taken in an ``IMMEDIATE`` transaction,
so two processes cannot both win one. Events (a token is ready, an agent was
revoked) are rows in an append-only table that every listener polls, which
bounds how late a revocation is seen by the poll interval (0.1 s by default).

``sqlite3`` blocks, so every operation runs in a worker thread; the fleet
layer bounds each one with the store's timeout, and SQLite's own busy timeout
is set to the same bound.

Every time in the file (entry expiry, lease deadlines, event ages) is read
from SQLite's own clock inside the statement, never from a caller's, so a
process running on an injected or skewed clock cannot take over a lease
others still hold. A file that is not a database (or cannot be read) is an
outage of the usual kind, retried, not an exception that stops the process;
a file deleted or replaced under the fleet is noticed within a second and
reopened, so the fleet does not split between two files without a word.
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

from ..errors import ConfigurationError
from ..logging import get_logger
from .base import DEFAULT_LEASE_SECONDS, DEFAULT_TIMEOUT_SECONDS, SealedCodec

__all__ = ["SQLiteStore", "StoreFileError"]

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
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"  # SQLite's clock, seconds since the epoch
_FILE_CHECK_EVERY = 1.0  # seconds between two looks at whether the file is still ours
_log = get_logger("authsec_crewai.stores")


class StoreFileError(Exception):
    """The SQLite file cannot be used (not a database, unreadable): an outage, retried."""


class SQLiteStore:
    """A token store in one SQLite file, for processes on one host.

    The file's folder must exist: a store is never created in a folder that is
    not there (a mistyped or unintended relative path would otherwise give each
    process its own store). ``required=True`` makes a file that cannot be
    opened at start a :class:`~authsec_crewai.errors.ConfigurationError`
    instead of an outage.
    """

    channel = "sqlite-events"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keys: Sequence[bytes] = (),
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_interval: float = 0.1,
        required: bool = False,
    ) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ConfigurationError(
                f"the folder of the SQLite token store, {str(self.path.parent)!r}, does not "
                "exist: create it first (in AUTHSEC_STORE, sqlite:////var/lib/app/tokens.db, "
                "four slashes, is absolute; sqlite:///tokens.db is relative to the working "
                "directory)"
            )
        self.codec = SealedCodec(keys)
        self.timeout = timeout
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.required = required
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._checked_at = -float("inf")
        self._closed = False
        self._lock = threading.Lock()  # one connection, used by one worker thread at a time

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r}, encrypted={self.codec.encrypts})"

    # --- life cycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await anyio.to_thread.run_sync(self._open)
        except StoreFileError as exc:
            if self.required:
                raise ConfigurationError(
                    f"AUTHSEC_STORE_REQUIRED is on and the SQLite token store cannot be used: {exc}"
                ) from None
            # Not fatal: the fleet layer reports the outage and retries the file.
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            conn, self._conn, self._closed = self._conn, None, True
        if conn is not None:
            conn.close()

    def _open(self) -> None:
        with self._lock:
            self._connect()

    def _connect(self) -> None:
        """Open the file (lock held); a file that is no usable database is a StoreFileError."""
        try:
            _create_private(self.path)
        except PermissionError:
            raise StoreFileError(
                f"{str(self.path)!r} cannot be opened (permission denied)"
            ) from None
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.timeout,
                isolation_level=None,  # autocommit; transactions are explicit
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreFileError(f"{str(self.path)!r} cannot be opened ({exc})") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreFileError(
                f"{str(self.path)!r} is not a usable SQLite database ({exc}); move it away "
                "and the fleet creates a new one"
            ) from None
        found = os.stat(self.path)
        self._conn, self._file = conn, (found.st_dev, found.st_ino)
        self._checked_at = time.monotonic()

    def _connection(self) -> sqlite3.Connection:
        """The open connection (lock held), opened again if the file went or was replaced."""
        if self._conn is not None and time.monotonic() - self._checked_at >= _FILE_CHECK_EVERY:
            self._checked_at = time.monotonic()
            try:
                found = os.stat(self.path)
                current: tuple[int, int] | None = (found.st_dev, found.st_ino)
            except FileNotFoundError:
                current = None
            if current != self._file:
                _log.warning(
                    "store.file_replaced",
                    path=str(self.path),
                    message="the SQLite token store's file was deleted or replaced; "
                    "every process now opens the file at this path",
                )
                self._conn.close()
                self._conn = None
        if self._conn is None:
            if self._closed:
                raise sqlite3.ProgrammingError("the store is not open")
            self._connect()
        assert self._conn is not None
        return self._conn

    async def _run(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                return operation(self._connection())

        return await anyio.to_thread.run_sync(locked, abandon_on_cancel=True)

    # --- the protocol -----------------------------------------------------------------

    def items(self) -> dict[str, bytes]:
        """Every name and value in the file (what an attacker reading it would see)."""
        with self._lock:
            rows = self._connection().execute("SELECT name, value FROM entries").fetchall()
        return {str(name): bytes(value) for name, value in rows}

    async def get(self, names: Sequence[str]) -> list[bytes | None]:
        marks = ",".join("?" * len(names))

        def read(conn: sqlite3.Connection) -> list[bytes | None]:
            rows = conn.execute(
                f"SELECT name, value FROM entries WHERE name IN ({marks}) AND until > {_NOW}",  # noqa: S608
                tuple(names),
            ).fetchall()
            found = {str(name): bytes(value) for name, value in rows}
            return [found.get(name) for name in names]

        return await self._run(read)

    async def put(self, name: str, value: bytes, ttl: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT OR REPLACE INTO entries (name, value, until) VALUES (?, ?, {_NOW} + ?)",  # noqa: S608
                (name, value, ttl),
            )

        await self._run(write)

    async def delete(self, names: Sequence[str]) -> None:
        def remove(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM entries WHERE name = ?", [(n,) for n in names])

        await self._run(remove)

    async def acquire(self, name: str, owner: str, ttl: float) -> bool:
        def take(conn: sqlite3.Connection) -> bool:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(f"DELETE FROM leases WHERE name = ? AND until <= {_NOW}", (name,))  # noqa: S608
                taken = conn.execute(
                    f"INSERT OR IGNORE INTO leases (name, owner, until) VALUES (?, ?, {_NOW} + ?)",  # noqa: S608
                    (name, owner, ttl),
                ).rowcount
                # Expired entries go while the write lock is held anyway.
                conn.execute(f"DELETE FROM entries WHERE until <= {_NOW}")  # noqa: S608
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return taken == 1

        return await self._run(take)

    async def renew(self, name: str, owner: str, ttl: float) -> bool:
        def extend(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    f"UPDATE leases SET until = {_NOW} + ? "  # noqa: S608
                    f"WHERE name = ? AND owner = ? AND until > {_NOW}",
                    (ttl, name, owner),
                ).rowcount
                == 1
            )

        return await self._run(extend)

    async def now(self) -> float:
        def read(conn: sqlite3.Connection) -> float:
            return float(conn.execute(f"SELECT {_NOW}").fetchone()[0])

        return await self._run(read)

    async def release(self, name: str, owner: str) -> None:
        def give_back(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

        await self._run(give_back)

    async def publish(self, message: str) -> None:
        def append(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(f"INSERT INTO events (message, at) VALUES (?, {_NOW})", (message,))  # noqa: S608
                conn.execute(f"DELETE FROM events WHERE at < {_NOW} - ?", (_EVENT_MEMORY,))  # noqa: S608
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
    # O_NOFOLLOW: a symlink planted at the path must not redirect the tokens elsewhere.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
