"""The one rule for an agent's client id, used by the broker and the settings alike.

AuthSec identifies an agent by a UUID (its server answers 400 to anything
else), written in the canonical 8-4-4-4-12 hexadecimal form. Checking it where
a broker meets an id, and again where settings read one, with two different
rules let each accept what the other refused; this module is that rule, once.
"""

from __future__ import annotations

import re

from .errors import ConfigurationError

__all__ = ["UUID_TEXT", "check_client_id", "is_uuid_text"]

UUID_TEXT = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def is_uuid_text(text: str) -> bool:
    """True when ``text`` is a UUID in its canonical written form."""
    return UUID_TEXT.fullmatch(text) is not None


def check_client_id(client_id: object) -> str:
    """``client_id`` if it is a UUID, as the AuthSec contract requires; else a clear error."""
    if not isinstance(client_id, str):
        raise ConfigurationError(
            f"an agent's client_id must be a UUID string, not {type(client_id).__name__}"
        )
    if not client_id:
        raise ConfigurationError(
            "an agent's client_id is required (set AUTHSEC_CLIENT_ID, or name the agent)"
        )
    if not is_uuid_text(client_id):
        raise ConfigurationError(
            f"an agent's client_id must be a UUID (the AuthSec contract), not {client_id[:60]!r}"
        )
    return client_id
