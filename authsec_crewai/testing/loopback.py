"""``LoopbackServer``: uvicorn serving an ASGI app on 127.0.0.1 in a background thread.

The live transport is only honestly exercised over a socket, so test suites
(ours and users'), benchmarks and recordings point LIVE mode at the mock app
served this way. Only loopback is ever bound.
"""

from __future__ import annotations

import socket
import threading

from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from .._lazy import requires_extra

with requires_extra("cli", "LoopbackServer (a server on a real socket)"):
    import uvicorn

__all__ = ["LoopbackServer", "listening_socket"]


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` and listening, for uvicorn to serve on.

    Bound before uvicorn starts, so the real port of port 0 is known at once and
    a busy port fails here (``OSError``), not inside uvicorn; connections queue
    from here on, so a caller told the URL never finds it refusing.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it keep-alive requests stall ~40 ms (Nagle +
    # delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn that signals a ``threading.Event`` once it listens."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._ready.set()


class LoopbackServer:
    """uvicorn serving :attr:`app` on a free loopback port until :meth:`stop`.

    ``app`` may be swapped while the server runs: requests are dispatched to
    whatever app is mounted when they arrive. ``lifespan=True`` runs the app's
    lifespan (start-up and shut-down) around the server, for apps that need
    it (an MCP server's session manager); the app is then the one given here.
    """

    def __init__(self, app: ASGIApp | None = None, *, lifespan: bool = False) -> None:
        self.app = app
        self._sock = listening_socket()
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        config = uvicorn.Config(
            self._dispatch,
            lifespan="on" if lifespan else "off",
            interface="asgi3",
            log_level="warning",
            access_log=False,
            http="h11",
            loop="asyncio",
            timeout_graceful_shutdown=2,
            timeout_keep_alive=120,  # idle pooled connections stay usable between test steps
        )
        self._server = _Server(config, self._ready)
        self._thread = threading.Thread(target=self._run, name="loopback-uvicorn", daemon=True)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        if app is None:
            app = Starlette()  # answers 404 to everything
        await app(scope, receive, send)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._ready.set()  # also on a failed start, so start() does not hang

    def start(self) -> LoopbackServer:
        self._thread.start()
        if not self._ready.wait(timeout=15) or not self._server.started:
            raise RuntimeError(f"uvicorn did not start on {self.url}")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()
        if self._thread.is_alive():
            raise RuntimeError("uvicorn did not stop within 10 seconds")

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
