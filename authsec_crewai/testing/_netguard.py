"""``block_network()``: make every real network connection fail while it is active.

A replayed test must not reach the network: if it silently did, it would pass
on a developer's machine and fail (or leak) in CI. Rather than trusting every
library in the test to use the cassette, this patches the two doors all of
them go through, for the whole process: ``socket.socket.connect`` (and
``connect_ex``) for internet sockets, and ``socket.getaddrinfo`` for host
names. asyncio, trio, anyio, httpx and requests all open connections through
them. Unix-domain sockets and IP-literal lookups still work (event loops and
local tooling need them); loopback TCP does not, on purpose: a replay needs no
server at all.

The failure is a :class:`NetworkBlockedError`, both an ``OSError`` (so client
libraries report it as a failed connection) and a
:class:`~authsec_crewai.errors.CassetteError` (so it says why).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import CassetteError
from ..logging import get_logger

__all__ = ["NetworkBlockedError", "block_network"]


class NetworkBlockedError(CassetteError, ConnectionRefusedError):
    """A connection was attempted while the network is blocked for a replay."""


_lock = threading.Lock()
_depth = 0
_reason = ""
_saved: dict[str, Any] = {}
_listeners: list[list[str]] = []

_INET = (socket.AF_INET, socket.AF_INET6)
_log = get_logger("authsec_crewai.netguard")


def _refuse(what: str) -> NetworkBlockedError:
    # Kept and logged as well as raised: client libraries that try several
    # addresses (anyio's happy eyeballs) report only "all attempts failed".
    with _lock:
        for attempts in _listeners:
            attempts.append(what)
    _log.warning("network.blocked", attempt=what, reason=_reason)
    return NetworkBlockedError(
        f"{what} refused: {_reason}. Nothing in a replayed test may use the network; record "
        "the cassette again if the code now needs a request that is not in it"
    )


def _connect(sock: socket.socket, address: Any) -> None:
    if sock.family in _INET:
        raise _refuse(f"connection to {address!r}")
    _saved["connect"](sock, address)


def _connect_ex(sock: socket.socket, address: Any) -> int:
    if sock.family in _INET:
        raise _refuse(f"connection to {address!r}")
    result: int = _saved["connect_ex"](sock, address)
    return result


def _is_literal(host: Any) -> bool:
    if host is None:
        return True
    text = host.decode() if isinstance(host, bytes) else str(host)
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if not _is_literal(host):
        raise _refuse(f"looking up host {host!r}")
    return _saved["getaddrinfo"](host, *args, **kwargs)


@contextmanager
def block_network(
    reason: str = "authsec-crewai blocks the network while a cassette is replayed",
) -> Iterator[list[str]]:
    """Block real network connections (process-wide) until the block is left.

    Yields the list of refused attempts (descriptions), filled in as they
    happen. Nestable; the patches are undone when the outermost block ends.
    """
    global _depth, _reason
    attempts: list[str] = []
    with _lock:
        _listeners.append(attempts)
        if _depth == 0:
            _saved.update(
                connect=socket.socket.connect,
                connect_ex=socket.socket.connect_ex,
                getaddrinfo=socket.getaddrinfo,
            )
            socket.socket.connect = _connect  # type: ignore[method-assign,assignment]
            socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign,assignment]
            socket.getaddrinfo = _getaddrinfo
            _reason = reason
        _depth += 1
    try:
        yield attempts
    finally:
        with _lock:
            _listeners.remove(attempts)
            _depth -= 1
            if _depth == 0:
                socket.socket.connect = _saved["connect"]  # type: ignore[method-assign]
                socket.socket.connect_ex = _saved["connect_ex"]  # type: ignore[method-assign]
                socket.getaddrinfo = _saved["getaddrinfo"]
                _saved.clear()
