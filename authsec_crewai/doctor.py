"""``authsec-crewai doctor``: is this set-up right, and is it leaking?

Each check is a small async function that returns :class:`Check` results; the
command runs them in order and prints one line per result. Nothing here
raises for an expected problem: a wrong setting, a dead server, a store
sealed with another key all become a failed check with a message a person can
act on. Every text a server or a file supplied is scrubbed of the secrets the
process holds before it is kept.

Exit codes (:attr:`Report.exit_code`): 0 every check passed (warnings
allowed), 1 a check failed, 2 the configuration itself is wrong (the settings
do not resolve, a store key is malformed).

Where tokens come from is asked of :func:`token_server_probe`, one function
per kind of token server (AuthSec's delegation endpoint today): an OAuth
authorization server (``authsec-api.md`` §7) adds its own probe there (its
metadata document) and the rest of the doctor does not change.
"""

from __future__ import annotations

import inspect
import json
import os
import stat
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from . import _secrets
from ._capped import BodyTooLarge, BodyUndecodable, read_capped
from ._version import __version__
from .checks import EXIT_CONFIGURATION, EXIT_FAILED, EXIT_OK, Check, Report, Status, safe
from .errors import AuthSecError, ConfigurationError
from .logging import ensure_http_log_filter
from .settings import AuthSecSettings, env_var

__all__ = [
    "EXIT_CONFIGURATION",
    "EXIT_FAILED",
    "EXIT_OK",
    "Check",
    "Probe",
    "Report",
    "TokenServerProbe",
    "check_api",
    "check_settings",
    "check_store",
    "check_token_server",
    "check_verification",
    "probe",
    "run_doctor",
    "safe",
    "token_server_probe",
]

SKEW_WARN_SECONDS = 5.0
"""A clock further off than this is reported, before it is far enough off to fail."""
_MAX_PROBE_BODY = 64 * 1024
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


# --- settings ---------------------------------------------------------------------------


def check_settings() -> tuple[Check, AuthSecSettings | None]:
    """The settings from the environment (and ``.env``), and which mode they select and why."""
    try:
        settings = AuthSecSettings()
    except ConfigurationError as exc:
        return Check("settings", "fail", safe(exc), configuration=True), None
    mode = settings.resolved_mode
    if settings.mode != "auto":
        reason = f"{env_var('mode')}={settings.mode}"
    elif mode == "live":
        reason = (
            f"{env_var('mode')} is auto, and {env_var('base_url')} and a client id "
            f"({env_var('client_id')} or {env_var('agents')}) are set"
        )
    else:
        missing = [env_var("base_url")] if settings.base_url is None else []
        if settings.client_id is None and not settings.agents:
            missing.append(env_var("client_id"))
        reason = (
            f"{env_var('mode')} is auto and {' and '.join(missing)} not set: demo tokens "
            "and data (set them to reach AuthSec, or AUTHSEC_MODE=mock to say so)"
        )
    details = {
        "mode": settings.mode,
        "resolved_mode": mode,
        "reason": reason,
        "base_url": settings.base_url,
        "api_base_url": settings.api_base_url,
        "client_id": settings.client_id,
        "agents": sorted(settings.agents),
        "api_token": "set" if settings.api_token is not None else "unset",
        "store": settings.store.partition(":")[0],
        "verify": settings.verify,
    }
    status: Status = "warn" if settings.auto_chose_mock else "ok"
    return Check("settings", status, f"{mode} mode: {reason}", details), settings


def check_verification(settings: AuthSecSettings) -> list[Check]:
    """A warning when token signatures are not checked on purpose."""
    if settings.verify:
        return []
    return [
        Check(
            "settings.verify",
            "warn",
            f"{env_var('verify')} is off: token signatures and claims are not checked",
        )
    ]


# --- reaching a server ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """One GET and what it showed: status, latency, transport security, the server's clock."""

    url: str
    status: int | None = None
    latency: float | None = None
    """Seconds from sending the request to the answer's headers."""
    skew: float | None = None
    """The server's clock minus this host's, in seconds (from its ``Date`` header)."""
    body: Any = None
    """The answer decoded as JSON, or None."""
    error: str | None = None
    """Why no answer came (scrubbed), or None."""
    tls_error: bool = False

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme


async def probe(
    url: str,
    *,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    within: float = 10.0,
    clock: Callable[[], float] = time.time,
) -> Probe:
    """GET ``url`` once, ``within`` seconds for the whole exchange, following no redirect.

    ``https://`` is verified as the library's own clients verify it (httpx's
    default trust store): an answer over ``https`` means a verified
    certificate. ``clock`` is this host's wall clock, compared with the
    server's ``Date`` (which has a one-second resolution: its middle is used).
    """
    ensure_http_log_filter()
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(within),
        follow_redirects=False,
        headers={"user-agent": f"authsec-crewai/{__version__} (doctor)"},
    ) as client:
        sent_at, started = clock(), time.monotonic()
        try:
            with anyio.fail_after(within):
                async with client.stream("GET", url, params=params, headers=headers) as answer:
                    latency = time.monotonic() - started
                    try:
                        raw = await read_capped(answer, _MAX_PROBE_BODY)
                    except (BodyTooLarge, BodyUndecodable):
                        raw = b""
                    status, date = answer.status_code, answer.headers.get("date")
        except TimeoutError:
            return Probe(url, error=f"no complete answer within {within:g}s")
        except httpx.HTTPError as exc:
            text = f"{type(exc).__name__}: {exc}"
            tls = "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text
            return Probe(url, error=safe(text), tls_error=tls)
    skew = None
    if date:
        try:
            server = parsedate_to_datetime(date).timestamp() + 0.5
        except (TypeError, ValueError, IndexError):
            server = None
        if server is not None:
            skew = server - (sent_at + latency / 2)
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    return Probe(url, status=status, latency=latency, skew=skew, body=body)


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:.0f} ms"


def _latency_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _transport_checks(name: str, result: Probe, leeway: float) -> list[Check]:
    """TLS and clock checks of one answered probe."""
    host = urlsplit(result.url).hostname or ""
    checks = []
    if result.scheme == "https":
        checks.append(
            Check(f"{name}.tls", "ok", "https, certificate verified", {"scheme": "https"})
        )
    elif host in _LOOPBACK:
        checks.append(
            Check(
                f"{name}.tls",
                "warn",
                "plaintext http:// on loopback (fine for a local mock, never in production)",
                {"scheme": "http"},
            )
        )
    else:
        checks.append(
            Check(
                f"{name}.tls",
                "fail",
                f"plaintext http:// to {host}: tokens travel unencrypted; use https://",
                {"scheme": "http"},
            )
        )
    if result.skew is None:
        checks.append(
            Check(f"{name}.clock", "warn", "the server sent no usable Date header: skew unknown")
        )
        return checks
    skew = result.skew
    way = "ahead of" if skew > 0 else "behind"
    said = f"the server's clock is {abs(skew):.1f} s {way} this host's"
    details = {"skew_seconds": round(skew, 3), "leeway_seconds": leeway}
    if abs(skew) > leeway:
        checks.append(
            Check(
                f"{name}.clock",
                "fail",
                f"{said}, more than AUTHSEC_VERIFY_LEEWAY ({leeway:g} s): tokens will look "
                "expired or not yet valid; synchronise the clocks (NTP)",
                details,
            )
        )
    elif abs(skew) > SKEW_WARN_SECONDS:
        checks.append(Check(f"{name}.clock", "warn", f"{said} (within the leeway)", details))
    else:
        checks.append(Check(f"{name}.clock", "ok", said, details))
    return checks


# --- the token server -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenServerProbe:
    """How to ask a kind of token server whether it is there and answers this agent."""

    name: str
    url: str
    params: Mapping[str, str]
    headers: Mapping[str, str]
    judge: Callable[[Probe, AuthSecSettings], Check]


def _client_id(settings: AuthSecSettings) -> str | None:
    if settings.client_id is not None:
        return settings.client_id
    return next(iter(settings.agents.values()), None)


def _judge_authsec(result: Probe, settings: AuthSecSettings) -> Check:
    from .wire import error_for_status, parse_token_body

    details = {
        "url": result.url,
        "status": result.status,
        "latency_ms": _latency_ms(result.latency),
    }
    where = f"AuthSec answered {result.status} in {_ms(result.latency)}"
    if result.status == 200:
        try:
            token = parse_token_body(result.body, now=time.time())
        except AuthSecError as exc:
            return Check("authsec", "fail", safe(f"{where}, but {exc}"), details)
        _secrets.remember(token.value)
        left = token.expires_in(time.time())
        permissions = " ".join(sorted(token.permissions)) or "no permission"
        return Check(
            "authsec",
            "ok",
            f"{where}: a delegation token jwt:{token.fingerprint} ({permissions}; "
            f"{left:.0f} s left)",
            {**details, "fingerprint": token.fingerprint, "jti": token.jti},
        )
    assert result.status is not None
    error = error_for_status(result.status, result.body, url=result.url, secrets=_secrets.known())
    return Check(
        "authsec", "fail", safe(f"{where}: {error} [{error.kind}]"), {**details, "kind": error.kind}
    )


def token_server_probe(settings: AuthSecSettings) -> TokenServerProbe | None:
    """The probe for where this configuration's tokens come from, or None (in process).

    AuthSec: its delegation endpoint for the configured agent, with the API
    token, exactly as the live transport asks (the answer's token is never
    shown, only its fingerprint). An OAuth authorization server adds its
    branch here.
    """
    from .wire import TOKEN_PATH

    if settings.base_url is None or settings.resolved_mode not in ("live", "record"):
        return None
    client_id = _client_id(settings)
    headers = {"accept": "application/json"}
    token = settings.api_token_value()
    if token:
        _secrets.remember(token)
        headers["authorization"] = f"Bearer {token}"
    params = {"client_id": client_id} if client_id else {}
    return TokenServerProbe(
        "authsec", settings.base_url + TOKEN_PATH, params, headers, _judge_authsec
    )


async def check_token_server(
    settings: AuthSecSettings, *, clock: Callable[[], float] = time.time
) -> list[Check]:
    """Reach the token server: latency, its answer for this agent, TLS, clock skew."""
    mode = settings.resolved_mode
    if mode == "replay":
        return [_check_cassette(settings)]
    found = token_server_probe(settings)
    checks = [_check_cassette(settings)] if mode == "record" else []
    if found is None:
        return [
            *checks,
            Check("authsec", "skip", "mock tokens are minted in this process: nothing to reach"),
        ]
    result = await probe(
        found.url,
        params=found.params,
        headers=found.headers,
        within=settings.timeout,
        clock=clock,
    )
    if result.error is not None:
        name = f"{found.name}.tls" if result.tls_error else found.name
        return [
            *checks,
            Check(
                name,
                "fail",
                f"cannot reach {found.url}: {result.error}; check {env_var('base_url')} "
                "and the network",
                {"url": found.url},
            ),
        ]
    return [
        *checks,
        found.judge(result, settings),
        *_transport_checks(found.name, result, settings.verify_leeway),
    ]


def _check_cassette(settings: AuthSecSettings) -> Check:
    from .cassettes import iso_utc, load

    path = Path(str(settings.cassette))
    if settings.resolved_mode == "record":
        parent = path.resolve().parent
        if parent.is_dir() and os.access(parent, os.W_OK):
            return Check("cassette", "ok", safe(f"recording to {path}"), {"path": str(path)})
        return Check(
            "cassette", "fail", safe(f"cannot write {path}: {parent} is not a writable directory")
        )
    try:
        cassette = load(path)
    except AuthSecError as exc:
        return Check("cassette", "fail", safe(exc), {"path": str(path)})
    return Check(
        "cassette",
        "ok",
        safe(
            f"{path}: {len(cassette.interactions)} interaction(s) recorded "
            f"{iso_utc(cassette.recorded_at)}"
        ),
        {"path": str(path), "interactions": len(cassette.interactions)},
    )


# --- the protected API ------------------------------------------------------------------


async def check_api(
    settings: AuthSecSettings, *, clock: Callable[[], float] = time.time
) -> list[Check]:
    """Reach the protected API's origin (no credential sent): latency, TLS, clock skew."""
    base = settings.api_base_url
    if (
        base is None
        or settings.resolved_mode not in ("live", "record")
        or (settings.resolved_mode == "record" and settings.base_url is None)
    ):
        return [Check("api", "skip", "the API is served in this process: nothing to reach")]
    url = base + "/"
    result = await probe(url, within=settings.timeout, clock=clock)
    if result.error is not None:
        return [
            Check(
                "api.tls" if result.tls_error else "api",
                "fail",
                f"cannot reach {url}: {result.error}; check {env_var('api_base_url')}",
                {"url": url},
            )
        ]
    status: Status = "warn" if result.status is not None and result.status >= 500 else "ok"
    reached = Check(
        "api",
        status,
        f"{base} answered {result.status} in {_ms(result.latency)} (asked with no token: "
        "any answer shows it is there)",
        {"url": url, "status": result.status, "latency_ms": _latency_ms(result.latency)},
    )
    return [reached, *_transport_checks("api", result, settings.verify_leeway)]


# --- the shared store -------------------------------------------------------------------


def _mode_problems(path: Path) -> list[str]:
    """The store's files that others than the owner may read or write."""
    problems = []
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            problems.append(f"{candidate.name} is {mode:04o}")
    return problems


async def check_store(settings: AuthSecSettings) -> list[Check]:
    """The shared store: its key, encryption, file mode (SQLite), and that it opens."""
    from .stores import SQLiteStore
    from .wiring import build_store

    scheme = settings.store.partition(":")[0]
    if scheme == "memory":
        return [Check("store", "ok", "memory: tokens stay in this process (AUTHSEC_STORE unset)")]
    try:
        store = build_store(settings)
    except ConfigurationError as exc:
        return [Check("store", "fail", safe(exc), {"store": scheme}, configuration=True)]
    except ImportError as exc:
        return [Check("store", "fail", f"{scheme} needs an extra: {exc}", configuration=True)]
    assert store is not None
    codec = store.codec
    checks = [
        Check("store.encryption", "ok", f"{scheme}: AES-256-GCM sealing on")
        if codec.encrypts
        else Check(
            "store.encryption",
            "warn",
            f"{scheme}: AUTHSEC_STORE_ENCRYPTION=off: tokens at rest are readable by "
            "whoever reads the store",
        )
    ]
    if isinstance(store, SQLiteStore):
        problems = _mode_problems(store.path)
        if problems:
            checks.append(
                Check(
                    "store.file",
                    "fail",
                    safe(
                        f"{', '.join(problems)}: other users may read the tokens; "
                        f"chmod 600 {store.path}*"
                    ),
                    {"path": str(store.path)},
                )
            )
        else:
            checks.append(Check("store.file", "ok", safe(f"{store.path}: owner only (0600)")))
    try:
        with anyio.fail_after(max(settings.timeout, settings.store_timeout)):
            async with store:
                items: Any = store.items()  # type: ignore[attr-defined]
                if inspect.isawaitable(items):
                    items = await items
    except Exception as exc:  # any failure to open or read is the finding
        reason = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
        return [*checks, Check("store", "fail", safe(f"cannot open the {scheme} store: {reason}"))]
    refused = Counter(
        why for blob in items.values() if (why := codec.refusal(bytes(blob))) is not None
    )
    details = {"entries": len(items), "refused": sum(refused.values())}
    if refused:
        reason, _ = refused.most_common(1)[0]
        checks.append(
            Check(
                "store",
                "fail",
                f"{sum(refused.values())} of {len(items)} entries cannot be opened here "
                f"({reason}): another process has a different AUTHSEC_STORE_KEY, or a "
                "rotation dropped the old key too early",
                details,
            )
        )
    else:
        said = (
            f"{len(items)} entries, all sealed with a key this process has"
            if items
            else ("reachable and empty (the key is checked once others have stored entries)")
        )
        checks.append(Check("store", "ok", f"{scheme}: {said}", details))
    return checks


# --- all of it --------------------------------------------------------------------------


async def run_doctor(*, canary: bool = False, clock: Callable[[], float] = time.time) -> Report:
    """Every check, in order: settings, token server, API, store, and the canary if asked."""
    settings_result, settings = check_settings()
    checks = [settings_result]
    if settings is not None:
        checks += check_verification(settings)
        checks += await check_token_server(settings, clock=clock)
        checks += await check_api(settings, clock=clock)
        checks += await check_store(settings)
    if canary:
        from .canary import run_canary

        checks += await run_canary()
    return Report(tuple(checks))
