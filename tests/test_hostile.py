"""A hostile server: every wait has a deadline, every read a real bound, and no
secret survives an echo.

Each test points the library at a real server on 127.0.0.1 that misbehaves on
purpose: the mock app's faults (dripping bodies, compression bombs, echoes,
404 pages that are not AuthSec's) over uvicorn, or :class:`DripServer`, a raw
socket server that drips even its headers; and cassettes no recorded session
could be. Every async test runs under
asyncio and trio. The hang guards (``anyio.fail_after``) are far above the
deadlines under test: they only turn a hang into a failure.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from _server import MockServer
from cassettekit import UNSAFE_DIR
from click.testing import CliRunner
from structlog.testing import capture_logs

from authsec_crewai import errors
from authsec_crewai.broker import TokenBroker
from authsec_crewai.cassettes import dumps, find_secrets, load, new_document
from authsec_crewai.cassettes.files import MAX_CASSETTE_BYTES
from authsec_crewai.cli import main
from authsec_crewai.fetch import SecureFetcher, error_result, render_result
from authsec_crewai.logging import HTTP_LOGGERS, configure, install_http_log_filter
from authsec_crewai.settings import AuthSecSettings
from authsec_crewai.testing import BUNDLE_PATH, TOKEN_PATH, DripServer, Fault
from authsec_crewai.token import TokenRequest
from authsec_crewai.transports.live import LiveTransport
from authsec_crewai.transports.record import MAX_RECORDED_BODY_BYTES, RecordingTransport
from authsec_crewai.wiring import build_broker, build_fetcher

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("clean_env")]

RECORDS = "/secure-vault/records"
API_TOKEN = "ak-live-0f3c9b7e5d1a4c2b8e6f"
HANG_GUARD = 30.0


def _request(client_id: str) -> TokenRequest:
    return TokenRequest.create(client_id, ("read:records",))


def _transport(url: str, **kwargs: Any) -> LiveTransport:
    kwargs.setdefault("backoff", 0.01)
    kwargs.setdefault("max_backoff", 0.02)
    return LiveTransport(url, **kwargs)


def _live(server: MockServer, client_id: str, **values: Any) -> AuthSecSettings:
    values.setdefault("retry_budget", 0)
    return AuthSecSettings(mode="live", base_url=server.url, client_id=client_id, **values)


@asynccontextmanager
async def _fetcher(settings: AuthSecSettings) -> AsyncIterator[SecureFetcher]:
    async with build_broker(settings) as broker:
        yield build_fetcher(broker, settings)


# --- 1. time: a dripping server is timed out --------------------------------------------------


async def test_dripping_headers_time_out_every_waiter_of_the_token_fetch(client_id: str) -> None:
    with DripServer(interval=0.05) as drip:
        transport = _transport(drip.url, timeout=0.5, retry_budget=1.0)
        async with TokenBroker(transport, client_id=client_id) as broker:
            failures: list[BaseException] = []

            async def wait_for_token() -> None:
                try:
                    await broker.token(["read:records"])
                except errors.AuthSecError as exc:
                    failures.append(exc)

            with anyio.fail_after(HANG_GUARD):
                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        tg.start_soon(wait_for_token)
        await transport.aclose()
    assert len(failures) == 20
    assert all(isinstance(exc, errors.TransportTimeoutError) for exc in failures)
    assert "AUTHSEC_" in str(failures[0])
    assert drip.connections >= 1


async def test_a_dripping_token_body_is_timed_out(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(Fault.dripping(0.05), count=20)
    transport = _transport(authsec_server.url, timeout=0.4, retry_budget=1.0)
    try:
        with anyio.fail_after(HANG_GUARD), pytest.raises(errors.TransportTimeoutError):
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert authsec_server.count(TOKEN_PATH) >= 1


async def test_a_dripping_key_set_is_timed_out(authsec_server: MockServer) -> None:
    authsec_server.faults.add(Fault.dripping(0.05), count=20, path=BUNDLE_PATH)
    transport = _transport(authsec_server.url, timeout=0.4, retry_budget=0.5)
    try:
        with anyio.fail_after(HANG_GUARD), pytest.raises(errors.TransportTimeoutError):
            await transport.fetch_key_set(authsec_server.authority.tenant_id)
    finally:
        await transport.aclose()


async def test_the_retry_budget_includes_the_attempt_in_progress(
    authsec_server: MockServer, client_id: str
) -> None:
    # A 503 asks for a retry just before the budget runs out; the retry then hangs.
    # Without an overall deadline the fetch took budget + timeout.
    authsec_server.faults.add(Fault.http(503, retry_after=2.8))
    authsec_server.faults.add(Fault.slow(4.5))
    transport = _transport(authsec_server.url, timeout=3.0, retry_budget=2.9)
    started = anyio.current_time()
    try:
        with anyio.fail_after(HANG_GUARD), pytest.raises(errors.TransportTimeoutError):
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    elapsed = anyio.current_time() - started
    assert transport.deadline == 3.0
    assert elapsed < transport.deadline + 1.5, elapsed  # it was 5.8 s: budget + timeout
    assert authsec_server.count(TOKEN_PATH) == 2


async def test_dripping_api_calls_do_not_starve_a_normal_call(
    authsec_server: MockServer, client_id: str
) -> None:
    dripping = 120  # more than the 100 slots of the fetcher's request limiter
    settings = _live(authsec_server, client_id, timeout=1.0)
    async with _fetcher(settings) as fetcher:
        await fetcher.fetch("secure-vault/records", "read:records")  # token cached
        authsec_server.faults.add(Fault.dripping(0.1), count=dripping, path=RECORDS)
        outcomes: list[str] = []

        async def dripping_call() -> None:
            try:
                await fetcher.fetch("secure-vault/records", "read:records")
                outcomes.append("ok")
            except errors.ProtectedApiError as exc:
                outcomes.append(exc.kind)

        with anyio.fail_after(HANG_GUARD):
            async with anyio.create_task_group() as tg:
                for _ in range(dripping):
                    tg.start_soon(dripping_call)
                await anyio.sleep(0.3)  # the drips hold every slot now
                normal = await fetcher.fetch("secure-vault/metrics", "read:metrics")
    assert normal.status_code == 200
    assert outcomes.count("api_error") == dripping  # each drip was cut at its deadline


# --- 2. a 404 that is not AuthSec's is a configuration error -----------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault.raw("<html><h1>404 Not Found</h1></html>", status=404, content_type="text/html"),
        Fault.raw(b"", status=404, content_type="text/plain"),
        Fault.json({"message": "no route"}, status=404),
    ],
    ids=["html", "empty", "json-but-not-the-contract"],
)
async def test_a_404_that_is_not_the_contracts_names_the_url(
    authsec_server: MockServer, client_id: str, fault: Fault
) -> None:
    authsec_server.faults.add(fault)
    transport = _transport(authsec_server.url)
    try:
        with pytest.raises(errors.EndpointNotFoundError) as caught:
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert isinstance(caught.value, errors.ConfigurationError)
    assert not isinstance(caught.value, errors.NotDelegatedError)
    message = str(caught.value)
    assert authsec_server.url + TOKEN_PATH in message
    assert "AUTHSEC_BASE_URL" in message
    assert "administrator" not in message


async def test_a_typo_in_the_base_url_is_not_blamed_on_the_administrator(
    authsec_server: MockServer, client_id: str
) -> None:
    transport = _transport(authsec_server.url + "/authsec-typo")
    try:
        with pytest.raises(errors.EndpointNotFoundError, match="AUTHSEC_BASE_URL"):
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()


async def test_the_contracts_own_404_still_means_not_delegated(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.authority.delegate(client_id)
    authsec_server.authority.revoke(client_id)
    transport = _transport(authsec_server.url)
    try:
        with pytest.raises(errors.NotDelegatedError, match="administrator"):
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()


async def test_a_foreign_404_drops_cached_tokens(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.authority.delegate(client_id)
    transport = _transport(authsec_server.url, retry_budget=0)
    ahead = 0.0  # how far the broker's clock runs ahead of the real one

    def clock() -> float:
        return time.time() + ahead

    async with TokenBroker(transport, client_id=client_id, clock=clock) as broker:
        token = await broker.token(["read:records"])
        authsec_server.faults.add(Fault.raw("<html>nope</html>", status=404))
        ahead = token.expires_at_ts - time.time() - 200  # in the advisory window
        assert await broker.token(["read:records"]) is token  # served; refresh in background
        with anyio.fail_after(HANG_GUARD):
            while broker.stats.failures == 0:  # noqa: ASYNC110  # the refresh lands
                await anyio.sleep(0.01)
        assert broker.cached_token(["read:records"]) is None  # fail closed: dropped
        with pytest.raises(errors.EndpointNotFoundError):
            await broker.token(["read:records"])


# --- 3. retries are told, and hopeless ones are not made ---------------------------------------


async def test_each_retry_is_a_warning_with_the_reason_and_the_time_left(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(Fault.http(503), count=2)
    transport = _transport(authsec_server.url, retry_budget=20.0)
    try:
        with capture_logs() as logs:
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    retries = [entry for entry in logs if entry["event"] == "authsec.live.retry"]
    assert len(retries) == 2
    for entry in retries:
        assert entry["log_level"] == "warning"
        assert "503" in entry["reason"]
        assert 0 < entry["budget_left"] <= 20.0


async def test_a_refused_connection_to_a_host_that_never_answered_fails_fast(
    client_id: str,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = _transport(f"http://127.0.0.1:{port}", retry_budget=60.0, max_attempts=50)
    try:
        with anyio.fail_after(HANG_GUARD), pytest.raises(errors.UnreachableError) as caught:
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert isinstance(caught.value, errors.TransportError)
    assert not caught.value.retryable
    assert "refused" in str(caught.value)
    assert "AUTHSEC_BASE_URL" in str(caught.value)


async def test_a_host_that_answered_before_is_still_retried(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.authority.delegate(client_id)
    transport = _transport(authsec_server.url, retry_budget=0.5)
    try:
        await transport.fetch_token(_request(client_id))
        transport.base_url = transport.base_url.rsplit(":", 1)[0] + ":1"  # now gone
        with capture_logs() as logs, pytest.raises(errors.TransportError) as caught:
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert not isinstance(caught.value, errors.UnreachableError)
    assert any(entry["event"] == "authsec.live.retry" for entry in logs)


@pytest.mark.parametrize(
    ("cause", "fails_fast"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), True),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"), False),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (ConnectionResetError(104, "Connection reset by peer"), False),
    ],
    ids=["no-such-name", "resolver-down", "refused", "reset"],
)
def test_only_a_missing_name_or_a_refusal_is_hopeless(
    cause: BaseException, fails_fast: bool
) -> None:
    from authsec_crewai.transports.live import _never_reachable

    error = httpx.ConnectError("connect failed")
    error.__cause__ = BaseExceptionGroup("all attempts failed", [cause])
    assert (_never_reachable(error) is not None) is fails_fast


# --- 4. compression bombs ----------------------------------------------------------------------


async def _peak_memory_of(coroutine: Any) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        try:
            await coroutine
            error = None
        except BaseException as exc:  # the caller asserts what it was
            error = exc
        return tracemalloc.get_traced_memory()[1] - before, error
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compression_bomb_from_the_token_endpoint_stays_under_the_cap(
    authsec_server: MockServer, client_id: str, encoding: str
) -> None:
    transport = _transport(authsec_server.url)
    await transport.fetch_token(_request(client_id))  # the client (and its TLS context) made
    authsec_server.faults.add(Fault.bomb(64 * 1024 * 1024, encoding=encoding))
    try:
        peak, error = await _peak_memory_of(transport.fetch_token(_request(client_id)))
    finally:
        await transport.aclose()
    assert isinstance(error, errors.InvalidTokenResponseError)
    assert "larger than" in str(error)
    assert peak < 4 * transport.max_body_bytes, peak  # it was the whole 64 MiB


async def test_concurrent_compression_bombs_from_the_api_stay_under_the_cap(
    authsec_server: MockServer, client_id: str
) -> None:
    settings = _live(authsec_server, client_id, max_response_bytes=256 * 1024)
    async with _fetcher(settings) as fetcher:
        await fetcher.fetch("secure-vault/records", "read:records")  # token cached
        authsec_server.faults.add(Fault.bomb(64 * 1024 * 1024), count=8, path=RECORDS)
        kinds: list[str] = []

        async def bombed_call() -> None:
            try:
                await fetcher.fetch("secure-vault/records", "read:records")
            except errors.AuthSecError as exc:
                kinds.append(exc.kind)

        async def eight_calls() -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(bombed_call)

        peak, error = await _peak_memory_of(eight_calls())
    assert error is None
    assert kinds == ["response_too_large"] * 8
    assert peak < 8 * 4 * settings.max_response_bytes, peak  # it was 8 x 64 MiB


async def test_a_compression_bomb_is_not_recorded_and_stays_under_the_recorders_cap(
    authsec_server: MockServer, client_id: str, tmp_path: Path
) -> None:
    recording = RecordingTransport(_transport(authsec_server.url), tmp_path / "bomb.json")
    async with TokenBroker(recording, client_id=client_id) as broker:
        fetcher = SecureFetcher(
            broker, api_base_url=authsec_server.url, api_transport=recording.api()
        )
        await fetcher.fetch("secure-vault/records", "read:records")
        authsec_server.faults.add(Fault.bomb(256 * 1024 * 1024), path=RECORDS)
        peak, error = await _peak_memory_of(fetcher.fetch("secure-vault/records", "read:records"))
    assert isinstance(error, errors.CassetteError)
    assert "larger than" in str(error)
    assert peak < 1.5 * MAX_RECORDED_BODY_BYTES, peak  # it was the whole 256 MiB


async def test_an_encoding_that_was_not_asked_for_is_refused(
    authsec_server: MockServer, client_id: str
) -> None:
    good = json.dumps(authsec_server.authority.delegate(client_id)).encode()
    authsec_server.faults.add(
        Fault(status=200, body=good, encoding="br"),
    )
    transport = _transport(authsec_server.url)
    try:
        with pytest.raises(errors.InvalidTokenResponseError, match="'br'"):
            await transport.fetch_token(_request(client_id))
        assert authsec_server.requests[-1].headers["accept-encoding"] == "gzip, deflate"
    finally:
        await transport.aclose()


async def test_a_small_gzip_answer_is_still_read(
    authsec_server: MockServer, client_id: str
) -> None:
    import gzip

    answer = authsec_server.authority.delegate(client_id)
    authsec_server.faults.add(Fault(status=200, body=gzip.compress(json.dumps(answer).encode()),
                                    encoding="gzip"))  # fmt: skip
    transport = _transport(authsec_server.url)
    try:
        token = await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert token.value == answer["token"]


# --- 5. cassettes a recorded session can never be ---------------------------------------------


def _cassette_text(*interactions: dict[str, Any]) -> str:
    return dumps(
        new_document(recorded_at=1_800_000_000.0, settings={"mode": "mock"},
                     interactions=list(interactions))
    )  # fmt: skip


def _api_interaction(path: str = "/secure-vault/records", body: Any = None) -> dict[str, Any]:
    return {
        "kind": "api",
        "offset": 0.5,
        "request": {"method": "GET", "path": path, "query": [], "body": None},
        "response": {"status": 200, "headers": {}, "body": body or {"json": {"ok": True}}},
    }


@pytest.mark.parametrize("depth", [100_000, 5_000, 500])
def test_a_deeply_nested_cassette_is_a_cassette_error(tmp_path: Path, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    text = _cassette_text(_api_interaction(body={"json": "NESTED"})).replace('"NESTED"', nested)
    path = tmp_path / "deep.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(errors.CassetteError, match="nest"):
        load(path)


def test_a_huge_cassette_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    path.write_text(_cassette_text(_api_interaction()), encoding="utf-8")
    with path.open("r+b") as handle:  # a sparse file: large on paper, cheap on disk
        handle.truncate(MAX_CASSETTE_BYTES + 1)
    tracemalloc.start()
    try:
        with pytest.raises(errors.CassetteError, match="larger than"):
            load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, peak


# --- 6. an echoed token comes back through JSON escapes ----------------------------------------


async def test_a_token_echoed_with_json_escapes_is_not_in_the_result(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(
        Fault.echoing('{"you sent": "{bearer}", "header": "{authorization}"}', escaped=True),
        path=RECORDS,
    )
    async with _fetcher(_live(authsec_server, client_id)) as fetcher:
        result = await fetcher.fetch("secure-vault/records", "read:records")
        token = await fetcher.broker.token(["read:records"])
    dumped = json.dumps(result.data) + json.dumps(result.to_dict()) + repr(result)
    assert token.value not in dumped
    assert token.value.split(".")[0] not in dumped
    assert f"jwt:{token.fingerprint}" in result.data["you sent"]


async def test_the_api_token_echoed_by_the_protected_api_is_not_in_the_result(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(
        Fault.echoing('{"echo": "' + API_TOKEN.replace("-", "\\u002d") + '"}'),
        path=RECORDS,
    )
    settings = _live(authsec_server, client_id, api_token=API_TOKEN)
    async with _fetcher(settings) as fetcher:
        result = await fetcher.fetch("secure-vault/records", "read:records")
    assert API_TOKEN not in json.dumps(result.data)


async def test_a_recorded_echo_with_json_escapes_keeps_no_signature(
    authsec_server: MockServer, client_id: str, tmp_path: Path
) -> None:
    path = tmp_path / "echo.json"
    authsec_server.faults.add(Fault.echoing('{"you sent": "{bearer}"}', escaped=True), path=RECORDS)
    recording = RecordingTransport(_transport(authsec_server.url), path)
    async with TokenBroker(recording, client_id=client_id) as broker:
        fetcher = SecureFetcher(
            broker, api_base_url=authsec_server.url, api_transport=recording.api()
        )
        await fetcher.fetch("secure-vault/records", "read:records")
        token = await broker.token(["read:records"])
    text = path.read_text(encoding="utf-8")
    assert "you sent" in text
    decoded = json.dumps(_decode_text_bodies(json.loads(text)), ensure_ascii=False)
    assert token.value.rsplit(".", 1)[1] not in decoded  # the signature is gone
    assert find_secrets(load(path).document) == []


def _decode_text_bodies(value: Any) -> Any:
    """Every ``{"text": ...}`` body that holds JSON, decoded (escapes and all)."""
    if isinstance(value, dict):
        if set(value) == {"text"} and isinstance(value["text"], str):
            try:
                return json.loads(value["text"])
            except ValueError:
                return value
        return {k: _decode_text_bodies(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_text_bodies(v) for v in value]
    return value


def test_cassette_verify_finds_a_token_hidden_behind_json_escapes(
    tmp_path: Path, mock_authority: Any, client_id: str
) -> None:
    jwt = mock_authority.delegate(client_id)["token"]
    hidden = json.dumps({"echo": jwt}).replace(".", "\\u002e")
    folder = tmp_path / UNSAFE_DIR
    folder.mkdir()
    path = folder / "escaped.json"
    path.write_text(_cassette_text(_api_interaction(body={"text": hidden})), encoding="utf-8")
    assert jwt not in path.read_text(encoding="utf-8")
    findings = find_secrets(load(path).document)
    assert any("signature" in finding for finding in findings), findings
    result = CliRunner().invoke(main, ["cassette", "verify", str(path)])
    assert result.exit_code == 1
    assert "no secret found" not in result.output


# --- 7. the API token echoed back by the token server ------------------------------------------


@pytest.mark.parametrize("template", ["{bearer}", "{authorization}"], ids=["bare", "bearer"])
async def test_an_echoed_api_token_is_in_no_message_result_or_log(
    authsec_server: MockServer, client_id: str, template: str
) -> None:
    body = json.dumps({"error": "unauthorized", "details": f"bad credential {template}"})
    authsec_server.faults.add(Fault.echoing(body, status=401), count=2)
    settings = _live(authsec_server, client_id, api_token=API_TOKEN)
    with capture_logs() as logs:
        async with _fetcher(settings) as fetcher:
            with pytest.raises(errors.AuthenticationError) as caught:
                await fetcher.fetch("secure-vault/records", "read:records")
    assert authsec_server.requests[0].headers["authorization"] == f"Bearer {API_TOKEN}"
    texts = [str(caught.value), render_result(error_result(caught.value)), repr(logs)]
    for text in texts:
        assert API_TOKEN not in text
    assert "bad credential" in str(caught.value)


async def test_an_echoed_api_token_is_not_in_a_retry_log(
    authsec_server: MockServer, client_id: str
) -> None:
    body = json.dumps({"error": "overloaded", "details": "retry with {bearer}"})
    authsec_server.faults.add(Fault.echoing(body, status=503))
    authsec_server.authority.delegate(client_id)
    transport = _transport(authsec_server.url, api_token=API_TOKEN, retry_budget=5.0)
    try:
        with capture_logs() as logs:
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert any(entry["event"] == "authsec.live.retry" for entry in logs)
    assert API_TOKEN not in repr(logs)


@pytest.mark.parametrize("where", ["expires_at", "content-type"])
async def test_an_api_token_echoed_in_a_200_answer_is_in_no_message(
    authsec_server: MockServer, client_id: str, where: str
) -> None:
    good = authsec_server.authority.delegate(client_id)
    if where == "expires_at":
        fault = Fault.echoing(json.dumps({**good, "expires_at": "{bearer}"}))
    else:
        fault = Fault(status=200, echo="{bearer}", echo_header="content-type")
    authsec_server.faults.add(fault)
    transport = _transport(authsec_server.url, api_token=API_TOKEN)
    try:
        with pytest.raises(errors.InvalidTokenResponseError) as caught:
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    assert API_TOKEN not in str(caught.value)
    assert API_TOKEN[:12] not in str(caught.value)


# --- 8. mask first, then cut -------------------------------------------------------------------


async def test_a_token_at_the_cut_of_a_token_error_is_masked(
    authsec_server: MockServer, client_id: str
) -> None:
    jwt = authsec_server.authority.delegate(client_id)["token"]
    details = "x" * 150 + " " + jwt
    authsec_server.faults.add(Fault.json({"error": "bad", "details": details}, status=400))
    transport = _transport(authsec_server.url)
    try:
        with pytest.raises(errors.InvalidClientIdError) as caught:
            await transport.fetch_token(_request(client_id))
    finally:
        await transport.aclose()
    header_and_claims_prefix = jwt[:40]
    assert header_and_claims_prefix not in str(caught.value)


async def test_a_token_at_the_cut_of_an_api_error_is_masked(
    authsec_server: MockServer, client_id: str
) -> None:
    async with _fetcher(_live(authsec_server, client_id)) as fetcher:
        token = await fetcher.broker.token(["read:records"])
        # another JWT than ours: the scrub must recognise it by its shape
        other = authsec_server.authority.delegate(client_id)["token"]
        details = "y" * 130 + " " + other  # the cut at 200 falls inside the JWT
        authsec_server.faults.add(
            Fault.json({"error": "boom", "details": details}, status=500), path=RECORDS
        )
        with pytest.raises(errors.ProtectedApiError) as caught:
            await fetcher.fetch("secure-vault/records", "read:records")
    assert other[:40] not in str(caught.value)
    assert token.value[:40] not in str(caught.value)


# --- 9. httpx/httpcore debug logs ---------------------------------------------------------------


@pytest.fixture
def http_log() -> Iterator[io.StringIO]:
    """The httpx/httpcore stdlib loggers at DEBUG into a string; all restored after
    (levels, handlers, and any filter a test installed)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    loggers = [logging.getLogger(name) for name in HTTP_LOGGERS]
    saved = [(logger.level, list(logger.filters)) for logger in loggers]
    for logger in loggers[:2]:  # httpx, httpcore: the others propagate to httpcore
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
    try:
        yield stream
    finally:
        for logger, (level, filters) in zip(loggers, saved, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.filters[:] = filters


async def test_http_debug_logs_do_not_carry_an_echoed_token(
    authsec_server: MockServer, client_id: str, http_log: io.StringIO
) -> None:
    configure(level="DEBUG", stream=io.StringIO())  # what an application (or the CLI) does
    authsec_server.faults.add(
        Fault(status=401, echo='Bearer error="invalid_token", token="{bearer}"',
              echo_header="www-authenticate"),
        count=2, path=RECORDS,
    )  # fmt: skip
    async with _fetcher(_live(authsec_server, client_id)) as fetcher:
        token = await fetcher.broker.token(["read:records"])
        with pytest.raises(errors.ProtectedApiError):  # 401, and 401 again after a retry
            await fetcher.fetch("secure-vault/records", "read:records")
    text = http_log.getvalue()
    assert "www-authenticate" in text  # httpcore did log the headers
    assert token.value not in text
    assert token.value[:40] not in text


def test_the_filter_masks_known_secrets_in_any_http_log_record(http_log: io.StringIO) -> None:
    install_http_log_filter(secrets=[API_TOKEN])
    for name in HTTP_LOGGERS:
        logging.getLogger(name).warning("headers %r", [(b"x-echo", API_TOKEN.encode())])
    assert API_TOKEN not in http_log.getvalue()
    assert http_log.getvalue().count("[redacted]") == len(HTTP_LOGGERS)
    install_http_log_filter()  # again: replaces the filter, does not stack a second one
    assert all(len(logging.getLogger(name).filters) == 1 for name in HTTP_LOGGERS)


# --- 10. terminal escapes in cassette show -------------------------------------------------------


def test_cassette_show_escapes_control_characters(tmp_path: Path) -> None:
    hostile = "/x\x1b[2J\x1b]0;pwned\x07\u202e[bold red]markup[/]"
    path = tmp_path / "terminal.json"
    path.write_text(_cassette_text(_api_interaction(path=hostile)), encoding="utf-8")
    result = CliRunner().invoke(main, ["cassette", "show", str(path)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\u202e" not in result.output
    assert "\\x1b[2J" in result.output and "\\x07" in result.output
    assert "[bold red]markup[/]" in result.output  # shown, not interpreted


# --- 11. the signed audience is held to the answer's -------------------------------------------


async def test_a_token_whose_signed_audience_differs_from_the_answer_is_refused(
    authsec_server: MockServer, client_id: str
) -> None:
    answer = authsec_server.authority.delegate(client_id, audience=["payments-api"])
    authsec_server.faults.add(Fault.json({**answer, "audience": ["authsec-api"]}))
    transport = _transport(authsec_server.url)
    async with TokenBroker(transport, client_id=client_id) as broker:  # no AUTHSEC_AUDIENCE
        with pytest.raises(errors.TokenVerificationError, match="audience"):
            await broker.token(["read:records"])
    honest = _transport(authsec_server.url)  # the same token, honestly described
    async with TokenBroker(honest, client_id=client_id) as broker:
        assert (await broker.token(["read:records"])).audience == ("payments-api",)
