"""A strict test OAuth 2.0 authorization server and protected resource, as a starlette app.

What it serves (paths under the issuer's path, see :class:`OAuthAuthority`):

- ``GET /.well-known/oauth-authorization-server{path}``: RFC 8414 metadata;
- ``POST {path}/oauth/token``: ``client_credentials`` and ``refresh_token``
  grants (RFC 6749 §4.4, §6) with ``scope`` and ``resource`` (RFC 8707);
- ``GET {path}/.well-known/openid-configuration``: the same, where OpenID Connect
  discovery appends it to the issuer (Okta, Keycloak);
- ``GET {path}/oauth/jwks``: the keys that sign its JWT access tokens;
- for each registered resource ``R``: ``GET /.well-known/oauth-protected-resource{R}``
  (RFC 9728 metadata) and ``GET R`` itself, which answers only a live token
  issued for it, and otherwise 401 with
  ``WWW-Authenticate: Bearer resource_metadata="..."``.

Tests steer it with :class:`~authsec_crewai.testing.MockFaults` (``path=`` the
endpoint to break: slow answers, 429/503, :func:`oauth_error` such as
``invalid_grant``) and read ``app.state.counts`` (requests per path) and the
authority's ``grants`` and ``refresh_presented``. :class:`OAuthTestServer` is
all of it served on a loopback port. It is a test double: only ever listen on
loopback.
"""

from __future__ import annotations

import base64
import binascii
from collections import Counter, deque
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .loopback import LoopbackServer
from .mockserver import Fault, MockFaults, RecordedRequest, _FaultsAndCounts
from .oauth_authority import OAuthAuthority, OAuthRefusal

__all__ = [
    "AS_METADATA_PATH",
    "JWKS_ENDPOINT",
    "OIDC_DISCOVERY_PATH",
    "RESOURCE_METADATA_PATH",
    "TOKEN_ENDPOINT",
    "OAuthTestServer",
    "create_oauth_app",
    "oauth_error",
]

AS_METADATA_PATH = "/.well-known/oauth-authorization-server"
RESOURCE_METADATA_PATH = "/.well-known/oauth-protected-resource"
OIDC_DISCOVERY_PATH = "/.well-known/openid-configuration"
"""Also served appended to the issuer, as Okta's and Keycloak's issuers serve it."""
TOKEN_ENDPOINT = "/oauth/token"  # noqa: S105 (a path, not a secret)
JWKS_ENDPOINT = "/oauth/jwks"
MAX_FORM_BYTES = 64 * 1024
_REPEATABLE = frozenset({"resource"})  # RFC 8707 §2: the one parameter that may repeat
_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}


def oauth_error(error: str, description: str = "injected", *, status: int = 400) -> Fault:
    """A fault answering an RFC 6749 §5.2 error (``invalid_grant``, ``invalid_client``...)."""
    return Fault.json({"error": error, "error_description": description}, status=status)


def _origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}"


def _refusal(exc: OAuthRefusal) -> Response:
    headers = dict(_NO_STORE)
    if exc.status == 401:
        headers["www-authenticate"] = 'Basic realm="oauth"'
    return JSONResponse(
        {"error": exc.error, "error_description": exc.description}, exc.status, headers=headers
    )


def _basic(request: Request) -> tuple[str, str] | None:
    """RFC 6749 §2.3.1: Basic with the form-urlencoded client id and secret."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "basic":
        raise OAuthRefusal("invalid_client", "only Basic authenticates a client here", status=401)
    try:
        decoded = base64.b64decode(credential.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthRefusal("invalid_client", "unreadable Basic credential", status=401) from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise OAuthRefusal("invalid_client", "Basic credential without ':'", status=401)
    return unquote_plus(user), unquote_plus(password)


async def _form(request: Request) -> tuple[dict[str, str], tuple[str, ...]]:
    """The form's single-valued parameters and its ``resource`` values."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise OAuthRefusal("invalid_request", "the body must be application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise OAuthRefusal("invalid_request", "the body is too large")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise OAuthRefusal("invalid_request", "the body is not a readable form") from None
    form: dict[str, str] = {}
    resources: list[str] = []
    for name, value in pairs:
        if name in _REPEATABLE:
            resources.append(value)
        elif name in form:
            raise OAuthRefusal("invalid_request", f"parameter {name!r} given more than once")
        else:
            form[name] = value
    return form, tuple(resources)


class _Endpoints:
    def __init__(self, authorities: dict[str, OAuthAuthority]) -> None:
        self.authorities = authorities

    def _resource_owner(self, path: str) -> OAuthAuthority | None:
        for authority in self.authorities.values():
            if path in authority.resources:
                return authority
        return None

    async def dispatch(self, request: Request) -> Response:
        path = request.url.path
        origin = _origin(request)
        if path.startswith(AS_METADATA_PATH):
            authority = self.authorities.get(path[len(AS_METADATA_PATH) :])
            if authority is not None and request.method == "GET":
                return JSONResponse(self._as_metadata(authority, origin))
        elif path.startswith(RESOURCE_METADATA_PATH):
            resource_path = path[len(RESOURCE_METADATA_PATH) :] or "/"
            authority = self._resource_owner(resource_path)
            if authority is not None and request.method == "GET":
                return JSONResponse(self._resource_metadata(authority, origin, resource_path))
        for prefix, authority in self.authorities.items():
            if path == prefix + OIDC_DISCOVERY_PATH and request.method == "GET":
                return JSONResponse(self._as_metadata(authority, origin))
            if path == prefix + TOKEN_ENDPOINT and request.method == "POST":
                return await self._token(request, authority, origin)
            if path == prefix + JWKS_ENDPOINT and request.method == "GET":
                return JSONResponse(authority.jwks())
        authority = self._resource_owner(path)
        if authority is not None:
            return self._resource(request, authority, origin, path)
        return JSONResponse({"error": "not_found"}, 404)

    @staticmethod
    def _as_metadata(authority: OAuthAuthority, origin: str) -> dict[str, Any]:
        issuer = origin + authority.path
        return {
            "issuer": issuer,
            "token_endpoint": issuer + TOKEN_ENDPOINT,
            "jwks_uri": issuer + JWKS_ENDPOINT,
            "grant_types_supported": ["client_credentials", "refresh_token"],
            "token_endpoint_auth_methods_supported": list(authority.auth_methods),
            "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
            "scopes_supported": sorted({s for c in authority.clients.values() for s in c.scopes}),
            "response_types_supported": [],
        }

    @staticmethod
    def _resource_metadata(authority: OAuthAuthority, origin: str, path: str) -> dict[str, Any]:
        return {
            "resource": origin + path if path != "/" else origin,
            "authorization_servers": [origin + authority.path],
            "scopes_supported": sorted(authority.resources[path]),
            "bearer_methods_supported": ["header"],
        }

    @staticmethod
    async def _token(request: Request, authority: OAuthAuthority, origin: str) -> Response:
        endpoint = origin + authority.path + TOKEN_ENDPOINT
        try:
            form, resources = await _form(request)
            client, method = authority.authenticate(form, _basic(request), endpoint)
            answer = authority.grant(form, resources, client=client, method=method, origin=origin)
        except OAuthRefusal as exc:
            return _refusal(exc)
        # Decided (and rotated) already; the answer waits, unless the client left.
        for _ in range(round(authority.answer_delay / 0.05)):
            if await request.is_disconnected():
                break
            await anyio.sleep(0.05)
        return JSONResponse(answer, headers=_NO_STORE)

    @staticmethod
    def _resource(request: Request, authority: OAuthAuthority, origin: str, path: str) -> Response:
        url = origin + path if path != "/" else origin
        metadata = origin + RESOURCE_METADATA_PATH + (path if path != "/" else "")
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            challenge = f'Bearer resource_metadata="{metadata}"'
            return JSONResponse({"error": "unauthorized"}, 401, {"www-authenticate": challenge})
        token = authority.lookup(value.strip())
        if token is None or url not in token.resources:
            challenge = f'Bearer error="invalid_token", resource_metadata="{metadata}"'
            return JSONResponse({"error": "invalid_token"}, 401, {"www-authenticate": challenge})
        required = authority.resources[path]
        if not required <= token.scopes:
            scope = " ".join(sorted(required))
            challenge = (
                f'Bearer error="insufficient_scope", scope="{scope}", '
                f'resource_metadata="{metadata}"'
            )
            headers = {"www-authenticate": challenge}
            return JSONResponse({"error": "insufficient_scope"}, 403, headers)
        return JSONResponse(
            {"resource": url, "client_id": token.client_id, "scope": sorted(token.scopes)}
        )


def create_oauth_app(*authorities: OAuthAuthority, faults: MockFaults | None = None) -> Starlette:
    """The test AS (one or more issuers, each at its own ``path``) as an ASGI app.

    ``app.state``: ``authorities``, ``faults``, ``counts`` (requests per path)
    and ``requests`` (the last 1,000, headers included).
    """
    if not authorities:
        authorities = (OAuthAuthority(),)
    by_path = {a.path: a for a in authorities}
    if len(by_path) != len(authorities):
        raise ValueError("every authority needs a path of its own")
    endpoints = _Endpoints(by_path)
    faults = faults if faults is not None else MockFaults()
    counts: Counter[str] = Counter()
    requests: deque[RecordedRequest] = deque(maxlen=1000)
    app = Starlette(routes=[Route("/{rest:path}", endpoints.dispatch, methods=["GET", "POST"])])
    app.add_middleware(_FaultsAndCounts, faults=faults, counts=counts, requests=requests)
    app.state.authorities = by_path
    app.state.faults = faults
    app.state.counts = counts
    app.state.requests = requests
    return app


class OAuthTestServer:
    """The test AS served on a loopback port: ``with OAuthTestServer() as server: ...``.

    ``authority`` (the first one) decides; ``faults`` breaks answers;
    ``counts`` are the requests that reached the server, per path.
    """

    def __init__(self, *authorities: OAuthAuthority, faults: MockFaults | None = None) -> None:
        self.authorities = authorities or (OAuthAuthority(),)
        self.faults = faults if faults is not None else MockFaults()
        self.app = create_oauth_app(*self.authorities, faults=self.faults)
        self._server = LoopbackServer(self.app)
        self.url = self._server.url

    @property
    def authority(self) -> OAuthAuthority:
        return self.authorities[0]

    @property
    def issuer(self) -> str:
        return self.url + self.authority.path

    @property
    def token_endpoint(self) -> str:
        return self.issuer + TOKEN_ENDPOINT

    def resource_url(self, path: str) -> str:
        """The absolute URL of the resource registered at ``path``."""
        return self.url + path

    @property
    def counts(self) -> Counter[str]:
        counts: Counter[str] = self.app.state.counts
        return counts

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self.app.state.requests)

    def start(self) -> OAuthTestServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> OAuthTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
