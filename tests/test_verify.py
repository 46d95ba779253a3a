"""TokenVerifier, verify_bearer and validate_spiffe_id against hostile input.

Every token here is a real RS256 JWT (or a deliberate forgery of one); the key
set comes through a tiny Transport stand-in that counts how often it was asked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc import jwt
from joserfc.jwk import RSAKey
from structlog.testing import capture_logs

from authsec_crewai import errors
from authsec_crewai.testing import MockAuthority
from authsec_crewai.token import DelegationToken, TokenRequest
from authsec_crewai.transports import KeySet, MockTransport, TransportInfo
from authsec_crewai.verify import (
    TokenVerifier,
    check_time_claims,
    rsa_keys,
    validate_spiffe_id,
    verify_bearer,
)
from authsec_crewai.wire import parse_token_body

NOW = 1_800_000_000.0
AUDIENCE = ("authsec-api",)


class KeySource:
    """The key-set half of the Transport protocol, with a call counter."""

    info = TransportInfo(mode="keys")

    def __init__(self, key_set: KeySet | None) -> None:
        self.key_set = key_set
        self.calls = 0

    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        raise NotImplementedError

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        self.calls += 1
        await anyio.lowlevel.checkpoint()  # a real fetch yields; let verifiers pile up
        return self.key_set

    def api(self) -> httpx.AsyncBaseTransport:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


@pytest.fixture
def authority(rsa_key: RSAKey) -> MockAuthority:
    return MockAuthority(key=rsa_key, clock=lambda: NOW)


@pytest.fixture
def good(authority: MockAuthority, client_id: str) -> DelegationToken:
    return parse_token_body(authority.delegate(client_id), now=NOW)


@pytest.fixture
def source(authority: MockAuthority) -> KeySource:
    return KeySource(authority.key_set())


def _verifier(source: KeySource, **kwargs: Any) -> TokenVerifier:
    kwargs.setdefault("audience", AUDIENCE)
    return TokenVerifier(source, clock=lambda: NOW, **kwargs)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(token: DelegationToken) -> dict[str, Any]:
    payload = token.value.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * 4))
    return claims


def _signed(token: DelegationToken, key: RSAKey, alg: str = "RS256", **changes: Any) -> str:
    claims = {**_claims(token), **changes}
    return jwt.encode({"alg": alg, "typ": "JWT"}, claims, key, algorithms=[alg])


def _with(token: DelegationToken, value: str) -> DelegationToken:
    return replace(token, value=value)


# --- the happy path -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_genuine_token_verifies_and_the_key_set_is_fetched_once(
    good: DelegationToken, source: KeySource
) -> None:
    verifier = _verifier(source)
    await verifier.verify(good)
    await verifier.verify(good)
    assert source.calls == 1


@pytest.mark.anyio
async def test_mock_transport_tokens_verify(client_id: str) -> None:
    transport = MockTransport()
    token = await transport.fetch_token(TokenRequest.create(client_id, "read:records"))
    await TokenVerifier(transport, audience=AUDIENCE).verify(token)
    assert transport.key_set_calls == 1


@pytest.mark.anyio
async def test_concurrent_verifications_share_one_key_set_fetch(
    good: DelegationToken, source: KeySource
) -> None:
    verifier = _verifier(source)
    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(verifier.verify, good)
    assert source.calls == 1


# --- the hostile corpus -------------------------------------------------------------------


def _alg_none(token: DelegationToken, _: RSAKey, __: RSAKey) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{token.value.split('.')[1]}."


def _hs256_with_public_key(token: DelegationToken, key: RSAKey, _: RSAKey) -> str:
    # The classic confusion attack: the RSA public key (PEM, as published) used
    # as an HMAC secret, for a verifier that lets the header pick the algorithm.
    secret = key.as_pem(private=False)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{token.value.split('.')[1]}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _hs256_with_jwk_json(token: DelegationToken, key: RSAKey, _: RSAKey) -> str:
    secret = json.dumps(key.as_dict(private=False)).encode()
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{token.value.split('.')[1]}"
    return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), 'sha256').digest())}"


def _rs512_right_key(token: DelegationToken, key: RSAKey, _: RSAKey) -> str:
    return _signed(token, key, "RS512")


def _ps256_right_key(token: DelegationToken, key: RSAKey, _: RSAKey) -> str:
    return _signed(token, key, "PS256")


def _wrong_key(token: DelegationToken, _: RSAKey, other: RSAKey) -> str:
    return _signed(token, other)


def _truncated(token: DelegationToken, _: RSAKey, __: RSAKey) -> str:
    return token.value[:-12]


def _payload_swapped(token: DelegationToken, key: RSAKey, _: RSAKey) -> str:
    # A genuine signature over different claims (more permissions).
    header, _payload, signature = token.value.split(".")
    claims = {**_claims(token), "permissions": ["admin:all"]}
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


def _one_megabyte(token: DelegationToken, key: RSAKey, _: RSAKey) -> str:
    return _signed(token, key, padding="x" * 1_000_000)


def _rs256_by_hand(header: dict[str, Any], claims: dict[str, Any], key: RSAKey) -> str:
    """Sign what joserfc itself would refuse to produce."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    private = key.private_key
    assert private is not None
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64(signature)}"


def _crit_header(token: DelegationToken, key: RSAKey, _: RSAKey) -> str:
    header = {"alg": "RS256", "typ": "JWT", "crit": ["x-policy"], "x-policy": "strict"}
    return _rs256_by_hand(header, _claims(token), key)


def _unencoded_payload(token: DelegationToken, key: RSAKey, _: RSAKey) -> str:
    return _rs256_by_hand({"alg": "RS256", "b64": False}, _claims(token), key)


def _wrong_typ(token: DelegationToken, key: RSAKey, _: RSAKey) -> str:
    return jwt.encode({"alg": "RS256", "typ": "JWE"}, _claims(token), key, algorithms=["RS256"])


def _not_a_jwt(token: DelegationToken, _: RSAKey, __: RSAKey) -> str:
    return "not-a-jwt"


def _garbage_header(token: DelegationToken, _: RSAKey, __: RSAKey) -> str:
    return "e30." + token.value.split(".", 1)[1]  # header "{}": no alg at all


FORGERIES = {
    "alg none": _alg_none,
    "HS256 keyed with the RSA public key (PEM)": _hs256_with_public_key,
    "HS256 keyed with the RSA public key (JWK)": _hs256_with_jwk_json,
    "RS512 with the right key": _rs512_right_key,
    "PS256 with the right key": _ps256_right_key,
    "signed by another key": _wrong_key,
    "truncated": _truncated,
    "payload swapped under a genuine signature": _payload_swapped,
    "1 MB token": _one_megabyte,
    "crit header": _crit_header,
    "b64 header": _unencoded_payload,
    "typ not JWT": _wrong_typ,
    "not a JWT": _not_a_jwt,
    "header without alg": _garbage_header,
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(FORGERIES))
async def test_forged_tokens_are_refused(
    name: str,
    good: DelegationToken,
    source: KeySource,
    rsa_key: RSAKey,
    other_key: RSAKey,
) -> None:
    forged = _with(good, FORGERIES[name](good, rsa_key, other_key))
    with pytest.raises(errors.TokenVerificationError) as caught:
        await _verifier(source).verify(forged)
    message = str(caught.value)
    assert forged.fingerprint in message
    assert forged.value not in message
    assert good.value.split(".")[1] not in message


@pytest.fixture(scope="module")
def other_key() -> RSAKey:
    return RSAKey.generate_key(2048, private=True)


CLAIM_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "expired": ({"exp": int(NOW) - 31}, "expired"),
    "expired exactly at the leeway": ({"exp": int(NOW) - 30}, "expired"),
    "not yet valid": ({"nbf": int(NOW) + 31}, "not valid before"),
    "issued in the future": ({"iat": int(NOW) + 31}, "issued in the future"),
    "no exp": ({"exp": None}, "'exp'"),
    "exp not a number": ({"exp": "tomorrow"}, "non-numeric"),
    "exp a boolean": ({"exp": True}, "non-numeric"),
    "wrong audience": ({"aud": ["billing-api"]}, "audience"),
    "no audience": ({"aud": None}, "audience"),
    "sub not SPIFFE": ({"sub": "user:alice"}, "SPIFFE"),
    "sub with a dot-dot segment": ({"sub": "spiffe://example.org/agents/../admin"}, "SPIFFE"),
    "sub with userinfo": ({"sub": "spiffe://evil.org@example.org/agents/x"}, "SPIFFE"),
    "no sub": ({"sub": None}, "'sub'"),
    "more permissions than the server said": (
        {"permissions": ["read:metrics", "read:records", "admin:all"]},
        "permissions",
    ),
    "fewer permissions than the server said": ({"permissions": ["read:records"]}, "permissions"),
    "permissions not a list": ({"permissions": {"read:records": True}}, "permissions"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("name", list(CLAIM_CASES))
async def test_bad_claims_are_refused_even_when_properly_signed(
    name: str, good: DelegationToken, source: KeySource, rsa_key: RSAKey
) -> None:
    changes, reason = CLAIM_CASES[name]
    claims = {k: v for k, v in {**_claims(good), **changes}.items() if v is not None}
    value = jwt.encode({"alg": "RS256", "typ": "JWT"}, claims, rsa_key, algorithms=["RS256"])
    token = _with(good, value)
    with pytest.raises(errors.TokenVerificationError, match=reason) as caught:
        await _verifier(source).verify(token)
    assert value not in str(caught.value)


@pytest.mark.anyio
async def test_leeway_tolerates_small_skew(
    good: DelegationToken, source: KeySource, rsa_key: RSAKey
) -> None:
    skewed = _with(good, _signed(good, rsa_key, exp=int(NOW) - 29, nbf=int(NOW) + 29))
    await _verifier(source).verify(skewed)
    with pytest.raises(errors.TokenVerificationError, match="expired"):
        await _verifier(source, leeway=0).verify(skewed)


@pytest.mark.anyio
async def test_the_verifier_uses_its_clock_not_the_wall_clock(
    good: DelegationToken, source: KeySource
) -> None:
    later = [NOW]
    verifier = TokenVerifier(source, audience=AUDIENCE, clock=lambda: later[0])
    await verifier.verify(good)
    later[0] = good.expires_at_ts + 31
    with pytest.raises(errors.TokenVerificationError, match="expired"):
        await verifier.verify(good)


@pytest.mark.anyio
async def test_no_audience_configured_means_no_audience_check(
    good: DelegationToken, source: KeySource, rsa_key: RSAKey
) -> None:
    token = replace(
        good, value=_signed(good, rsa_key, aud=["billing-api"]), audience=("billing-api",)
    )
    await _verifier(source, audience=()).verify(token)
    await _verifier(source, audience=("billing-api", "other")).verify(token)


@pytest.mark.anyio
async def test_a_signed_audience_unlike_the_answers_is_refused_without_a_configured_one(
    good: DelegationToken, source: KeySource, rsa_key: RSAKey
) -> None:
    token = _with(good, _signed(good, rsa_key, aud=["billing-api"]))  # answer: authsec-api
    assert token.audience != ("billing-api",)
    with pytest.raises(errors.TokenVerificationError, match="signed audience"):
        await _verifier(source, audience=()).verify(token)


# --- key sets -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_key_rotation_is_picked_up_with_exactly_one_re_read(
    authority: MockAuthority, client_id: str, other_key: RSAKey
) -> None:
    source = KeySource(authority.key_set())
    verifier = _verifier(source)
    await verifier.verify(parse_token_body(authority.delegate(client_id), now=NOW))
    assert source.calls == 1

    authority.key = other_key  # the tenant rotates its signing key
    source.key_set = authority.key_set()
    rotated = parse_token_body(authority.delegate(client_id), now=NOW)
    await verifier.verify(rotated)
    assert source.calls == 2
    await verifier.verify(rotated)
    assert source.calls == 2  # the new set is cached


@pytest.mark.anyio
async def test_a_bad_signature_re_reads_the_key_set_once_then_refuses(
    good: DelegationToken, source: KeySource, other_key: RSAKey
) -> None:
    verifier = _verifier(source, rekey_interval=0)
    await verifier.verify(good)
    forged = _with(good, _signed(good, other_key))
    with pytest.raises(errors.TokenVerificationError, match="not signed by any key"):
        await verifier.verify(forged)
    assert source.calls == 2  # one re-read, not a loop


@pytest.mark.anyio
async def test_a_cold_cache_does_not_re_read_keys_it_just_fetched(
    good: DelegationToken, source: KeySource, other_key: RSAKey
) -> None:
    with pytest.raises(errors.TokenVerificationError):
        await _verifier(source).verify(_with(good, _signed(good, other_key)))
    assert source.calls == 1


@pytest.mark.anyio
async def test_re_reads_are_rate_limited(
    good: DelegationToken, source: KeySource, other_key: RSAKey
) -> None:
    verifier = _verifier(source, rekey_interval=3600)
    await verifier.verify(good)
    forged = _with(good, _signed(good, other_key))
    for _ in range(5):
        with pytest.raises(errors.TokenVerificationError):
            await verifier.verify(forged)
    assert source.calls == 2  # the first failure re-read; the rest were refused at once


@pytest.mark.anyio
async def test_re_reads_are_timed_by_the_injected_monotonic_clock(
    good: DelegationToken, source: KeySource, other_key: RSAKey
) -> None:
    mono = [5000.0]
    verifier = _verifier(source, rekey_interval=60, monotonic=lambda: mono[0])
    await verifier.verify(good)
    forged = _with(good, _signed(good, other_key))
    for _ in range(3):
        with pytest.raises(errors.TokenVerificationError):
            await verifier.verify(forged)
    assert source.calls == 2
    mono[0] += 59.0  # not yet: still inside the interval by the injected clock
    with pytest.raises(errors.TokenVerificationError):
        await verifier.verify(forged)
    assert source.calls == 2
    mono[0] += 1.0  # the interval has passed, though hardly any real time has
    with pytest.raises(errors.TokenVerificationError):
        await verifier.verify(forged)
    assert source.calls == 3


@pytest.mark.anyio
async def test_no_key_set_skips_the_signature_check_and_says_so_once(
    good: DelegationToken, other_key: RSAKey
) -> None:
    source = KeySource(None)
    verifier = _verifier(source)
    with capture_logs() as logs:
        await verifier.verify(_with(good, _signed(good, other_key)))
        await verifier.verify(good)
    assert [e["event"] for e in logs].count("authsec.verify.skipped") == 1
    # the claims are still checked
    with pytest.raises(errors.TokenVerificationError, match="audience"):
        await verifier.verify(_with(good, _signed(good, other_key, aud=["x"])))


@pytest.mark.anyio
async def test_a_key_set_without_usable_keys_refuses(good: DelegationToken) -> None:
    weird = {"keys": [{"kty": "oct", "k": "c2VjcmV0"}, {"kty": "EC", "crv": "P-256"}]}
    with pytest.raises(errors.TokenVerificationError, match="no usable RS256 key"):
        await _verifier(KeySource(weird)).verify(good)


def test_rsa_keys_skips_what_it_must_not_use(rsa_key: RSAKey) -> None:
    public = rsa_key.as_dict(private=False)
    with pytest.warns(UserWarning, match="2048"):  # joserfc warns too, rightly
        short = RSAKey.generate_key(1024, private=False, auto_kid=False).as_dict(private=False)
    key_set = {
        "keys": [
            {**public, "use": "enc"},
            {**public, "alg": "RS512"},
            short,
            {"kty": "RSA", "n": "!!", "e": "AQAB"},
            "not a dict",
            public,
        ]
    }
    keys = rsa_keys(key_set)
    assert len(keys) == 1
    assert keys[0].as_dict()["n"] == public["n"]
    assert "d" not in keys[0].as_dict()
    assert rsa_keys({"keys": "nope"}) == ()


@pytest.mark.anyio
async def test_private_key_material_in_the_set_is_ignored(
    good: DelegationToken, rsa_key: RSAKey
) -> None:
    # A bundle that (wrongly) includes the private part still only verifies.
    await _verifier(KeySource({"keys": [rsa_key.as_dict(private=True)]})).verify(good)


# --- claims-only mode (replay) ----------------------------------------------------------------


@pytest.mark.anyio
async def test_claims_only_skips_the_signature_but_checks_the_claims(
    good: DelegationToken, rsa_key: RSAKey
) -> None:
    source = KeySource(None)
    header, payload, _ = good.value.split(".")
    redacted = _with(good, f"{header}.{payload}.REDACTED")
    verifier = _verifier(source, claims_only=True)
    await verifier.verify(redacted)
    assert source.calls == 0
    header2, payload2, _ = _signed(good, rsa_key, exp=int(NOW) - 100).split(".")
    with pytest.raises(errors.TokenVerificationError, match="expired"):
        await verifier.verify(_with(good, f"{header2}.{payload2}.REDACTED"))
    none_header = _b64(b'{"alg":"none"}')
    with pytest.raises(errors.TokenVerificationError, match="algorithm"):
        await verifier.verify(_with(good, f"{none_header}.{payload}."))


# --- verify_bearer (the resource-server check) ----------------------------------------------


def test_verify_bearer_returns_the_claims(good: DelegationToken, rsa_key: RSAKey) -> None:
    key_set = {"keys": [rsa_key.as_dict(private=False)]}
    claims = verify_bearer(good.value, key_set, now=NOW, audience=AUDIENCE)
    assert claims["jti"] == good.jti
    assert claims["permissions"] == sorted(good.permissions)


def test_verify_bearer_refuses_expired_foreign_and_misaddressed_tokens(
    good: DelegationToken, rsa_key: RSAKey, other_key: RSAKey
) -> None:
    key_set = {"keys": [rsa_key.as_dict(private=False)]}
    with pytest.raises(errors.TokenVerificationError, match="expired"):
        verify_bearer(good.value, key_set, now=good.expires_at_ts + 1)
    with pytest.raises(errors.TokenVerificationError, match="not signed"):
        verify_bearer(_signed(good, other_key), key_set, now=NOW)
    with pytest.raises(errors.TokenVerificationError, match="audience"):
        verify_bearer(good.value, key_set, now=NOW, audience=["billing-api"])
    with pytest.raises(errors.TokenVerificationError, match="no usable"):
        verify_bearer(good.value, {"keys": []}, now=NOW)


def test_check_time_claims_boundaries() -> None:
    check_time_claims({"exp": 100}, now=99.9, leeway=0)
    with pytest.raises(errors.TokenVerificationError):
        check_time_claims({"exp": 100}, now=100, leeway=0)
    check_time_claims({"exp": 200, "nbf": 100}, now=100, leeway=0)
    with pytest.raises(errors.TokenVerificationError):
        check_time_claims({"exp": 200, "nbf": 100.5}, now=100, leeway=0)


# --- SPIFFE ids --------------------------------------------------------------------------------

GOOD_IDS = [
    "spiffe://example.org/tenants/3f1e/agents/crewai/9b0c",
    "spiffe://prod.example-corp.io/a",
    "spiffe://td_1/A.b-c_d/e",
    f"spiffe://{'a' * 255}/x",
]

BAD_IDS = {
    "": "spiffe://",
    "https://example.org/agent": "spiffe://",
    "SPIFFE://example.org/agent": "spiffe://",
    "spiffe:example.org/agent": "spiffe://",
    "spiffe:///agent": "empty trust domain",
    "spiffe://example.org": "no path",
    "spiffe://example.org/": "no path",
    "spiffe://Example.org/agent": "trust domain",
    "spiffe://example.org:8443/agent": "port",
    "spiffe://user@example.org/agent": "userinfo",
    "spiffe://evil.org@example.org/agent": "userinfo",
    "spiffe://example.org/agent?x=1": "query",
    "spiffe://example.org/agent#frag": "fragment",
    "spiffe://example.org/a//b": "empty path segment",
    "spiffe://example.org/a/": "empty path segment",
    "spiffe://example.org/a/./b": "'.'",
    "spiffe://example.org/a/../admin": "'..'",
    "spiffe://example.org/a%2F..%2Fadmin": "invalid path segment",
    "spiffe://example.org/a b": "invalid path segment",
    "spiffe://example.org/a\nb": "invalid path segment",
    "spiffe://example.org/a\x00b": "invalid path segment",
    "spiffe://example.org/a\\b": "invalid path segment",
    "spiffe://ex\u0430mple.org/agent": "non-ASCII",  # a Cyrillic look-alike of 'a'
    "spiffe://example.org/agent\u200b": "non-ASCII",
    f"spiffe://{'a' * 256}/x": "longer than 255",
    f"spiffe://example.org/{'a' * 2040}": "longer than 2048",
}


@pytest.mark.parametrize("value", GOOD_IDS)
def test_valid_spiffe_ids(value: str) -> None:
    validate_spiffe_id(value)


@pytest.mark.parametrize("value", list(BAD_IDS))
def test_hostile_spiffe_ids_are_refused_with_a_reason(value: str) -> None:
    with pytest.raises(ValueError, match=BAD_IDS[value].replace(".", r"\.").replace("?", r"\?")):
        validate_spiffe_id(value)


def test_spiffe_validator_refuses_non_strings() -> None:
    with pytest.raises(ValueError, match="string"):
        validate_spiffe_id(None)  # type: ignore[arg-type]


def test_the_mock_authority_issues_valid_spiffe_ids(authority: MockAuthority) -> None:
    body = authority.delegate(str(uuid.uuid4()))
    validate_spiffe_id(body["spiffe_id"])
    assert datetime.fromtimestamp(NOW, UTC) < parse_token_body(body, now=NOW).expires_at
