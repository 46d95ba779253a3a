"""Helpers for the record/replay tests, and an independent scan of every cassette they write.

The scan deliberately does not use ``authsec_crewai.cassettes.find_secrets``: it
is a second opinion, with its own patterns, over the raw text of every
cassette written under the session's temporary directory (pytester runs
included). Files under a directory named ``deliberately-unsafe`` are the
negative examples of ``cassette verify`` and are skipped.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

API_TOKEN = "s3cr3t-api-token-0123456789abcdef"
"""The AuthSec API token the recording tests use; it must never reach a cassette."""

UNSAFE_DIR = "deliberately-unsafe"

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")
_BASE64_BODY = re.compile(r'"base64":\s*"([A-Za-z0-9+/=]*)"')


def problems_in(text: str) -> list[str]:
    """What must not be in a cassette's text: signed JWTs, credential headers, the API token."""
    found: list[str] = []
    decoded = [text]
    for match in _BASE64_BODY.finditer(text):
        decoded.append(base64.b64decode(match.group(1)).decode("latin-1"))
    for chunk in decoded:
        for match in _JWT.finditer(chunk):
            if match.group(2) not in ("", "REDACTED"):
                found.append(f"JWT signature {match.group(2)[:12]}...")
            payload = match.group(1)
            claims = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
            if API_TOKEN.encode() in claims:
                found.append("API token inside JWT claims")
        if API_TOKEN in chunk:
            found.append("API token")
    for name in ("authorization", "cookie", "set-cookie", "proxy-authorization"):
        if re.search(rf'"{name}"\s*:', text, re.IGNORECASE):
            found.append(f"{name} header")
    if re.search(
        r"(?i)bearer\s+(?!REDACTED)(?![A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.REDACTED)[A-Za-z0-9._~+/-]{8,}",
        text,
    ):
        found.append("bearer credential")
    return found


def cassettes_under(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.json")):
        if UNSAFE_DIR in path.parts:
            continue
        try:
            head = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if '"format": "authsec-cassette"' in head:
            yield path


@pytest.fixture(scope="session", autouse=True)
def scan_written_cassettes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """At the end of the session: no cassette any test wrote holds a secret."""
    yield
    root = tmp_path_factory.getbasetemp()
    bad = {}
    for path in cassettes_under(root):
        found = problems_in(path.read_text(encoding="utf-8"))
        if found:
            bad[str(path)] = found
    assert not bad, f"cassettes with secrets: {json.dumps(bad, indent=2)}"
