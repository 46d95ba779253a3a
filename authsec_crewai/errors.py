"""One exception tree for the whole library.

Every error carries a short machine-readable ``kind`` (used in tool results and
logs), says whether retrying can help (``retryable``), and whether the broker
must drop cached tokens because the server withdrew the delegation
(``terminal``). Messages are written for the person who has to act on them and
never contain a token.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AuthSecError",
    "AuthenticationError",
    "BrokerClosedError",
    "CassetteError",
    "ClientAuthenticationError",
    "ConfigurationError",
    "DelegationExpiredError",
    "EndpointNotFoundError",
    "EndpointRefusedError",
    "FetchError",
    "InsufficientScopeError",
    "InvalidClientIdError",
    "InvalidGrantError",
    "InvalidTokenResponseError",
    "MissingExtraError",
    "NotDelegatedError",
    "OAuthRequestError",
    "ProtectedApiError",
    "RateLimitedError",
    "ResponseTooLargeError",
    "ScopeNotGrantedError",
    "ScopeRefusedError",
    "ServerError",
    "TokenError",
    "TokenVerificationError",
    "TransportError",
    "TransportTimeoutError",
    "UnreachableError",
]


class AuthSecError(Exception):
    """Base of every error this library raises on purpose."""

    kind: ClassVar[str] = "authsec_error"
    retryable: ClassVar[bool] = False
    terminal: ClassVar[bool] = False


class ConfigurationError(AuthSecError):
    """The settings are missing or wrong; nothing will work until they are fixed."""

    kind = "configuration"


class MissingExtraError(ConfigurationError, ModuleNotFoundError):
    """A feature's optional dependencies are not installed; the message names the extra.

    Also a ``ModuleNotFoundError``, so code that guards an optional import
    with ``except ImportError`` keeps working.
    """

    kind = "missing_extra"

    def __init__(self, message: str, *, extra: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.extra = extra
        """The extra to install: ``pip install 'authsec-crewai[<extra>]'``."""


class BrokerClosedError(AuthSecError):
    """The broker is not running (never entered, or already closed)."""

    kind = "broker_closed"


# --- getting a token -------------------------------------------------------------


class TokenError(AuthSecError):
    """Getting a delegation token failed."""

    kind = "token_error"


class TransportError(TokenError):
    """The AuthSec server could not be reached or answered with a transient fault."""

    kind = "transport"
    retryable = True


class TransportTimeoutError(TransportError):
    """The AuthSec server did not answer in time."""

    kind = "timeout"


class UnreachableError(TransportError):
    """The AuthSec host name does not resolve, or a host that never answered refused
    the connection: a configuration mistake far more often than an outage, so it
    is reported at once instead of retried for the whole budget."""

    kind = "unreachable"
    retryable = False


class RateLimitedError(TransportError):
    """The AuthSec server answered 429 (rate limited)."""

    kind = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerError(TransportError):
    """The AuthSec server answered 5xx."""

    kind = "server_error"


class InvalidClientIdError(TokenError, ConfigurationError):
    """The server answered 400: the client id is missing or not a UUID."""

    kind = "invalid_client_id"


class AuthenticationError(TokenError):
    """The server answered 401: the API token is missing or invalid."""

    kind = "authentication"
    terminal = True


class ClientAuthenticationError(AuthenticationError, ConfigurationError):
    """An OAuth token endpoint refused the client's authentication (``invalid_client``):
    the client id, secret or key (or its ``kid``) is wrong or not registered."""

    kind = "invalid_client"


class InvalidGrantError(TokenError):
    """An OAuth server answered ``invalid_grant``: the refresh token (or other grant)
    expired, was revoked or was already used. Terminal: a person must sign in again,
    so it is never retried (retrying a spent refresh token is what revokes a family)."""

    kind = "invalid_grant"
    terminal = True


class OAuthRequestError(TokenError, ConfigurationError):
    """An OAuth server refused the request as configured (``invalid_target``,
    ``unauthorized_client``, ``unsupported_grant_type``, ``invalid_request``, ...)."""

    kind = "oauth_refused"

    def __init__(self, message: str, *, error: str) -> None:
        super().__init__(message)
        self.error = error


class NotDelegatedError(TokenError):
    """The server answered 404: no active delegation (never delegated, or revoked)."""

    kind = "not_delegated"
    terminal = True


class EndpointNotFoundError(TokenError, ConfigurationError):
    """The token endpoint answered 404 without AuthSec's JSON error body: the URL is
    wrong (a typo in ``AUTHSEC_BASE_URL``, a proxy in the way), not the delegation.

    Terminal all the same: a 404 cannot prove the delegation still stands, so
    cached tokens are dropped (fail closed) until a token endpoint answers again.
    """

    kind = "endpoint_not_found"
    terminal = True


class DelegationExpiredError(TokenError):
    """The server answered 410: the delegation expired."""

    kind = "delegation_expired"
    terminal = True


class InvalidTokenResponseError(TokenError):
    """The server's answer could not be used (bad JSON, no token, not a JWT, ...)."""

    kind = "invalid_response"


class TokenVerificationError(TokenError):
    """The token failed signature or claim verification; it is never used."""

    kind = "verification_failed"


class ScopeNotGrantedError(TokenError):
    """The delegation does not grant the requested scopes."""

    kind = "insufficient_scope"

    def __init__(self, message: str, *, missing: frozenset[str] = frozenset()) -> None:
        super().__init__(message)
        self.missing = missing


# --- calling a protected API ---------------------------------------------------------


class FetchError(AuthSecError):
    """A protected-API call was refused or failed."""

    kind = "fetch_error"


class EndpointRefusedError(FetchError):
    """The endpoint is not a safe relative path under the configured API origin."""

    kind = "endpoint_refused"


class ScopeRefusedError(FetchError):
    """The scope is not allowed by configuration."""

    kind = "scope_refused"


class InsufficientScopeError(FetchError):
    """The protected API answered 403, or the token does not hold the scope."""

    kind = "insufficient_scope"


class ResponseTooLargeError(FetchError):
    """The protected API's answer is larger than the configured cap."""

    kind = "response_too_large"


class ProtectedApiError(FetchError):
    """The protected API answered with an error status or an unusable body."""

    kind = "api_error"

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


# --- recorded sessions ---------------------------------------------------------------


class CassetteError(AuthSecError):
    """A cassette is missing, corrupt, of an unknown version, or lacks a request."""

    kind = "cassette"
