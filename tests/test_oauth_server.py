"""The test authorization server is as strict as the RFCs: proved here with raw HTTP.

A client library is only as good as the strictest server it was tested
against, so every refusal a conforming server may make is made here, and
each is checked with hand-built requests (no library client code involved).
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any
from urllib.parse import quote_plus, urlencode

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from oauthkit import (
    AGENT_KEY_ID,
    BASIC_CLIENT,
    JWT_CLIENT,
    POST_CLIENT,
    PUBLIC_CLIENT,
    SECRET,
    OAuthKit,
)

from authsec_crewai.testing import OAuthAuthority, OAuthTestServer, oauth_error
from authsec_crewai.testing.oauth_authority import ASSERTION_TYPE
from authsec_crewai.testing.oauthserver import TOKEN_ENDPOINT


def _basic(client_id: str, secret: str) -> str:
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _assertion(key: RSAKey, *, aud: str, **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": JWT_CLIENT,
        "sub": JWT_CLIENT,
        "aud": aud,
        "iat": now,
        "exp": now + 60,
        "jti": secrets.token_hex(8),
    }
    header: dict[str, Any] = {"alg": "RS256", "kid": changes.pop("kid", AGENT_KEY_ID)}
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(header, claims, key)


def _cc(oauth: OAuthKit, **extra: str) -> dict[str, str]:
    return {"grant_type": "client_credentials", "scope": "read:records", **extra}


def _post(oauth: OAuthKit, data: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(oauth.token_endpoint, data=data, headers=headers or {})


def test_metadata_names_the_endpoints_and_methods(oauth: OAuthKit) -> None:
    meta = httpx.get(oauth.url + "/.well-known/oauth-authorization-server").json()
    assert meta["issuer"] == oauth.issuer
    assert meta["token_endpoint"] == oauth.token_endpoint
    assert set(meta["token_endpoint_auth_methods_supported"]) >= {
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
    }
    keys = httpx.get(meta["jwks_uri"]).json()["keys"]
    assert [k["kid"] for k in keys] == ["as-1"] and "d" not in keys[0]
    resource = httpx.get(oauth.url + "/.well-known/oauth-protected-resource/mcp").json()
    assert resource["resource"] == oauth.resource
    assert resource["authorization_servers"] == [oauth.issuer]


def test_basic_is_form_urlencoded_id_and_secret(oauth: OAuthKit) -> None:
    good = _post(oauth, _cc(oauth), {"authorization": _basic(BASIC_CLIENT, SECRET)})
    assert good.status_code == 200, good.text
    assert good.headers["cache-control"] == "no-store"
    body = good.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "read:records"
    # The raw secret (not form-encoded) is a different secret: '+' means space.
    raw = "Basic " + base64.b64encode(f"{BASIC_CLIENT}:{SECRET}".encode()).decode()
    bad = _post(oauth, _cc(oauth), {"authorization": raw})
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    assert bad.headers["www-authenticate"].startswith("Basic")


def test_a_client_must_use_its_registered_method_and_only_one(oauth: OAuthKit) -> None:
    as_post = _post(oauth, _cc(oauth, client_id=BASIC_CLIENT, client_secret=SECRET))
    assert as_post.status_code == 401 and as_post.json()["error"] == "invalid_client"
    ok = _post(oauth, _cc(oauth, client_id=POST_CLIENT, client_secret=SECRET))
    assert ok.status_code == 200
    both = _post(
        oauth,
        _cc(oauth, client_id=POST_CLIENT, client_secret=SECRET),
        {"authorization": _basic(POST_CLIENT, SECRET)},
    )
    assert both.status_code == 400 and both.json()["error"] == "invalid_request"
    anonymous = _post(oauth, _cc(oauth, client_id=PUBLIC_CLIENT))
    assert anonymous.status_code == 400 and anonymous.json()["error"] == "unauthorized_client"


def test_repeated_parameters_are_refused_except_resource(oauth: OAuthKit) -> None:
    auth = {"authorization": _basic(BASIC_CLIENT, SECRET)}
    form = {"content-type": "application/x-www-form-urlencoded", **auth}
    twice = "grant_type=client_credentials&scope=read%3Arecords&scope=write%3Arecords"
    refused = httpx.post(oauth.token_endpoint, content=twice, headers=form)
    assert refused.json()["error"] == "invalid_request"
    oauth.authority.register_resource("/other")
    resources = urlencode(
        [
            ("grant_type", "client_credentials"),
            ("resource", oauth.resource),
            ("resource", oauth.url + "/other"),
        ]
    )
    answer = httpx.post(oauth.token_endpoint, content=resources, headers=form)
    assert answer.status_code == 200
    assert oauth.authority.grants[-1].resources == (oauth.resource, oauth.url + "/other")


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"aud": "https://elsewhere.example/token"}, "aud is not the token endpoint"),
        ({"iss": "someone-else"}, "iss is not the client id"),
        ({"exp": int(time.time()) + 3600}, "more than 5 minutes"),
        ({"exp": int(time.time()) - 60}, "expired"),
        ({"jti": None}, "no jti"),
        ({"kid": "another-key"}, "kid"),
    ],
)
def test_assertions_are_checked_claim_by_claim(
    oauth: OAuthKit, client_key: RSAKey, changes: dict[str, Any], why: str
) -> None:
    changes.setdefault("aud", oauth.token_endpoint)
    assertion = _assertion(client_key, **changes)
    answer = _post(
        oauth,
        _cc(oauth, client_assertion_type=ASSERTION_TYPE, client_assertion=assertion),
    )
    assert answer.status_code == 401, answer.text
    assert why in answer.json()["error_description"]


def test_an_assertion_verifies_against_the_registered_key_only_and_once(
    oauth: OAuthKit, client_key: RSAKey
) -> None:
    form = {"client_assertion_type": ASSERTION_TYPE}
    stranger = RSAKey.generate_key(2048, parameters={"kid": AGENT_KEY_ID}, private=True)
    forged = _assertion(stranger, aud=oauth.token_endpoint)
    refused = _post(oauth, _cc(oauth, **form, client_assertion=forged))
    assert refused.status_code == 401 and "signature" in refused.json()["error_description"]
    assertion = _assertion(client_key, aud=oauth.token_endpoint)
    assert _post(oauth, _cc(oauth, **form, client_assertion=assertion)).status_code == 200
    replay = _post(oauth, _cc(oauth, **form, client_assertion=assertion))
    assert replay.status_code == 401 and "used before" in replay.json()["error_description"]
    assert [g.auth_method for g in oauth.authority.grants] == ["private_key_jwt"]


def test_resource_bound_tokens_work_only_at_their_resource(oauth: OAuthKit) -> None:
    auth = {"authorization": _basic(BASIC_CLIENT, SECRET)}
    oauth.authority.register_resource("/other", scope=["read:records"])
    bound = _post(oauth, _cc(oauth, resource=oauth.resource), auth).json()["access_token"]
    here = httpx.get(oauth.resource, headers={"authorization": f"Bearer {bound}"})
    assert here.status_code == 200 and here.json()["client_id"] == BASIC_CLIENT
    there = httpx.get(oauth.url + "/other", headers={"authorization": f"Bearer {bound}"})
    assert there.status_code == 401
    assert 'resource_metadata="' in there.headers["www-authenticate"]
    unknown = _post(oauth, _cc(oauth, resource="https://evil.example/mcp"), auth)
    assert unknown.json()["error"] == "invalid_target"
    fragment = _post(oauth, _cc(oauth, resource=oauth.resource + "#x"), auth)
    assert fragment.json()["error"] == "invalid_target"
    anonymous = httpx.get(oauth.resource)
    assert anonymous.headers["www-authenticate"] == (
        f'Bearer resource_metadata="{oauth.url}/.well-known/oauth-protected-resource/mcp"'
    )


def test_scopes_beyond_the_client_are_invalid_scope(oauth: OAuthKit) -> None:
    auth = {"authorization": _basic(BASIC_CLIENT, SECRET)}
    answer = _post(oauth, {"grant_type": "client_credentials", "scope": "admin"}, auth)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_scope"
    other = _post(oauth, {"grant_type": "password"}, auth)
    assert other.json()["error"] == "unsupported_grant_type"


def test_refresh_tokens_rotate_and_reuse_revokes_the_family(oauth: OAuthKit) -> None:
    first = oauth.authority.issue_refresh_token(
        PUBLIC_CLIENT, ["read:records"], resources=[oauth.resource]
    )
    grant = {"grant_type": "refresh_token", "client_id": PUBLIC_CLIENT, "resource": oauth.resource}
    answer = _post(oauth, {**grant, "refresh_token": first}).json()
    second, access = answer["refresh_token"], answer["access_token"]
    assert second != first
    bearer = {"authorization": f"Bearer {access}"}
    assert httpx.get(oauth.resource, headers=bearer).status_code == 200
    reuse = _post(oauth, {**grant, "refresh_token": first})
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    # The thief's reuse revoked everything descended from the sign-in.
    assert _post(oauth, {**grant, "refresh_token": second}).json()["error"] == "invalid_grant"
    assert httpx.get(oauth.resource, headers=bearer).status_code == 401
    assert max(oauth.authority.refresh_presented.values()) == 2


def test_opaque_tokens_and_forgetting_every_token(loopback_server: Any, as_key: RSAKey) -> None:
    authority = OAuthAuthority(key=as_key, token_format="opaque")
    authority.register_client("c", secret="s")
    authority.register_resource("/api")
    with OAuthTestServer(authority) as server:
        answer = httpx.post(
            server.token_endpoint,
            data={"grant_type": "client_credentials", "resource": server.resource_url("/api")},
            auth=("c", "s"),
        ).json()
        token = answer["access_token"]
        assert token.count(".") == 0
        auth = {"authorization": f"Bearer {token}"}
        assert httpx.get(server.resource_url("/api"), headers=auth).status_code == 200
        authority.forget_tokens()
        assert httpx.get(server.resource_url("/api"), headers=auth).status_code == 401
        assert server.counts[TOKEN_ENDPOINT] == 1


def test_faults_are_served_on_the_token_endpoint(oauth: OAuthKit) -> None:
    auth = {"authorization": _basic(BASIC_CLIENT, SECRET)}
    oauth.faults.add(oauth_error("invalid_grant"), path=TOKEN_ENDPOINT)
    assert _post(oauth, _cc(oauth), auth).json()["error"] == "invalid_grant"
    assert _post(oauth, _cc(oauth), auth).status_code == 200
    assert oauth.token_requests == 2
