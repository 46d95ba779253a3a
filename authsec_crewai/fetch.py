"""``SecureFetcher``: one protected-API call, guarded on the way in and on the way out.

An agent chooses the ``endpoint`` and the ``scope`` of every call, and an agent
can be talked into anything by the text it reads. So everything the agent
supplies is treated as hostile and checked *before* any token is asked for or
any byte is sent:

- the endpoint must be a plain relative path under the configured API origin
  (a strict grammar, plus a decoded, NFKC-normalised view of the text so that
  ``%2e%2e``, ``%252e`` or fullwidth full stops (U+FF0E) are explained, not just refused);
- the method must be allowed by configuration (GET unless widened);
- the scope must be allowed by configuration, and then granted by the token.

The token is sent only to the configured origin, redirects are never followed,
the answer is read as a stream under a size cap, a 401 is answered by one retry
with a fresh token, and the token's value is masked if the API echoes it. Every
failure is a typed :class:`~authsec_crewai.errors.AuthSecError`; none of them,
and no log event, contains the token.

This module does not import crewai: the CLI's ``fetch`` command and plain async
applications use it directly, and the CrewAI tools wrap it.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

import anyio
import anyio.lowlevel
import httpx

from . import errors, telemetry
from ._capped import ACCEPT_ENCODING, BodyTooLarge, BodyUndecodable, read_capped
from ._urls import check_base_url
from ._version import __version__
from .logging import ensure_http_log_filter, get_logger
from .redact import redact_text, scrub_secrets, scrub_value
from .token import canonical_scopes

if TYPE_CHECKING:
    from .broker import BrokerAgent, TokenBroker
    from .settings import AuthSecSettings
    from .token import DelegationToken

__all__ = [
    "DEFAULT_MAX_RESPONSE_BYTES",
    "MAX_ENDPOINT_CHARS",
    "MOCK_API_ORIGIN",
    "OK_PREFIX",
    "FetchResult",
    "ParamsLike",
    "SecureFetcher",
    "error_result",
    "is_retryable",
    "normalize_params",
    "render_result",
    "validate_endpoint",
]

_log = get_logger("authsec_crewai.fetch")

DEFAULT_MAX_RESPONSE_BYTES: Final = 1_048_576
"""1 MiB: far more than an agent can use, far less than what would hurt the process."""

MAX_ENDPOINT_CHARS: Final = 1024
"""Longer endpoints are refused: no real API path needs more, and path-stuffing does."""

MAX_SEGMENTS: Final = 64
MAX_PARAMS: Final = 50
MAX_PARAM_NAME_CHARS: Final = 128
MAX_PARAM_VALUE_CHARS: Final = 2048

MOCK_API_ORIGIN: Final = "http://authsec-mock.invalid"
"""Base URL used when no protected-API origin is configured and the transport is
not live. ``.invalid`` never resolves (RFC 2606), so if a transport ever tried to
send a request there over a real network it would fail instead of leaking."""

_MAX_DECODE_ROUNDS = 6
_MAX_ERROR_BODY_BYTES = 16 * 1024
_RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_UNRESERVED_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_SLASH_LOOKALIKES = frozenset("\u2215\u2044\u29f8\u2571\u0338\u2053\u3033")
_DOT_LOOKALIKES = frozenset("\u3002\uff61\u00b7\u2027\u0701\u0702")
_ENDPOINT_HINT = (
    "Use a relative path under the protected API, such as 'secure-vault/records' "
    "(letters, digits, '-', '_', '.', '~' separated by '/'); pass query parameters "
    "in params"
)

ParamsLike = Mapping[str, Any] | Sequence[Any] | None
"""Query parameters: a mapping, or a sequence of ``(name, value)`` pairs or of
``{"name": ..., "value": ...}`` objects (the shape the tools' schema uses)."""


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The outcome of one successful protected-API call.

    ``data`` is the parsed JSON answer (or the text, when the API did not answer
    JSON). ``fingerprint`` and ``jti`` name the token that was used without
    revealing it; ``attempts`` is 2 when a 401 was answered with a fresh token.
    """

    endpoint: str
    scope: str
    method: str
    status_code: int
    data: Any
    content_type: str | None
    fingerprint: str
    jti: str | None
    attempts: int = 1
    elapsed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The tool-result shape: ``{"status": "ok", "endpoint", "scope", "data"}``."""
        return {"status": "ok", "endpoint": self.endpoint, "scope": self.scope, "data": self.data}


def is_retryable(exc: BaseException) -> bool:
    """Whether the same call may succeed if made again later.

    A protected-API error is retryable when the API was unreachable
    (``status_code`` None) or answered a transient status (429, 5xx, ...);
    every other error says so itself through its ``retryable`` class attribute.
    """
    if isinstance(exc, errors.ProtectedApiError):
        return exc.status_code is None or exc.status_code in _RETRYABLE_STATUSES
    return isinstance(exc, errors.AuthSecError) and exc.retryable


def error_result(exc: BaseException) -> dict[str, Any]:
    """The tool-result shape of a failure, for a model to read and act on.

    ``{"status": "error", "error": <kind>, "message": ..., "retryable": bool}``.
    The message is scrubbed of anything shaped like a token, whatever raised it.
    """
    if isinstance(exc, errors.AuthSecError):
        kind, message = exc.kind, str(exc)
    else:
        kind = "internal_error"
        message = (
            f"the tool failed unexpectedly ({type(exc).__name__}: {exc}); "
            "this is a bug in the tool, not in your request"
        )
    return {
        "status": "error",
        "error": kind,
        "message": redact_text(message)[:2000],
        "retryable": is_retryable(exc),
    }


OK_PREFIX: Final = '{"status": "ok",'
"""How every success renders with :func:`render_result` (its keys come first, in order)."""


def render_result(payload: Mapping[str, Any], *, indent: int | None = None) -> str:
    """A result dict as the JSON text tools and the CLI print; token-shaped text masked.

    Tools return it on one line: the model pays per token for indentation, and
    ``indent`` makes ``json`` fall back to its pure-Python encoder (a third of
    a tool call's CPU under load). The command line asks for ``indent=2``.

    The fetcher already masks its own token if the API echoes it; this second
    pass masks every other JWT-shaped string and ``Bearer`` credential that an
    answer or a message might carry, so nothing a model reads can hold one.
    """
    return redact_text(json.dumps(payload, indent=indent, ensure_ascii=False, default=str))


# --- input guards -------------------------------------------------------------------------------


def _show(value: object, limit: int = 80) -> str:
    """A short, printable, redacted rendering of agent input for messages and logs."""
    text = value if isinstance(value, str) else repr(value)
    shown = repr(text[:limit]) + ("..." if len(text) > limit else "")
    return redact_text(shown)


def _decoded_views(text: str) -> list[str] | None:
    """``text``, then NFKC-normalised and percent-decoded again and again until stable.

    Servers and proxies decode paths (sometimes more than once) and normalise
    Unicode, so ``%252e%252e`` or two U+FF0E (fullwidth full stops) can reach an
    application as ``..``. The views are checked like the raw text. None means
    the text did not settle within a few rounds, which only deliberate nesting
    does.
    """
    views = [text]
    current = text
    for _ in range(_MAX_DECODE_ROUNDS):
        decoded = unquote(unicodedata.normalize("NFKC", current), errors="replace")
        if decoded == current:
            return views
        views.append(decoded)
        current = decoded
    return None


def _structural_problem(view: str) -> str | None:
    """What makes ``view`` unsafe as a relative path, or None."""
    for char in view:
        category = unicodedata.category(char)
        if category in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            return f"it contains a control or invisible character (U+{ord(char):04X})"
    if any(char.isspace() for char in view):
        return "it contains whitespace"
    scheme = _SCHEME.match(view)
    if scheme:
        return f"it is an absolute URL or has a scheme ({scheme.group(0)!r})"
    slashed = view.replace("\\", "/")
    if slashed.startswith("//"):
        return "it is a network-path reference ('//host') that would leave the API origin"
    if "\\" in view:
        return "it contains a backslash"
    if "@" in view:
        return "it contains '@' (user-info that can redirect the request to another host)"
    if "?" in view:
        return "it contains '?': pass query parameters in params, not in the endpoint"
    if "#" in view:
        return "it contains a fragment ('#')"
    body = view[1:] if view.startswith("/") else view
    body = body[:-1] if body.endswith("/") else body
    segments = body.split("/")
    if any(segment and set(segment) == {"."} for segment in segments):
        return "it contains a '.' or '..' segment (path traversal)"
    if any(segment == "" for segment in segments):
        return "it contains an empty segment ('//')"
    return None


def _lookalike_problem(text: str) -> str | None:
    for char in text:
        if char in _SLASH_LOOKALIKES:
            return f"it contains a Unicode look-alike of '/' (U+{ord(char):04X})"
        if char in _DOT_LOOKALIKES:
            return f"it contains a Unicode look-alike of '.' (U+{ord(char):04X})"
    return None


def _endpoint_problem(endpoint: object, max_chars: int) -> str | None:
    if not isinstance(endpoint, str):
        return f"it is a {type(endpoint).__name__}, not a string"
    if len(endpoint) > max_chars:
        return f"it is longer than {max_chars} characters"
    if endpoint.strip("/") == "" and not any(c.isspace() for c in endpoint):
        return "it is empty"
    views = _decoded_views(endpoint)
    if views is None:
        return "it is percent-encoded many times over (nested encoding)"
    for index, view in enumerate(views):
        problem = _structural_problem(view)
        if problem is not None:
            if index:
                problem += " once percent-escapes are decoded and Unicode is normalised"
            return problem
    problem = _lookalike_problem(endpoint)
    if problem is not None:
        return problem
    if "%" in endpoint:
        return "it contains percent-escapes, which are not accepted in endpoints"
    if not endpoint.isascii():
        return "it contains non-ASCII characters"
    segments = endpoint.strip("/").split("/")
    if len(segments) > MAX_SEGMENTS:
        return f"it has more than {MAX_SEGMENTS} segments"
    for segment in segments:
        if not _UNRESERVED_SEGMENT.fullmatch(segment):
            bad = next(c for c in segment if not _UNRESERVED_SEGMENT.fullmatch(c))
            return f"it contains {bad!r}, which is not allowed in a path segment"
    return None


def _under_prefix(path: str, prefix: str) -> bool:
    """True when ``path`` starts with every whole segment of ``prefix``.

    ``secure-vault`` admits ``secure-vault/records`` but not ``secure-vault-admin``.
    """
    wanted = [segment for segment in prefix.split("/") if segment]
    return path.split("/")[: len(wanted)] == wanted


def validate_endpoint(
    endpoint: object,
    *,
    allowed_prefixes: Sequence[str] | None = None,
    max_chars: int = MAX_ENDPOINT_CHARS,
) -> str:
    """The endpoint as a clean relative path (no leading slash), or ``EndpointRefusedError``.

    Pure and cheap: it runs before any token is requested or any byte is sent.
    ``allowed_prefixes`` (``AUTHSEC_ALLOWED_ENDPOINTS``) are matched on whole
    segments; None means any safe path, an empty list means none.
    """
    problem = _endpoint_problem(endpoint, max_chars)
    if problem is not None:
        raise errors.EndpointRefusedError(
            f"endpoint {_show(endpoint)} refused: {problem}. {_ENDPOINT_HINT}"
        )
    assert isinstance(endpoint, str)
    path = endpoint.strip("/")
    if allowed_prefixes is not None and not any(_under_prefix(path, p) for p in allowed_prefixes):
        listed = ", ".join(repr(p) for p in allowed_prefixes) or "none"
        raise errors.EndpointRefusedError(
            f"endpoint {_show(endpoint)} refused: it is not under an allowed prefix "
            f"(allowed: {listed}; configured by AUTHSEC_ALLOWED_ENDPOINTS)"
        )
    return path


def normalize_params(params: ParamsLike) -> list[tuple[str, str]]:
    """Query parameters as ``(name, value)`` pairs of bounded strings.

    Accepts a mapping, ``(name, value)`` pairs, or ``{"name", "value"}`` objects
    (what a model sends through the tools' schema). Values may be strings,
    numbers or booleans; httpx percent-encodes them, so they cannot change the
    path or the host.
    """
    if params is None:
        return []
    items: list[tuple[object, object]] = []
    if isinstance(params, Mapping):
        items = list(params.items())
    elif isinstance(params, str | bytes) or not isinstance(params, Sequence):
        raise errors.EndpointRefusedError(
            "params must be an object of name/value pairs, e.g. {'page': '2'}"
        )
    else:
        for item in params:
            if isinstance(item, Mapping) and set(item) >= {"name", "value"}:
                items.append((item["name"], item["value"]))
            elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
                items.append((item[0], item[1]))
            else:
                raise errors.EndpointRefusedError(
                    "each query parameter must be {'name': ..., 'value': ...}"
                )
    if len(items) > MAX_PARAMS:
        raise errors.EndpointRefusedError(f"too many query parameters (at most {MAX_PARAMS})")
    pairs: list[tuple[str, str]] = []
    for name, value in items:
        if not isinstance(name, str) or not name or len(name) > MAX_PARAM_NAME_CHARS:
            raise errors.EndpointRefusedError(
                f"query parameter name {_show(name)} must be a non-empty string of at most "
                f"{MAX_PARAM_NAME_CHARS} characters"
            )
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            raise errors.EndpointRefusedError(
                f"query parameter {name!r} must be a string, number or boolean"
            )
        if len(text) > MAX_PARAM_VALUE_CHARS:
            raise errors.EndpointRefusedError(
                f"query parameter {name!r} is longer than {MAX_PARAM_VALUE_CHARS} characters"
            )
        pairs.append((name, text))
    return pairs


def _check_api_base_url(url: str) -> str:
    """The protected API's base URL by the library's one URL rule (see :mod:`._urls`)."""
    try:
        return check_base_url(url)
    except ValueError as exc:
        raise errors.ConfigurationError(
            f"the protected-API base URL (AUTHSEC_API_BASE_URL) {exc}"
        ) from None


# --- the fetcher --------------------------------------------------------------------------------


_POOL_SIZE = 100
"""httpx's default connection limit, which the transports' API pools use."""
_limiters: weakref.WeakKeyDictionary[
    object, weakref.WeakKeyDictionary[object, anyio.CapacityLimiter]
]
_limiters = weakref.WeakKeyDictionary()


def _pool_limiter(pool: object) -> anyio.CapacityLimiter:
    """At most as many requests in flight per connection pool, per event loop, as it has
    connections.

    httpcore re-scans every queued request against every connection each time
    one frees up, so 1,000 requests queued on a 100-connection pool cost
    seconds of CPU before the first one is sent. Waiting here instead, in
    anyio's FIFO limiter, keeps the pool's queue empty and the order fair.
    A limiter belongs to one event loop; an in-process API transport (the mock
    app, a cassette) serves every loop, so each loop gets its own.
    """
    loop = anyio.lowlevel.current_token().native_token
    per_loop = _limiters.get(pool)
    if per_loop is None:
        per_loop = _limiters[pool] = weakref.WeakKeyDictionary()
    limiter = per_loop.get(loop)
    if limiter is None:
        limiter = per_loop[loop] = anyio.CapacityLimiter(_POOL_SIZE)
    return limiter


def _error_details(body: bytes, secrets: Sequence[str] = ()) -> str:
    """A short, scrubbed excerpt of an error answer (``error``/``details`` fields).

    Secrets are masked in the decoded text before it is cut to length: cutting
    first could leave a token's header-and-claims prefix too short to be
    recognised as a token.
    """
    try:
        parsed = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(parsed, dict):
        return ""
    parts = [str(parsed[key]) for key in ("error", "details", "message") if parsed.get(key)]
    text = "; ".join(parts)[:4096]
    text = "".join(ch for ch in text if ch.isprintable())
    text = scrub_secrets(text, secrets)[:200]
    return f" (the API said: {text})" if text else ""


def _redirect_target(origin: httpx.URL, location: str) -> str:
    """Where a redirect points, as an origin only (the rest may be long or hostile)."""
    try:
        target = origin.join(location) if location else None
    except (httpx.InvalidURL, ValueError, TypeError):
        target = None
    if target is None or not target.host:
        return "to an unusable location"
    return redact_text(f"to {target.scheme}://{target.host}"[:200])


class SecureFetcher:
    """Guards an agent's protected-API call and makes it with a delegation token.

    ``broker`` supplies tokens, for ``agent`` (a client id) when given, else
    for the broker's own agent. API traffic goes through ``client`` when given,
    else through an ``httpx.AsyncClient`` built on first use over
    ``api_transport``: by default the broker's transport's
    :meth:`~authsec_crewai.transports.Transport.api` (the mock vault in
    process, a cassette, a live socket pool), or a pool of the caller's own.
    So ``SecureFetcher(broker)`` is all a fetcher needs;
    :func:`authsec_crewai.wiring.build_fetcher` is the shortcut that also
    applies the settings' policy. That client is created lazily so it belongs
    to the event loop that first uses it; share a fetcher across event loops
    only when its API transport allows it (the async tool gives each event
    loop a fetcher of its own).

    Policy comes from ``settings`` (``allowed_scopes``, ``allowed_endpoints``,
    ``allowed_methods``, ``max_response_bytes``, ``timeout``,
    ``api_base_url``); without settings: no allowlists, GET only, 1 MiB. The
    base URL is ``api_base_url``, else the settings', else the one the broker's
    transport declares (``info.api_base_url``: a replay's recorded origin), else,
    when that transport's API is not the network (``info.network_api`` false),
    :data:`MOCK_API_ORIGIN`, which never resolves. A network API with no
    origin configured is a :class:`~authsec_crewai.errors.ConfigurationError`.
    """

    def __init__(
        self,
        broker: TokenBroker,
        settings: AuthSecSettings | None = None,
        *,
        api_transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
        api_base_url: str | None = None,
        agent: str | None = None,
    ) -> None:
        if api_transport is not None and client is not None:
            raise errors.ConfigurationError(
                "SecureFetcher takes exactly one of api_transport= or client=, not both: "
                "its API traffic goes through one of them (neither: the broker's transport)"
            )
        if api_transport is None and client is None:
            # The broker's transport knows where its protected API is (the mock vault
            # in process, a cassette, a live socket pool).
            api_transport = broker.transport.api()
        self.broker = broker
        self._tokens: TokenBroker | BrokerAgent = broker if agent is None else broker.agent(agent)
        self.client_id = broker.client_id if agent is None else agent
        """The agent this fetcher acts for; every log event names it (ids are not secrets)."""
        self._api_transport = api_transport
        info = broker.transport.info
        self.mode = info.mode
        self._known_secrets = info.secrets
        base = api_base_url or (settings.api_base_url if settings is not None else None)
        if base is None:
            # A replay knows the origin it recorded; it does not match hosts, so this
            # is only for names in messages and logs.
            base = info.api_base_url or None
        if base is None:
            if info.network_api:
                raise errors.ConfigurationError(
                    "AUTHSEC_API_BASE_URL (or AUTHSEC_BASE_URL) is not set: the fetcher "
                    "does not know where the protected API is, and sends the token nowhere else"
                )
            base = MOCK_API_ORIGIN
        self.api_base_url = _check_api_base_url(base)
        self._origin = httpx.URL(self.api_base_url)
        self._base_path = self._origin.raw_path.rstrip(b"/")
        if settings is not None:
            self.allowed_scopes: frozenset[str] | None = (
                None if settings.allowed_scopes is None else frozenset(settings.allowed_scopes)
            )
            self.allowed_endpoints: tuple[str, ...] | None = (
                None if settings.allowed_endpoints is None else tuple(settings.allowed_endpoints)
            )
            self.allowed_methods = frozenset(settings.allowed_methods)
            self.max_response_bytes = settings.max_response_bytes
            self.timeout = settings.timeout
        else:
            self.allowed_scopes, self.allowed_endpoints = None, None
            self.allowed_methods = frozenset({"GET"})
            self.max_response_bytes = DEFAULT_MAX_RESPONSE_BYTES
            self.timeout = 10.0
        self._client = client
        self._pool: object = client if client is not None else api_transport

    def __repr__(self) -> str:
        return f"SecureFetcher(api_base_url={self.api_base_url!r}, mode={self.mode!r})"

    # --- plumbing ------------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        # Also for a client the caller gave: its logs carry the token all the same.
        ensure_http_log_filter()
        if self._client is None:
            # follow_redirects=False: a redirect would carry the Authorization
            # header's token to wherever the API (or an attacker) points.
            # Never closed here: closing a client closes its transport, which
            # may be the mode's transport's shared pool.
            self._client = httpx.AsyncClient(
                transport=self._api_transport,
                timeout=httpx.Timeout(self.timeout),
                follow_redirects=False,
                headers={"user-agent": f"authsec-crewai/{__version__}"},
            )
        return self._client

    def _secrets(self, token: DelegationToken) -> tuple[str, ...]:
        """Every secret an answer must not carry: the token sent, the API token."""
        return (token.value, *self._known_secrets)

    def _url(self, path: str) -> httpx.URL:
        """The absolute URL for a validated path, checked to be under the base URL."""
        url = httpx.URL(f"{self.api_base_url}/{path}")
        if (
            url.scheme != self._origin.scheme
            or url.host != self._origin.host
            or url.port != self._origin.port
            or not url.raw_path.startswith(self._base_path + b"/")
        ):  # pragma: no cover - validate_endpoint makes this unreachable; kept as a backstop
            raise errors.EndpointRefusedError("the endpoint resolves outside the protected API")
        return url

    # --- guards ----------------------------------------------------------------------------

    def check(
        self, endpoint: object, scope: object, *, method: str = "GET", params: ParamsLike = None
    ) -> tuple[str, frozenset[str], str, list[tuple[str, str]]]:
        """Validate a call without making it: ``(path, scopes, method, params)``.

        Raises ``EndpointRefusedError`` or ``ScopeRefusedError``. Only the
        token's permissions remain to be checked, which needs the token.
        """
        path = validate_endpoint(endpoint, allowed_prefixes=self.allowed_endpoints)
        verb = method.upper() if isinstance(method, str) else ""
        if verb not in self.allowed_methods:
            raise errors.EndpointRefusedError(
                f"method {_show(method)} is not allowed (allowed: "
                f"{', '.join(sorted(self.allowed_methods))}; configured by AUTHSEC_ALLOWED_METHODS)"
            )
        pairs = normalize_params(params)
        if not isinstance(scope, str):
            raise errors.ScopeRefusedError(
                f"scope {_show(scope)} must be a string such as 'read:records'"
            )
        try:
            scopes = canonical_scopes(scope)
        except ValueError as exc:
            raise errors.ScopeRefusedError(f"scope refused: {redact_text(str(exc))}") from None
        if self.allowed_scopes is not None and not scopes <= self.allowed_scopes:
            refused = ", ".join(sorted(scopes - self.allowed_scopes))
            allowed = ", ".join(sorted(self.allowed_scopes)) or "none"
            raise errors.ScopeRefusedError(
                f"scope {refused} is not allowed by configuration (allowed: {allowed}; "
                "configured by AUTHSEC_ALLOWED_SCOPES); do not ask for it again"
            )
        return path, scopes, verb, pairs

    # --- the call ------------------------------------------------------------------------------

    async def fetch(
        self,
        endpoint: str,
        scope: str,
        *,
        method: str = "GET",
        params: ParamsLike = None,
    ) -> FetchResult:
        """Call ``endpoint`` with a token granting ``scope``; the parsed answer.

        Refusals happen before any network traffic: an unsafe endpoint, a method
        or scope not allowed by configuration (no token is even requested), a
        scope the delegation does not grant (the token is requested, the API is
        not called). A 401 drops that token and retries once with a fresh one;
        a 403 is ``InsufficientScopeError``; a redirect, an error status or an
        unreachable API is ``ProtectedApiError``; an answer over the cap is
        ``ResponseTooLargeError``. Token errors (revoked, unreachable AuthSec,
        ...) propagate as the broker raised them.
        """
        started = time.monotonic()
        try:
            path, scopes, verb, pairs = self.check(endpoint, scope, method=method, params=params)
        except errors.AuthSecError as exc:
            _log.warning(
                "fetch.refused",
                error=exc.kind,
                endpoint=_show(endpoint),
                scope=_show(scope),
                method=method if isinstance(method, str) and method.isalpha() else _show(method),
                client_id=self.client_id,
                mode=self.mode,
            )
            raise
        scope_text = " ".join(sorted(scopes))
        url = self._url(path)
        token = await self._token(scopes, path)
        attempts = 1
        while True:
            try:
                status, headers, body = await telemetry.api_call(
                    self._send(verb, url, pairs, token),
                    method=verb,
                    path=path,
                    token=token,
                    mode=self.mode,
                )
                if status == 401 and attempts == 1:
                    _log.info(
                        "fetch.retry",
                        status=401,
                        endpoint=path,
                        fingerprint=token.fingerprint,
                        jti=token.jti,
                        client_id=self.client_id,
                        mode=self.mode,
                    )
                    self._tokens.invalidate(token)
                    token = await self._token(scopes, path)
                    attempts += 1
                    continue
                data, content_type = self._interpret(status, headers, body, token, path)
            except errors.AuthSecError as exc:
                _log.warning(
                    "fetch.failed",
                    error=exc.kind,
                    status=getattr(exc, "status_code", None),
                    endpoint=path,
                    scope=scope_text,
                    fingerprint=token.fingerprint,
                    jti=token.jti,
                    attempts=attempts,
                    client_id=self.client_id,
                    mode=self.mode,
                )
                raise
            break
        elapsed = time.monotonic() - started
        _log.info(
            "fetch.ok",
            endpoint=path,
            scope=scope_text,
            method=verb,
            status=status,
            bytes=len(body),
            fingerprint=token.fingerprint,
            jti=token.jti,
            attempts=attempts,
            elapsed_ms=round(elapsed * 1000, 1),
            client_id=self.client_id,
            mode=self.mode,
        )
        return FetchResult(
            endpoint=path,
            scope=scope_text,
            method=verb,
            status_code=status,
            data=data,
            content_type=content_type,
            fingerprint=token.fingerprint,
            jti=token.jti,
            attempts=attempts,
            elapsed=elapsed,
        )

    async def _token(self, scopes: frozenset[str], path: str) -> DelegationToken:
        try:
            return await self._tokens.token(scopes)
        except errors.ScopeNotGrantedError as exc:
            _log.warning(
                "fetch.refused",
                error="insufficient_scope",
                endpoint=path,
                scope=" ".join(sorted(scopes)),
                missing=sorted(exc.missing),
                client_id=self.client_id,
                mode=self.mode,
            )
            raise errors.InsufficientScopeError(
                f"refused without calling the API: {exc}. Do not retry this call"
            ) from exc

    async def _send(
        self, method: str, url: httpx.URL, params: list[tuple[str, str]], token: DelegationToken
    ) -> tuple[int, httpx.Headers, bytes]:
        """One request: ``(status, headers, body)``; only a 2xx body is read in full."""
        headers = {
            "authorization": f"Bearer {token.value}",
            "accept": "application/json",
            "accept-encoding": ACCEPT_ENCODING,
        }
        client = self._http()
        try:
            async with _pool_limiter(self._pool):
                # The whole exchange, body included, within the timeout: httpx's
                # own timeouts restart with every byte, and a dripping answer
                # would hold this slot of the limiter for ever.
                with anyio.fail_after(self.timeout):
                    return await self._exchange(client, method, url, params, headers)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise errors.ProtectedApiError(
                f"the protected API at {self.api_base_url} did not finish answering within "
                f"{self.timeout:g}s (AUTHSEC_TIMEOUT; {type(exc).__name__}); it may be "
                "retried later"
            ) from None
        except httpx.HTTPError as exc:
            raise errors.ProtectedApiError(
                f"could not reach the protected API at {self.api_base_url} "
                f"({type(exc).__name__}); it may be retried later"
            ) from None

    async def _exchange(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: httpx.URL,
        params: list[tuple[str, str]],
        headers: dict[str, str],
    ) -> tuple[int, httpx.Headers, bytes]:
        async with client.stream(
            method, url, params=tuple(params) or None, headers=headers, follow_redirects=False
        ) as response:
            status = response.status_code
            if 300 <= status < 400:
                return status, response.headers, b""
            limit = self.max_response_bytes if status < 300 else _MAX_ERROR_BODY_BYTES
            try:
                body = await read_capped(response, limit)
            except BodyTooLarge:
                if status >= 300:
                    return status, response.headers, b""
                raise errors.ResponseTooLargeError(
                    f"the API's answer for {url.path!r} is larger than "
                    f"{self.max_response_bytes} bytes once decoded (AUTHSEC_MAX_RESPONSE_BYTES) "
                    "and was not read; ask for less, e.g. with paging parameters"
                ) from None
            except BodyUndecodable as exc:
                if status >= 300:
                    return status, response.headers, b""
                raise errors.ProtectedApiError(
                    f"the API's answer for {url.path!r} cannot be read ({exc})",
                    status_code=status,
                ) from None
            return status, response.headers, body

    def _interpret(
        self,
        status: int,
        headers: httpx.Headers,
        body: bytes,
        token: DelegationToken,
        path: str,
    ) -> tuple[Any, str | None]:
        """A 2xx answer as data (token masked); anything else as a typed error."""
        secrets = self._secrets(token)
        declared = headers.get("content-type")
        content_type = None if declared is None else scrub_secrets(declared, secrets)
        if 200 <= status < 300:
            # An API that echoes credentials must not leak them: the text is
            # scrubbed, and so are the decoded values when JSON escapes
            # (``\u002e`` for a dot) could have hidden one from the text.
            raw = body.decode("utf-8", errors="replace")
            text = scrub_secrets(raw, secrets)
            if not text.strip():
                return None, content_type
            try:
                data = json.loads(text)
            except ValueError:
                return text, content_type
            return (scrub_value(data, secrets) if "\\" in text else data), content_type
        if 300 <= status < 400:
            where = scrub_secrets(
                _redirect_target(self._origin, headers.get("location", "")), secrets
            )
            raise errors.ProtectedApiError(
                f"the API answered {status}, a redirect {where}; redirects are not followed, "
                f"so the token is only ever sent to {self.api_base_url}. Ask for the final "
                "path directly if it is under the API",
                status_code=status,
            )
        details = _error_details(body, secrets)
        if status == 401:
            raise errors.ProtectedApiError(
                f"the API refused the token for {path!r} (401) even after a fresh token was "
                f"fetched{details}; the delegation may not be valid for this API. "
                "Do not retry; ask an administrator to check the agent's delegation",
                status_code=401,
            )
        if status == 403:
            needed = re.search(r'scope="([^"]{1,128})"', headers.get("www-authenticate", ""))
            need = f" (it needs {scrub_secrets(needed.group(1), secrets)!r})" if needed else ""
            granted = ", ".join(sorted(token.permissions)) or "nothing"
            raise errors.InsufficientScopeError(
                f"the API answered 403 for {path!r}: the token does not grant what this "
                f"endpoint needs{need}{details}. The delegation grants {granted}; use the "
                "scope the endpoint needs, or ask an administrator to delegate it"
            )
        if status == 404:
            raise errors.ProtectedApiError(
                f"the API has no endpoint {path!r} (404){details}; check the path",
                status_code=404,
            )
        if status == 429:
            raise errors.ProtectedApiError(
                f"the API is rate limiting (429){details}; wait before retrying",
                status_code=429,
            )
        raise errors.ProtectedApiError(
            f"the API answered {status} for {path!r}{details}"
            + ("; it may be retried later" if status in _RETRYABLE_STATUSES else ""),
            status_code=status,
        )
