"""The cassette format: redaction, placeholders, bodies, loading errors, the secret scan,
matching, and the ``cassette show|verify`` commands."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cassettekit import API_TOKEN, UNSAFE_DIR, problems_in, scan_written_cassettes  # noqa: F401
from click.testing import CliRunner

from authsec_crewai import errors
from authsec_crewai.cassettes import (
    FORMAT,
    REDACTION_MARKER,
    VERSION,
    Player,
    Scrubber,
    decode_body,
    dumps,
    encode_body,
    error_from_record,
    error_record,
    find_secrets,
    load,
    new_document,
    parse,
    strip_credentials,
    write_atomic,
)
from authsec_crewai.cli import main
from authsec_crewai.testing import MockAuthority
from authsec_crewai.wire import error_for_status

CLIENT = "00000000-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def jwt() -> str:
    """A real RS256 token from the mock authority."""
    authority = MockAuthority()
    authority.delegate(CLIENT)
    status, body = authority.token_answer(CLIENT)
    assert status == 200
    return str(body["token"])


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def _api(path: str = "/secure-vault/records", **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "kind": "api",
        "offset": 0.5,
        "request": {"method": "GET", "path": path, "query": [], "body": None},
        "response": {"status": 200, "headers": {}, "body": {"json": {"ok": True}}},
    }
    item.update(extra)
    return item


def _doc(*interactions: dict[str, Any], **top: Any) -> dict[str, Any]:
    document = new_document(
        recorded_at=1_800_000_000.0, settings={"mode": "mock"}, interactions=list(interactions)
    )
    document.update(top)
    return document


# --- redaction ---------------------------------------------------------------------------------


def test_a_jwt_keeps_its_claims_and_loses_its_signature_anywhere(jwt: str) -> None:
    scrub = Scrubber()
    value = {
        "token": jwt,
        "nested": [{"text": f"here it is: {jwt}, twice {jwt}"}],
        jwt: "as a key",
    }
    out = scrub.value(value)
    text = json.dumps(out)
    assert jwt.rsplit(".", 1)[1] not in text
    head, payload, _ = jwt.split(".")
    assert out["token"] == f"{head}.{payload}.{REDACTION_MARKER}"
    assert text.count(f".{REDACTION_MARKER}") == 4
    assert _claims(out["token"]) == _claims(jwt)
    assert scrub.value(out) == out  # idempotent: a second pass changes nothing


def test_bearer_credentials_and_secrets_are_replaced() -> None:
    scrub = Scrubber(secrets=[API_TOKEN])
    out = scrub.text(f"Authorization: Bearer opaque-credential-123 and {API_TOKEN} again")
    assert "opaque-credential-123" not in out
    assert API_TOKEN not in out
    assert out == f"Authorization: Bearer {REDACTION_MARKER} and {REDACTION_MARKER} again"


def test_headers_drop_credentials_and_noise_and_are_sorted(jwt: str) -> None:
    kept = Scrubber().headers(
        [
            ("Set-Cookie", "session=abc"),
            ("Authorization", "Bearer x"),
            ("Date", "Mon, 01 Jan 2029 00:00:00 GMT"),
            ("Content-Length", "12"),
            ("Content-Encoding", "gzip"),
            ("X-Echo", f"token={jwt}"),
            ("content-type", "application/json"),
            ("Vary", "a"),
            ("vary", "b"),
        ]
    )
    assert list(kept) == ["content-type", "vary", "x-echo"]
    assert kept["vary"] == "a, b"
    assert kept["x-echo"].endswith(f".{REDACTION_MARKER}")


def test_placeholders_go_both_ways_even_inside_jwt_claims(jwt: str) -> None:
    scrub = Scrubber({CLIENT: "<agent>"})
    recorded = scrub.value({"client_id": CLIENT, "token": jwt, "path": f"/agents/{CLIENT}"})
    text = json.dumps(recorded)
    assert CLIENT not in text
    assert CLIENT not in json.dumps(_claims(recorded["token"]))
    assert _claims(recorded["token"])["client_id"] == "<agent>"
    restored = scrub.restore(recorded)
    assert restored["client_id"] == CLIENT
    assert restored["path"] == f"/agents/{CLIENT}"
    assert _claims(restored["token"]) == _claims(jwt)


@pytest.mark.parametrize(
    ("placeholders", "secrets"),
    [({"abc": "x"}, ()), ({"abcd": ""}, ()), ({}, ("ab",))],
)
def test_too_short_secrets_are_refused(placeholders: dict[str, str], secrets: Any) -> None:
    with pytest.raises(ValueError, match="at least 4 characters"):
        Scrubber(placeholders, secrets)


def test_strip_credentials() -> None:
    assert strip_credentials("https://user:pw@authsec.example.com:8443/api/?k=v#f") == (
        "https://authsec.example.com:8443/api"
    )
    assert strip_credentials("http://[::1]:80") == "http://[::1]:80"
    assert strip_credentials(None) is None


# --- bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b'{"a":1,"b":[true,null,"\xc3\xa9"]}', "json"),
        (b'{"a": 1}', "text"),  # not compact: kept byte for byte as text
        (b"plain text\n", "text"),
        (b"\x00\xff\xfe binary", "base64"),
        (b"NaN", "text"),
    ],
)
def test_bodies_round_trip_byte_for_byte(raw: bytes, kind: str) -> None:
    body = encode_body(raw, Scrubber())
    assert body is not None and list(body) == [kind]
    assert decode_body(body) == raw


def test_an_empty_body_is_null() -> None:
    assert encode_body(b"", Scrubber()) is None
    assert decode_body(None) == b""


def test_binary_bodies_are_scrubbed_too(jwt: str) -> None:
    body = encode_body(b"\xff\xfe" + jwt.encode(), Scrubber())
    assert body is not None and "base64" in body
    assert jwt.rsplit(".", 1)[1].encode() not in decode_body(body)


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 410, 429, 503])
def test_token_errors_round_trip_with_their_class(status: int) -> None:
    original = error_for_status(status, {"error": "x"}, retry_after=2.0 if status == 429 else None)
    record = error_record(original, Scrubber())
    assert record["status"] == status
    again = error_from_record(record)
    assert type(again) is type(original)
    assert str(again) == str(original)
    if status == 429:
        assert isinstance(again, errors.RateLimitedError) and again.retry_after == 2.0


def test_an_unknown_error_kind_becomes_a_token_error() -> None:
    again = error_from_record({"kind": "from-the-future", "message": "m"})
    assert type(again) is errors.TokenError and str(again) == "m"


# --- loading -------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"format": "authsec-cassette", "version": 1,', r"is not valid JSON \(line 1, column"),
        ("[]", "is not an authsec-crewai cassette"),
        ('{"interactions": []}', "is not an authsec-crewai cassette"),
        (
            json.dumps(_doc(version=99)),
            "format version 99, but this authsec-crewai reads version 1 at most; upgrade",
        ),
        (json.dumps(_doc(version="1")), "has no valid format version"),
        (json.dumps(_doc(recorded_at="yesterday")), "has no valid 'recorded_at'"),
        (json.dumps(_doc(interactions={})), "has no 'interactions' list"),
        (json.dumps(_doc(_api(), {"kind": "telepathy"})), "interaction #1: unknown kind"),
        (json.dumps(_doc(_api(offset=-1))), "interaction #0: 'offset' must be"),
        (
            json.dumps(_doc(_api(error={"kind": "transport"}))),
            "needs exactly one of 'response' and 'error'",
        ),
        (
            json.dumps(_doc(_api(response={"status": 99, "headers": {}, "body": None}))),
            "'status' between 100 and 599",
        ),
        (
            json.dumps(_doc(_api(response={"status": 200, "body": {"json": 1, "text": ""}}))),
            "a body must be null or one of",
        ),
        (
            json.dumps(
                _doc({"kind": "token", "offset": 0, "request": {"scopes": []}, "response": {}})
            ),
            "a token request needs a 'client_id'",
        ),
    ],
)
def test_bad_cassettes_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path / "bad.json", text)
    with pytest.raises(errors.CassetteError, match=message) as caught:
        load(path)
    assert str(caught.value).startswith(f"cassette {path}: ")


def test_a_missing_cassette_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(errors.CassetteError, match=r"missing\.json: does not exist$"):
        load(tmp_path / "missing.json")


def test_metadata_and_unknown_keys_are_tolerated(tmp_path: Path) -> None:
    document = _doc(_api(note="hand-written"), metadata={"ticket": "ISSUE-5"}, extra=[1, 2])
    cassette = load(_write(tmp_path / "c.json", dumps(document)))
    assert cassette.metadata == {"ticket": "ISSUE-5"}
    assert cassette.counts() == {"token": 0, "key_set": 0, "api": 1}
    assert cassette.version == VERSION


def test_the_document_reads_top_down() -> None:
    text = dumps(_doc(_api()))
    keys = list(json.loads(text))
    assert keys[:5] == ["format", "version", "generator", "recorded_at", "recorded_at_iso"]
    assert keys[-1] == "interactions"
    assert json.loads(text)["format"] == FORMAT
    assert text.endswith("}\n") and '\n  "interactions": [\n    {\n' in text


# --- atomic writes --------------------------------------------------------------------------------


def test_write_atomic_replaces_whole_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "c.json"
    write_atomic(path, "one\n")
    write_atomic(path, "two\n")
    assert path.read_text() == "two\n"
    assert os.listdir(path.parent) == ["c.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.json"
    write_atomic(path, "old\n")

    def broken(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["c.json"]


# --- the secret scan ------------------------------------------------------------------------------


def test_find_secrets_finds_each_kind_of_secret(jwt: str) -> None:
    leaky = _doc(
        _api(
            response={
                "status": 200,
                "headers": {"Set-Cookie": "s=1", "x-echo": "Bearer opaque-credential-9"},
                "body": {"json": {"token": jwt, "key": API_TOKEN}},
            }
        ),
        _api(response={"status": 200, "headers": {}, "body": {"base64": base64.b64encode(
            b"\xff" + jwt.encode()).decode()}}),
        _api(request={"method": "GET", "path": "/x", "query": [], "body": None,
                      "headers": {"Authorization": "Bearer abc"}}),
    )  # fmt: skip
    found = "\n".join(find_secrets(leaky, secrets=[API_TOKEN]))
    assert "$.interactions[0].response.headers.Set-Cookie: a 'Set-Cookie' header" in found
    assert "a bearer credential" in found
    assert "interactions[0].response.body.json.token: a JWT with its signature" in found
    assert "the API token" in found
    assert "(decoded): a JWT with its signature" in found
    assert "a 'Authorization' header" in found
    assert jwt not in found  # the report names tokens by fingerprint only


def test_find_secrets_passes_a_scrubbed_document(jwt: str) -> None:
    scrub = Scrubber(secrets=[API_TOKEN])
    body = {"json": scrub.value({"t": jwt, "k": API_TOKEN})}
    clean = _doc(
        _api(response={"status": 200, "headers": scrub.headers([("x", jwt)]), "body": body})
    )
    assert find_secrets(clean, secrets=[API_TOKEN]) == []
    assert problems_in(dumps(clean)) == []


# --- matching ------------------------------------------------------------------------------------


def test_identical_requests_play_in_order_then_repeat_the_last() -> None:
    items = [_api(response={"status": 200, "headers": {}, "body": {"json": n}}) for n in (1, 2, 3)]
    player = Player(items)
    request = items[0]["request"]
    served = [player.take("api", request)["response"]["body"]["json"] for _ in range(5)]
    assert served == [1, 2, 3, 3, 3]
    strict = Player(items, allow_repeats=False)
    for _ in range(3):
        strict.take("api", request)
    with pytest.raises(errors.CassetteError, match=r"recorded 3 time\(s\) and has been replayed"):
        strict.take("api", request)


def test_queries_match_in_any_order_and_bodies_by_json_value() -> None:
    recorded = _api()
    recorded["request"] = {
        "method": "POST",
        "path": "/p",
        "query": [["a", "1"], ["b", "2"]],
        "body": {"json": {"x": 1, "y": [1, 2]}},
    }
    player = Player([recorded])
    asked = {
        "method": "post",
        "path": "/p",
        "query": [["b", "2"], ["a", "1"]],
        "body": {"text": '{"y": [1, 2], "x": 1}'},
    }
    assert player.has("api", asked)


def test_an_unmatched_request_names_the_closest_recorded_one() -> None:
    player = Player([_api("/secure-vault/records"), _api("/secure-vault/metrics")])
    wanted = {"method": "GET", "path": "/secure-vault/recordz", "query": [["page", "2"]]}
    with pytest.raises(errors.CassetteError) as caught:
        player.take("api", wanted)
    message = str(caught.value)
    assert "GET /secure-vault/recordz?page=2 is not in the cassette" in message
    assert "the closest recorded request is GET /secure-vault/records" in message
    assert "(it differs in path, query)" in message
    with pytest.raises(errors.CassetteError, match="it holds no token requests at all"):
        player.take("token", {"client_id": CLIENT, "scopes": ["read:records"]})


def test_unused_lists_what_was_never_served() -> None:
    player = Player([_api("/a"), _api("/b"), _api("/a")])
    player.take("api", _api("/a")["request"])
    assert [index for index, _ in player.unused()] == [1, 2]


def test_parse_accepts_a_document_in_memory() -> None:
    assert parse(_doc(_api())).path is None


# --- cassette show / verify -------------------------------------------------------------


@pytest.fixture
def good_cassette(tmp_path: Path, jwt: str) -> Path:
    scrub = Scrubber()
    token_body = scrub.value({"token": jwt, "permissions": ["read:records"],
                              "expires_at": "2027-01-15T08:00:00.000000Z"})  # fmt: skip
    document = _doc(
        {"kind": "token", "offset": 0.0,
         "request": {"client_id": CLIENT, "scopes": ["read:records"], "audience": []},
         "response": {"body": token_body}},
        {"kind": "token", "offset": 1.0,
         "request": {"client_id": CLIENT, "scopes": ["read:records"], "audience": []},
         "error": error_record(error_for_status(404, {"error": "no active delegation"}), scrub)},
        {"kind": "key_set", "offset": 0.1, "request": {"tenant_id": "t"},
         "response": {"body": {"keys": [{"kty": "RSA"}]}}},
        _api(),
    )  # fmt: skip
    path = tmp_path / "good.json"
    write_atomic(path, dumps(document))
    return path


def test_cassette_show_lists_every_interaction(
    good_cassette: Path, jwt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "220")  # rich reads it; rows stay on one line each
    result = CliRunner().invoke(main, ["cassette", "show", str(good_cassette)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "cassette format 1" in out and "(2 token, 1 key_set, 1 api)" in out
    assert _claims(jwt)["jti"] in out
    assert "error not_delegated (404)" in out
    assert "1 key(s)" in out
    assert "GET /secure-vault/records" in out and "200, no content type, 11 bytes" in out
    assert jwt.rsplit(".", 1)[1] not in out


def test_cassette_show_of_a_broken_file_is_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "broken.json", "{")
    result = CliRunner().invoke(main, ["cassette", "show", str(path)])
    assert result.exit_code == 1
    assert result.output.startswith("error: cassette ") and "is not valid JSON" in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_cassette_verify_passes_a_clean_cassette(good_cassette: Path) -> None:
    result = CliRunner().invoke(main, ["cassette", "verify", str(good_cassette)])
    assert result.exit_code == 0, result.output
    assert result.output == f"ok: {good_cassette}: 4 interaction(s), no secret found\n"


@pytest.fixture
def unsafe_dir(tmp_path: Path) -> Path:
    """Negative examples live here; the session scan skips this directory."""
    path = tmp_path / UNSAFE_DIR
    path.mkdir()
    return path


@pytest.mark.parametrize(
    ("leak", "expected"),
    [
        ("signature", "a JWT with its signature (jwt:"),
        ("authorization", "a 'authorization' header or field"),
        ("api_token", "the API token (or another configured secret)"),
        ("bearer", "a bearer credential"),
    ],
)
def test_cassette_verify_fails_on_each_secret(
    unsafe_dir: Path, jwt: str, leak: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTHSEC_API_TOKEN", API_TOKEN)
    item = _api()
    if leak == "signature":
        item["response"]["body"] = {"json": {"token": jwt}}
    elif leak == "authorization":
        item["response"]["headers"] = {"authorization": "x"}
    elif leak == "api_token":
        item["response"]["body"] = {"text": f"key={API_TOKEN}"}
    else:
        item["response"]["body"] = {"text": "Bearer opaque-credential-1234"}
    path = unsafe_dir / f"{leak}.json"
    path.write_text(dumps(_doc(item)), encoding="utf-8")
    result = CliRunner().invoke(main, ["cassette", "verify", str(path)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cassette {path}: $.interactions[0].")
    assert expected in result.output
    assert jwt not in result.output and API_TOKEN not in result.output


def test_cassette_verify_checks_every_file_and_extra_secrets(
    good_cassette: Path, unsafe_dir: Path
) -> None:
    future = unsafe_dir / "future.json"
    future.write_text(json.dumps(_doc(version=2)), encoding="utf-8")
    result = CliRunner().invoke(
        main,
        ["cassette", "verify", str(good_cassette), str(future), "--secret", "secure-vault"],
    )
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert any("the API token (or another configured secret)" in line for line in lines)
    assert any("format version 2" in line and "upgrade" in line for line in lines)
