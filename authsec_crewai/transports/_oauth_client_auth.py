"""How an OAuth client proves who it is at the token endpoint (RFC 6749 §2.3, RFC 7523).

- ``client_secret_basic``: HTTP Basic whose user and password are the
  *form-urlencoded* client id and secret (RFC 6749 §2.3.1: a secret with a
  space, ``+`` or ``:`` fails at a strict server otherwise);
- ``client_secret_post``: ``client_id`` and ``client_secret`` in the form;
- ``private_key_jwt``: an RS256 assertion with ``iss`` = ``sub`` = client id,
  ``aud`` = the token endpoint, a fresh random ``jti``, a short life, and the
  key's ``kid``; made anew for every request, retries included, because a
  server refuses a ``jti`` it has seen;
- ``none``: a public client (a refresh token from a browser sign-in) sends
  only its ``client_id``.

Unless configured, the method is the strongest one the client can do that
the server advertises.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote_plus

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from .. import errors

__all__ = [
    "ASSERTION_TYPE",
    "AUTH_METHODS",
    "MAX_ASSERTION_LIFETIME",
    "ClientCredentials",
    "load_private_key",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
AUTH_METHODS = ("private_key_jwt", "client_secret_basic", "client_secret_post", "none")
"""Every method this client speaks, strongest first (the order of the automatic choice)."""
MAX_ASSERTION_LIFETIME = 300.0
"""An assertion lives at most five minutes (AuthSec's rule; RFC 7523 wants it short)."""


def load_private_key(pem: str | bytes | Path, *, key_id: str | None = None) -> RSAKey:
    """An RSA private key (2048 bits or more) from PEM text or a PEM file's path.

    Errors never quote the file's content: it is a secret.
    """
    data: bytes
    if isinstance(pem, Path):
        try:
            data = pem.read_bytes()
        except OSError as exc:
            raise errors.ConfigurationError(
                f"AUTHSEC_CLIENT_KEY: cannot read {pem} ({exc.strerror})"
            ) from None
    else:
        data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = RSAKey.import_key(data, parameters={"kid": key_id} if key_id else None)
    except (JoseError, ValueError, TypeError):
        raise errors.ConfigurationError(
            "AUTHSEC_CLIENT_KEY is not an RSA private key in PEM form (-----BEGIN PRIVATE KEY-----)"
        ) from None
    if not key.is_private:
        raise errors.ConfigurationError(
            "AUTHSEC_CLIENT_KEY is a public key; private_key_jwt signs with the private one"
        )
    size = key.private_key.key_size if key.private_key is not None else 0
    if size < 2048:
        raise errors.ConfigurationError(
            f"AUTHSEC_CLIENT_KEY is a {size}-bit RSA key; RS256 needs 2048 bits or more"
        )
    return key


@dataclass(frozen=True)
class ClientCredentials:
    """A client's id and its secret or private key; ``repr`` shows neither."""

    client_id: str
    secret: str | None = field(default=None, repr=False)
    key: RSAKey | None = field(default=None, repr=False)
    key_id: str | None = None
    method: str | None = None
    """Configured method; None lets :meth:`choose` pick from what the server advertises."""
    assertion_lifetime: float = 60.0

    def __post_init__(self) -> None:
        if not self.client_id:
            raise errors.ConfigurationError("an OAuth client needs AUTHSEC_CLIENT_ID")
        if self.method is not None and self.method not in AUTH_METHODS:
            raise errors.ConfigurationError(
                f"unknown client authentication method {self.method!r}; use one of "
                f"{', '.join(AUTH_METHODS)}"
            )
        if not 0 < self.assertion_lifetime <= MAX_ASSERTION_LIFETIME:
            raise errors.ConfigurationError("an assertion lives more than 0 and at most 300 s")

    def _possible(self) -> list[str]:
        out = []
        if self.key is not None:
            out.append("private_key_jwt")
        if self.secret:
            out += ["client_secret_basic", "client_secret_post"]
        if not out:
            out.append("none")
        return out

    def choose(self, advertised: Sequence[str]) -> str:
        """The method to use against a server that advertises ``advertised``."""
        possible = self._possible()
        if self.method is not None:
            if self.method not in possible:
                raise errors.ConfigurationError(
                    f"client authentication {self.method} needs "
                    + (
                        "AUTHSEC_CLIENT_KEY"
                        if self.method == "private_key_jwt"
                        else "AUTHSEC_CLIENT_SECRET"
                    )
                )
            return self.method
        for method in AUTH_METHODS:
            if method in possible and method in advertised:
                return method
        raise errors.ConfigurationError(
            f"the authorization server accepts {', '.join(advertised) or 'no method'} for "
            f"client authentication, and this client can do {', '.join(possible)}; configure "
            "AUTHSEC_CLIENT_SECRET or AUTHSEC_CLIENT_KEY to match"
        )

    def basic_credential(self) -> str | None:
        """The ``Basic`` credential (a secret: it is the secret, base64-encoded)."""
        if not self.secret:
            return None
        pair = f"{quote_plus(self.client_id)}:{quote_plus(self.secret)}"
        return base64.b64encode(pair.encode()).decode("ascii")

    def assertion(self, token_endpoint: str, now: float) -> str:
        """A fresh RFC 7523 client assertion for ``token_endpoint``."""
        if self.key is None:  # pragma: no cover (choose() refuses this first)
            raise errors.ConfigurationError("private_key_jwt needs AUTHSEC_CLIENT_KEY")
        header = {"alg": "RS256", "typ": "JWT"}
        kid = self.key_id or self.key.kid
        if kid:
            header["kid"] = kid
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_endpoint,
            "iat": int(now),
            "exp": int(now + self.assertion_lifetime),
            "jti": secrets.token_urlsafe(24),
        }
        return jwt.encode(header, claims, self.key)

    def apply(
        self, method: str, token_endpoint: str, now: float
    ) -> tuple[dict[str, str], list[tuple[str, str]], str | None]:
        """Headers and form fields that authenticate one request, and the assertion
        made for it (a secret to scrub), if any."""
        if method == "client_secret_basic":
            return {"authorization": f"Basic {self.basic_credential()}"}, [], None
        if method == "client_secret_post":
            return {}, [("client_id", self.client_id), ("client_secret", self.secret or "")], None
        if method == "private_key_jwt":
            assertion = self.assertion(token_endpoint, now)
            form = [
                ("client_id", self.client_id),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", assertion),
            ]
            return {}, form, assertion
        return {}, [("client_id", self.client_id)], None

    def secrets(self) -> tuple[str, ...]:
        """Every secret value this client sends (to scrub from anything reported)."""
        out = [s for s in (self.secret, self.basic_credential()) if s]
        if self.secret:
            out.append(quote_plus(self.secret))
        return tuple(dict.fromkeys(out))
