"""Replay a recorded session offline: ``ReplayTransport``; and
:func:`open_cassette_transport`, the one place that decides whether a cassette
is replayed or recorded.

``ReplayTransport`` speaks the :class:`~authsec_crewai.transports.base.Transport`
protocol on both channels: tokens and key sets through ``fetch_token`` /
``fetch_key_set``, protected-API calls through the httpx transport that
``api()`` returns. The file format, its redaction and request matching live in
:mod:`authsec_crewai.cassettes`; recording lives in
:mod:`authsec_crewai.transports.record`.

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

import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from .. import cassettes as fmt
from .. import errors
from ..cassettes import RECORD_MODES, RecordMode, Scrubber, ScrubHook
from ..logging import get_logger
from ..wire import parse_token_body
from ._interactions import api_request, api_response, token_request
from .base import Transport, TransportInfo
from .record import MAX_RECORDED_BODY_BYTES, RecordingTransport

if TYPE_CHECKING:
    import os

    from ..token import DelegationToken, TokenRequest
    from .base import KeySet

__all__ = ["ReplayTransport", "open_cassette_transport"]

_log = get_logger("authsec_crewai.transports.replay")


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

    verification: ClassVar[str] = "claims-only"
    """What the broker checks of a replayed token (``info.claims_only``): recorded
    signatures were redacted, so claims only."""

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
        source = self.cassette.settings.get("token_source")
        if not isinstance(source, dict):
            return TransportInfo(
                mode="replay",
                claims_only=True,
                api_base_url=self.api_base_url,
                client_id=self.client_id,
                clock=self.clock,
            )
        # A recorded OAuth session: the same cache keys and client-id rule as when it
        # was recorded; its tokens' claims were checked by the recording transport.
        restore = self._scrubber.restore_text
        return TransportInfo(
            mode="replay",
            claims_only=True,
            api_base_url=self.api_base_url,
            client_id=self.client_id,
            clock=self.clock,
            issuer=restore(str(source.get("issuer"))),
            audience=tuple(restore(str(a)) for a in source.get("audience") or ()),
            client_ids="opaque" if source.get("client_ids") == "opaque" else "uuid",
            whole_grant=bool(source.get("whole_grant", True)),
            verifies_tokens=bool(source.get("verifies_tokens", False)),
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
        item = self._player.take("token", token_request(request, self._scrubber))
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
        item = self._player.take("api", api_request(request, body, self._scrubber))
        return api_response(item, request, self._scrubber)

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


# --- record or replay -----------------------------------------------------------------------


def open_cassette_transport(
    inner: Transport | Callable[[], Transport],
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
    max_body_bytes: int = MAX_RECORDED_BODY_BYTES,
) -> RecordingTransport | ReplayTransport:
    """A :class:`ReplayTransport` or a :class:`RecordingTransport` around ``inner``,
    as ``record_mode`` decides (vcrpy's meanings):

    ``"once"`` (default)
        record when the cassette does not exist; when it does, replay it and
        treat any request it does not hold as an error;
    ``"new_episodes"``
        replay the API calls the cassette holds and record new ones (see
        :class:`RecordingTransport`);
    ``"all"``
        always record, replacing the cassette;
    ``"none"``
        replay only; a missing cassette is a ``CassetteError``.

    ``inner`` is what a recording records: a transport, or a function that
    builds one, called only when something is recorded (a transport passed in
    is neither used nor closed when the cassette is replayed). The other
    options are those of the two transports; the recording-only ones are
    ignored when replaying.
    """
    if record_mode not in RECORD_MODES:
        raise errors.ConfigurationError(
            f"record_mode must be one of {', '.join(RECORD_MODES)}, not {str(record_mode)[:30]!r}"
        )
    path = Path(cassette_path)
    exists = path.exists()
    if record_mode == "none" or (record_mode == "once" and exists):
        if not exists:
            raise errors.CassetteError(
                f"cassette {path} does not exist, and record mode 'none' never "
                "records; record it first (record mode 'once')"
            )
        return ReplayTransport(
            path,
            allow_playback_repeats=allow_playback_repeats,
            strict_unused=strict_unused,
            placeholders=placeholders,
            monotonic=monotonic,
        )
    return RecordingTransport(
        inner if isinstance(inner, Transport) else inner(),
        path,
        record_mode=record_mode,
        scrub=scrub,
        placeholders=placeholders,
        secrets=secrets,
        metadata=metadata,
        allow_playback_repeats=allow_playback_repeats,
        shared=shared,
        clock=clock,
        monotonic=monotonic,
        max_body_bytes=max_body_bytes,
    )
