"""Transports: live (the AuthSec server), oauth (any OAuth 2.0 server), mock (in
process), record and replay.

Names are imported lazily so that ``import authsec_crewai.transports`` stays
cheap and a mode only loads what it uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:
    from .base import KeySet, Transport, TransportInfo
    from .live import LiveTransport
    from .mock import MockTransport
    from .oauth import OAuthTransport, RefreshChain
    from .record import RecordingTransport
    from .replay import ReplayTransport, open_cassette_transport

__all__ = [
    "KeySet",
    "LiveTransport",
    "MockTransport",
    "OAuthTransport",
    "RecordingTransport",
    "RefreshChain",
    "ReplayTransport",
    "Transport",
    "TransportInfo",
    "open_cassette_transport",
]

_WHERE = {
    "KeySet": ".base",
    "Transport": ".base",
    "TransportInfo": ".base",
    "LiveTransport": ".live",
    "MockTransport": ".mock",
    "OAuthTransport": ".oauth",
    "RefreshChain": ".oauth",
    "RecordingTransport": ".record",
    "ReplayTransport": ".replay",
    "open_cassette_transport": ".replay",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, __all__)
