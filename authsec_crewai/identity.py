"""The one rule for an agent's client id, used by the broker and the settings alike.

AuthSec identifies an agent by a UUID (its server answers 400 to anything
else), written in the canonical 8-4-4-4-12 hexadecimal form. Checking it where
a broker meets an id, and again where settings read one, with two different
rules let each accept what the other refused; this module is that rule, once.
An OAuth server's client ids are opaque (RFC 6749 §2.2): a transport that
declares so (``TransportInfo.client_ids == "opaque"``) gets the opaque rule,
also once, here.
"""

from __future__ import annotations

import re

from .errors import ConfigurationError

__all__ = ["OPAQUE_ID_LIMIT", "UUID_TEXT", "check_client_id", "is_opaque_id", "is_uuid_text"]

UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

OPAQUE_ID_LIMIT = 1024
"""The longest opaque client id taken: a sane bound on what goes into keys and logs."""


def is_uuid_text(text: str) -> bool:
    """True when ``text`` is a UUID in its canonical written form."""
    return UUID_TEXT.fullmatch(text) is not None


def is_opaque_id(text: str) -> bool:
    """True when ``text`` is an acceptable opaque (OAuth) client id: printable, bounded."""
    return bool(text) and len(text) <= OPAQUE_ID_LIMIT and text.isprintable()


def check_client_id(client_id: object, *, opaque: bool = False) -> str:
    """``client_id`` if it is a UUID, as the AuthSec contract requires; else a clear error.

    ``opaque``: the transport's client ids are opaque (OAuth); any printable
    id of at most :data:`OPAQUE_ID_LIMIT` characters then passes.
    """
    if not isinstance(client_id, str):
        raise ConfigurationError(
            f"an agent's client_id must be a UUID string, not {type(client_id).__name__}"
        )
    if not client_id:
        raise ConfigurationError(
            "an agent's client_id is required (set AUTHSEC_CLIENT_ID, or name the agent)"
        )
    if opaque:
        if not is_opaque_id(client_id):
            raise ConfigurationError(
                f"an OAuth client_id must be printable and at most {OPAQUE_ID_LIMIT} characters"
            )
        return client_id
    if not is_uuid_text(client_id):
        raise ConfigurationError(
            f"an agent's client_id must be a UUID (the AuthSec contract), not {client_id[:60]!r}"
        )
    return client_id
