"""authsec-crewai: short-lived, scoped AuthSec delegation tokens for AI agents.

The public API is re-exported here lazily, so ``import authsec_crewai`` costs
almost nothing and never imports crewai (only ``authsec_crewai.tools`` does).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .broker import BrokerStats, RefreshPolicy, TokenBroker
    from .fetch import SecureFetcher
    from .settings import AuthSecSettings
    from .sync import SyncTokenBroker
    from .token import DelegationToken, TokenRequest


__all__ = [
    "AuthSecSettings",
    "BrokerStats",
    "DelegationToken",
    "RefreshPolicy",
    "SecureFetcher",
    "SyncTokenBroker",
    "TokenBroker",
    "TokenRequest",
    "__version__",
]

_WHERE = {
    "AuthSecSettings": ".settings",
    "BrokerStats": ".broker",
    "DelegationToken": ".token",
    "RefreshPolicy": ".broker",
    "SecureFetcher": ".fetch",
    "SyncTokenBroker": ".sync",
    "TokenBroker": ".broker",
    "TokenRequest": ".token",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
