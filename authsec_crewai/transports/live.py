"""``LiveTransport``: the AuthSec server over HTTP (authsec-api.md).

One ``httpx.AsyncClient`` per transport, created on first use so it binds to
the event loop that uses it. Transient faults (429, 5xx, connection errors,
timeouts) are retried here with tenacity inside a time budget; everything else
is a typed error at once. Bodies are read as a stream under a size cap, so a
broken or hostile server cannot make this process load megabytes, and every
answer goes through :func:`authsec_crewai.wire.parse_token_body`, the parser
all transports share.
"""

from __future__ import annotations

import json
import random
import socket
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio
import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
)

from .. import _secrets, errors
from .._capped import ACCEPT_ENCODING, BodyTooLarge, BodyUndecodable, read_capped
from .._urls import check_base_url
from .._version import __version__
from ..logging import ensure_http_log_filter, get_logger
from ..redact import scrub_secrets
from ..token import DelegationToken, TokenRequest
from ..wire import BUNDLE_PATH, TOKEN_PATH, error_for_status, parse_token_body
from .base import KeySet, TransportInfo

__all__ = ["DEFAULT_MAX_BODY_BYTES", "LiveTransport", "parse_retry_after"]

DEFAULT_MAX_BODY_BYTES = 256 * 1024
"""A token answer is ~2 KB and a key bundle ~1 KB; far more is refused unread."""
_MAX_ERROR_BODY_BYTES = 16 * 1024
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
_NO_SUCH_NAME = frozenset(
    code
    for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None))
    if code is not None
)
"""Resolver answers that say the name does not exist (not "try again later")."""

_log = get_logger("authsec_crewai.transports.live")


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    ``now`` (UNIX time) is needed for the date form. Garbage gives None (the
    caller then uses its own backoff); a date in the past gives 0.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now)
    if seconds != seconds or seconds < 0 or seconds == float("inf"):  # NaN, negative, inf
        return None
    return seconds


def _check_base_url(base_url: str) -> str:
    """The base URL by the library's one URL rule, or a ConfigurationError naming the variable."""
    try:
        return check_base_url(base_url)
    except ValueError as exc:
        raise errors.ConfigurationError(f"AUTHSEC_BASE_URL {exc}") from None


def _worth_retrying(exc: BaseException) -> bool:
    return isinstance(exc, errors.TransportError) and exc.retryable


def _never_reachable(exc: BaseException) -> str | None:
    """Why ``exc`` says the host is not there at all (no such name, connection
    refused), or None for faults that retrying may cure (resets, timeouts)."""
    if not isinstance(exc, httpx.ConnectError):
        return None
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, socket.gaierror) and current.errno in _NO_SUCH_NAME:
            return "its host name does not resolve"
        if isinstance(current, ConnectionRefusedError):
            return "the connection was refused"
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


class LiveTransport:
    """Talks to a real AuthSec server.

    ``retry_budget`` bounds the time spent retrying (a retry whose wait would
    cross it is not made); ``max_attempts`` bounds the number of requests;
    ``timeout`` applies to each request. Waits are exponential with full jitter
    (``backoff`` seconds doubling up to ``max_backoff``), or exactly what a 429's
    ``Retry-After`` asks for. ``clock`` is UNIX time, used to refuse answers
    that are already expired and to read ``Retry-After`` dates; ``sleep`` is
    injectable so tests can observe waits without making them.

    ``fetch_key_set`` always asks the server: caching key sets is the
    verifier's job, so its re-read after a key rotation is a real re-read.

    A ``client`` passed in is used as is and not closed by :meth:`aclose`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_token: str | None = None,
        timeout: float = 10.0,
        retry_budget: float = 30.0,
        max_attempts: int = 6,
        clock: Callable[[], float] = time.time,
        client: httpx.AsyncClient | None = None,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        if timeout <= 0 or retry_budget < 0 or max_attempts < 1 or max_body_bytes < 1024:
            raise errors.ConfigurationError(
                "LiveTransport needs timeout > 0, retry_budget >= 0, max_attempts >= 1 "
                "and max_body_bytes >= 1024"
            )
        self.base_url = _check_base_url(base_url)
        self._api_token = api_token or None
        _secrets.remember(self._api_token)
        self.timeout = timeout
        self.retry_budget = retry_budget
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_body_bytes = max_body_bytes
        self._clock = clock
        self._sleep = sleep
        self._client = client
        self._owns_client = client is None
        self._api: httpx.AsyncHTTPTransport | None = None
        self._answered = False
        host = urlsplit(self.base_url).hostname or ""
        if self.base_url.startswith("http://") and host not in _LOOPBACK:
            _log.warning(
                "authsec.live.plaintext",
                base_url=self.base_url,
                hint="tokens travel unencrypted over http://; use https:// outside loopback",
            )

    @property
    def info(self) -> TransportInfo:
        """Live: real sockets for the API, and the API token as the secret to scrub."""
        return TransportInfo(
            mode="live",
            network_api=True,
            base_url=self.base_url,
            secrets=(self._api_token,) if self._api_token else (),
        )

    def __repr__(self) -> str:
        token = "set" if self._api_token else "none"
        return f"LiveTransport(base_url={self.base_url!r}, api_token=<{token}>)"

    # --- plumbing --------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        # Also for a client the caller gave: its logs carry the API token all the same.
        ensure_http_log_filter()
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout),
                follow_redirects=False,
                headers={"user-agent": f"authsec-crewai/{__version__}"},
            )
        return self._client

    def _headers(self, client_id: str | None = None) -> dict[str, str]:
        headers = {"accept": "application/json", "accept-encoding": ACCEPT_ENCODING}
        if client_id is not None:
            headers["x-client-id"] = client_id
        if self._api_token:
            headers["authorization"] = f"Bearer {self._api_token}"
        return headers

    _server_name = "AuthSec"
    """How messages name the server (a subclass speaking to another server renames it)."""
    _url_setting = "AUTHSEC_BASE_URL"
    """The setting a person fixes when the server's URL is wrong."""

    async def _get(
        self, path: str, params: dict[str, str], headers: dict[str, str], what: str
    ) -> tuple[int, bytes, httpx.Headers]:
        """One GET under the base URL: ``(status, capped body, headers)``."""
        return await self._exchange("GET", self.base_url + path, headers, what, params=params)

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        what: str,
        *,
        params: dict[str, str] | None = None,
        data: dict[str, str] | list[tuple[str, str]] | None = None,
    ) -> tuple[int, bytes, httpx.Headers]:
        """One request: ``(status, capped body, headers)``; transport faults become typed.

        ``data`` is sent form-encoded. The whole exchange (connect, send,
        headers, body) must finish within ``timeout``: httpx's own timeouts
        restart with every byte, so a server that drips its answer would
        otherwise hold the caller forever.
        """
        server = self._server_name
        try:
            with anyio.fail_after(self.timeout):
                async with self._http().stream(
                    method,
                    url,
                    params=params,
                    content=None if data is None else urlencode(data).encode("ascii"),
                    headers=headers
                    if data is None
                    else {**headers, "content-type": "application/x-www-form-urlencoded"},
                ) as resp:
                    self._answered = True
                    limit = (
                        self.max_body_bytes if resp.status_code == 200 else _MAX_ERROR_BODY_BYTES
                    )
                    try:
                        body = await read_capped(resp, limit)
                    except BodyTooLarge:
                        if resp.status_code != 200:
                            return resp.status_code, b"", resp.headers
                        raise errors.InvalidTokenResponseError(
                            f"{server}'s {what} answer is larger than {self.max_body_bytes} "
                            f"bytes once decoded; refusing to read it (is {self._url_setting} "
                            f"pointing at {server}?)"
                        ) from None
                    except BodyUndecodable as exc:
                        raise errors.InvalidTokenResponseError(
                            f"{server}'s {what} answer cannot be read ({exc})"
                        ) from None
                    return resp.status_code, body, resp.headers
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise errors.TransportTimeoutError(
                f"{server} at {self.base_url} did not finish answering the {what} request "
                f"within {self.timeout:g}s (AUTHSEC_TIMEOUT; {type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            hopeless = None if self._answered else _never_reachable(exc)
            if hopeless:
                raise errors.UnreachableError(
                    f"could not talk to {server} at {self.base_url}: {hopeless}; "
                    f"check {self._url_setting} and the network (not retried: nothing there "
                    "has ever answered)"
                ) from None
            raise errors.TransportError(
                f"could not talk to {server} at {self.base_url} ({type(exc).__name__}); "
                f"check {self._url_setting} and the network"
            ) from None

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, errors.RateLimitedError) and exc.retry_after is not None:
            return exc.retry_after
        ceiling = min(self.max_backoff, self.backoff * 2 ** (state.attempt_number - 1))
        return random.uniform(0.0, ceiling)

    async def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        elapsed = state.seconds_since_start or 0.0
        _log.warning(
            "authsec.live.retry",
            attempt=state.attempt_number,
            error=getattr(exc, "kind", type(exc).__name__),
            reason=self._scrub(str(exc))[:300],
            wait=round(state.upcoming_sleep, 3),
            budget_left=round(max(0.0, self.deadline - elapsed), 1),
        )

    @property
    def deadline(self) -> float:
        """Seconds one fetch may take in all, retries and the attempt in progress
        included: the retry budget, or one request's timeout if that is longer."""
        return max(self.retry_budget, self.timeout)

    def _scrub(self, text: str) -> str:
        """Server-supplied text with every secret this transport knows masked."""
        return scrub_secrets(text, self._secrets())

    def _secrets(self) -> tuple[str, ...]:
        return (self._api_token,) if self._api_token else ()

    async def _with_retries(
        self,
        attempt: Callable[[], Awaitable[Any]],
        what: str,
        *,
        worth_retrying: Callable[[BaseException], bool] = _worth_retrying,
    ) -> Any:
        retrying = AsyncRetrying(
            retry=retry_if_exception(worth_retrying),
            stop=stop_after_attempt(self.max_attempts) | stop_before_delay(self.retry_budget),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            with anyio.fail_after(self.deadline):
                return await retrying(attempt)
        except TimeoutError:
            raise errors.TransportTimeoutError(
                f"{self._server_name} at {self.base_url} did not give a usable {what} answer "
                f"within {self.deadline:g}s (AUTHSEC_RETRY_BUDGET, retries included)"
            ) from None

    # --- the Transport protocol ---------------------------------------------------------

    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        """``GET /delegation-token`` with retries; the answer parsed and checked."""
        params = {"client_id": request.client_id}
        if request.scopes:
            params["scope"] = request.scope_string
        headers = self._headers(request.client_id)

        async def attempt() -> DelegationToken:
            status, raw, resp_headers = await self._get(
                TOKEN_PATH, params, headers, "delegation-token"
            )
            if status != 200:
                retry_after = parse_retry_after(resp_headers.get("retry-after"), now=self._clock())
                raise error_for_status(
                    status,
                    _json_or_none(raw),
                    retry_after=retry_after,
                    url=self.base_url + TOKEN_PATH,
                    secrets=self._secrets(),
                )
            body = _json_or_none(raw)
            if body is None:
                declared = self._scrub(resp_headers.get("content-type", "unknown"))[:80]
                raise errors.InvalidTokenResponseError(
                    f"AuthSec's delegation-token answer is not JSON (content-type {declared!r})"
                )
            try:
                return parse_token_body(body, now=self._clock())
            except errors.InvalidTokenResponseError as exc:  # may quote the server's text
                raise errors.InvalidTokenResponseError(self._scrub(str(exc))) from None

        token: DelegationToken = await self._with_retries(attempt, "delegation-token")
        _log.info(
            "authsec.live.token",
            fingerprint=token.fingerprint,
            jti=token.jti,
            expires_at=token.expires_at.isoformat(),
        )
        return token

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        """The tenant's JWK set from ``/jwt/bundle``; always a fresh request.

        Without a tenant id there is no bundle to ask for, so None (the verifier
        then skips signature checks and says so).
        """
        if not tenant_id:
            return None
        headers = self._headers()

        async def attempt() -> KeySet:
            status, raw, resp_headers = await self._get(
                BUNDLE_PATH, {"tenant_id": tenant_id}, headers, "key-set"
            )
            body = _json_or_none(raw)
            if status == 429:
                retry_after = parse_retry_after(resp_headers.get("retry-after"), now=self._clock())
                raise error_for_status(
                    status, body, retry_after=retry_after, secrets=self._secrets()
                )
            if status >= 500:
                raise error_for_status(status, body, secrets=self._secrets())
            if status != 200:
                raise errors.TokenVerificationError(
                    f"AuthSec answered {status} for tenant {tenant_id}'s key set; "
                    "tokens cannot be verified"
                )
            if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
                raise errors.InvalidTokenResponseError(
                    "AuthSec's key-set answer is not a JWK set ({'keys': [...]})"
                )
            return body

        key_set: KeySet = await self._with_retries(attempt, "key-set")
        return key_set

    def api(self) -> httpx.AsyncBaseTransport:
        """A shared connection pool for protected-API calls (redirect policy is the
        caller's, on its ``AsyncClient``)."""
        if self._api is None:
            self._api = httpx.AsyncHTTPTransport()
        return self._api

    async def aclose(self) -> None:
        """Close the connection pools this transport created."""
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None
        if self._api is not None:
            await self._api.aclose()
            self._api = None
