"""A test MCP server protected by the test OAuth authorization server, on 127.0.0.1.

:class:`MCPTestServer` serves, on one loopback origin:

- a FastMCP server (the MCP SDK's) at ``/mcp`` (streamable HTTP) that accepts
  only live access tokens the authority issued *for its own URL* (RFC 8707
  ``resource``) with the required scopes, and answers anything else 401 with
  ``WWW-Authenticate: Bearer ... resource_metadata="..."``;
- its RFC 9728 protected-resource metadata (naming the authority as its
  authorization server), served by the SDK itself;
- the authority's OAuth endpoints (:func:`create_oauth_app`) at the
  authority's path (``/as`` by default), so resource and authorization server
  share the origin, as the test authority requires of the resources it
  issues tokens for.

Why a real SDK server rather than a stub: what must hold (a session that
survives the authorization server forgetting every token, the 401 challenge a
client discovers the issuer from, tokens bound to the resource) is decided by
the SDK's own bearer middleware, not by code of ours.

Every request to the MCP endpoint is recorded (:attr:`MCPTestServer.requests`:
the JSON-RPC method or the HTTP method, and the session id), so tests can
count the sessions clients open and close; :meth:`MCPTestServer.forget_sessions`
answers 404 to every session known so far, as a restarted server would.
Its tools record who called (:attr:`MCPTestServer.calls`: the tool, the
token's client id and fingerprint), so tests can prove which identity each
call used. ``echo_token`` hands the caller's own token back and ``big``
answers as many characters as asked: hostile answers a client must scrub and
cap. ``fail`` raises. Only ever listen on loopback.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from starlette.types import Message, Receive, Scope, Send

from .._lazy import requires_extra
from ..redact import fingerprint
from .loopback import LoopbackServer
from .oauth_authority import IssuedToken, OAuthAuthority
from .oauthserver import TOKEN_ENDPOINT, create_oauth_app

with requires_extra("mcp", "MCPTestServer"):
    from mcp.server.auth.provider import AccessToken
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.fastmcp import Context, FastMCP

__all__ = ["MCP_TOOL_NAMES", "MCPCall", "MCPRequest", "MCPTestServer"]

_MCP_PATH: Final = "/mcp"
_METADATA_PATH: Final = "/.well-known/oauth-protected-resource/mcp"
MCP_TOOL_NAMES: Final = ("whoami", "lookup_record", "echo_token", "big", "fail")


@dataclass(frozen=True)
class MCPCall:
    """One tool call the server answered: which tool, for whom, with which token, in
    which session."""

    tool: str
    client_id: str
    token_fingerprint: str
    session_id: str | None = None


class _AuthorityVerifier:
    """A token is valid when the authority issued it, it is live, and it is for ``url``."""

    def __init__(self, authority: OAuthAuthority, url: str) -> None:
        self.authority = authority
        self.url = url

    async def verify_token(self, token: str) -> AccessToken | None:
        issued = self.authority.lookup(token)
        if issued is None or self.url not in issued.resources:
            return None
        return AccessToken(
            token=token,
            client_id=issued.client_id,
            scopes=sorted(issued.scopes),
            expires_at=int(issued.expires_at),
            resource=self.url,
        )


@dataclass(frozen=True)
class MCPRequest:
    """One HTTP request to the MCP endpoint: the JSON-RPC method it carried (for a POST)
    or the HTTP method (``GET``, ``DELETE``), and the session id it named, if any."""

    method: str
    session_id: str | None


class MCPTestServer:
    """The protected FastMCP server and its authorization server, on a loopback port.

    ``with MCPTestServer() as server: ...``; register clients on
    ``server.authority`` (it issues tokens for :attr:`mcp_url` holding every
    one of ``scopes``). :attr:`token_requests` counts the requests that reached
    the token endpoint; :meth:`forget_tokens` revokes every token at once.
    """

    def __init__(
        self, authority: OAuthAuthority | None = None, *, scopes: Iterable[str] = ("mcp:tools",)
    ) -> None:
        self.authority = authority if authority is not None else OAuthAuthority(path="/as")
        self.scopes = tuple(scopes)
        self.authority.register_resource(_MCP_PATH, scope=self.scopes)
        self.calls: list[MCPCall] = []
        self.requests: list[MCPRequest] = []
        """Every request to the MCP endpoint, in order (see :meth:`sessions_opened`)."""
        self._forgotten: set[str] = set()
        self._oauth = create_oauth_app(self.authority)
        self._server = LoopbackServer(self._dispatch, lifespan=True)
        self.url = self._server.url
        self.mcp_url = self.url + _MCP_PATH
        self.mcp = self._create_mcp()
        self._mcp_app = self.mcp.streamable_http_app()

    @property
    def issuer(self) -> str:
        return self.url + self.authority.path

    @property
    def counts(self) -> Counter[str]:
        """Requests that reached the authorization server, per path."""
        counts: Counter[str] = self._oauth.state.counts
        return counts

    @property
    def token_requests(self) -> int:
        return self.counts[self.authority.path + TOKEN_ENDPOINT]

    def forget_tokens(self) -> None:
        """Revoke every token the authority issued (a restart that lost its state)."""
        self.authority.forget_tokens()

    def sessions_opened(self) -> int:
        """How many ``initialize`` requests (sessions opened) the MCP endpoint received."""
        return sum(1 for r in self.requests if r.method == "initialize")

    def sessions_closed(self) -> list[str]:
        """The session ids clients closed (``DELETE``), in order."""
        return [r.session_id for r in self.requests if r.method == "DELETE" and r.session_id]

    def forget_sessions(self) -> None:
        """Forget every session opened so far, as a restarted server would: each later
        request naming one is answered 404 (the streamable HTTP answer to an unknown
        session), so its client must open a new session."""
        self._forgotten.update(r.session_id for r in self.requests if r.session_id)

    def _caller(self, tool: str, ctx: Context[Any, Any, Any]) -> IssuedToken:
        """The token of the HTTP request that carried this call.

        Read from the request itself, not from the SDK's ``get_access_token()``:
        that context variable is copied into the session's task when the
        session starts, so it names the session's first token for every
        later call, whichever token the call came with.
        """
        request = ctx.request_context.request
        header = "" if request is None else request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        token = self.authority.lookup(value.strip()) if scheme.lower() == "bearer" else None
        if token is None:  # the bearer middleware lets no call through without a live one
            raise RuntimeError("no live access token on the request")
        session_id = None if request is None else request.headers.get("mcp-session-id")
        self.calls.append(MCPCall(tool, token.client_id, fingerprint(token.value), session_id))
        return token

    def _create_mcp(self) -> FastMCP[Any]:
        mcp = FastMCP(
            "authsec-test-mcp",
            token_verifier=_AuthorityVerifier(self.authority, self.mcp_url),
            auth=AuthSettings(
                issuer_url=self.issuer,  # type: ignore[arg-type]  # pydantic parses the URL
                resource_server_url=self.mcp_url,  # type: ignore[arg-type]
                required_scopes=list(self.scopes),
                validate_token_resource=True,
            ),
            host="127.0.0.1",
            log_level="WARNING",
        )

        @mcp.tool(description="Who the caller is: the client id and scopes of its token.")
        def whoami(ctx: Context[Any, Any, Any]) -> str:
            token = self._caller("whoami", ctx)
            return json.dumps({"client_id": token.client_id, "scopes": sorted(token.scopes)})

        @mcp.tool(description="One record of the vault, by its id.")
        def lookup_record(
            record_id: str, ctx: Context[Any, Any, Any], include_history: bool = False
        ) -> str:
            token = self._caller("lookup_record", ctx)
            record: dict[str, Any] = {"id": record_id, "reader": token.client_id}
            if include_history:
                record["history"] = ["created", "reviewed"]
            return json.dumps(record)

        @mcp.tool(description="A hostile answer: the caller's own bearer token, echoed.")
        def echo_token(ctx: Context[Any, Any, Any]) -> str:
            token = self._caller("echo_token", ctx)
            return f"your token is {token.value}"

        @mcp.tool(description="A large answer: `size` characters.")
        def big(size: int, ctx: Context[Any, Any, Any]) -> str:
            self._caller("big", ctx)
            return "x" * size

        @mcp.tool(description="Always fails.")
        def fail(ctx: Context[Any, Any, Any]) -> str:
            self._caller("fail", ctx)
            raise ValueError("the record store is down")

        return mcp

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The MCP endpoint and its metadata to FastMCP; every other path to the AS."""
        if scope["type"] == "http" and scope.get("path") == _MCP_PATH:
            await self._mcp_request(scope, receive, send)
        elif scope["type"] == "lifespan" or scope.get("path") in (_MCP_PATH, _METADATA_PATH):
            await self._mcp_app(scope, receive, send)
        else:
            await self._oauth(scope, receive, send)

    async def _mcp_request(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Record the request (:attr:`requests`), answer 404 to a forgotten session, and
        hand the rest to FastMCP with the body replayed."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        session_id = headers.get("mcp-session-id")
        body = b""
        if scope["method"] == "POST":
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        items = parsed if isinstance(parsed, list) else [parsed]
        methods = [i["method"] for i in items if isinstance(i, dict) and "method" in i]
        for method in methods or [scope["method"]]:
            self.requests.append(MCPRequest(method, session_id))
        if session_id is not None and session_id in self._forgotten:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"session not found"})
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if scope["method"] == "POST" and not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self._mcp_app(scope, replay, send)

    def start(self) -> MCPTestServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> MCPTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
