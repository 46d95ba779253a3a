"""Settings -> transport, broker, fetcher: the one place objects are built from configuration.

:class:`~authsec_crewai.settings.AuthSecSettings` holds and validates the
configuration; this module turns it into working objects. The tools, the
command line and the pytest plugin all build through here, so a rule such as
"which client id do we ask as" or "which transport does ``record`` record"
exists once.

What a transport is, this module learns from its declared
:class:`~authsec_crewai.transports.TransportInfo`, never from its class or a
mode string, so a third-party transport is wired like the built-in ones.

Importing this module is cheap: transports and the broker are imported inside
the functions that need them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .settings import DEMO_CLIENT_ID, AuthSecSettings, env_var

if TYPE_CHECKING:
    import httpx

    from .broker import TokenBroker
    from .fetch import SecureFetcher
    from .policy import RefreshPolicy
    from .stores.base import TokenStore
    from .sync import SyncTokenBroker
    from .transports.base import Transport

__all__ = [
    "build_broker",
    "build_fetcher",
    "build_store",
    "build_transport",
    "client_id_for",
    "oauth_transport",
    "recording_source",
    "refresh_policy",
    "sqlite_path",
    "store_keys",
]

_auto_mock_warned = threading.Event()
"""Set once the auto -> mock warning was logged: it is said once per process,
not once per tool or broker (a crew builds many)."""


def build_transport(settings: AuthSecSettings) -> Transport:
    """The transport for ``settings.resolved_mode``, importing only what that mode needs.

    Building a mock because ``AUTHSEC_MODE=auto`` found no server logs one
    warning per process: the choice is then visible, and said where it takes
    effect rather than wherever the settings happen to be read.
    """
    mode = settings.resolved_mode
    if mode == "mock":
        from .transports.mock import MockTransport

        _warn_if_auto_mock(settings)
        return MockTransport()
    if mode == "live":
        return _live_transport(settings)
    if mode == "oauth":
        return oauth_transport(settings)
    if importlib.util.find_spec(f"{__package__}.transports.replay") is None:
        raise ConfigurationError(
            f"AUTHSEC_MODE={mode} is not available yet in this version of authsec-crewai; "
            "use live or mock"
        )
    replay = importlib.import_module(f"{__package__}.transports.replay")
    if mode == "record":
        # "all": AUTHSEC_MODE=record asks for a fresh recording; shared: every broker
        # of this process (a crew builds one per tool) records into the one cassette
        # instead of overwriting it on close.
        transport: Transport = replay.open_cassette_transport(
            recording_source(settings), settings.cassette, record_mode="all", shared=True
        )
        return transport
    transport = replay.ReplayTransport(settings.cassette)
    return transport


def recording_source(settings: AuthSecSettings) -> Transport:
    """What a recording records: the live server when ``AUTHSEC_BASE_URL`` and a client
    id (or ``AUTHSEC_AGENTS``) are set, else the mock (settings refuse half a live
    configuration in ``record``); the OAuth server when ``AUTHSEC_OAUTH_ISSUER`` or
    ``AUTHSEC_RESOURCE`` is set (its refresh chain, if any, kept in this process)."""
    if settings.from_oauth_server:
        return oauth_transport(settings)
    if settings.base_url is not None:
        return _live_transport(settings)
    from .transports.mock import MockTransport

    return MockTransport()


def _live_transport(settings: AuthSecSettings) -> Transport:
    from .transports.live import LiveTransport

    if settings.base_url is None:  # pragma: no cover - the settings refused this already
        raise ConfigurationError(f"{env_var('base_url')} is not set")
    return LiveTransport(
        settings.base_url,
        api_token=settings.api_token_value(),
        timeout=settings.timeout,
        retry_budget=settings.retry_budget,
    )


def oauth_transport(settings: AuthSecSettings, store: TokenStore | None = None) -> Transport:
    """The OAuth transport of ``AUTHSEC_MODE=oauth``; with ``AUTHSEC_OAUTH_REFRESH_TOKEN``
    it spends a refresh-token chain kept in ``store`` (shared by the fleet), or in this
    process when there is none."""
    from .stores.chain import LocalRefreshChain, SharedRefreshChain
    from .transports.oauth import OAuthTransport, RefreshChain

    if settings.client_id is None:  # pragma: no cover - the settings refused this already
        raise ConfigurationError(f"{env_var('client_id')} is not set")
    secret, key_pem, refresh_token = settings.oauth_secrets()
    chain: RefreshChain | None = None
    if refresh_token is not None:
        issuer = settings.oauth_issuer or f"resource:{settings.resource}"
        # The chain's lease must outlive one grant, retries included.
        lease = max(settings.retry_budget, settings.timeout) + 5.0
        chain = (
            LocalRefreshChain(refresh_token)
            if store is None
            else SharedRefreshChain(
                refresh_token,
                store,
                issuer=issuer,
                client_id=settings.client_id,
                lease_seconds=max(lease, store.lease_seconds),
            )
        )
    return OAuthTransport(
        client_id=settings.client_id,
        issuer=settings.oauth_issuer,
        resource=settings.resource,
        client_secret=secret,
        private_key=key_pem,
        key_id=settings.client_key_id,
        auth_method=settings.oauth_auth_method,
        refresh_chain=chain,
        verify_access_tokens=settings.verify,
        leeway=settings.verify_leeway,
        timeout=settings.timeout,
        retry_budget=settings.retry_budget,
    )


def refresh_policy(settings: AuthSecSettings) -> RefreshPolicy:
    """The broker's refresh policy from the ``AUTHSEC_REFRESH_*`` and back-off settings
    (which were checked with the policy's own rules when they were read)."""
    from .policy import RefreshPolicy

    return RefreshPolicy(**settings.refresh_policy_values())


def client_id_for(settings: AuthSecSettings, transport: Transport | None = None) -> str:
    """The agent to ask tokens for when none is named: the one rule, wherever one is needed.

    The configured client id (``AUTHSEC_CLIENT_ID``, or ``AUTHSEC_AGENT_CLIENT_ID``,
    the name the existing SDKs use); else the one ``transport`` declares (a
    replay asks as the agent the session was recorded with); else, in any mode
    but live, :data:`~authsec_crewai.settings.DEMO_CLIENT_ID`. Live with only
    ``AUTHSEC_AGENTS`` has no such agent: only the agents named there have an
    identity, and a tool not given one of them must not borrow it.
    """
    if settings.client_id is not None:
        return settings.client_id
    declared = transport.info.client_id if transport is not None else None
    if declared:
        return declared
    if settings.resolved_mode == "live":
        raise ConfigurationError(
            f"{env_var('client_id')} is not set: only the agents in {env_var('agents')} have "
            "an identity; give this one a client id, or list its role there"
        )
    return DEMO_CLIENT_ID


def build_broker(settings: AuthSecSettings, transport: Transport | None = None) -> TokenBroker:
    """A broker wired from ``settings``; pass ``transport`` to override the mode's default.

    The broker asks as :func:`client_id_for` says, runs on the clock the
    transport declares (a cassette's tokens live on the cassette's time), and
    shares tokens through the store ``AUTHSEC_STORE`` names. It is not started:
    use it with ``async with``.
    """
    from .broker import TokenBroker

    if transport is None and settings.resolved_mode == "oauth":
        # The fleet's refresh-token chain lives in the store its tokens are shared in.
        store = build_store(settings)
        chosen = oauth_transport(settings, store)
    else:
        chosen = transport if transport is not None else build_transport(settings)
        # A transport on its own clock (a recorded session) lives on its own time:
        # its tokens are never shared with other processes.
        store = None if chosen.info.clock is not None else build_store(settings)
    return TokenBroker(
        chosen,
        client_id=client_id_for(settings, chosen),
        audience=tuple(settings.audience),
        policy=refresh_policy(settings),
        verify=settings.verify,
        verify_leeway=settings.verify_leeway,
        clock=chosen.info.clock or time.time,
        store=store,
    )


def store_keys(settings: AuthSecSettings) -> list[bytes]:
    """The store keys, sealing key first: ``AUTHSEC_STORE_KEY`` ('new,old' allowed),
    then ``AUTHSEC_STORE_OLD_KEY``."""
    from .stores.base import decode_key

    texts: list[tuple[str, str]] = []
    if settings.store_key is not None:
        for part in settings.store_key.get_secret_value().split(","):
            if part.strip():
                texts.append((part, "AUTHSEC_STORE_KEY"))
    if settings.store_old_key is not None:
        texts.append((settings.store_old_key.get_secret_value(), "AUTHSEC_STORE_OLD_KEY"))
    return [decode_key(text, variable=variable) for text, variable in texts]


def sqlite_path(url: str) -> Path:
    """The file a ``sqlite:`` URL names, made absolute once, here.

    The convention is SQLAlchemy's: what follows ``sqlite:///`` is the path, so
    ``sqlite:////var/lib/app/tokens.db`` (four slashes) is absolute and
    ``sqlite:///tokens.db`` is relative to the working directory of the process
    that builds the store. Resolving it at build time means the store, its
    ``repr`` and its messages name one file, whatever directory the process
    changes to later.
    """
    return Path(os.path.abspath(url.removeprefix("sqlite:///")))


def build_store(settings: AuthSecSettings) -> TokenStore | None:
    """The shared store ``settings`` ask for, or None for ``memory:`` (no sharing).

    A shared store without a key is a configuration error unless
    ``AUTHSEC_STORE_ENCRYPTION=off`` says so: tokens at rest are bearer
    credentials.
    """
    url = settings.store
    if url == "memory:":
        return None
    keys = store_keys(settings)
    if settings.store_encryption and not keys:
        raise ConfigurationError(
            f"AUTHSEC_STORE={url.partition(':')[0]}:... keeps bearer tokens where other "
            "processes can read them: set AUTHSEC_STORE_KEY (urlsafe base64 of 32 random bytes), "
            "or AUTHSEC_STORE_ENCRYPTION=off to store them unencrypted on purpose"
        )
    if not settings.store_encryption:
        keys = []
    options: dict[str, Any] = {
        "keys": keys,
        "timeout": settings.store_timeout,
        "lease_seconds": settings.store_lease,
    }
    options["required"] = settings.store_required
    if url.startswith("sqlite:"):
        from .stores.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url), **options)
    from .stores.redis import RedisStore

    return RedisStore(
        url,
        encryption=settings.store_encryption,
        tls_ca=settings.store_tls_ca,
        tls_cert=settings.store_tls_cert,
        tls_key=settings.store_tls_key,
        max_connections=settings.store_max_connections,
        **options,
    )


def build_fetcher(
    broker: TokenBroker | SyncTokenBroker,
    settings: AuthSecSettings | None = None,
    *,
    api_transport: httpx.AsyncBaseTransport | None = None,
    agent: str | None = None,
) -> SecureFetcher:
    """A fetcher on ``broker`` with the policy of ``settings``, acting for ``agent``.

    Its API traffic goes through ``api_transport`` when given (the async tool
    passes a pool of the caller's own event loop), else through the broker's
    transport's :meth:`~authsec_crewai.transports.Transport.api`. Without
    ``agent`` it acts for the broker's own (default) agent. A
    ``SyncTokenBroker`` stands for the broker it runs: the fetcher is awaited
    (on any loop) and gets its tokens from that broker.
    """
    from .fetch import SecureFetcher
    from .sync import SyncTokenBroker

    if isinstance(broker, SyncTokenBroker):
        broker = broker.broker

    return SecureFetcher(
        broker,
        settings,
        api_transport=api_transport if api_transport is not None else broker.transport.api(),
        agent=agent,
    )


def _warn_if_auto_mock(settings: AuthSecSettings) -> None:
    if not settings.auto_chose_mock or _auto_mock_warned.is_set():
        return
    _auto_mock_warned.set()
    missing = [env_var("base_url")] if settings.base_url is None else []
    if settings.client_id is None and not settings.agents:
        missing.append(env_var("client_id"))
    from .logging import get_logger

    get_logger("authsec_crewai.wiring").warning(
        "settings.mode.auto_mock",
        mode="mock",
        missing=missing,
        message=(
            f"{' and '.join(missing)} not set: using MOCK mode with demo tokens and demo data. "
            "Set them to reach the AuthSec server, or set AUTHSEC_MODE=mock to make this "
            "choice explicit (and silence this warning)."
        ),
    )
