"""Record a session to a cassette, and replay it offline: ``RecordingTransport``
and ``ReplayTransport``.

Both speak the :class:`~authsec_crewai.transports.base.Transport` protocol, on
both channels: tokens and key sets through ``fetch_token`` / ``fetch_key_set``,
protected-API calls through the httpx transport that ``api()`` returns. The
file format, its redaction and request matching live in
:mod:`authsec_crewai.cassette`.

Why replaying tokens works at all: a recorded token has long expired by the
time a test suite replays it, and its signature was removed before it was
written. So a replay runs on the cassette's own time — ``replay.clock``
starts at the recording time and advances in real time; hand it to the broker
(``TokenBroker(replay, client_id=..., clock=replay.clock)``, which
``build_broker`` and the pytest plugin do) — and the broker's verifier checks
every claim but not the signature (the transport says ``claims_only = True``;
the broker reads it when it starts). Replayed answers go through
:func:`authsec_crewai.wire.parse_token_body`, the parser every mode shares.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio.lowlevel
import httpx

from .. import cassette as fmt
from .. import errors
from ..cassette import Interaction, RecordMode, Scrubber, ScrubHook
from ..logging import get_logger
from ..wire import parse_token_body
from .base import TransportInfo

if TYPE_CHECKING:
    import os

    from ..token import DelegationToken, TokenRequest
    from .base import KeySet, Transport

__all__ = ["RecordMode", "RecordingTransport", "ReplayTransport", "ScrubHook"]

_log = get_logger("authsec_crewai.transports.replay")

DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
"""An API answer larger than this is not recorded (a cassette is not a file store)."""


# --- shared pieces ---------------------------------------------------------------------------


def _token_request(request: TokenRequest, scrubber: Scrubber) -> dict[str, Any]:
    return {
        "audience": sorted(scrubber.text(a) for a in request.audience),
        "client_id": scrubber.text(request.client_id),
        "scopes": sorted(request.scopes),
    }


def _api_request(request: httpx.Request, body: bytes, scrubber: Scrubber) -> dict[str, Any]:
    return {
        "method": request.method.upper(),
        "path": scrubber.text(request.url.path),
        "query": [
            [scrubber.text(k), scrubber.text(v)] for k, v in request.url.params.multi_items()
        ],
        "body": fmt.encode_body(body, scrubber),
    }


def _token_body(token: DelegationToken) -> dict[str, Any]:
    """The answer the token was parsed from, in the server's field names.

    The transport protocol hands over a parsed token, not the raw answer; these
    are exactly the fields :func:`~authsec_crewai.wire.parse_token_body` reads,
    so replay parses back the same token (the value with its signature redacted).
    """
    body: dict[str, Any] = {
        "token": token.value,
        "spiffe_id": token.spiffe_id,
        "permissions": sorted(token.permissions),
        "audience": list(token.audience),
        "expires_at": fmt.iso_utc(token.expires_at.timestamp()),
        "issued_at": fmt.iso_utc(token.issued_at.timestamp()),
        "client_id": token.client_id,
    }
    if token.tenant_id:
        body["tenant_id"] = token.tenant_id
    return body


def _api_response(item: Interaction, request: httpx.Request, scrubber: Scrubber) -> httpx.Response:
    if "error" in item:
        error = item["error"]
        cls = getattr(httpx, str(error.get("type", "")), None)
        if not (isinstance(cls, type) and issubclass(cls, httpx.TransportError)):
            cls = httpx.TransportError
        message = scrubber.restore_text(str(error.get("message", "recorded error")))
        raise cls(message, request=request)
    answer = item["response"]
    headers = [(k, scrubber.restore_text(v)) for k, v in answer.get("headers", {}).items()]
    return httpx.Response(
        answer["status"],
        headers=headers,
        content=fmt.decode_body(answer.get("body"), scrubber),
        request=request,
    )


# --- replay ---------------------------------------------------------------------------------------


class _ReplayApi(httpx.AsyncBaseTransport):
    """The protected API, answered from the cassette: no socket is ever opened."""

    def __init__(self, owner: ReplayTransport) -> None:
        self._owner = owner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        return self._owner._play_api(request, body)


class ReplayTransport:
    """Serves a recorded session with no network.

    Requests are matched by what they ask (token: client id, scopes, audience;
    API: method, path, query and body), never by a token or a header: a
    replayed token is not the recorded one byte for byte, and that must not
    matter. A request that is not in the cassette raises
    :class:`~authsec_crewai.errors.CassetteError` naming the closest recorded
    one. Identical requests replay in recorded order, then repeat the last
    answer while ``allow_playback_repeats``. With ``strict_unused``,
    :meth:`aclose` fails when recorded tokens or API calls were never asked for
    (key sets are exempt: replay verifies claims only, so it never needs them).

    ``placeholders`` must be the mapping the cassette was recorded with;
    ``monotonic`` is how :meth:`clock` advances (injectable for tests).
    """

    mode: ClassVar[str] = "replay"
    claims_only: ClassVar[bool] = True
    """Read by the broker: recorded signatures were redacted, so verify claims only."""
    verification: ClassVar[str] = "claims-only"

    def __init__(
        self,
        cassette_path: str | os.PathLike[str],
        *,
        allow_playback_repeats: bool = True,
        strict_unused: bool = False,
        placeholders: Mapping[str, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(cassette_path)
        self.cassette = fmt.load(self.path)
        self.recorded_at = self.cassette.recorded_at
        self.strict_unused = strict_unused
        self._scrubber = Scrubber(placeholders)
        self._player = fmt.Player(
            self.cassette.interactions, allow_repeats=allow_playback_repeats, path=self.path
        )
        self._monotonic = monotonic
        self._start = monotonic()
        self._api: _ReplayApi | None = None
        self._closed = False
        self._checked = False
        _log.info(
            "cassette.replay.open",
            path=str(self.path),
            interactions=len(self.cassette.interactions),
            recorded_at=fmt.iso_utc(self.recorded_at),
            verification=self.verification,
            reason="recorded JWT signatures are redacted; claims are still checked",
        )

    @property
    def info(self) -> TransportInfo:
        """Replay: claims-only verification, the cassette's clock and recorded facts."""
        return TransportInfo(
            mode="replay",
            claims_only=True,
            api_base_url=self.api_base_url,
            client_id=self.client_id,
            clock=self.clock,
        )

    def __repr__(self) -> str:
        return (
            f"ReplayTransport({str(self.path)!r}, interactions={len(self.cassette.interactions)})"
        )

    # --- time and facts -------------------------------------------------------------------

    def clock(self) -> float:
        """UNIX seconds on the cassette's time: the recording time when this transport
        was created, advancing in real time. Give it to the broker as ``clock``."""
        return self.recorded_at + (self._monotonic() - self._start)

    @property
    def client_id(self) -> str | None:
        """The client id the session was recorded with (placeholders restored)."""
        recorded = self.cassette.client_id
        return None if recorded is None else self._scrubber.restore_text(recorded)

    @property
    def api_base_url(self) -> str | None:
        """The protected-API origin seen while recording (replay does not match hosts)."""
        urls = self.cassette.settings.get("api_base_urls") or []
        first = urls[0] if urls else self.cassette.settings.get("base_url")
        return str(first) if first else None

    # --- the Transport protocol ---------------------------------------------------------------

    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        item = self._player.take("token", _token_request(request, self._scrubber))
        if "error" in item:
            raise fmt.error_from_record(item["error"])
        body = self._scrubber.restore(item["response"]["body"])
        return parse_token_body(body, now=self.clock())

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        request = {"tenant_id": None if tenant_id is None else self._scrubber.text(tenant_id)}
        item = self._player.take("key_set", request)
        if "error" in item:
            raise fmt.error_from_record(item["error"])
        body = item["response"].get("body")
        return None if body is None else dict(self._scrubber.restore(body))

    def api(self) -> httpx.AsyncBaseTransport:
        if self._api is None:
            self._api = _ReplayApi(self)
        return self._api

    def _play_api(self, request: httpx.Request, body: bytes) -> httpx.Response:
        item = self._player.take("api", _api_request(request, body, self._scrubber))
        return _api_response(item, request, self._scrubber)

    # --- closing --------------------------------------------------------------------------------

    def unused(self) -> list[str]:
        """Recorded token and API requests never asked for, described one per line."""
        return [
            f"#{index} {fmt.describe(item['kind'], item['request'])}"
            for index, item in self._player.unused()
            if item["kind"] != "key_set"
        ]

    def check_unused(self) -> None:
        """With ``strict_unused``, raise ``CassetteError`` listing unused interactions.

        Checked once: the pytest plugin calls it at teardown even when the
        broker's ``aclose`` already did.
        """
        if not self.strict_unused or self._checked:
            return
        self._checked = True
        left = self.unused()
        if left:
            shown = "; ".join(left[:5]) + ("; ..." if len(left) > 5 else "")
            raise errors.CassetteError(
                f"cassette {self.path}: {len(left)} recorded interaction(s) were never used "
                f"(strict_unused=True): {shown}"
            )

    def close(self) -> None:
        """Synchronous :meth:`aclose` (nothing to release but the unused check)."""
        if self._closed:
            return
        self._closed = True
        self.check_unused()

    async def aclose(self) -> None:
        self.close()


# --- recording ---------------------------------------------------------------------------------


@dataclass
class _Session:
    """One recording in progress; several shared transports may write into it."""

    path: Path
    recorded_at: float
    start: float
    monotonic: Callable[[], float]
    shared: bool
    base: fmt.Cassette | None
    metadata: dict[str, Any]
    settings: dict[str, Any]
    interactions: list[Interaction] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)
    api_origins: set[str] = field(default_factory=set)
    audiences: set[str] = field(default_factory=set)
    open_count: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)
    owners: weakref.WeakSet[RecordingTransport] = field(default_factory=weakref.WeakSet)
    """The transports recording into it: a session whose owners were all dropped
    without being closed is abandoned, and does not block a new recording."""

    def offset(self) -> float:
        return round(max(0.0, self.monotonic() - self.start), 3)

    def document(self) -> dict[str, Any]:
        with self.lock:
            new = list(self.interactions)
            settings = dict(self.settings)
            settings["api_base_urls"] = sorted(self.api_origins)
            settings["audience"] = sorted(self.audiences)
        recorded_at, interactions = self.recorded_at, new
        base = self.base
        if base is not None:
            settings["api_base_urls"] = sorted(
                set(settings["api_base_urls"]) | set(base.settings.get("api_base_urls") or [])
            )
            old_api = [item for item in base.interactions if item["kind"] == "api"]
            if any(item["kind"] != "api" for item in new):
                # The token channel was recorded afresh: the new timeline wins.
                interactions = old_api + new
            else:
                # No new token fetch: keep the old tokens and their timeline, and
                # place the new episodes on it.
                recorded_at = base.recorded_at
                shift = max(0.0, self.recorded_at - base.recorded_at)
                shifted = [{**item, "offset": round(item["offset"] + shift, 3)} for item in new]
                interactions = list(base.interactions) + shifted
                settings["audience"] = sorted(
                    set(settings["audience"]) | set(base.settings.get("audience") or [])
                )
        return fmt.new_document(
            recorded_at=recorded_at,
            settings=settings,
            interactions=interactions,
            metadata=self.metadata,
        )

    def write(self) -> int:
        """Check and write the cassette; returns the number of interactions."""
        document = self.document()
        findings = fmt.find_secrets(document, secrets=self.secrets)
        if findings:
            more = f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""
            raise errors.CassetteError(
                f"refusing to write cassette {self.path}: {findings[0]}{more}. The built-in "
                "redaction missed it; scrub it with a placeholder or a scrub hook, and "
                "please report it"
            )
        fmt.write_atomic(self.path, fmt.dumps(document))
        return len(document["interactions"])


_SESSIONS: dict[Path, _Session] = {}
_SESSIONS_LOCK = threading.Lock()


def _open_session(path: Path, *, shared: bool, make: Callable[[], _Session]) -> _Session:
    """The recording for ``path``: a new one, or the shared one already open.

    Two independent recordings of one file in one process would overwrite each
    other's work on close, so that is refused unless both say ``shared``.
    """
    key = path.resolve()
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is not None and not session.shared and not session.owners:
            session = None  # abandoned: its transport was garbage-collected unclosed
        if session is not None:
            if not (shared and session.shared):
                raise errors.CassetteError(
                    f"cassette {path} is already being recorded by another RecordingTransport "
                    "in this process; close that one first, or pass shared=True to both so "
                    "they record into one session"
                )
            with session.lock:
                session.open_count += 1
            return session
        session = make()
        _SESSIONS[key] = session
        return session


def _release_session(session: _Session) -> None:
    with _SESSIONS_LOCK:
        with session.lock:
            session.open_count -= 1
            done = session.open_count <= 0
        if done and not session.shared:
            _SESSIONS.pop(session.path.resolve(), None)


def _inner_secrets(inner: Transport) -> tuple[str, ...]:
    """The secrets the inner transport declares (an API token), so the writer can prove
    they are not in the file without the caller having to remember ``secrets=``."""
    return inner.info.secrets


class _RecordingApi(httpx.AsyncBaseTransport):
    """Forwards API calls to the inner transport's httpx transport and records them."""

    def __init__(self, owner: RecordingTransport) -> None:
        self._owner = owner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._owner._record_api(request)

    async def aclose(self) -> None:
        """Nothing: the inner transport's pool is closed by the RecordingTransport's
        ``aclose``, not by whichever ``AsyncClient`` used this wrapper last."""


class RecordingTransport:
    """Wraps any transport (live or mock) and records what passes through it.

    ``record_mode`` has vcrpy's meanings:

    ``"once"`` (default)
        record when the cassette does not exist; when it does, replay it and
        treat any request it does not hold as an error;
    ``"new_episodes"``
        replay the API calls the cassette holds and record new ones. Tokens
        are always fetched afresh (a recorded one would be expired by the wall
        clock the new calls run on), so a session that fetches tokens replaces
        the cassette's token fetches and recording time;
    ``"all"``
        always record, replacing the cassette;
    ``"none"``
        replay only; a missing cassette is a ``CassetteError``.

    When it replays, it behaves exactly like a :class:`ReplayTransport`
    (``mode == "replay"``, ``claims_only``, the cassette's ``clock``).

    The file is written atomically on :meth:`aclose` (or :meth:`save`), after a
    scan proves it holds no JWT signature, credential header or API token.
    ``scrub`` hooks see each interaction after the built-in redaction and may
    change it or return None to drop it; ``placeholders``
    (``{"<secret>": "<placeholder>"}``) replace values both ways (pass the same
    mapping when replaying); ``secrets`` are extra values that must never be
    written. ``shared=True`` lets every RecordingTransport of this cassette in
    this process record into one session and keeps it open for the process
    (``AUTHSEC_MODE=record`` uses it: a crew builds a broker per tool).
    """

    def __init__(
        self,
        inner: Transport,
        cassette_path: str | os.PathLike[str],
        *,
        record_mode: RecordMode = "once",
        scrub: ScrubHook | Iterable[ScrubHook] = (),
        placeholders: Mapping[str, str] | None = None,
        secrets: Iterable[str | None] = (),
        metadata: Mapping[str, Any] | None = None,
        allow_playback_repeats: bool = True,
        strict_unused: bool = False,
        shared: bool = False,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        if record_mode not in fmt.RECORD_MODES:
            raise errors.ConfigurationError(
                f"record_mode must be one of {', '.join(fmt.RECORD_MODES)}, "
                f"not {str(record_mode)[:30]!r}"
            )
        self.inner = inner
        self.path = Path(cassette_path)
        self.record_mode: RecordMode = record_mode
        self.max_body_bytes = max_body_bytes
        self._hooks: tuple[ScrubHook, ...] = (scrub,) if callable(scrub) else tuple(scrub)
        self._scrubber = Scrubber(placeholders, [*secrets, *_inner_secrets(inner)])
        self._replay: ReplayTransport | None = None
        self._session: _Session | None = None
        self._api_player: fmt.Player | None = None
        self._inner_api: httpx.AsyncBaseTransport | None = None
        self._loop_pools: dict[object, httpx.AsyncBaseTransport] = {}
        self._loop_pools_lock = threading.Lock()
        self._api: httpx.AsyncBaseTransport | None = None
        self._closed = False
        self._inner_closed = False
        self.mode: str
        """``record``, or ``replay`` when the cassette is only played back."""
        self.claims_only: bool
        """Read by the broker: True when replaying (recorded signatures are redacted)."""
        self.clock: Callable[[], float]
        """The clock to give the broker: the cassette's when replaying, else ``clock``."""

        exists = self.path.exists()
        if record_mode == "none" or (record_mode == "once" and exists):
            if not exists:
                raise errors.CassetteError(
                    f"cassette {self.path} does not exist, and record mode 'none' never "
                    "records; record it first (record mode 'once')"
                )
            self._replay = ReplayTransport(
                self.path,
                allow_playback_repeats=allow_playback_repeats,
                strict_unused=strict_unused,
                placeholders=placeholders,
                monotonic=monotonic,
            )
            self.mode = "replay"
            self.claims_only = True
            self.clock = self._replay.clock
            return

        base = fmt.load(self.path) if record_mode == "new_episodes" and exists else None
        if base is not None:
            self._api_player = fmt.Player(
                base.interactions,
                allow_repeats=allow_playback_repeats,
                path=self.path,
                kinds=("api",),
            )
        inner_info = inner.info  # "live", "mock" or a third party's own name
        settings = {
            "mode": inner_info.mode,
            "record_mode": record_mode,
            "base_url": fmt.strip_credentials(inner_info.base_url),
        }

        def make() -> _Session:
            return _Session(
                path=self.path,
                recorded_at=clock(),
                start=monotonic(),
                monotonic=monotonic,
                shared=shared,
                base=base,
                metadata=dict(metadata or {}),
                settings=settings,
            )

        self._session = _open_session(self.path, shared=shared, make=make)
        self._session.owners.add(self)
        with self._session.lock:
            self._session.secrets |= self._scrubber.secrets
        self.mode = "record"
        self.claims_only = False
        self.clock = clock
        _log.info(
            "cassette.record.start",
            path=str(self.path),
            record_mode=record_mode,
            inner=settings["mode"],
            episodes=len(base.interactions) if base else 0,
        )

    @property
    def info(self) -> TransportInfo:
        """A replay's facts while replaying; the inner transport's, renamed, while recording."""
        if self._replay is not None:
            return self._replay.info
        inner = self.inner.info
        return TransportInfo(
            mode="record",
            network_api=False,  # API calls must pass through the recorder
            base_url=inner.base_url,
            api_base_url=inner.api_base_url,
            client_id=inner.client_id,
            clock=self.clock,
            secrets=tuple(sorted(self._scrubber.secrets)),
        )

    def __repr__(self) -> str:
        doing = "replaying" if self._replay is not None else "recording"
        return f"RecordingTransport({self.inner!r}, {str(self.path)!r}, {doing})"

    @property
    def recording(self) -> bool:
        """False when this transport only replays (record mode none, or once with a file)."""
        return self._session is not None

    # --- the Transport protocol ----------------------------------------------------------------

    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        if self._replay is not None:
            return await self._replay.fetch_token(request)
        session = self._live_session()
        record = _token_request(request, self._scrubber)
        offset = session.offset()
        with session.lock:
            session.audiences.update(record["audience"])
        try:
            token = await self.inner.fetch_token(request)
        except errors.AuthSecError as exc:
            self._keep(
                {
                    "kind": "token",
                    "offset": offset,
                    "request": record,
                    "error": fmt.error_record(exc, self._scrubber),
                }
            )
            raise
        body = self._scrubber.value(_token_body(token))
        self._keep(
            {"kind": "token", "offset": offset, "request": record, "response": {"body": body}}
        )
        return token

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        if self._replay is not None:
            return await self._replay.fetch_key_set(tenant_id)
        session = self._live_session()
        record = {"tenant_id": None if tenant_id is None else self._scrubber.text(tenant_id)}
        offset = session.offset()
        try:
            key_set = await self.inner.fetch_key_set(tenant_id)
        except errors.AuthSecError as exc:
            self._keep(
                {
                    "kind": "key_set",
                    "offset": offset,
                    "request": record,
                    "error": fmt.error_record(exc, self._scrubber),
                }
            )
            raise
        body = None if key_set is None else self._scrubber.value(key_set)
        self._keep(
            {"kind": "key_set", "offset": offset, "request": record, "response": {"body": body}}
        )
        return key_set

    def api(self) -> httpx.AsyncBaseTransport:
        if self._replay is not None:
            return self._replay.api()
        if self._api is None:
            self._api = _RecordingApi(self)
        return self._api

    async def _record_api(self, request: httpx.Request) -> httpx.Response:
        session = self._live_session()
        body = await request.aread()
        record = _api_request(request, body, self._scrubber)
        if self._api_player is not None and self._api_player.has("api", record):
            return _api_response(self._api_player.take("api", record), request, self._scrubber)
        origin = fmt.strip_credentials(f"{request.url.scheme}://{request.url.netloc.decode()}")
        with session.lock:
            if origin:
                session.api_origins.add(origin)
        inner_api = self._inner_api_here()
        offset = session.offset()
        try:
            response = await inner_api.handle_async_request(request)
        except httpx.TransportError as exc:
            self._keep(
                {
                    "kind": "api",
                    "offset": offset,
                    "request": record,
                    "error": {
                        "kind": "transport",
                        "type": type(exc).__name__,
                        "message": self._scrubber.text(str(exc)),
                    },
                }
            )
            raise
        try:
            content = await self._read(response, record)
        finally:
            await response.aclose()
        self._keep(
            {
                "kind": "api",
                "offset": offset,
                "request": record,
                "response": {
                    "status": response.status_code,
                    "headers": self._scrubber.headers(response.headers.multi_items()),
                    "body": fmt.encode_body(content, self._scrubber),
                },
            }
        )
        # The body was read (and decoded) here, so the caller gets it whole, with
        # the headers that describe the stream rather than the content dropped.
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        ]
        return httpx.Response(
            response.status_code,
            headers=headers,
            content=content,
            request=request,
            extensions={
                k: v
                for k, v in response.extensions.items()
                if k in ("http_version", "reason_phrase")
            },
        )

    async def _read(self, response: httpx.Response, record: Mapping[str, Any]) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise errors.CassetteError(
                    f"the answer to {fmt.describe('api', record)} is larger than "
                    f"{self.max_body_bytes} bytes; refusing to record it into {self.path}"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    # --- keeping interactions --------------------------------------------------------------------

    def _live_session(self) -> _Session:
        if self._session is None or self._closed:
            raise errors.CassetteError(f"the recording of {self.path} is closed")
        return self._session

    def _keep(self, interaction: Interaction) -> None:
        """Run the scrub hooks, redact once more, check and append."""
        session = self._live_session()
        kept = interaction
        for hook in self._hooks:
            changed = hook(kept)
            if changed is None:
                return
            kept = changed
        kept = self._scrubber.value(kept)
        problem = fmt.validate_interaction(kept)
        if problem:
            raise errors.CassetteError(
                f"a scrub hook returned an interaction that cannot be stored: {problem}"
            )
        with session.lock:
            session.interactions.append(kept)

    # --- closing ---------------------------------------------------------------------------------

    def save(self) -> None:
        """Write what was recorded so far (atomically). Nothing to do when replaying."""
        if self._session is None:
            return
        count = self._session.write()
        _log.info("cassette.write", path=str(self.path), interactions=count)

    def close(self) -> None:
        """Write the cassette and let go of the session, without closing ``inner``.

        For synchronous callers (a pytest fixture's teardown); :meth:`aclose`
        does this and closes the inner transport too.
        """
        if self._closed:
            return
        if self._replay is not None:
            self._closed = True
            self._replay.close()
            return
        try:
            self.save()
        finally:
            self._closed = True
            if self._session is not None:
                _release_session(self._session)

    def _inner_api_here(self) -> httpx.AsyncBaseTransport:
        """The inner transport's API, usable on the calling event loop.

        This transport's ``api()`` is in process, so callers on any loop use it
        (see ``TransportInfo.network_api``). An in-process inner API serves any
        loop too; a network one is a socket pool that belongs to one loop, so
        each loop records through a pool of its own.
        """
        if not self.inner.info.network_api:
            if self._inner_api is None:
                self._inner_api = self.inner.api()
            return self._inner_api
        loop = anyio.lowlevel.current_token().native_token
        with self._loop_pools_lock:
            pool = self._loop_pools.get(loop)
            if pool is None:
                pool = self._loop_pools[loop] = httpx.AsyncHTTPTransport()
        return pool

    async def aclose(self) -> None:
        try:
            self.close()
        finally:
            # This loop's pool is closed; other loops' pools are only dropped (their
            # sockets belong to those loops, most likely finished by now).
            pools, self._loop_pools = self._loop_pools, {}
            here = pools.get(anyio.lowlevel.current_token().native_token)
            if here is not None:
                await here.aclose()
            if not self._inner_closed:
                self._inner_closed = True
                await self.inner.aclose()
