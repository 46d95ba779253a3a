"""Cassettes: the file format of a recorded session, its redaction, and its matching.

A cassette is one JSON document, written for people and for ``git diff``:
two-space indentation, one interaction after another, structural keys in a
fixed order and headers sorted. It records three kinds of interaction, each
with its ``offset`` in seconds from the start of the recording:

``token``
    a delegation-token fetch: the request (client id, scopes, audience) and
    the server's answer body, or the typed error it became;
``key_set``
    a fetch of a tenant's public keys;
``api``
    a protected-API call: method, path, query, request body, and the answer's
    status, headers and body.

What is never written, whatever the transport saw (see :class:`Scrubber`):
``Authorization`` / ``Cookie`` / ``Set-Cookie`` and similar headers (request
headers are not stored at all), the API token, and the signature of any JWT,
anywhere it appears (answer bodies, API bodies, header values): a token is kept
as ``<header>.<payload>.REDACTED``. Its claims stay readable, which is what
replay needs (it verifies claims only), and it can never again be presented as
a credential to anything that checks signatures. :func:`find_secrets` proves
it: the writer runs it on every document and refuses to write one that fails.

This package is the one place that knows the format; the transports in
:mod:`authsec_crewai.transports.record` and :mod:`authsec_crewai.transports.replay`,
the CLI and the pytest plugin all go through it. It imports nothing heavy.
One module per job:

- :mod:`.schema`: the format's names and the validation of an interaction;
- :mod:`.scrub`: redaction (:class:`Scrubber`) and the secret scan (:func:`find_secrets`);
- :mod:`.bodies`: how bodies are stored;
- :mod:`.records`: typed errors as records and back;
- :mod:`.files`: the document, atomic writes, loading;
- :mod:`.player`: request matching and the :class:`Player` that serves answers.
"""

from __future__ import annotations

from .bodies import decode_body, encode_body
from .files import Cassette, dumps, iso_utc, load, new_document, parse, write_atomic
from .player import Player, describe, request_key
from .records import error_from_record, error_record
from .schema import (
    FORMAT,
    RECORD_MODES,
    VERSION,
    Interaction,
    RecordMode,
    ScrubHook,
    validate_interaction,
)
from .scrub import NEVER_STORED_HEADERS, REDACTION_MARKER, Scrubber, find_secrets, strip_credentials

__all__ = [
    "FORMAT",
    "NEVER_STORED_HEADERS",
    "RECORD_MODES",
    "REDACTION_MARKER",
    "VERSION",
    "Cassette",
    "Interaction",
    "Player",
    "RecordMode",
    "ScrubHook",
    "Scrubber",
    "decode_body",
    "describe",
    "dumps",
    "encode_body",
    "error_from_record",
    "error_record",
    "find_secrets",
    "iso_utc",
    "load",
    "new_document",
    "parse",
    "request_key",
    "strip_credentials",
    "validate_interaction",
    "write_atomic",
]
