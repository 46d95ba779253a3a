"""``DripServer``: a raw TCP server on 127.0.0.1 that answers one byte at a time.

uvicorn writes a response's status line and headers in one go, so a server
that drips its *headers* (a slowloris in reverse) cannot be built on the mock
app. This one reads a request, then sends a canned answer: the first
``burst`` bytes at once, the rest one byte every ``interval`` seconds, each
byte restarting a client's per-read timeout. It runs its own event loop in a
background thread (so asyncio and trio tests can both use it), only ever
listens on loopback, and counts the connections it accepted.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from contextlib import AbstractContextManager

import anyio
from anyio.abc import SocketAttribute, SocketStream
from anyio.from_thread import BlockingPortal, start_blocking_portal

__all__ = ["DRIPPING_HEADERS", "DripServer"]

DRIPPING_HEADERS = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    + b"".join(b"x-padding-%d: %s\r\n" % (n, b"a" * 60) for n in range(64))
    + b"content-length: 2\r\n\r\n{}"
)
"""A valid answer whose headers alone take minutes to drip."""

_MAX_REQUEST_BYTES = 64 * 1024


class DripServer:
    """Serves ``answer`` to every connection, dripped after ``burst`` bytes.

    Use as a context manager; :attr:`url` is ``http://127.0.0.1:<port>``.
    """

    def __init__(
        self, answer: bytes = DRIPPING_HEADERS, *, interval: float = 0.1, burst: int = 0
    ) -> None:
        self.answer = answer
        self.interval = interval
        self.burst = burst
        self.connections = 0
        self.port = 0
        self.url = ""
        self._lock = threading.Lock()
        self._portal_cm: AbstractContextManager[BlockingPortal] | None = None
        self._serving: Future[None] | None = None

    def start(self) -> DripServer:
        self._portal_cm = start_blocking_portal()
        portal = self._portal_cm.__enter__()
        ready: Future[int] = Future()
        self._serving = portal.start_task_soon(self._serve, ready)
        self.port = ready.result(timeout=10)
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self) -> None:
        if self._portal_cm is None:
            return
        if self._serving is not None:
            self._serving.cancel()
        self._portal_cm.__exit__(None, None, None)
        self._portal_cm = None

    def __enter__(self) -> DripServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _serve(self, ready: Future[int]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener:
            ready.set_result(int(listener.extra(SocketAttribute.local_port)))  # noqa: S610
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        with self._lock:
            self.connections += 1
        async with stream:
            try:
                received = b""
                while b"\r\n\r\n" not in received and len(received) < _MAX_REQUEST_BYTES:
                    received += await stream.receive()
                await stream.send(self.answer[: self.burst])
                for index in range(self.burst, len(self.answer)):
                    await anyio.sleep(self.interval)
                    await stream.send(self.answer[index : index + 1])
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return  # the client gave up: that is the point
