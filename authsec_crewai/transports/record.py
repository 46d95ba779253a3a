"""Record a session to a cassette: ``RecordingTransport``.

It wraps any transport (live, mock, a third party's) and speaks the
:class:`~authsec_crewai.transports.base.Transport` protocol on both channels,
recording each token fetch, key-set fetch and protected-API call as it passes.
It only records: whether a cassette is recorded or replayed is decided by
:func:`~authsec_crewai.transports.replay.open_cassette_transport`.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio.lowlevel
import httpx

from .. import cassettes as fmt
from .. import errors
from .._capped import BodyTooLarge, BodyUndecodable, read_capped
from ..cassettes import Interaction, RecordMode, Scrubber, ScrubHook
from ..logging import get_logger
from ._interactions import (
    api_request,
    api_response,
    looks_like_jwt,
    token_body,
    token_request,
    token_source,
)
from .base import TransportInfo

if TYPE_CHECKING:
    import os

    from ..token import DelegationToken, TokenRequest
    from .base import KeySet, Transport

__all__ = ["MAX_RECORDED_BODY_BYTES", "RecordingTransport"]

_log = get_logger("authsec_crewai.transports.record")

_T = TypeVar("_T")

MAX_RECORDED_BODY_BYTES: Final = 16 * 1024 * 1024
"""An API answer larger than this is not recorded (a cassette is not a file store)."""


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
    """Wraps any transport (live, mock, a third party's) and records what passes through it.

    ``record_mode``:

    ``"once"`` (default) and ``"all"``
        record a new cassette, replacing any file at the path on close (use
        :func:`~authsec_crewai.transports.replay.open_cassette_transport` to
        replay an existing cassette instead of recording over it);
    ``"new_episodes"``
        replay the API calls the cassette holds and record new ones. Tokens
        are always fetched afresh (a recorded one would be expired by the wall
        clock the new calls run on), so a session that fetches tokens replaces
        the cassette's token fetches and recording time.

    ``"none"`` never records, so it is refused here.

    The file is written atomically on :meth:`aclose` (or :meth:`save`), after a
    scan proves it holds no JWT signature, credential header or API token (the
    inner transport's ``info.secrets`` are always among the values scanned for).
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
        shared: bool = False,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        max_body_bytes: int = MAX_RECORDED_BODY_BYTES,
    ) -> None:
        if record_mode not in fmt.RECORD_MODES or record_mode == "none":
            raise errors.ConfigurationError(
                "a RecordingTransport's record_mode must be once, new_episodes or all, "
                f"not {str(record_mode)[:30]!r} (open_cassette_transport replays)"
            )
        self.inner = inner
        self.path = Path(cassette_path)
        self.record_mode: RecordMode = record_mode
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        """The clock to give the broker: the recording runs on this one."""
        inner_info = inner.info
        self._hooks: tuple[ScrubHook, ...] = (scrub,) if callable(scrub) else tuple(scrub)
        self._scrubber = Scrubber(placeholders, [*secrets, *inner_info.secrets])
        self._api_player: fmt.Player | None = None
        self._inner_api: httpx.AsyncBaseTransport | None = None
        self._loop_pools: dict[object, httpx.AsyncBaseTransport] = {}
        self._loop_pools_lock = threading.Lock()
        self._api: httpx.AsyncBaseTransport | None = None
        self._closed = False
        self._inner_closed = False

        exists = self.path.exists()
        base = fmt.load(self.path) if record_mode == "new_episodes" and exists else None
        if base is not None:
            self._api_player = fmt.Player(
                base.interactions,
                allow_repeats=allow_playback_repeats,
                path=self.path,
                kinds=("api",),
            )
        settings: dict[str, Any] = {
            "mode": inner_info.mode,
            "record_mode": record_mode,
            "base_url": fmt.strip_credentials(inner_info.base_url),
        }
        source = token_source(inner_info)
        if source is not None:
            settings["token_source"] = self._scrubber.value(source)

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
        _log.info(
            "cassette.record.start",
            path=str(self.path),
            record_mode=record_mode,
            inner=settings["mode"],
            episodes=len(base.interactions) if base else 0,
        )

    @property
    def info(self) -> TransportInfo:
        """The inner transport's facts, renamed ``record``; API calls pass through it."""
        inner = self.inner.info
        return TransportInfo(
            mode="record",
            network_api=False,  # API calls must pass through the recorder
            base_url=inner.base_url,
            api_base_url=inner.api_base_url,
            client_id=inner.client_id,
            clock=self.clock,
            secrets=tuple(sorted(self._scrubber.secrets)),
            issuer=inner.issuer,
            audience=inner.audience,
            client_ids=inner.client_ids,
            whole_grant=inner.whole_grant,
            verifies_tokens=inner.verifies_tokens,
        )

    def __repr__(self) -> str:
        return f"RecordingTransport({self.inner!r}, {str(self.path)!r})"

    # --- the Transport protocol ----------------------------------------------------------------

    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        session = self._live_session()
        record = token_request(request, self._scrubber)
        with session.lock:
            session.audiences.update(record["audience"])
        return await self._record_call(
            "token",
            record,
            lambda: self.inner.fetch_token(request),
            self._token_answer,
        )

    def _token_answer(self, token: DelegationToken) -> Any:
        if not looks_like_jwt(token.value):
            # An opaque token cannot be redacted by its shape: it is masked wherever it
            # appears (an API echoing it) and scanned for before the file is written.
            self._scrubber.add_secret(token.value)
            with self._session.lock:
                self._session.secrets.add(token.value)
        return self._scrubber.value(token_body(token))

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        record = {"tenant_id": None if tenant_id is None else self._scrubber.text(tenant_id)}
        return await self._record_call(
            "key_set",
            record,
            lambda: self.inner.fetch_key_set(tenant_id),
            lambda key_set: None if key_set is None else self._scrubber.value(key_set),
        )

    async def _record_call(
        self,
        kind: str,
        record: dict[str, Any],
        call: Callable[[], Awaitable[_T]],
        body: Callable[[_T], Any],
    ) -> _T:
        """Await a token-channel ``call`` and keep its answer (as ``body``) or its typed
        error, at the offset when it was asked."""
        offset = self._live_session().offset()
        try:
            result = await call()
        except errors.AuthSecError as exc:
            error = fmt.error_record(exc, self._scrubber)
            self._keep({"kind": kind, "offset": offset, "request": record, "error": error})
            raise
        answer = {"body": body(result)}
        self._keep({"kind": kind, "offset": offset, "request": record, "response": answer})
        return result

    def api(self) -> httpx.AsyncBaseTransport:
        if self._api is None:
            self._api = _RecordingApi(self)
        return self._api

    async def _record_api(self, request: httpx.Request) -> httpx.Response:
        session = self._live_session()
        body = await request.aread()
        record = api_request(request, body, self._scrubber)
        if self._api_player is not None and self._api_player.has("api", record):
            return api_response(self._api_player.take("api", record), request, self._scrubber)
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
        try:
            return await read_capped(response, self.max_body_bytes)
        except BodyTooLarge:
            raise errors.CassetteError(
                f"the answer to {fmt.describe('api', record)} is larger than "
                f"{self.max_body_bytes} bytes; refusing to record it into {self.path}"
            ) from None
        except BodyUndecodable as exc:
            raise errors.CassetteError(
                f"the answer to {fmt.describe('api', record)} cannot be read ({exc}); "
                f"refusing to record it into {self.path}"
            ) from None

    # --- keeping interactions --------------------------------------------------------------------

    def _live_session(self) -> _Session:
        if self._closed:
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
        """Write what was recorded so far (atomically)."""
        count = self._session.write()
        _log.info("cassette.write", path=str(self.path), interactions=count)

    def close(self) -> None:
        """Write the cassette and let go of the session, without closing ``inner``.

        For synchronous callers (a pytest fixture's teardown); :meth:`aclose`
        does this and closes the inner transport too.
        """
        if self._closed:
            return
        try:
            self.save()
        finally:
            self._closed = True
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
