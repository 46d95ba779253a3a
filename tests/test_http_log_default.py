"""The HTTP stack's logs are scrubbed without being asked: the secure default.

An application that only did ``logging.basicConfig(level=logging.DEBUG)`` gets
httpcore's raw header lines; a server that echoes a credential in a response
header must not put it in that log. The library puts its filter on the HTTP
loggers when it builds its first client, and ``AUTHSEC_HTTP_LOG_FILTER=off``
takes that back.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
from _server import LoopbackServer, MockServer

import authsec_crewai.logging as library_logging
from authsec_crewai import _secrets
from authsec_crewai.logging import (
    HTTP_LOGGERS,
    RedactingFilter,
    ensure_http_log_filter,
    install_http_log_filter,
)
from authsec_crewai.testing import TOKEN_PATH, Fault, MockAuthority, MockFaults, create_app

API_TOKEN = "api-token-0123456789-not-a-jwt"
RECORDS = "/secure-vault/records"

# The application: stdlib logging at DEBUG, nothing else; it never calls the
# library's logging API. It prints the token it was given (the test must know it).
APPLICATION = textwrap.dedent(
    """
    import logging
    import sys

    import anyio

    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)

    from authsec_crewai import AuthSecSettings, build_broker, build_fetcher


    async def main() -> None:
        settings = AuthSecSettings()
        async with build_broker(settings) as broker:
            fetcher = build_fetcher(broker, settings)
            token = await broker.token("read:records")
            result = await fetcher.fetch("secure-vault/records", "read:records")
            assert result.to_dict()["status"] == "ok", result.to_dict()
            print(token.value)


    anyio.run(main)
    """
)


@pytest.fixture
def echoing_server(loopback_server: LoopbackServer, mock_authority: MockAuthority) -> Iterator[str]:
    """AuthSec (API token required) and the vault, both echoing a credential in a header.

    The token endpoint answers 503 once with the raw API token in ``x-echo`` (no
    ``Bearer`` before it: only the exact value can catch it), then the real
    token; the vault answers with the delegation token in ``www-authenticate``.
    """
    faults = MockFaults()
    faults.add(Fault(status=503, echo="{bearer}", echo_header="x-echo"), path=TOKEN_PATH)
    faults.add(
        Fault(
            status=200, echo='{"records": [], "seen": "{bearer}"}', echo_header="www-authenticate"
        ),
        path=RECORDS,
    )
    loopback_server.app = create_app(mock_authority, faults=faults, api_token=API_TOKEN)
    try:
        yield loopback_server.url
    finally:
        loopback_server.app = None


def _run_application(url: str, client_id: str, tmp_path: Path, **extra: str) -> tuple[str, str]:
    script = tmp_path / "app.py"
    script.write_text(APPLICATION, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHSEC_")}
    env.update(
        AUTHSEC_MODE="live",
        AUTHSEC_BASE_URL=url,
        AUTHSEC_CLIENT_ID=client_id,
        AUTHSEC_API_TOKEN=API_TOKEN,
        **extra,
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    token = done.stdout.splitlines()[0]
    assert token.startswith("eyJ")
    return token, done.stderr


def test_an_echoed_token_never_reaches_a_debug_log_nobody_configured_for_it(
    echoing_server: str, mock_authority: MockAuthority, tmp_path: Path
) -> None:
    client_id = str(uuid.uuid4())
    mock_authority.delegate(client_id)
    token, log = _run_application(echoing_server, client_id, tmp_path)
    assert "receive_response_headers.complete" in log  # httpcore's raw header lines ran
    assert "www-authenticate" in log and "x-echo" in log
    assert token not in log and token[:40] not in log
    assert token.split(".")[2][:20] not in log  # not even the signature alone
    assert API_TOKEN not in log
    assert "[redacted]" in log  # the API token's place in the header line


def test_the_opt_out_gives_back_httpcores_raw_lines(
    echoing_server: str, mock_authority: MockAuthority, tmp_path: Path
) -> None:
    client_id = str(uuid.uuid4())
    mock_authority.delegate(client_id)
    token, log = _run_application(
        echoing_server, client_id, tmp_path, AUTHSEC_HTTP_LOG_FILTER="off"
    )
    # Raw: this proves the test above can fail.
    assert token in log
    assert API_TOKEN in log


# --- in process: what installing changes, and what it does not --------------------------


@pytest.fixture
def fresh_http_loggers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[logging.Logger]]:
    """The HTTP loggers with no filter, the once-per-process flag re-armed; restored after."""
    loggers = [logging.getLogger(name) for name in HTTP_LOGGERS]
    saved = [list(logger.filters) for logger in loggers]
    for logger in loggers:
        logger.filters[:] = []
    monkeypatch.setattr(library_logging, "_ensured", False)
    monkeypatch.delenv(library_logging.HTTP_LOG_FILTER_VARIABLE, raising=False)
    try:
        yield loggers
    finally:
        for logger, filters in zip(loggers, saved, strict=True):
            logger.filters[:] = filters


def _state(loggers: list[logging.Logger]) -> list[tuple[object, ...]]:
    return [
        (logger.level, logger.propagate, tuple(logger.handlers), logger.disabled)
        for logger in loggers
    ]


def test_installing_is_idempotent_and_changes_no_level_handler_or_propagation(
    fresh_http_loggers: list[logging.Logger],
) -> None:
    before = _state(fresh_http_loggers)
    ensure_http_log_filter()
    ensure_http_log_filter()
    assert _state(fresh_http_loggers) == before
    for logger in fresh_http_loggers:
        assert len(logger.filters) == 1 and isinstance(logger.filters[0], RedactingFilter)
    (installed,) = {id(logger.filters[0]) for logger in fresh_http_loggers}  # one filter
    assert installed


def test_the_applications_own_filter_is_kept_not_stacked_on(
    fresh_http_loggers: list[logging.Logger],
) -> None:
    own = install_http_log_filter(secrets=["the-applications-own-secret"])
    ensure_http_log_filter()
    assert all(logger.filters == [own] for logger in fresh_http_loggers)


def test_the_applications_later_install_replaces_the_default(
    fresh_http_loggers: list[logging.Logger],
) -> None:
    ensure_http_log_filter()
    own = install_http_log_filter(secrets=["the-applications-own-secret"])
    assert all(logger.filters == [own] for logger in fresh_http_loggers)


def test_off_installs_nothing(
    fresh_http_loggers: list[logging.Logger], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(library_logging.HTTP_LOG_FILTER_VARIABLE, " OFF ")
    ensure_http_log_filter()
    assert all(logger.filters == [] for logger in fresh_http_loggers)


def test_a_filtered_record_is_never_dropped_and_known_secrets_are_masked(
    fresh_http_loggers: list[logging.Logger],
) -> None:
    secret = "store-key-like-secret-" + uuid.uuid4().hex
    _secrets.remember(secret)
    ensure_http_log_filter()
    record = logging.LogRecord(
        "httpcore.http11", logging.DEBUG, __file__, 1, "headers %r", ((b"x", secret),), None
    )
    assert fresh_http_loggers[1].filter(record)  # kept
    assert secret not in record.getMessage() and "[redacted]" in record.getMessage()


def test_the_registry_is_bounded_and_ignores_short_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_secrets, "_held", OrderedDict())
    monkeypatch.setattr(_secrets, "_index", None)
    _secrets.remember("short")
    assert "short" not in _secrets.known()
    first = "first-" + uuid.uuid4().hex
    _secrets.remember(first)
    for n in range(_secrets.CAPACITY):
        _secrets.remember(f"filler-{n:05d}-{uuid.uuid4().hex}")
    assert first not in _secrets.known()
    assert len(_secrets.known()) == _secrets.CAPACITY
    lengths = [len(s) for s in _secrets.known()]
    assert lengths == sorted(lengths, reverse=True)


def test_every_token_the_process_is_handed_is_kept(mock_authority: MockAuthority) -> None:
    from authsec_crewai.wire import parse_token_body

    body = mock_authority.delegate(str(uuid.uuid4()))
    token = parse_token_body(body, now=time.time())
    assert token.value in _secrets.known()
    with pytest.raises(Exception, match="token"):  # opaque: not a JWT, but still a secret
        parse_token_body({**body, "token": "opaque-token-" + uuid.uuid4().hex}, now=time.time())
    assert any(s.startswith("opaque-token-") for s in _secrets.known())


@pytest.mark.parametrize("held", [3, 300])  # searched one by one, and by prefix
def test_scrub_masks_every_kept_secret_by_value(monkeypatch: pytest.MonkeyPatch, held: int) -> None:
    monkeypatch.setattr(_secrets, "_held", OrderedDict())
    monkeypatch.setattr(_secrets, "_index", None)
    kept = [f"opaque-{n:04d}-{uuid.uuid4().hex}" for n in range(held)]
    for secret in kept:
        _secrets.remember(secret)
    longer = kept[-1] + "-and-more"  # a secret that contains another is masked whole
    _secrets.remember(longer)
    text = f"a={kept[0]}&b={longer};c={kept[0]}{kept[1]} end"
    scrubbed = _secrets.scrub(text)
    assert scrubbed == "a=[redacted]&b=[redacted];c=[redacted][redacted] end"
    assert _secrets.scrub("nothing here, and short") == "nothing here, and short"


@pytest.mark.anyio
async def test_a_client_the_caller_built_gets_the_filter_too(
    fresh_http_loggers: list[logging.Logger], authsec_server: MockServer, client_id: str
) -> None:
    import httpx

    from authsec_crewai.token import TokenRequest
    from authsec_crewai.transports.live import LiveTransport

    authsec_server.authority.delegate(client_id)
    async with httpx.AsyncClient() as client:
        transport = LiveTransport(authsec_server.url, client=client)
        assert all(logger.filters == [] for logger in fresh_http_loggers)  # nothing used yet
        await transport.fetch_token(TokenRequest.create(client_id, ["read:records"]))
    assert all(len(logger.filters) == 1 for logger in fresh_http_loggers)
