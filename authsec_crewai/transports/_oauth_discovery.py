"""Where an OAuth server's endpoints are: RFC 8414 and RFC 9728 metadata.

Both documents live under ``/.well-known/`` with the well-known segment
inserted between the host and the path (RFC 8414 §3.1, RFC 9728 §3.1), and
both must name exactly what was asked for (the ``issuer`` of RFC 8414 §3.3,
the ``resource`` of RFC 9728 §3.3): a document that names another issuer or
resource is an attack (a mix-up), never a redirect to follow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .. import errors

__all__ = [
    "LOOPBACK_HOSTS",
    "ServerMetadata",
    "as_metadata_url",
    "as_metadata_urls",
    "check_endpoint",
    "parse_as_metadata",
    "parse_resource_metadata",
    "resource_metadata_url",
]

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_AUTH_METHODS = ("client_secret_basic",)  # RFC 8414 §2: the default when omitted


@dataclass(frozen=True, slots=True)
class ServerMetadata:
    """What the client needs from an authorization server's metadata."""

    issuer: str
    token_endpoint: str
    jwks_uri: str | None
    grant_types: frozenset[str]
    auth_methods: tuple[str, ...]
    signing_algs: tuple[str, ...]


def _well_known(url: str, segment: str) -> str:
    parts = urlsplit(url)
    path = parts.path.rstrip("/")  # RFC 8414 §3.1: a terminating "/" is removed first
    return urlunsplit((parts.scheme, parts.netloc, f"/.well-known/{segment}{path}", "", ""))


def as_metadata_url(issuer: str) -> str:
    """``https://as.example/tenant`` -> ``https://as.example/.well-known/oauth-authorization-server/tenant``."""
    return _well_known(issuer, "oauth-authorization-server")


def as_metadata_urls(issuer: str) -> tuple[str, ...]:
    """Where an issuer's metadata may be, in the order tried (the MCP authorization
    spec's): RFC 8414, then OpenID Connect Discovery with the well-known segment
    inserted, then appended to the issuer (Okta's custom servers, Keycloak's realms).
    Every one of them must name the same issuer."""
    urls = [as_metadata_url(issuer), _well_known(issuer, "openid-configuration")]
    appended = issuer.rstrip("/") + "/.well-known/openid-configuration"
    if appended not in urls:
        urls.append(appended)
    return tuple(urls)


def resource_metadata_url(resource: str) -> str:
    """``https://mcp.example/mcp`` -> ``https://mcp.example/.well-known/oauth-protected-resource/mcp``."""
    return _well_known(resource, "oauth-protected-resource")


def check_endpoint(value: Any, name: str, where: str) -> str:
    """An endpoint URL from metadata: absolute http(s), and https unless on loopback
    (a client secret or assertion never travels in clear to another machine)."""
    if not isinstance(value, str) or not value:
        raise errors.InvalidTokenResponseError(f"{where} has no usable {name!r}")
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
    except ValueError:
        host, parts = "", urlsplit("")
    if parts.scheme not in ("https", "http") or not host or parts.fragment or "@" in parts.netloc:
        raise errors.InvalidTokenResponseError(
            f"{where}'s {name!r} is not an absolute http(s) URL without credentials or fragment"
        )
    if parts.scheme == "http" and host not in LOOPBACK_HOSTS:
        raise errors.InvalidTokenResponseError(
            f"{where}'s {name!r} is plain http:// to {host}; refusing to send credentials "
            "there in clear (https is required outside loopback)"
        )
    return value


def _strings(value: Any, default: tuple[str, ...] = ()) -> tuple[str, ...]:
    if value is None:
        return default
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise errors.InvalidTokenResponseError("a metadata list holds something other than strings")


def parse_as_metadata(body: Any, issuer: str) -> ServerMetadata:
    """RFC 8414 metadata, checked to be the configured issuer's own."""
    where = f"the metadata of {issuer}"
    if not isinstance(body, Mapping):
        raise errors.InvalidTokenResponseError(f"{where} is not a JSON object")
    if body.get("issuer") != issuer:
        raise errors.ConfigurationError(
            f"{where} names another issuer; RFC 8414 requires an exact match (a mix-up "
            "attack, or AUTHSEC_OAUTH_ISSUER differs from the server's issuer, e.g. by a "
            "trailing '/')"
        )
    jwks_uri = body.get("jwks_uri")
    return ServerMetadata(
        issuer=issuer,
        token_endpoint=check_endpoint(body.get("token_endpoint"), "token_endpoint", where),
        jwks_uri=None if jwks_uri is None else check_endpoint(jwks_uri, "jwks_uri", where),
        grant_types=frozenset(
            _strings(body.get("grant_types_supported"), ("authorization_code", "implicit"))
        ),
        auth_methods=_strings(
            body.get("token_endpoint_auth_methods_supported"), _DEFAULT_AUTH_METHODS
        ),
        signing_algs=_strings(body.get("token_endpoint_auth_signing_alg_values_supported")),
    )


def parse_resource_metadata(body: Any, resource: str) -> tuple[str, ...]:
    """The authorization servers of RFC 9728 metadata, checked to be the resource's own."""
    where = f"the protected-resource metadata of {resource}"
    if not isinstance(body, Mapping):
        raise errors.InvalidTokenResponseError(f"{where} is not a JSON object")
    if body.get("resource") != resource:
        raise errors.ConfigurationError(
            f"{where} names another resource; RFC 9728 requires an exact match "
            "(check AUTHSEC_RESOURCE)"
        )
    servers = _strings(body.get("authorization_servers"))
    if not servers:
        raise errors.ConfigurationError(
            f"{where} names no authorization server; set AUTHSEC_OAUTH_ISSUER"
        )
    for server in servers:
        check_endpoint(server, "authorization_servers", where)
    return servers
