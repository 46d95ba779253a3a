"""``BrokerAuth`` for httpx2 clients (the HTTP client of pydantic-ai, langsmith,
huggingface_hub and the MCP SDK 2.x).

Install with ``pip install 'authsec-crewai[httpx2]'``::

    from authsec_crewai.integrations.httpx2 import BrokerAuth

    async with httpx2.AsyncClient(auth=BrokerAuth(broker, "read:records")) as client:
        await client.get("https://api.example.com/secure-vault/records")

httpx2 accepts only its own ``httpx2.Auth`` (an ``httpx.Auth`` is refused with
``TypeError: Invalid "auth" argument``), so this is a twin of
:class:`authsec_crewai.BrokerAuth` with the same behaviour: the broker's token
on every request; on a 401 the token is dropped and the request sent once
more with a fresh one, the refetches of many requests being one; sync clients
on a ``SyncTokenBroker``. httpx stays the library's own client: httpx2 is only
imported here.
"""

from __future__ import annotations

from .._lazy import requires_extra
from ..auth import BrokerAuthFlow

with requires_extra("httpx2", "BrokerAuth for httpx2 clients"):
    import httpx2

__all__ = ["BrokerAuth"]


class BrokerAuth(BrokerAuthFlow, httpx2.Auth):
    """Attach the broker's token for ``scopes`` to httpx2 requests; on a 401, refetch and
    retry once (see :class:`authsec_crewai.BrokerAuth`)."""
