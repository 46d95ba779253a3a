"""Verification of delegation tokens against the tenant's public keys.

The broker never hands out a token it has not checked (when a key set is
available): the signature must be RS256 by one of the tenant's RSA keys, the
time claims must hold by the broker's clock, and the signed claims must agree
with what the server's answer said about the token. Everything here is pinned
rather than negotiated: the algorithm comes from this module, never from the
token's header, so ``alg: none`` and the RSA-public-key-as-HMAC-secret trick
have nothing to work with.

:class:`TokenVerifier` is the async verifier the broker uses; :func:`verify_bearer`
is the small synchronous check the mock server's protected API uses.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from . import errors
from .logging import get_logger
from .redact import fingerprint
from .token import DelegationToken
from .transports.base import KeySet, Transport
from .wire import MAX_TOKEN_CHARS

__all__ = [
    "ALGORITHM",
    "TokenVerifier",
    "check_time_claims",
    "rsa_keys",
    "validate_spiffe_id",
    "verify_bearer",
]

ALGORITHM = "RS256"
"""The only signature algorithm AuthSec uses, and the only one accepted."""

MIN_RSA_BITS = 2048
"""RSA keys shorter than this are ignored: they are breakable, AuthSec uses 2048."""

MAX_KEYS = 32
"""A tenant has one key (two during a rotation); a huge set is not trusted."""

_log = get_logger("authsec_crewai.verify")

# --- SPIFFE ids (authsec-api.md section 5) --------------------------------------------

_SPIFFE_SCHEME = "spiffe://"
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_MAX_SPIFFE_BYTES = 2048
_MAX_TRUST_DOMAIN_BYTES = 255


def validate_spiffe_id(value: str) -> None:
    """Raise ``ValueError`` saying why ``value`` is not a SPIFFE workload id.

    The token's ``sub`` names the agent; downstream services authorise by it, so
    a lookalike (``spiffe://evil.org@example.org/...``, a ``..`` segment, a
    percent-encoded slash) must never pass as a well-formed id.
    """
    if not isinstance(value, str):
        raise ValueError(f"a SPIFFE id must be a string, not {type(value).__name__}")
    shown = repr(value[:80])
    if len(value.encode("utf-8", "surrogatepass")) > _MAX_SPIFFE_BYTES:
        raise ValueError(f"SPIFFE id {shown}... is longer than {_MAX_SPIFFE_BYTES} bytes")
    if not value.isascii():
        raise ValueError(f"SPIFFE id {shown} contains non-ASCII characters")
    if not value.startswith(_SPIFFE_SCHEME):
        raise ValueError(f"SPIFFE id {shown} must start with 'spiffe://' (lowercase)")
    for char, what in (("?", "a query"), ("#", "a fragment"), ("@", "userinfo")):
        if char in value:
            raise ValueError(f"SPIFFE id {shown} must not contain {what} ({char!r})")
    rest = value[len(_SPIFFE_SCHEME) :]
    trust_domain, slash, path = rest.partition("/")
    if not trust_domain:
        raise ValueError(f"SPIFFE id {shown} has an empty trust domain")
    if ":" in trust_domain:
        raise ValueError(f"SPIFFE id {shown} must not carry a port in its trust domain")
    if len(trust_domain) > _MAX_TRUST_DOMAIN_BYTES:
        raise ValueError(
            f"SPIFFE id {shown} has a trust domain longer than {_MAX_TRUST_DOMAIN_BYTES} bytes"
        )
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(
            f"SPIFFE id {shown} has an invalid trust domain {trust_domain[:60]!r}: "
            "only lowercase letters, digits, '.', '-' and '_' are allowed"
        )
    if not slash or not path:
        raise ValueError(f"SPIFFE id {shown} has no path: it names no workload")
    for segment in path.split("/"):
        if not segment:
            raise ValueError(f"SPIFFE id {shown} has an empty path segment ('//' or trailing '/')")
        if segment in (".", ".."):
            raise ValueError(f"SPIFFE id {shown} has a {segment!r} path segment")
        if not _PATH_SEGMENT.fullmatch(segment):
            raise ValueError(
                f"SPIFFE id {shown} has an invalid path segment {segment[:60]!r}: "
                "only letters, digits, '.', '-' and '_' are allowed"
            )


# --- parsing a compact JWS without trusting it ----------------------------------------


@dataclass(frozen=True, slots=True)
class _Parsed:
    header: dict[str, Any]
    claims: dict[str, Any]


def _b64_json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise errors.TokenVerificationError(f"the token's {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise errors.TokenVerificationError(f"the token's {what} is not a JSON object")
    return value


def _parse(value: str, label: str) -> _Parsed:
    """Split and decode a compact JWT, refusing anything not shaped like AuthSec's.

    The size cap comes first so a hostile megabyte is never base64-decoded.
    """
    if len(value) > MAX_TOKEN_CHARS:
        raise errors.TokenVerificationError(
            f"token {label} is {len(value)} characters long; refusing anything over "
            f"{MAX_TOKEN_CHARS}"
        )
    if not value.isascii() or value.count(".") != 2:
        raise errors.TokenVerificationError(f"token {label} is not a compact JWS (three parts)")
    header_b64, payload_b64, _ = value.split(".")
    header = _b64_json(header_b64, "header")
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise errors.TokenVerificationError(
            f"token {label} uses algorithm {str(alg)[:20]!r}; only {ALGORITHM} is accepted"
        )
    typ = header.get("typ")
    if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
        raise errors.TokenVerificationError(f"token {label} has type {str(typ)[:20]!r}, not JWT")
    for name in ("crit", "b64"):
        if name in header:
            raise errors.TokenVerificationError(
                f"token {label} carries a {name!r} header this verifier does not support"
            )
    return _Parsed(header=header, claims=_b64_json(payload_b64, "claims"))


# --- keys and signatures ---------------------------------------------------------------


def rsa_keys(key_set: KeySet | Mapping[str, Any]) -> tuple[RSAKey, ...]:
    """The usable RS256 verification keys of a JWK set, public parts only.

    Keys of other types, keys marked for another use or algorithm, short RSA
    keys and malformed entries are skipped, not fatal: a set may legitimately
    hold keys this verifier has no business with.
    """
    raw = key_set.get("keys") if isinstance(key_set, Mapping) else None
    if not isinstance(raw, list):
        return ()
    found: list[RSAKey] = []
    for item in raw[:MAX_KEYS]:
        if not isinstance(item, Mapping) or item.get("kty") != "RSA":
            continue
        if item.get("use", "sig") != "sig" or item.get("alg", ALGORITHM) != ALGORITHM:
            continue
        n, e = item.get("n"), item.get("e")
        if not isinstance(n, str) or not isinstance(e, str):
            continue
        try:
            bits = int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))).bit_length()
            if bits < MIN_RSA_BITS:
                _log.warning("authsec.verify.short_key", bits=bits, kid=str(item.get("kid"))[:40])
                continue
            key = RSAKey.import_key({"kty": "RSA", "n": n, "e": e})
        except (JoseError, ValueError, TypeError):
            _log.warning("authsec.verify.bad_key", kid=str(item.get("kid"))[:40])
            continue
        found.append(key)
    return tuple(found)


def _signed_by(value: str, keys: Sequence[RSAKey]) -> bool:
    """True when one of ``keys`` made the RS256 signature of ``value``.

    Tokens carry no ``kid``, so each key is tried; the algorithm list passed to
    joserfc is the pin, independent of what the header claims.
    """
    try:
        obj = jws.extract_compact(value.encode("ascii"))
    except (JoseError, ValueError, UnicodeError):
        return False
    for key in keys:
        try:
            if jws.validate_compact(obj, key, algorithms=[ALGORITHM]):
                return True
        except (JoseError, ValueError, TypeError):
            continue
    return False


# --- claims ----------------------------------------------------------------------------


def _number(claims: Mapping[str, Any], name: str, label: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise errors.TokenVerificationError(f"token {label} has no {name!r} claim")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise errors.TokenVerificationError(f"token {label} has a non-numeric {name!r} claim")
    return float(value)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def check_time_claims(
    claims: Mapping[str, Any], *, now: float, leeway: float, label: str = "(unnamed)"
) -> None:
    """Refuse a token that is expired, not yet valid, or issued in the future.

    ``now`` is UNIX time from the caller's clock (never read here), so tests and
    replays can move time; ``leeway`` absorbs clock skew between hosts.
    """
    exp = _number(claims, "exp", label, required=True)
    assert exp is not None
    if now >= exp + leeway:
        raise errors.TokenVerificationError(
            f"token {label} expired at {_when(exp)} ({now - exp:.0f}s ago, leeway {leeway:g}s); "
            "fetch a new token, or check this machine's clock"
        )
    nbf = _number(claims, "nbf", label, required=False)
    if nbf is not None and now + leeway < nbf:
        raise errors.TokenVerificationError(
            f"token {label} is not valid before {_when(nbf)} (leeway {leeway:g}s); "
            "check this machine's clock"
        )
    iat = _number(claims, "iat", label, required=False)
    if iat is not None and now + leeway < iat:
        raise errors.TokenVerificationError(
            f"token {label} claims to be issued in the future ({_when(iat)}, leeway "
            f"{leeway:g}s); check this machine's clock"
        )


def _strings(value: Any) -> frozenset[str] | None:
    if isinstance(value, str):
        return frozenset([value])
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return frozenset(value)
    return None


def _check_audience(claims: Mapping[str, Any], audience: frozenset[str], label: str) -> None:
    if not audience:
        return
    got = _strings(claims.get("aud"))
    if not got or not (got & audience):
        shown = sorted(got)[:5] if got else []
        raise errors.TokenVerificationError(
            f"token {label} is meant for audience {shown}, not {sorted(audience)}; "
            "check AUTHSEC_AUDIENCE or the audience the administrator delegated"
        )


def verify_bearer(
    value: str,
    key_set: KeySet | Mapping[str, Any],
    *,
    now: float,
    leeway: float = 0.0,
    audience: Iterable[str] = (),
) -> dict[str, Any]:
    """Check a bearer token's signature, time claims and audience; return its claims.

    The synchronous check a resource server does (the mock vault API uses it).
    It does not fetch keys, it has no cache and it does not compare claims with
    a server answer: that is :class:`TokenVerifier`'s job.
    """
    label = f"jwt:{fingerprint(value)}"
    parsed = _parse(value, label)
    keys = rsa_keys(key_set)
    if not keys:
        raise errors.TokenVerificationError("the key set holds no usable RS256 key")
    if not _signed_by(value, keys):
        raise errors.TokenVerificationError(f"token {label} is not signed by a trusted key")
    check_time_claims(parsed.claims, now=now, leeway=leeway, label=label)
    _check_audience(parsed.claims, frozenset(audience), label)
    return parsed.claims


# --- the async verifier ------------------------------------------------------------------


@dataclass
class _Keys:
    """A tenant's cached keys. ``keys`` is None when the transport has none to give."""

    keys: tuple[RSAKey, ...] | None
    generation: int
    rekeyed_at: float | None = None


class TokenVerifier:
    """Verifies delegation tokens before the broker caches or hands them out.

    Key sets are fetched through the transport once per tenant and cached here
    (transports do not cache them, so a re-read here is a real re-fetch). When a
    signature does not match the cached keys, the set is re-read once, because
    the tenant may have rotated its key; at most one such re-read happens per
    ``rekey_interval`` seconds of ``monotonic`` time (injectable, like the
    broker's clocks) so a run of bad tokens cannot turn into a stream of
    key-set requests. If the transport has no key set
    (returns None) verification is skipped, and that is logged once.

    ``claims_only`` skips the signature but checks every claim: replayed tokens
    have had their signatures redacted.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        audience: Iterable[str] = (),
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
        claims_only: bool = False,
        rekey_interval: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        self._transport = transport
        self.audience = frozenset((audience,) if isinstance(audience, str) else audience)
        self.leeway = leeway
        self._clock = clock
        self._monotonic = monotonic
        self.claims_only = claims_only
        self.rekey_interval = rekey_interval
        self._cache: dict[str | None, _Keys] = {}
        # One lock per tenant: a tenant whose key endpoint hangs must not hold up
        # another tenant's first verification.
        self._locks: dict[str | None, anyio.Lock] = {}
        self._skip_logged = False
        self.key_set_fetches = 0
        """How many times this verifier asked the transport for a key set."""

    def __repr__(self) -> str:
        return (
            f"TokenVerifier(audience={sorted(self.audience)!r}, leeway={self.leeway:g}, "
            f"claims_only={self.claims_only})"
        )

    async def verify(self, token: DelegationToken) -> None:
        """Raise ``TokenVerificationError`` unless ``token`` may be used.

        The error message names the token by fingerprint only.
        """
        label = f"jwt:{token.fingerprint}"
        parsed = _parse(token.value, label)
        if not self.claims_only:
            await self._check_signature(token, label)
        self._check_claims(token, parsed.claims, label)

    # --- signature ---------------------------------------------------------------

    async def _check_signature(self, token: DelegationToken, label: str) -> None:
        tenant = token.tenant_id
        entry, fresh = await self._load(tenant, stale=None)
        if entry.keys is None:
            if not self._skip_logged:
                self._skip_logged = True
                _log.warning(
                    "authsec.verify.skipped",
                    reason="the transport offers no key set; signatures are not checked",
                    tenant_id=tenant,
                )
            return
        if entry.keys and _signed_by(token.value, entry.keys):
            return
        if not fresh and self._may_rekey(entry):
            _log.info("authsec.verify.rekey", tenant_id=tenant, fingerprint=token.fingerprint)
            entry, _ = await self._load(tenant, stale=entry.generation)
            if entry.keys and _signed_by(token.value, entry.keys):
                return
        if entry.keys is not None and not entry.keys:
            raise errors.TokenVerificationError(
                f"token {label} cannot be verified: tenant {tenant}'s key set holds no "
                "usable RS256 key"
            )
        raise errors.TokenVerificationError(
            f"token {label} is not signed by any key of tenant {tenant}'s key set; refusing it"
        )

    def _may_rekey(self, entry: _Keys) -> bool:
        return entry.rekeyed_at is None or self._monotonic() - entry.rekeyed_at >= (
            self.rekey_interval
        )

    async def _load(self, tenant: str | None, *, stale: int | None) -> tuple[_Keys, bool]:
        """The tenant's keys, fetched if missing or if the cached ``stale`` generation
        is still the current one. Returns ``(entry, fetched_by_this_call)``.

        The tenant's lock makes concurrent verifications of a cold or rotated
        tenant share one key-set request (and only that tenant's); the
        generation check lets the waiters see that someone else already re-read
        the set.
        """
        lock = self._locks.get(tenant)
        if lock is None:
            lock = self._locks.setdefault(tenant, anyio.Lock())
        async with lock:
            entry = self._cache.get(tenant)
            if entry is not None and (stale is None or entry.generation != stale):
                return entry, False
            self.key_set_fetches += 1
            key_set = await self._transport.fetch_key_set(tenant)
            keys = None if key_set is None else rsa_keys(key_set)
            generation = 0 if entry is None else entry.generation + 1
            rekeyed_at = None if stale is None else self._monotonic()
            new = _Keys(keys=keys, generation=generation, rekeyed_at=rekeyed_at)
            self._cache[tenant] = new
            return new, True

    # --- claims ------------------------------------------------------------------

    def _check_claims(self, token: DelegationToken, claims: Mapping[str, Any], label: str) -> None:
        check_time_claims(claims, now=self._clock(), leeway=self.leeway, label=label)
        _check_audience(claims, self.audience, label)
        sub = claims.get("sub")
        if not isinstance(sub, str):
            raise errors.TokenVerificationError(f"token {label} has no 'sub' claim")
        try:
            validate_spiffe_id(sub)
        except ValueError as exc:
            raise errors.TokenVerificationError(
                f"token {label}: 'sub' is not a valid SPIFFE id ({exc})"
            ) from None
        signed_audience = _strings(claims.get("aud")) or frozenset()
        if token.audience and signed_audience != frozenset(token.audience):
            raise errors.TokenVerificationError(
                f"token {label}: its signed audience {sorted(signed_audience)[:5]} differs "
                f"from the server's answer {sorted(token.audience)[:5]}; refusing it"
            )
        signed = _strings(claims.get("permissions"))
        if signed is None:
            raise errors.TokenVerificationError(
                f"token {label} has no usable 'permissions' claim (a list of strings)"
            )
        if signed != token.permissions:
            raise errors.TokenVerificationError(
                f"token {label}: its signed permissions {sorted(signed)[:10]} differ from "
                f"the server's answer {sorted(token.permissions)[:10]}; refusing it"
            )
