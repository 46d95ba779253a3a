"""The mock AuthSec server and protected "secure vault" API, as one starlette app.

It speaks the contract of ``authsec-api.md`` (same paths, JSON field names and
status codes) on top of a :class:`~authsec_crewai.testing.authority.MockAuthority`, so
the live transport can be tested against it over a real socket, and the mock
transport can run it in process through ``httpx.ASGITransport``.

Tests steer it with :class:`MockFaults` (latency, error statuses, broken or
oversized bodies, dropped connections), either directly or over HTTP under
``/_mock/``, and read ``app.state.counts`` to prove how many requests reached
the server and ``app.state.agent_counts`` to prove which agent made them. It
is a test double: it has no admin authentication and must only ever listen on
loopback.
"""

from __future__ import annotations

import functools
import hmac
import json
import threading
import uuid
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import errors
from ..verify import verify_bearer
from ..wire import ADMIN_PREFIX, BUNDLE_PATH, JWKS_PATH, TOKEN_PATH
from .authority import MockAuthority

__all__ = [
    "BUNDLE_PATH",
    "TOKEN_PATH",
    "VAULT_RESOURCES",
    "Fault",
    "MockFaults",
    "RecordedRequest",
    "create_app",
]

CONTROL_PREFIX = "/_mock"
MAX_ADMIN_BODY = 64 * 1024

# --- fault injection ---------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, used in place of the real answer.

    Build them with the class methods; ``to_dict``/``from_dict`` carry them over
    HTTP (``POST /_mock/faults``).
    """

    status: int = 500
    body: bytes | None = None
    """Raw body; None means ``{"error": "injected fault", ...}`` as JSON."""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    oversize: int = 0
    """When positive, stream a JSON-looking body of this many bytes instead."""
    declare_length: bool = True
    """Send Content-Length for an oversized body (False: chunked, length unknown)."""
    drop: bool = False
    """Send the status line and headers, then close the connection mid-body."""
    delay: float = 0.0
    """Seconds to wait before answering."""
    passthrough: bool = False
    """After ``delay``, give the real answer instead of a faulty one."""
    drip: float = 0.0
    """When positive, send the headers at once, then the body one byte per ``drip``
    seconds (each byte restarts a client's read timeout) until the client leaves."""
    encoding: str | None = None
    """A ``content-encoding`` to declare (``body`` is then sent as is: compressed)."""
    echo: str | None = None
    """A body template: ``{bearer}`` becomes the request's bearer credential,
    ``{authorization}`` its whole ``Authorization`` header."""
    echo_escaped: bool = False
    """Write the echoed credential with its dots JSON-escaped (``\\u002e``)."""
    echo_header: str | None = None
    """A response header that carries the echoed template too (``www-authenticate``)."""

    @classmethod
    def http(
        cls, status: int, *, retry_after: str | float | None = None, body: bytes | None = None
    ) -> Fault:
        """An error status such as 429, 500 or 503, optionally with ``Retry-After``."""
        headers = () if retry_after is None else (("retry-after", str(retry_after)),)
        return cls(status=status, headers=headers, body=body)

    @classmethod
    def raw(
        cls, body: bytes | str, *, status: int = 200, content_type: str = "application/json"
    ) -> Fault:
        """A literal body (truncated JSON, HTML, ...) under ``status``."""
        data = body.encode() if isinstance(body, str) else body
        return cls(status=status, body=data, content_type=content_type)

    @classmethod
    def json(cls, value: Any, *, status: int = 200) -> Fault:
        """A JSON body of your choosing (no token, a token that is not a JWT, ...)."""
        return cls(status=status, body=json.dumps(value).encode())

    @classmethod
    def oversized(cls, size: int = 10 * 1024 * 1024, *, declare_length: bool = False) -> Fault:
        """A 200 whose body is ``size`` bytes, streamed in chunks."""
        return cls(status=200, oversize=size, declare_length=declare_length)

    @classmethod
    def dropped(cls) -> Fault:
        """The connection closes after the headers, before the body is complete."""
        return cls(status=200, drop=True)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """The real answer, ``seconds`` late (longer than a client timeout: a timeout)."""
        return cls(delay=seconds, passthrough=True)

    @classmethod
    def dripping(cls, interval: float = 0.2, *, status: int = 200) -> Fault:
        """Headers at once, then the body one byte every ``interval`` seconds, for as
        long as the client listens (at most :data:`MAX_DRIP_BYTES` bytes)."""
        return cls(status=status, drip=interval)

    @classmethod
    def bomb(cls, decoded_size: int, *, encoding: str = "gzip", status: int = 200) -> Fault:
        """A compression bomb: a small body that inflates to ``decoded_size`` bytes."""
        return cls(status=status, body=compression_bomb(decoded_size, encoding), encoding=encoding)

    @classmethod
    def echoing(
        cls,
        template: str,
        *,
        status: int = 200,
        escaped: bool = False,
        header: str | None = None,
        content_type: str = "application/json",
    ) -> Fault:
        """An answer that echoes the request's credential (see :attr:`echo`)."""
        return cls(
            status=status,
            echo=template,
            echo_escaped=escaped,
            echo_header=header,
            content_type=content_type,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "content_type": self.content_type,
            "headers": [list(h) for h in self.headers],
            "oversize": self.oversize,
            "declare_length": self.declare_length,
            "drop": self.drop,
            "delay": self.delay,
            "passthrough": self.passthrough,
            "drip": self.drip,
            "encoding": self.encoding,
            "echo": self.echo,
            "echo_escaped": self.echo_escaped,
            "echo_header": self.echo_header,
        }
        if self.body is not None:
            out["body"] = self.body.decode("latin-1")
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault:
        """The inverse of :meth:`to_dict`; also takes the ``retry_after`` shortcut."""
        headers = [tuple(map(str, h)) for h in data.get("headers", [])]
        if data.get("retry_after") is not None:
            headers.append(("retry-after", str(data["retry_after"])))
        body = data.get("body")
        return cls(
            status=int(data.get("status", 500)),
            body=None if body is None else str(body).encode("latin-1"),
            content_type=str(data.get("content_type", "application/json")),
            headers=tuple((k, v) for k, v in headers),
            oversize=int(data.get("oversize", 0)),
            declare_length=bool(data.get("declare_length", True)),
            drop=bool(data.get("drop", False)),
            delay=float(data.get("delay", 0.0)),
            passthrough=bool(data.get("passthrough", False)),
            drip=float(data.get("drip", 0.0)),
            encoding=None if data.get("encoding") is None else str(data["encoding"]),
            echo=None if data.get("echo") is None else str(data["echo"]),
            echo_escaped=bool(data.get("echo_escaped", False)),
            echo_header=None if data.get("echo_header") is None else str(data["echo_header"]),
        )


MAX_DRIP_BYTES = 4096
"""A dripping answer stops after this many bytes even if the client still listens."""


@functools.lru_cache(maxsize=8)
def compression_bomb(decoded_size: int, encoding: str = "gzip") -> bytes:
    """``decoded_size`` bytes of a JSON-looking body, compressed (gzip or deflate).

    Built in blocks so making a gigabyte bomb does not take a gigabyte.
    """
    if encoding not in ("gzip", "deflate"):
        raise ValueError("encoding must be 'gzip' or 'deflate'")
    packer = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    head, tail = b'{"token": "', b'"}'
    parts = [packer.compress(head)]
    left = max(0, decoded_size - len(head) - len(tail))
    block = b"A" * (1 << 20)
    while left > 0:
        piece = block[: min(left, len(block))]
        left -= len(piece)
        parts.append(packer.compress(piece))
    parts.append(packer.compress(tail))
    parts.append(packer.flush())
    return b"".join(parts)


@dataclass
class _Queued:
    fault: Fault
    remaining: int
    path: str | None


class MockFaults:
    """Faults waiting to be served, and latency added to every answer.

    Shared between a test's thread and the server's thread, hence the lock.
    ``path`` is a path prefix (default: the delegation-token endpoint; None:
    every path except ``/_mock``). Faults are served in the order added.
    """

    def __init__(self, *, latency: float = 0.0) -> None:
        self.latency = latency
        self._queue: list[_Queued] = []
        self._lock = threading.Lock()

    def add(self, fault: Fault, *, count: int = 1, path: str | None = TOKEN_PATH) -> None:
        """Serve ``fault`` instead of the next ``count`` answers on ``path``."""
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._queue.append(_Queued(fault, count, path))

    def clear(self) -> None:
        """Forget every pending fault and the latency."""
        with self._lock:
            self._queue.clear()
            self.latency = 0.0

    @property
    def pending(self) -> int:
        """How many faulty answers are still to be served."""
        with self._lock:
            return sum(item.remaining for item in self._queue)

    def take(self, path: str) -> Fault | None:
        """The fault for this request to ``path``, if one is queued."""
        with self._lock:
            for item in self._queue:
                if item.path is None or path.startswith(item.path):
                    item.remaining -= 1
                    if item.remaining <= 0:
                        self._queue.remove(item)
                    return item.fault
        return None


@dataclass(frozen=True)
class RecordedRequest:
    """What a test may want to assert about a request the server received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str] = field(repr=False)


def _oversized_chunks(size: int) -> AsyncIterator[bytes]:
    async def chunks() -> AsyncIterator[bytes]:
        head, tail = b'{"token": "', b'"}'
        yield head
        left = max(0, size - len(head) - len(tail))
        block = b"A" * 65536
        while left > 0:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            yield piece
        yield tail

    return chunks()


class _FaultsAndCounts:
    """ASGI middleware: counts and records every request, then applies faults.

    A plain ASGI wrapper rather than a starlette ``BaseHTTPMiddleware`` because a
    dropped connection needs the raw ``send``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        faults: MockFaults,
        counts: Counter[str],
        requests: deque[RecordedRequest],
    ) -> None:
        self.app = app
        self.faults = faults
        self.counts = counts
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        self.counts[path] += 1
        request = Request(scope)
        self.requests.append(
            RecordedRequest(
                method=scope["method"],
                path=path,
                query=dict(request.query_params),
                headers=dict(request.headers),
            )
        )
        if path.startswith(CONTROL_PREFIX):
            await self.app(scope, receive, send)
            return
        if self.faults.latency:
            await anyio.sleep(self.faults.latency)
        fault = self.faults.take(path)
        if fault is None:
            await self.app(scope, receive, send)
            return
        if fault.delay:
            await anyio.sleep(fault.delay)
        if fault.passthrough:
            await self.app(scope, receive, send)
            return
        await _serve_fault(fault, scope, receive, send)


def _echoed(fault: Fault, scope: Scope) -> str:
    """The fault's echo template filled with the request's credential."""
    assert fault.echo is not None
    authorization = Request(scope).headers.get("authorization", "")
    bearer = authorization.partition(" ")[2].strip()
    if fault.echo_escaped:
        authorization = authorization.replace(".", "\\u002e")
        bearer = bearer.replace(".", "\\u002e")
    return fault.echo.replace("{authorization}", authorization).replace("{bearer}", bearer)


async def _drip(
    fault: Fault, headers: list[tuple[bytes, bytes]], receive: Receive, send: Send
) -> None:
    """Headers now, then one byte per ``fault.drip`` seconds until the client leaves."""
    await send({"type": "http.response.start", "status": fault.status, "headers": headers})
    async with anyio.create_task_group() as tg:

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        tg.start_soon(until_disconnect)
        await send({"type": "http.response.body", "body": b'{"token": "', "more_body": True})
        for _ in range(MAX_DRIP_BYTES):
            await anyio.sleep(fault.drip)
            await send({"type": "http.response.body", "body": b"A", "more_body": True})
        await send({"type": "http.response.body", "body": b'"}', "more_body": False})
        tg.cancel_scope.cancel()


async def _serve_fault(fault: Fault, scope: Scope, receive: Receive, send: Send) -> None:
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in fault.headers]
    headers.append((b"content-type", fault.content_type.encode("latin-1")))
    if fault.encoding:
        headers.append((b"content-encoding", fault.encoding.encode("latin-1")))
    if fault.drip:
        await _drip(fault, headers, receive, send)
        return
    if fault.drop:
        headers.append((b"content-length", b"4096"))
        await send({"type": "http.response.start", "status": fault.status, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"tok', "more_body": True})
        # Over a socket the server closes the connection; in process (ASGITransport)
        # the client sees the very exception httpx raises for a dropped connection.
        raise httpx.RemoteProtocolError("injected fault: connection dropped mid-response")
    if fault.oversize:
        if fault.declare_length:
            headers.append((b"content-length", str(fault.oversize).encode()))
        await send({"type": "http.response.start", "status": fault.status, "headers": headers})
        async for chunk in _oversized_chunks(fault.oversize):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    body = fault.body
    if fault.echo is not None:
        echoed = _echoed(fault, scope)
        body = echoed.encode("utf-8")
        if fault.echo_header:
            headers.append((fault.echo_header.lower().encode("latin-1"), echoed.encode("latin-1")))
    if body is None:
        body = b'{"error": "injected fault", "details": "mock server fault injection"}'
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": fault.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# --- the protected vault API's data -------------------------------------------------------

_RECORDS: list[dict[str, Any]] = [
    {"id": "emp-1001", "name": "Amara Okafor", "department": "Finance",
     "title": "Financial Controller", "clearance": "confidential", "location": "Lagos"},
    {"id": "emp-1002", "name": "Lukas Becker", "department": "Engineering",
     "title": "Staff Site Reliability Engineer", "clearance": "secret", "location": "Berlin"},
    {"id": "emp-1003", "name": "Priya Raman", "department": "Security",
     "title": "Head of Incident Response", "clearance": "top-secret", "location": "Bengaluru"},
    {"id": "emp-1004", "name": "Mateo Alvarez", "department": "Sales",
     "title": "Regional Account Director", "clearance": "internal", "location": "Madrid"},
    {"id": "emp-1005", "name": "Hannah Lindqvist", "department": "Legal",
     "title": "Privacy Counsel", "clearance": "confidential", "location": "Stockholm"},
    {"id": "emp-1006", "name": "Kenji Watanabe", "department": "Research",
     "title": "Principal Data Scientist", "clearance": "secret", "location": "Tokyo"},
]  # fmt: skip

_METRICS: dict[str, Any] = {
    "quarter": "2026-Q2",
    "revenue_target_usd": 48_500_000,
    "revenue_to_date_usd": 31_240_000,
    "active_users": 182_340,
    "weekly_active_users_change_pct": 3.8,
    "infrastructure_status": {
        "api_gateway": "operational",
        "primary_database": "operational",
        "search_cluster": "degraded",
        "batch_pipeline": "operational",
    },
    "error_budget_remaining_pct": 71.5,
}

_INCIDENTS: list[dict[str, Any]] = [
    {"id": "INC-2291", "severity": "sev2", "status": "mitigated",
     "title": "Search latency above SLO in eu-west", "opened_at": "2026-05-18T08:12:00Z",
     "owner": "Lukas Becker"},
    {"id": "INC-2294", "severity": "sev3", "status": "investigating",
     "title": "Intermittent 502s from the billing webhook", "opened_at": "2026-05-19T14:40:00Z",
     "owner": "Priya Raman"},
    {"id": "INC-2288", "severity": "sev1", "status": "resolved",
     "title": "Expired TLS certificate on the partner API", "opened_at": "2026-05-12T02:05:00Z",
     "owner": "Priya Raman"},
]  # fmt: skip

_AUDIT_LOG: list[dict[str, Any]] = [
    {"at": "2026-05-19T09:01:44Z", "actor": "hannah.lindqvist", "action": "export",
     "resource": "records/emp-1004", "outcome": "allowed"},
    {"at": "2026-05-19T09:15:02Z", "actor": "agent:crewai-analyst", "action": "read",
     "resource": "metrics", "outcome": "allowed"},
    {"at": "2026-05-19T10:22:37Z", "actor": "agent:crewai-analyst", "action": "read",
     "resource": "records", "outcome": "denied"},
    {"at": "2026-05-19T11:03:10Z", "actor": "amara.okafor", "action": "delegate-token",
     "resource": "agents/crewai-analyst", "outcome": "allowed"},
]  # fmt: skip

VAULT_RESOURCES: dict[str, tuple[str, Any]] = {
    "records": ("read:records", {"records": _RECORDS, "count": len(_RECORDS)}),
    "metrics": ("read:metrics", _METRICS),
    "incidents": ("read:incidents", {"incidents": _INCIDENTS, "count": len(_INCIDENTS)}),
    "audit-log": ("read:audit", {"entries": _AUDIT_LOG, "count": len(_AUDIT_LOG)}),
}
"""``/secure-vault/<name>`` -> (the permission it needs, its JSON answer)."""


# --- the app -------------------------------------------------------------------------------


def _error(
    status: int, error: str, details: str, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse({"error": error, "details": details}, status_code=status, headers=headers)


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    return value


def _quoted(text: str) -> str:
    """A value safe inside a quoted ``WWW-Authenticate`` parameter."""
    return "".join(c for c in text if c.isprintable() and c not in '"\\')[:200]


class _App:
    """The route handlers, bound to one authority, token and fault plan."""

    def __init__(
        self,
        authority: MockAuthority,
        *,
        api_token: str | None,
        api_audience: frozenset[str],
        leeway: float,
        agent_counts: Counter[tuple[str, str]],
    ) -> None:
        self.authority = authority
        self.agent_counts = agent_counts
        self.api_token = api_token
        self.api_audience = api_audience
        self.leeway = leeway
        self._jwks_key: RSAKey | None = None
        self._jwks_lock = threading.Lock()

    # --- AuthSec ---------------------------------------------------------------

    async def delegation_token(self, request: Request) -> Response:
        if self.api_token is not None:
            given = _bearer(request) or ""
            if not hmac.compare_digest(given.encode(), self.api_token.encode()):
                return _error(401, "unauthorized", "missing or invalid API token")
        client_id = request.query_params.get("client_id") or request.headers.get("x-client-id")
        if not client_id:
            return _error(400, "client_id is required", "pass ?client_id= or X-Client-ID")
        self.agent_counts[client_id, request.url.path] += 1
        status, body = self.authority.token_answer(client_id)
        return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})

    async def bundle(self, request: Request) -> Response:
        tenant_id = request.query_params.get("tenant_id")
        if not tenant_id:
            return _error(400, "tenant_id is required", "pass ?tenant_id=")
        if tenant_id != self.authority.tenant_id:
            return _error(404, "unknown tenant", "no trust bundle for this tenant")
        return JSONResponse(self.authority.key_set(tenant_id))

    async def jwks(self, request: Request) -> Response:
        # A different key from the one that signs delegation tokens, as on the
        # real server: verifying against this set must fail. Generated lazily
        # because RSA key generation costs tens of milliseconds.
        with self._jwks_lock:
            if self._jwks_key is None:
                self._jwks_key = RSAKey.generate_key(2048, private=True)
            public = self._jwks_key.as_dict(private=False)
        public.update({"use": "sig", "kid": "oidc-1", "alg": "RS256"})
        return JSONResponse({"keys": [public]})

    async def delegate(self, request: Request) -> Response:
        client_id = request.path_params["client_id"]
        try:
            raw = await request.body()
            data = json.loads(raw) if raw else {}
        except ValueError:
            return _error(400, "invalid body", "expected a JSON object")
        if not isinstance(data, dict):
            return _error(400, "invalid body", "expected a JSON object")
        try:
            ttl = data.get("ttl_seconds")
            audience = data.get("audience")
            if isinstance(audience, str):
                audience = [audience]
            permissions = data.get("permissions")
            for name, value in (("audience", audience), ("permissions", permissions)):
                if value is not None and not (
                    isinstance(value, list) and all(isinstance(v, str) for v in value)
                ):
                    raise ValueError(f"{name} must be a list of strings")
            if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
                raise ValueError("ttl_seconds must be a number")
            agent_type = data.get("agent_type")
            if agent_type is not None and not isinstance(agent_type, str):
                raise ValueError("agent_type must be a string")
            uuid.UUID(client_id)
            body = self.authority.delegate(
                client_id,
                permissions=permissions,
                audience=audience,
                ttl_seconds=None if ttl is None else float(ttl),
                agent_type=agent_type,
            )
        except ValueError as exc:
            return _error(400, "invalid delegation", str(exc))
        return JSONResponse(body, status_code=200)

    async def revoke(self, request: Request) -> Response:
        answer = self.authority.revoke(request.path_params["client_id"])
        if answer.get("status") != "revoked":
            return _error(404, "no active delegation", "nothing to revoke for this agent")
        return JSONResponse(answer)

    # --- the protected vault API ---------------------------------------------------

    def _challenge(self, details: str, *, error: str | None = "invalid_token") -> Response:
        value = 'Bearer realm="secure-vault"'
        if error:
            value += f', error="{error}", error_description="{_quoted(details)}"'
        return _error(401, error or "unauthorized", details, {"www-authenticate": value})

    async def vault(self, request: Request) -> Response:
        name = request.path_params["resource"]
        entry = VAULT_RESOURCES.get(name)
        if entry is None:
            return _error(404, "not found", f"no vault resource named {name[:60]!r}")
        needed, payload = entry
        token = _bearer(request)
        if token is None:
            return self._challenge("a bearer token is required", error=None)
        try:
            claims = verify_bearer(
                token,
                self.authority.key_set(),
                now=self.authority.clock(),
                leeway=self.leeway,
                audience=self.api_audience,
            )
        except errors.TokenVerificationError as exc:
            return self._challenge(str(exc))
        # Counted once the token is verified: only then is the caller's identity known.
        self.agent_counts[str(claims.get("client_id")), request.url.path] += 1
        granted = claims.get("permissions")
        if not isinstance(granted, list) or needed not in granted:
            challenge = f'Bearer realm="secure-vault", error="insufficient_scope", scope="{needed}"'
            return _error(
                403,
                "insufficient_scope",
                f"this resource needs the {needed!r} permission",
                {"www-authenticate": challenge},
            )
        return JSONResponse(payload, headers={"cache-control": "no-store"})

    # --- test control -------------------------------------------------------------------

    async def control_faults(self, request: Request) -> Response:
        faults: MockFaults = request.app.state.faults
        if request.method == "DELETE":
            faults.clear()
            return JSONResponse({"pending": 0})
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            if "latency" in data:
                faults.latency = float(data["latency"])
            if data.keys() & {"status", "drop", "oversize", "delay", "drip", "echo"}:
                path = data.get("path", TOKEN_PATH)
                faults.add(
                    Fault.from_dict(data),
                    count=int(data.get("count", 1)),
                    path=None if path is None else str(path),
                )
        except (ValueError, TypeError) as exc:
            return _error(400, "invalid fault", str(exc)[:200])
        return JSONResponse({"pending": faults.pending, "latency": faults.latency})

    async def control_counts(self, request: Request) -> Response:
        return JSONResponse(dict(request.app.state.counts))

    async def control_agents(self, request: Request) -> Response:
        """``{client_id: {path: requests}}``: who asked for tokens and who called the vault."""
        by_agent: dict[str, dict[str, int]] = {}
        for (client_id, path), count in self.agent_counts.items():
            by_agent.setdefault(client_id, {})[path] = count
        return JSONResponse(by_agent)


def create_app(
    authority: MockAuthority | None = None,
    *,
    faults: MockFaults | None = None,
    api_token: str | None = None,
    api_audience: str | Iterable[str] = (),
    leeway: float = 0.0,
) -> Starlette:
    """Build the mock AuthSec + secure-vault app.

    ``api_token``: when set, the delegation-token endpoint answers 401 unless the
    request carries ``Authorization: Bearer <api_token>`` (the newest server
    generation). ``api_audience``: when set, the vault refuses tokens whose
    ``aud`` does not name it. ``leeway``: clock skew the vault tolerates.

    ``app.state`` holds ``authority``, ``faults``, ``counts`` (a Counter of
    requests per path), ``agent_counts`` (a Counter of ``(client_id, path)``:
    token requests by the client id asked for, vault calls by the client id of
    the verified token; also served as JSON at ``/_mock/agents``) and
    ``requests`` (the last 1000 :class:`RecordedRequest`).
    """
    authority = authority or MockAuthority()
    faults = faults or MockFaults()
    audience = frozenset((api_audience,) if isinstance(api_audience, str) else api_audience)
    agent_counts: Counter[tuple[str, str]] = Counter()
    handlers = _App(
        authority,
        api_token=api_token,
        api_audience=audience,
        leeway=leeway,
        agent_counts=agent_counts,
    )
    routes = [
        Route(TOKEN_PATH, handlers.delegation_token, methods=["GET"]),
        Route(BUNDLE_PATH, handlers.bundle, methods=["GET"]),
        Route(JWKS_PATH, handlers.jwks, methods=["GET"]),
        Route(ADMIN_PREFIX + "/{client_id}/delegate-token", handlers.delegate, methods=["POST"]),
        Route(ADMIN_PREFIX + "/{client_id}/revoke-token", handlers.revoke, methods=["POST"]),
        Route("/secure-vault/{resource}", handlers.vault, methods=["GET"]),
        Route(CONTROL_PREFIX + "/faults", handlers.control_faults, methods=["POST", "DELETE"]),
        Route(CONTROL_PREFIX + "/counts", handlers.control_counts, methods=["GET"]),
        Route(CONTROL_PREFIX + "/agents", handlers.control_agents, methods=["GET"]),
    ]
    counts: Counter[str] = Counter()
    requests: deque[RecordedRequest] = deque(maxlen=1000)
    app = Starlette(routes=routes, max_body_size=MAX_ADMIN_BODY)
    app.state.authority = authority
    app.state.faults = faults
    app.state.counts = counts
    app.state.agent_counts = agent_counts
    app.state.requests = requests
    app.add_middleware(_FaultsAndCounts, faults=faults, counts=counts, requests=requests)
    return app
