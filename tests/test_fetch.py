"""SecureFetcher: input guards before any traffic, and the protected-API call's outcomes.

Live-mode tests run against the mock AuthSec + vault app over a real loopback
socket, and prove "no request was made" by the server's own counters (token
endpoint and key bundle included). Nothing here imports crewai.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
import structlog
from _server import MockServer
from click.testing import CliRunner

from authsec_crewai import errors
from authsec_crewai.broker import TokenBroker
from authsec_crewai.cli import main
from authsec_crewai.fetch import (
    MAX_ENDPOINT_CHARS,
    FetchResult,
    SecureFetcher,
    error_result,
    is_retryable,
    normalize_params,
    render_result,
    validate_endpoint,
)
from authsec_crewai.redact import fingerprint
from authsec_crewai.settings import DEMO_CLIENT_ID, AuthSecSettings
from authsec_crewai.testing import TOKEN_PATH, Fault
from authsec_crewai.transports import MockTransport, TransportInfo
from authsec_crewai.wiring import build_broker, build_fetcher

RECORDS = "/secure-vault/records"

HOSTILE_ENDPOINTS: list[str] = [
    # absolute URLs and other schemes
    "http://evil.example/steal",
    "https://evil.example",
    "HTTPS://EVIL.EXAMPLE/x",
    "ftp://evil.example/x",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "data:text/plain,hi",
    "localhost:8080/secure-vault/records",
    # network-path references and backslashes
    "//evil.example/x",
    "///evil.example",
    "\\\\evil.example\\x",
    "/\\evil.example",
    "\\/evil.example",
    "secure-vault\\records",
    "secure-vault\\..\\admin",
    # user-info
    "@evil.example/x",
    "secure-vault@evil.example",
    "user:pass@evil.example/x",
    # traversal
    "..",
    "../admin",
    "secure-vault/../admin",
    "secure-vault/./records",
    "secure-vault/..",
    ".../x",
    # percent-encoded traversal
    "%2e%2e/admin",
    "%2E%2E/admin",
    ".%2e/admin",
    "secure-vault/%2e%2e/admin",
    "%2e%2e%2fadmin",
    "secure-vault%2f..%2fadmin",
    # double- and triple-encoded
    "%252e%252e/admin",
    "%252e%252e%252fadmin",
    "%25252e%25252e/admin",
    "%ef%bc%8e%ef%bc%8e/admin",  # percent-encoded fullwidth dots
    # Unicode look-alikes of '.' and '/'
    "\uff0e\uff0e/admin",  # fullwidth full stop
    "\u2024\u2024/admin",  # one dot leader
    "\ufe52\ufe52/admin",  # small full stop
    "secure-vault\uff0f..\uff0fadmin",  # fullwidth solidus
    "\uff0f\uff0fevil.example",
    "secure-vault\u2215records",  # division slash
    "secure-vault\u3002\u3002/admin",  # ideographic full stop
    # control characters and whitespace tricks
    "secure-vault/records\x00",
    "secure-vault/records\r\nX-Evil: 1",
    "secure-vault/\trecords",
    " secure-vault/records",
    "secure-vault/records ",
    "secure-vault/\u200brecords",  # zero-width space
    "secure-vault/\u202erecords",  # right-to-left override
    "secure-vault/records\u2028",  # line separator
    "secure-vault/records%0d%0aHost:%20evil.example",
    "secure-vault/records\u00a0",  # no-break space
    # query and fragment smuggling
    "secure-vault/records?scope=admin",
    "secure-vault/records#frag",
    "secure-vault/records%3fscope=admin",
    "secure-vault/records%23frag",
    "secure-vault/records\uff1fscope=admin",  # fullwidth question mark
    "secure-vault/records\uff03frag",  # fullwidth number sign
    # over-long paths
    "a/" * 600,
    "secure-vault/" + "x" * 2000,
    "/".join(["a"] * 100),
    # empty, odd and encoded
    "",
    "/",
    "secure-vault//records",
    "secure-vault/%72ecords",
    "secure-vault/r\u00e9cords",
]

SAFE_ENDPOINTS = {
    "secure-vault/records": "secure-vault/records",
    "/secure-vault/records": "secure-vault/records",
    "secure-vault/records/": "secure-vault/records",
    "v1/items/item-1.json": "v1/items/item-1.json",
    "a/b~c/d_e": "a/b~c/d_e",
}


pytestmark = pytest.mark.usefixtures("clean_env")


def live(server: MockServer, client_id: str, **values: Any) -> AuthSecSettings:
    values.setdefault("retry_budget", 0)
    return AuthSecSettings(mode="live", base_url=server.url, client_id=client_id, **values)


@asynccontextmanager
async def fetcher_for(settings: AuthSecSettings) -> AsyncIterator[SecureFetcher]:
    async with build_broker(settings) as broker:
        yield build_fetcher(broker, settings)


def total(server: MockServer) -> int:
    return sum(server.counts.values())


# --- endpoint guards (pure) ---------------------------------------------------------------------


def test_the_hostile_corpus_is_large_and_distinct() -> None:
    assert len(HOSTILE_ENDPOINTS) >= 40
    assert len(set(HOSTILE_ENDPOINTS)) == len(HOSTILE_ENDPOINTS)


@pytest.mark.parametrize("endpoint", HOSTILE_ENDPOINTS, ids=lambda e: repr(e)[:40])
def test_validate_endpoint_refuses_each_hostile_endpoint(endpoint: str) -> None:
    with pytest.raises(errors.EndpointRefusedError) as caught:
        validate_endpoint(endpoint)
    message = str(caught.value)
    assert "refused" in message and "secure-vault/records" in message  # says what to do
    assert len(message) < 600
    assert not any(ord(c) < 0x20 for c in message)  # the input is shown escaped


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ("http://evil.example/x", "absolute URL"),
        ("//evil.example/x", "network-path"),
        ("%2e%2e/admin", "once percent-escapes are decoded"),
        ("%252e%252e/admin", "once percent-escapes are decoded"),
        ("\uff0e\uff0e/admin", "once percent-escapes are decoded and Unicode is normalised"),
        ("secure-vault\u2215records", "look-alike of '/'"),
        ("secure-vault/records?x=1", "pass query parameters in params"),
        ("secure-vault/records#x", "fragment"),
        ("secure-vault/\u200brecords", "U+200B"),
        ("a/" * 600, f"longer than {MAX_ENDPOINT_CHARS}"),
        ("../x", "path traversal"),
        ("a@b", "'@'"),
    ],
)
def test_refusals_say_why(endpoint: str, reason: str) -> None:
    with pytest.raises(errors.EndpointRefusedError, match=re.escape(reason)):
        validate_endpoint(endpoint)


@pytest.mark.parametrize(("endpoint", "path"), SAFE_ENDPOINTS.items())
def test_safe_endpoints_are_normalised(endpoint: str, path: str) -> None:
    assert validate_endpoint(endpoint) == path


def test_non_strings_are_refused() -> None:
    for value in (None, 42, ["secure-vault/records"], b"secure-vault/records"):
        with pytest.raises(errors.EndpointRefusedError, match="not a string"):
            validate_endpoint(value)


def test_endpoint_allowlist_matches_whole_segments() -> None:
    prefixes = ["secure-vault"]
    assert validate_endpoint("secure-vault/records", allowed_prefixes=prefixes)
    assert validate_endpoint("secure-vault", allowed_prefixes=prefixes)
    for outside in ("secure-vault-admin/x", "secure-vaultx", "admin/secure-vault"):
        with pytest.raises(errors.EndpointRefusedError, match="AUTHSEC_ALLOWED_ENDPOINTS"):
            validate_endpoint(outside, allowed_prefixes=prefixes)
    narrow = ["secure-vault/records/"]
    assert validate_endpoint("secure-vault/records/page-2", allowed_prefixes=narrow)
    with pytest.raises(errors.EndpointRefusedError):
        validate_endpoint("secure-vault/metrics", allowed_prefixes=narrow)
    with pytest.raises(errors.EndpointRefusedError, match="allowed: none"):
        validate_endpoint("secure-vault/records", allowed_prefixes=[])


def test_params_accept_the_shapes_people_and_models_send() -> None:
    expected = [("page", "2"), ("full", "true")]
    assert normalize_params({"page": 2, "full": True}) == expected
    assert normalize_params([("page", "2"), ("full", True)]) == expected
    assert normalize_params([{"name": "page", "value": 2}, {"name": "full", "value": True}]) == (
        expected
    )
    assert normalize_params(None) == []
    for bad in (
        "page=2",
        [{"name": "page"}],
        {"page": {"nested": 1}},
        {"": "x"},
        {"a": "x" * 5000},
    ):
        with pytest.raises(errors.EndpointRefusedError):
            normalize_params(bad)
    with pytest.raises(errors.EndpointRefusedError, match="too many"):
        normalize_params({f"p{i}": i for i in range(51)})


# --- results and errors -------------------------------------------------------------------------


def test_result_shapes() -> None:
    result = FetchResult(
        "secure-vault/records", "read:records", "GET", 200, {"a": 1}, None, "f", None
    )
    assert result.to_dict() == {
        "status": "ok",
        "endpoint": "secure-vault/records",
        "scope": "read:records",
        "data": {"a": 1},
    }
    assert render_result(result.to_dict()).startswith('{"status": "ok", "endpoint": ')
    assert render_result(result.to_dict(), indent=2).startswith('{\n  "status": "ok",')
    refused = error_result(errors.EndpointRefusedError("no"))
    assert refused == {
        "status": "error",
        "error": "endpoint_refused",
        "message": "no",
        "retryable": False,
    }
    assert error_result(errors.ProtectedApiError("x", status_code=503))["retryable"] is True
    assert error_result(errors.ProtectedApiError("x", status_code=None))["retryable"] is True
    assert error_result(errors.ProtectedApiError("x", status_code=404))["retryable"] is False
    assert error_result(errors.TransportTimeoutError("slow"))["retryable"] is True
    assert error_result(errors.NotDelegatedError("revoked"))["retryable"] is False
    odd = error_result(RuntimeError("boom"))
    assert odd["error"] == "internal_error" and odd["retryable"] is False
    assert not is_retryable(ValueError())


def test_rendered_results_mask_anything_token_shaped() -> None:
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    text = render_result({"status": "ok", "data": {"echo": jwt, "auth": f"Bearer {jwt}"}})
    assert jwt not in text and "jwt:" in text


# --- live mode over loopback: refusals before any request ---------------------------------------


@pytest.mark.anyio
async def test_hostile_endpoints_reach_no_server_and_fetch_no_token(
    authsec_server: MockServer, client_id: str
) -> None:
    settings = live(authsec_server, client_id)
    async with fetcher_for(settings) as fetcher:
        for endpoint in HOSTILE_ENDPOINTS:
            with pytest.raises(errors.EndpointRefusedError):
                await fetcher.fetch(endpoint, "read:records")
        assert total(authsec_server) == 0, authsec_server.counts
        assert fetcher.broker.stats.fetches == 0
        # the counters are live: one good call shows up at once
        await fetcher.fetch("secure-vault/records", "read:records")
    assert authsec_server.count(TOKEN_PATH) == 1
    assert authsec_server.count(RECORDS) == 1


@pytest.mark.anyio
async def test_method_not_allowed_is_refused_before_any_request(
    authsec_server: MockServer, client_id: str
) -> None:
    async with fetcher_for(live(authsec_server, client_id)) as fetcher:
        for method in ("POST", "DELETE", "get; rm", ""):
            with pytest.raises(errors.EndpointRefusedError, match="AUTHSEC_ALLOWED_METHODS"):
                await fetcher.fetch("secure-vault/records", "read:records", method=method)
    assert total(authsec_server) == 0
    widened = live(authsec_server, client_id, allowed_methods=["GET", "POST"])
    async with fetcher_for(widened) as fetcher:
        with pytest.raises(errors.ProtectedApiError) as caught:  # the vault only serves GET
            await fetcher.fetch("secure-vault/records", "read:records", method="post")
    assert caught.value.status_code == 405
    assert authsec_server.count(RECORDS) == 1


@pytest.mark.anyio
async def test_scope_outside_the_allowlist_is_refused_without_any_request(
    authsec_server: MockServer, client_id: str
) -> None:
    settings = live(authsec_server, client_id, allowed_scopes=["read:records"])
    async with fetcher_for(settings) as fetcher:
        with pytest.raises(errors.ScopeRefusedError, match="AUTHSEC_ALLOWED_SCOPES"):
            await fetcher.fetch("secure-vault/metrics", "read:metrics")
        with pytest.raises(errors.ScopeRefusedError, match="malformed"):
            await fetcher.fetch("secure-vault/records", 'read:"records"')
        with pytest.raises(errors.ScopeRefusedError):
            await fetcher.fetch("secure-vault/records", None)  # type: ignore[arg-type]
    assert total(authsec_server) == 0
    nothing = live(authsec_server, client_id, allowed_scopes="[]")
    async with fetcher_for(nothing) as fetcher:
        with pytest.raises(errors.ScopeRefusedError, match="allowed: none"):
            await fetcher.fetch("secure-vault/records", "read:records")
    assert total(authsec_server) == 0


@pytest.mark.anyio
async def test_scope_the_token_lacks_is_refused_without_calling_the_api(
    authsec_server: MockServer, client_id: str
) -> None:
    async with fetcher_for(live(authsec_server, client_id)) as fetcher:
        with pytest.raises(errors.InsufficientScopeError, match="read:audit") as caught:
            await fetcher.fetch("secure-vault/audit-log", "read:audit")
    assert "without calling the API" in str(caught.value)
    assert authsec_server.count(TOKEN_PATH) == 1  # the token had to be asked for
    assert authsec_server.count("/secure-vault/audit-log") == 0


# --- live mode over loopback: the call ----------------------------------------------------------


@pytest.mark.anyio
async def test_a_call_sends_the_bearer_token_and_the_params(
    authsec_server: MockServer, client_id: str
) -> None:
    async with fetcher_for(live(authsec_server, client_id)) as fetcher:
        result = await fetcher.fetch(
            "/secure-vault/records", "read:records", params={"page": 2, "q": "a b&c"}
        )
    stored = authsec_server.authority.token_answer(client_id)[1]
    assert result.status_code == 200 and result.attempts == 1
    assert result.data["count"] == 6 and result.endpoint == "secure-vault/records"
    assert result.fingerprint == fingerprint(stored["token"])
    sent = [r for r in authsec_server.requests if r.path == RECORDS]
    assert len(sent) == 1
    assert sent[0].headers["authorization"] == f"Bearer {stored['token']}"
    assert sent[0].query == {"page": "2", "q": "a b&c"}
    assert stored["token"] not in repr(result)


@pytest.mark.anyio
async def test_api_base_url_with_a_path_prefix(authsec_server: MockServer, client_id: str) -> None:
    settings = live(authsec_server, client_id, api_base_url=f"{authsec_server.url}/secure-vault/")
    async with fetcher_for(settings) as fetcher:
        result = await fetcher.fetch("metrics", "read:metrics")
    assert result.data["quarter"] == "2026-Q2"
    assert authsec_server.count("/secure-vault/metrics") == 1


@pytest.mark.anyio
async def test_401_drops_the_token_and_retries_once_with_a_fresh_one(
    authsec_server: MockServer, client_id: str
) -> None:
    async with fetcher_for(live(authsec_server, client_id)) as fetcher:
        first = await fetcher.broker.token("read:records")
        authsec_server.authority.delegate(client_id)  # the server now holds a new token
        authsec_server.faults.add(Fault.http(401), path=RECORDS)
        result = await fetcher.fetch("secure-vault/records", "read:records")
    assert result.attempts == 2 and result.data["count"] == 6
    assert result.fingerprint != first.fingerprint
    sent = [r.headers["authorization"] for r in authsec_server.requests if r.path == RECORDS]
    assert len(sent) == 2 and sent[0] == f"Bearer {first.value}" and sent[1] != sent[0]
    assert authsec_server.count(TOKEN_PATH) == 2


@pytest.mark.anyio
async def test_a_second_401_is_an_error_after_exactly_one_retry(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(Fault.http(401), count=5, path=RECORDS)
    async with fetcher_for(live(authsec_server, client_id)) as fetcher:
        with pytest.raises(errors.ProtectedApiError, match="even after a fresh token") as caught:
            await fetcher.fetch("secure-vault/records", "read:records")
    assert caught.value.status_code == 401 and not is_retryable(caught.value)
    assert authsec_server.count(RECORDS) == 2


@pytest.mark.anyio
async def test_403_is_insufficient_scope(authsec_server: MockServer, client_id: str) -> None:
    async with fetcher_for(live(authsec_server, client_id)) as fetcher:
        with pytest.raises(errors.InsufficientScopeError, match="read:incidents"):
            await fetcher.fetch("secure-vault/incidents", "read:records")
    assert authsec_server.count("/secure-vault/incidents") == 1


@pytest.mark.anyio
@pytest.mark.parametrize("declare_length", [False, True])
async def test_a_5_mb_answer_is_capped(
    authsec_server: MockServer, client_id: str, declare_length: bool
) -> None:
    authsec_server.faults.add(
        Fault.oversized(5 * 1024 * 1024, declare_length=declare_length), path=RECORDS
    )
    started = time.monotonic()
    async with fetcher_for(live(authsec_server, client_id)) as fetcher:
        with pytest.raises(errors.ResponseTooLargeError, match="1048576 bytes"):
            await fetcher.fetch("secure-vault/records", "read:records")
        # the connection pool is still usable afterwards
        assert (await fetcher.fetch("secure-vault/metrics", "read:metrics")).status_code == 200
    assert time.monotonic() - started < 5


@pytest.mark.anyio
async def test_the_cap_is_configurable(authsec_server: MockServer, client_id: str) -> None:
    settings = live(authsec_server, client_id, max_response_bytes=100)
    async with fetcher_for(settings) as fetcher:
        with pytest.raises(errors.ResponseTooLargeError, match="100 bytes"):
            await fetcher.fetch("secure-vault/metrics", "read:metrics")


@pytest.mark.anyio
@pytest.mark.parametrize(
    "target", ["http://localhost:{port}/stolen", "/stolen", "//evil.example/x"]
)
async def test_redirects_are_reported_not_followed(
    authsec_server: MockServer, client_id: str, target: str
) -> None:
    port = httpx.URL(authsec_server.url).port
    location = target.format(port=port)
    authsec_server.faults.add(Fault(status=302, headers=(("location", location),)), path=RECORDS)
    async with fetcher_for(live(authsec_server, client_id)) as fetcher:
        with pytest.raises(errors.ProtectedApiError, match="redirects are not followed") as caught:
            await fetcher.fetch("secure-vault/records", "read:records")
    assert caught.value.status_code == 302
    assert authsec_server.count("/stolen") == 0
    assert authsec_server.count(RECORDS) == 1


@pytest.mark.anyio
async def test_unknown_endpoint_is_a_404_error(authsec_server: MockServer, client_id: str) -> None:
    async with fetcher_for(live(authsec_server, client_id)) as fetcher:
        with pytest.raises(errors.ProtectedApiError, match="404") as caught:
            await fetcher.fetch("secure-vault/nothing-here", "read:records")
    assert caught.value.status_code == 404 and not is_retryable(caught.value)


# --- live failures never become mock data -------------------------------------------------------


def _closed_port_url() -> str:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


@pytest.mark.anyio
async def test_server_down_is_an_error_not_mock_data(client_id: str) -> None:
    settings = AuthSecSettings(
        mode="live", base_url=_closed_port_url(), client_id=client_id, retry_budget=0
    )
    async with fetcher_for(settings) as fetcher:
        for _ in range(2):  # and the second call does not switch to mock either
            with pytest.raises(errors.TransportError) as caught:
                await fetcher.fetch("secure-vault/records", "read:records")
            result = error_result(caught.value)
            assert result["status"] == "error" and "data" not in result
            # nothing ever answered there: said at once, and not worth retrying
            assert result["error"] == "unreachable"
            assert result["retryable"] is False
            assert "Amara" not in json.dumps(result)


@pytest.mark.anyio
async def test_server_errors_are_errors_not_mock_data(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(Fault.http(500))  # the token endpoint
    async with fetcher_for(live(authsec_server, client_id, failure_memory=0)) as fetcher:
        with pytest.raises(errors.ServerError):
            await fetcher.fetch("secure-vault/records", "read:records")
        authsec_server.faults.add(Fault.http(500), path=RECORDS)
        with pytest.raises(errors.ProtectedApiError) as caught:
            await fetcher.fetch("secure-vault/records", "read:records")
    assert caught.value.status_code == 500 and is_retryable(caught.value)
    assert "Amara" not in json.dumps(error_result(caught.value))


# --- the token never leaks ----------------------------------------------------------------------


def _echo(request: httpx.Request) -> httpx.Response:
    """A protected API that echoes the credentials back, in every answer."""
    auth = request.headers.get("authorization", "")
    token = auth.removeprefix("Bearer ")
    body = {"authorization": auth, "token": token, "details": f"you sent {auth}"}
    status = int(request.url.params.get("status", "200"))
    return httpx.Response(status, json=body, headers={"www-authenticate": f'Bearer x="{token}"'})


@pytest.mark.anyio
async def test_no_token_in_results_errors_or_logs_even_from_an_echoing_api() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(_echo))
    # every level reaches the capture, whatever an earlier test configured (restored after)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    with structlog.testing.capture_logs() as logs:
        async with TokenBroker(MockTransport(), client_id=DEMO_CLIENT_ID) as broker:
            token = await broker.token("read:records")
            fetcher = SecureFetcher(broker, client=client, api_base_url="https://api.example.test")
            result = await fetcher.fetch("echo", "read:records")
            outputs: list[Any] = [result, result.to_dict(), render_result(result.to_dict())]
            for status in ("401", "403", "404", "500", "302"):
                with pytest.raises(errors.AuthSecError) as caught:
                    await fetcher.fetch("echo", "read:records", params={"status": status})
                outputs += [caught.value, str(caught.value), error_result(caught.value)]
        await client.aclose()
    assert result.data["token"] == f"jwt:{token.fingerprint}"
    everything = json.dumps(
        [repr(o) for o in outputs] + [str(o) for o in outputs] + logs, default=str
    )
    assert token.value not in everything
    assert token.value.split(".")[2] not in everything  # not even the signature
    assert any(event["event"] == "fetch.ok" for event in logs)


@pytest.mark.anyio
async def test_mock_mode_needs_no_api_origin() -> None:
    async with TokenBroker(MockTransport(), client_id=DEMO_CLIENT_ID) as broker:
        fetcher = build_fetcher(broker)
        result = await fetcher.fetch("secure-vault/metrics", "read:metrics")
    assert result.data["quarter"] == "2026-Q2"
    assert fetcher.api_base_url.endswith(".invalid")  # never resolvable


def test_live_mode_without_an_api_origin_is_a_configuration_error() -> None:
    class LiveLike(MockTransport):
        @property
        def info(self) -> TransportInfo:
            return TransportInfo(mode="live", network_api=True)

    broker = TokenBroker(LiveLike(), client_id=DEMO_CLIENT_ID)
    with pytest.raises(errors.ConfigurationError, match="AUTHSEC_API_BASE_URL"):
        build_fetcher(broker)
    for bad in ("ftp://api.example", "https://user:pw@api.example", "https://api.example/?q=1"):
        with pytest.raises(errors.ConfigurationError, match="AUTHSEC_API_BASE_URL"):
            SecureFetcher(broker, api_transport=broker.transport.api(), api_base_url=bad)


@pytest.mark.anyio
async def test_concurrent_fetches_share_one_token_request(
    authsec_server: MockServer, client_id: str
) -> None:
    authsec_server.faults.add(Fault.slow(0.2))  # the token answer is slow
    results: list[FetchResult] = []
    async with fetcher_for(live(authsec_server, client_id)) as fetcher:

        async def one(index: int) -> None:
            results.append(await fetcher.fetch("secure-vault/records", "read:records"))

        async with anyio.create_task_group() as tg:
            for index in range(100):
                tg.start_soon(one, index)
    assert len(results) == 100 and len({r.fingerprint for r in results}) == 1
    assert authsec_server.count(TOKEN_PATH) == 1
    assert authsec_server.count(RECORDS) == 100


# --- the `fetch` command ------------------------------------------------------------------------


def test_fetch_command_prints_the_json_result_in_mock_mode() -> None:
    result = CliRunner().invoke(
        main,
        ["fetch", "secure-vault/metrics", "--scope", "read:metrics"],
        env={"AUTHSEC_MODE": "mock"},
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["status"] == "ok" and payload["data"]["quarter"] == "2026-Q2"


def test_fetch_command_refusals_are_json_with_exit_status_1() -> None:
    runner = CliRunner()
    env = {"AUTHSEC_MODE": "mock"}
    result = runner.invoke(main, ["fetch", "//evil.example/x", "-s", "read:records"], env=env)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"] == "endpoint_refused"
    result = runner.invoke(main, ["fetch", "secure-vault/audit-log", "-s", "read:audit"], env=env)
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error"] == "insufficient_scope"
    result = runner.invoke(main, ["fetch", "secure-vault/records", "-s", "read:records", "-p", "x"])
    assert result.exit_code == 2 and "NAME=VALUE" in result.stderr


def test_fetch_command_in_live_mode(authsec_server: MockServer, client_id: str) -> None:
    env = {
        "AUTHSEC_MODE": "live",
        "AUTHSEC_BASE_URL": authsec_server.url,
        "AUTHSEC_CLIENT_ID": client_id,
    }
    result = CliRunner().invoke(
        main, ["fetch", "secure-vault/records", "-s", "read:records", "-p", "page=3"], env=env
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data"]["count"] == 6
    assert [r.query for r in authsec_server.requests if r.path == RECORDS] == [{"page": "3"}]
    stored = authsec_server.authority.token_answer(client_id)[1]["token"]
    assert stored not in result.output


@pytest.mark.anyio
async def test_requests_in_flight_never_exceed_the_pool() -> None:
    """1,000 concurrent fetches wait in anyio, not in httpcore's rescanned queue."""
    in_flight = peak = 0

    async def slow_api(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.001)
        in_flight -= 1
        return httpx.Response(200, json={"ok": True})

    client = httpx.AsyncClient(transport=httpx.MockTransport(slow_api))
    async with TokenBroker(MockTransport(), client_id=DEMO_CLIENT_ID) as broker:
        fetcher = SecureFetcher(broker, client=client, api_base_url="https://api.example.test")
        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(fetcher.fetch, "records", "read:records")
    await client.aclose()
    assert peak == 100
