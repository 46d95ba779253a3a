"""authsec-crewai: short-lived, scoped AuthSec delegation tokens for AI agents.

The public API is re-exported here lazily, so ``import authsec_crewai`` costs
almost nothing and never imports crewai (only ``authsec_crewai.tools`` does).
What is not named in ``__all__`` here, in :mod:`authsec_crewai.transports`, or
in the ``__all__`` of :mod:`~authsec_crewai.tools` and
:mod:`~authsec_crewai.logging` is internal and may change.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from . import errors as _errors
from ._version import __version__

if TYPE_CHECKING:
    from .auth import BrokerAuth
    from .broker import BrokerStats, TokenBroker
    from .errors import (
        AuthenticationError,
        AuthSecError,
        BrokerClosedError,
        CassetteError,
        ClientAuthenticationError,
        ConfigurationError,
        DelegationExpiredError,
        EndpointNotFoundError,
        EndpointRefusedError,
        FetchError,
        InsufficientScopeError,
        InvalidClientIdError,
        InvalidGrantError,
        InvalidTokenResponseError,
        MissingExtraError,
        NotDelegatedError,
        OAuthRequestError,
        ProtectedApiError,
        RateLimitedError,
        ResponseTooLargeError,
        ScopeNotGrantedError,
        ScopeRefusedError,
        ServerError,
        TokenError,
        TokenVerificationError,
        TransportError,
        TransportTimeoutError,
        UnreachableError,
    )
    from .fetch import FetchResult, SecureFetcher
    from .policy import RefreshPolicy
    from .settings import DEMO_CLIENT_ID, AuthSecSettings
    from .sync import SyncTokenBroker
    from .token import DelegationToken, TokenRequest
    from .wiring import build_broker, build_fetcher, build_transport, refresh_policy

_WHERE = {
    "AuthSecSettings": ".settings",
    "BrokerAuth": ".auth",
    "BrokerStats": ".broker",
    "DEMO_CLIENT_ID": ".settings",
    "DelegationToken": ".token",
    "FetchResult": ".fetch",
    "RefreshPolicy": ".policy",
    "SecureFetcher": ".fetch",
    "SyncTokenBroker": ".sync",
    "TokenBroker": ".broker",
    "TokenRequest": ".token",
    "build_broker": ".wiring",
    "build_fetcher": ".wiring",
    "build_transport": ".wiring",
    "refresh_policy": ".wiring",
    **dict.fromkeys(_errors.__all__, ".errors"),
}

__all__ = [
    "DEMO_CLIENT_ID",
    "AuthSecError",
    "AuthSecSettings",
    "AuthenticationError",
    "BrokerAuth",
    "BrokerClosedError",
    "BrokerStats",
    "CassetteError",
    "ClientAuthenticationError",
    "ConfigurationError",
    "DelegationExpiredError",
    "DelegationToken",
    "EndpointNotFoundError",
    "EndpointRefusedError",
    "FetchError",
    "FetchResult",
    "InsufficientScopeError",
    "InvalidClientIdError",
    "InvalidGrantError",
    "InvalidTokenResponseError",
    "MissingExtraError",
    "NotDelegatedError",
    "OAuthRequestError",
    "ProtectedApiError",
    "RateLimitedError",
    "RefreshPolicy",
    "ResponseTooLargeError",
    "ScopeNotGrantedError",
    "ScopeRefusedError",
    "SecureFetcher",
    "ServerError",
    "SyncTokenBroker",
    "TokenBroker",
    "TokenError",
    "TokenRequest",
    "TokenVerificationError",
    "TransportError",
    "TransportTimeoutError",
    "UnreachableError",
    "__version__",
    "build_broker",
    "build_fetcher",
    "build_transport",
    "refresh_policy",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
