"""A real HTTP server for tests: uvicorn on 127.0.0.1, in a background thread.

The live transport is only honestly tested over a socket, so tests talk to the
mock AuthSec app through uvicorn rather than through a mocked httpx. One server
runs per test session (starting uvicorn costs tens of milliseconds); each test
mounts a fresh app on it, so no state leaks between tests.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from starlette.applications import Starlette

from authsec_crewai.testing import LoopbackServer, MockAuthority, MockFaults, RecordedRequest

__all__ = ["LoopbackServer", "MockServer"]


@dataclass
class MockServer:
    """The mock AuthSec app of one test, served on loopback.

    ``url`` is what ``AUTHSEC_BASE_URL`` (and the protected-API origin) would be.
    """

    url: str
    app: Starlette
    authority: MockAuthority
    faults: MockFaults

    @property
    def counts(self) -> Counter[str]:
        """Requests received per path (what actually reached the server)."""
        counts: Counter[str] = self.app.state.counts
        return counts

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self.app.state.requests)

    def count(self, path: str) -> int:
        return self.counts[path]
