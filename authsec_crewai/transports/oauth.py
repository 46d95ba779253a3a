"""``OAuthTransport``: any OAuth 2.0 authorization server as a token source.

AuthSec's own authorization server for MCP servers and other resources, or
any conforming one (Auth0, Okta, Keycloak). Behind the same ``Transport``
protocol as the AuthSec transport, so the broker's cache, single flight,
refresh ahead, shared stores, fetcher, tools and cassettes serve it unchanged.

- Discovery (RFC 8414) from the issuer, or (RFC 9728) from the resource's
  protected-resource metadata when only the resource is known; done once per
  transport and kept, never repeated per token.
- ``client_credentials`` (RFC 6749 §4.4) with ``scope`` and ``resource``
  (RFC 8707), or ``refresh_token`` grants (§6) spent from a
  :mod:`refresh-token chain <authsec_crewai.stores.chain>` that rotates.
- Client authentication ``client_secret_basic``, ``client_secret_post`` or
  ``private_key_jwt`` (RFC 7523), the strongest the server advertises unless
  configured (:mod:`._oauth_client_auth`).
- A JWT access token is verified against the issuer's ``jwks_uri`` (RS256
  pinned, ``iss``, ``exp``, ``nbf``, the resource in ``aud``); an opaque one
  is taken as the server says (:mod:`._oauth_answers`).

HTTP (deadlines, capped reads, retries with back-off, typed transport
faults) is the AuthSec transport's, inherited: only what is OAuth lives here.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet as JoseKeySet
from joserfc.jwk import RSAKey

from .. import errors
from .._urls import check_base_url
from ..logging import get_logger
from ..token import DelegationToken, TokenRequest
from ._oauth_answers import TokenAnswer, error_for_answer, looks_like_jwt, parse_token_answer
from ._oauth_client_auth import ClientCredentials, load_private_key
from ._oauth_discovery import (
    ServerMetadata,
    as_metadata_urls,
    check_endpoint,
    parse_as_metadata,
    parse_resource_metadata,
    resource_metadata_url,
)
from .base import KeySet, TransportInfo
from .live import LiveTransport, _json_or_none, parse_retry_after

__all__ = ["OAuthTransport", "RefreshChain"]

_log = get_logger("authsec_crewai.transports.oauth")
_RESOURCE_METADATA = re.compile(r'resource_metadata="([^"\s]{1,2048})"')
"""RFC 9728 §5.1: where a resource's 401 challenge says its metadata is."""
_KEY_REFETCH_SECONDS = 30.0
"""An unknown ``kid`` re-reads ``jwks_uri`` at most this often (key rotation, not a DoS)."""


@runtime_checkable
class RefreshChain(Protocol):
    """Where a rotating refresh token lives between grants.

    :meth:`spend` calls ``grant`` with the current refresh token, exactly once at a
    time, and keeps the rotated one the answer carries before returning it.
    Implementations: :class:`authsec_crewai.stores.chain.LocalRefreshChain` (this
    process) and :class:`authsec_crewai.stores.chain.SharedRefreshChain` (a fleet).
    """

    async def spend(self, grant: Callable[[str], Awaitable[TokenAnswer]]) -> TokenAnswer:
        """``grant(refresh_token)`` once, under this chain's exclusion; the rotated
        token kept before the answer is returned."""
        ...

    def secrets(self) -> tuple[str, ...]:
        """The refresh tokens it holds now (to scrub from anything reported)."""
        ...


def _resources(resource: str | Iterable[str] | None) -> tuple[str, ...]:
    items = (resource,) if isinstance(resource, str) else tuple(resource or ())
    for item in items:
        try:
            check_base_url(item)
        except ValueError as exc:
            raise errors.ConfigurationError(f"AUTHSEC_RESOURCE {exc}") from None
    return tuple(item.strip() for item in items)


def _only_rate_limits(exc: BaseException) -> bool:
    """A refresh grant is retried only when the server surely did not spend the token."""
    return isinstance(exc, errors.RateLimitedError)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, errors.TransportError) and exc.retryable


class OAuthTransport(LiveTransport):
    """An OAuth 2.0 client for one issuer and one client id.

    Give ``issuer`` (RFC 8414 discovery), or only ``resource`` (the issuer is
    then discovered from the resource's RFC 9728 metadata). ``resource`` is
    sent as RFC 8707 ``resource`` and becomes the default audience of the
    broker's cache keys. Authenticate with ``client_secret`` or
    ``private_key`` (an RSA key, PEM text or a PEM file's ``Path``;
    ``key_id`` is its ``kid``); ``auth_method`` forces a method. With
    ``refresh_chain`` the transport spends refresh tokens instead of asking
    for client credentials.

    ``verify_access_tokens``: check JWT access tokens against ``jwks_uri``
    (RS256 by default, ``algorithms``), with ``leeway`` seconds of clock skew.
    ``lifetime_when_unstated``: the life assumed for an answer without
    ``expires_in`` (RFC 6749 only recommends it). The other arguments are
    the AuthSec transport's (timeouts, retry budget, back-off, body cap).
    """

    _server_name = "the authorization server"
    _url_setting = "AUTHSEC_OAUTH_ISSUER"

    def __init__(
        self,
        *,
        client_id: str,
        issuer: str | None = None,
        resource: str | Iterable[str] | None = None,
        client_secret: str | None = None,
        private_key: RSAKey | str | bytes | Path | None = None,
        key_id: str | None = None,
        auth_method: str | None = None,
        refresh_chain: RefreshChain | None = None,
        verify_access_tokens: bool = True,
        algorithms: Iterable[str] = ("RS256",),
        leeway: float = 30.0,
        lifetime_when_unstated: float = 300.0,
        assertion_lifetime: float = 60.0,
        **http: Any,
    ) -> None:
        self._resources = _resources(resource)
        if issuer is None and not self._resources:
            raise errors.ConfigurationError(
                "OAuth mode needs AUTHSEC_OAUTH_ISSUER, or AUTHSEC_RESOURCE to discover it from"
            )
        origin = issuer if issuer is not None else self._resources[0]
        try:
            check_base_url(origin)
        except ValueError as exc:
            name = "AUTHSEC_OAUTH_ISSUER" if issuer is not None else "AUTHSEC_RESOURCE"
            raise errors.ConfigurationError(f"{name} {exc}") from None
        super().__init__(origin, **http)
        key = (
            private_key
            if isinstance(private_key, RSAKey) or private_key is None
            else load_private_key(private_key, key_id=key_id)
        )
        self._creds = ClientCredentials(
            client_id=client_id,
            secret=client_secret or None,
            key=key,
            key_id=key_id,
            method=auth_method,
            assertion_lifetime=assertion_lifetime,
        )
        self._issuer = issuer.strip() if issuer is not None else None
        self._chain = refresh_chain
        self._verify_tokens = verify_access_tokens
        self._algorithms = list(algorithms)
        self._leeway = leeway
        self._unstated = lifetime_when_unstated
        self._metadata: ServerMetadata | None = None
        self._method: str | None = None
        self._keys: KeySet | None = None
        self._keys_read_at = -_KEY_REFETCH_SECONDS
        self._discovery_lock: anyio.Lock | None = None
        self._recent: deque[str] = deque(maxlen=8)  # assertions and tokens, for scrubbing
        self._info = TransportInfo(
            mode="oauth",
            network_api=True,
            base_url=self.base_url,
            client_id=client_id,
            secrets=self._creds.secrets(),
            # The key's issuer part: the configured issuer, else the resource it is
            # discovered from (which then decides the issuer).
            issuer=self._issuer or "resource:" + self._resources[0],
            audience=self._resources,
            client_ids="opaque",
            whole_grant=False,
            verifies_tokens=True,
        )

    @property
    def info(self) -> TransportInfo:
        """OAuth: opaque client ids, resource-bound keys, its own verification."""
        return self._info

    def __repr__(self) -> str:
        auth = "key" if self._creds.key else ("secret" if self._creds.secret else "none")
        return (
            f"OAuthTransport(issuer={self._issuer!r}, resource={list(self._resources)!r}, "
            f"client_id={self._creds.client_id!r}, auth=<{auth}>, "
            f"refresh_chain={'set' if self._chain else 'none'})"
        )

    def _secrets(self) -> tuple[str, ...]:
        chain = self._chain.secrets() if self._chain is not None else ()
        return self._creds.secrets() + chain + tuple(self._recent)

    # --- discovery --------------------------------------------------------------------

    async def _get_json(self, url: str, what: str, *, absent_ok: bool = False) -> Any:
        """The JSON document at ``url``; with ``absent_ok``, None for a 404 or 410."""

        async def attempt() -> Any:
            status, raw, headers = await self._exchange(
                "GET", url, {"accept": "application/json"}, what
            )
            if status == 429 or status >= 500:
                retry_after = parse_retry_after(headers.get("retry-after"), now=self._clock())
                raise error_for_answer(
                    status,
                    _json_or_none(raw),
                    server=self._server_name,
                    grant=what,
                    requested=frozenset(),
                    retry_after=retry_after,
                    secrets=self._secrets(),
                )
            if absent_ok and status in (404, 410):
                return None
            if status != 200:
                raise errors.ConfigurationError(
                    f"{url} answered {status} for the {what}; check {self._url_setting}"
                )
            body = _json_or_none(raw)
            if body is None:
                raise errors.InvalidTokenResponseError(f"the {what} at {url} is not JSON")
            return body

        return await self._with_retries(attempt, what)

    async def discover(self) -> ServerMetadata:
        """The authorization server's metadata, read once and then kept."""
        if self._metadata is not None:
            return self._metadata
        if self._discovery_lock is None:
            self._discovery_lock = anyio.Lock()
        async with self._discovery_lock:
            if self._metadata is None:
                issuer = self._issuer
                if issuer is None:
                    issuer = await self._resource_issuer(self._resources[0])
                    if self._creds.secret:
                        # A secret is replayable wherever it is sent: the resource now
                        # decides where. An assertion is bound to its token endpoint.
                        _log.warning(
                            "authsec.oauth.issuer_from_resource",
                            issuer=issuer,
                            hint="the client secret goes to the issuer the resource names; "
                            "set AUTHSEC_OAUTH_ISSUER to pin it",
                        )
                metadata = await self._as_metadata(issuer)
                if "client_credentials" not in metadata.grant_types and self._chain is None:
                    _log.warning(
                        "authsec.oauth.grant_not_advertised",
                        issuer=issuer,
                        grant="client_credentials",
                    )
                self._method = self._creds.choose(metadata.auth_methods)
                self.base_url = issuer.rstrip("/")
                self._metadata = metadata
                _log.info(
                    "authsec.oauth.discovered",
                    issuer=issuer,
                    token_endpoint=metadata.token_endpoint,
                    auth_method=self._method,
                )
        return self._metadata

    async def _resource_issuer(self, resource: str) -> str:
        """The issuer a resource names in its RFC 9728 metadata: at the well-known URL,
        else where the resource's own 401 challenge points (``resource_metadata``)."""
        what = "protected-resource metadata"
        body = await self._get_json(resource_metadata_url(resource), what, absent_ok=True)
        if body is None:
            status, _, headers = await self._exchange(
                "GET", resource, {"accept": "application/json"}, "resource challenge"
            )
            found = _RESOURCE_METADATA.search(headers.get("www-authenticate", ""))
            if status != 401 or found is None:
                raise errors.ConfigurationError(
                    f"{resource} publishes no protected-resource metadata (RFC 9728); set "
                    "AUTHSEC_OAUTH_ISSUER"
                )
            url = check_endpoint(found.group(1), "resource_metadata", f"{resource}'s 401")
            body = await self._get_json(url, what)
        return parse_resource_metadata(body, resource)[0]

    async def _as_metadata(self, issuer: str) -> ServerMetadata:
        """The first metadata document found where RFC 8414 and OpenID Connect say."""
        for url in as_metadata_urls(issuer):
            body = await self._get_json(url, "authorization-server metadata", absent_ok=True)
            if body is not None:
                return parse_as_metadata(body, issuer)
        raise errors.ConfigurationError(
            f"{issuer} publishes no authorization-server metadata (RFC 8414 or OpenID "
            "Connect discovery); check AUTHSEC_OAUTH_ISSUER"
        )

    # --- the grant ----------------------------------------------------------------------

    async def _grant(
        self,
        metadata: ServerMetadata,
        request: TokenRequest,
        resources: tuple[str, ...],
        refresh_token: str | None,
    ) -> TokenAnswer:
        """One token request (with retries where they are safe), answered and parsed."""
        grant = "client_credentials" if refresh_token is None else "refresh_token"
        form = [("grant_type", grant)]
        if refresh_token is not None:
            form.append(("refresh_token", refresh_token))
        form.append(("scope", request.scope_string))
        form += [("resource", resource) for resource in resources]
        method = self._method or "none"

        async def attempt() -> TokenAnswer:
            headers, auth_form, assertion = self._creds.apply(
                method, metadata.token_endpoint, self._clock()
            )
            if assertion is not None:
                self._recent.append(assertion)
            status, raw, resp_headers = await self._exchange(
                "POST",
                metadata.token_endpoint,
                {**self._headers(), **headers},
                "token",
                data=form + auth_form,
            )
            body = _json_or_none(raw)
            if status != 200:
                retry_after = parse_retry_after(resp_headers.get("retry-after"), now=self._clock())
                raise error_for_answer(
                    status,
                    body,
                    server=self._server_name,
                    grant=grant,
                    requested=request.scopes,
                    retry_after=retry_after,
                    secrets=self._secrets(),
                )
            if body is None:
                raise errors.InvalidTokenResponseError("the token answer is not JSON")
            try:
                return parse_token_answer(
                    body,
                    request,
                    resources,
                    now=self._clock(),
                    lifetime_when_unstated=self._unstated,
                )
            except errors.InvalidTokenResponseError as exc:
                raise errors.InvalidTokenResponseError(self._scrub(str(exc))) from None

        retry = _retryable if refresh_token is None else _only_rate_limits
        answer: TokenAnswer = await self._with_retries(attempt, "token", worth_retrying=retry)
        self._recent.append(answer.token.value)
        return answer

    async def fetch_token(self, request: TokenRequest) -> DelegationToken:
        """One access token for ``request`` (its audience is the RFC 8707 resource)."""
        if request.client_id != self._creds.client_id:
            # A token got with this client's credentials must never be cached as
            # another agent's: each OAuth client needs a transport of its own.
            raise errors.ConfigurationError(
                f"this OAuthTransport authenticates as {self._creds.client_id!r}, not as "
                f"{request.client_id[:60]!r}; give each OAuth client a transport (and a "
                "broker) of its own"
            )
        metadata = await self.discover()
        resources = request.audience or self._resources
        if self._chain is None:
            answer = await self._grant(metadata, request, resources, None)
        else:

            async def spend(refresh_token: str) -> TokenAnswer:
                return await self._grant(metadata, request, resources, refresh_token)

            answer = await self._chain.spend(spend)
        token = answer.token
        if self._verify_tokens and metadata.jwks_uri and looks_like_jwt(token.value):
            await self._verify(token, metadata, resources)
        _log.info(
            "authsec.oauth.token",
            fingerprint=token.fingerprint,
            jti=token.jti,
            expires_at=token.expires_at.isoformat(),
            rotated=answer.refresh_token is not None,
        )
        return token

    # --- keys and verification ------------------------------------------------------------

    async def fetch_key_set(self, tenant_id: str | None) -> KeySet | None:
        """The issuer's JWK set from ``jwks_uri`` (None when it publishes none)."""
        metadata = await self.discover()
        if metadata.jwks_uri is None:
            return None
        body = await self._get_json(metadata.jwks_uri, "key set")
        if not isinstance(body, dict) or not isinstance(body.get("keys"), list):
            raise errors.InvalidTokenResponseError("the issuer's jwks_uri is not a JWK set")
        self._keys, self._keys_read_at = body, time.monotonic()
        return body

    async def _decode(self, value: str, *, reread: bool) -> jwt.Token:
        if self._keys is None or reread:
            await self.fetch_key_set(None)
        try:
            keys = JoseKeySet.import_key_set(self._keys or {"keys": []})  # type: ignore[arg-type]
            return jwt.decode(value, keys, self._algorithms)
        except (JoseError, ValueError) as exc:
            raise errors.TokenVerificationError(
                f"the access token's signature does not verify against the issuer's keys "
                f"({type(exc).__name__}); it is not used"
            ) from None

    async def _verify(
        self, token: DelegationToken, metadata: ServerMetadata, resources: tuple[str, ...]
    ) -> None:
        """Signature (re-reading the keys once on a miss: rotation), then claims."""
        try:
            decoded = await self._decode(token.value, reread=False)
        except errors.TokenVerificationError:
            if time.monotonic() - self._keys_read_at < _KEY_REFETCH_SECONDS:
                raise
            decoded = await self._decode(token.value, reread=True)
        claims = decoded.claims
        now = self._clock()
        aud = claims.get("aud")
        auds = {aud} if isinstance(aud, str) else set(aud) if isinstance(aud, list) else set()
        problems = []
        if claims.get("iss") != metadata.issuer:
            problems.append("its iss is not the issuer")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= now - self._leeway:
            problems.append("it has no exp or has expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf > now + self._leeway:
            problems.append("it is not valid yet (nbf)")
        if resources and not auds & set(resources):
            problems.append("its aud does not name the resource asked for")
        if problems:
            raise errors.TokenVerificationError(
                "the access token failed verification: " + "; ".join(problems) + "; it is not used"
            )
