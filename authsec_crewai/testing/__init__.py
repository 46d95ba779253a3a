"""Test doubles for authsec-crewai: what test suites import (as ``structlog.testing``
and ``httpx.MockTransport`` are for theirs).

- :class:`MockAuthority`: mints real RS256 delegation tokens in process;
- :func:`create_app`: the mock AuthSec server and its secure-vault API as an ASGI
  app, with :class:`MockFaults` of :class:`Fault` to inject failures;
- :class:`LoopbackServer`: uvicorn serving an app on 127.0.0.1, so the live
  transport is exercised over a real socket;
- :class:`OAuthAuthority`, :func:`create_oauth_app` and :class:`OAuthTestServer`: a
  strict OAuth 2.0 authorization server (RFC 8414 metadata, client credentials, the
  three client authentication methods, rotating refresh tokens with reuse detection)
  and a protected resource with RFC 9728 metadata, on 127.0.0.1;
- :class:`MCPTestServer`: a FastMCP server (the MCP SDK's, extra ``mcp``) that
  accepts only live tokens the test authorization server issued for its own URL,
  with RFC 9728 metadata, and that authorization server, on one loopback origin;
- :class:`DripServer`: a raw socket server on 127.0.0.1 that drips its answer,
  headers included, one byte at a time (what uvicorn cannot do);
- :func:`block_network`: make every real network connection fail while a
  replayed test runs;
- the pytest plugin (:mod:`authsec_crewai.testing.pytest_plugin`, registered
  through the ``pytest11`` entry point): the ``authsec_cassette`` marker and
  its fixtures.

Names are imported lazily: ``import authsec_crewai.testing`` loads neither
starlette nor uvicorn until a name that needs them is used. Production code
never imports this package (``MockTransport``, mock mode's transport, reaches
the authority and the app through it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from ._netguard import NetworkBlockedError, block_network
    from .authority import DEFAULT_PERMISSIONS, MockAuthority
    from .dripserver import DripServer
    from .loopback import LoopbackServer
    from .mcpserver import MCPCall, MCPTestServer
    from .mockserver import (
        BUNDLE_PATH,
        TOKEN_PATH,
        VAULT_RESOURCES,
        Fault,
        MockFaults,
        RecordedRequest,
        create_app,
    )
    from .oauth_authority import GrantRecord, OAuthAuthority, OAuthClient
    from .oauthserver import OAuthTestServer, create_oauth_app, oauth_error
    from .pytest_plugin import AuthSecCassetteWarning, CassetteSpec

__all__ = [
    "BUNDLE_PATH",
    "DEFAULT_PERMISSIONS",
    "TOKEN_PATH",
    "VAULT_RESOURCES",
    "AuthSecCassetteWarning",
    "CassetteSpec",
    "DripServer",
    "Fault",
    "GrantRecord",
    "LoopbackServer",
    "MCPCall",
    "MCPTestServer",
    "MockAuthority",
    "MockFaults",
    "NetworkBlockedError",
    "OAuthAuthority",
    "OAuthClient",
    "OAuthTestServer",
    "RecordedRequest",
    "block_network",
    "create_app",
    "create_oauth_app",
    "oauth_error",
]

_WHERE = {
    "NetworkBlockedError": "._netguard",
    "block_network": "._netguard",
    "DEFAULT_PERMISSIONS": ".authority",
    "MockAuthority": ".authority",
    "DripServer": ".dripserver",
    "LoopbackServer": ".loopback",
    "MCPCall": ".mcpserver",
    "MCPTestServer": ".mcpserver",
    "BUNDLE_PATH": ".mockserver",
    "TOKEN_PATH": ".mockserver",
    "VAULT_RESOURCES": ".mockserver",
    "Fault": ".mockserver",
    "MockFaults": ".mockserver",
    "RecordedRequest": ".mockserver",
    "create_app": ".mockserver",
    "GrantRecord": ".oauth_authority",
    "OAuthAuthority": ".oauth_authority",
    "OAuthClient": ".oauth_authority",
    "OAuthTestServer": ".oauthserver",
    "create_oauth_app": ".oauthserver",
    "oauth_error": ".oauthserver",
    "AuthSecCassetteWarning": ".pytest_plugin",
    "CassetteSpec": ".pytest_plugin",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, __all__)
