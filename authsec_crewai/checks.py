"""What a check of ``authsec-crewai doctor`` reports, shared by the doctor and its canary.

A result type of its own so the canary (which the doctor runs) and the doctor
(whose checks the canary's results join) depend on it, not on each other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from . import _secrets
from ._version import __version__
from .redact import redact_credentials

__all__ = ["EXIT_CONFIGURATION", "EXIT_FAILED", "EXIT_OK", "Check", "Report", "Status", "safe"]

EXIT_OK = 0
"""Every check passed; warnings may have been shown."""
EXIT_FAILED = 1
"""A check failed: a server is unreachable, a clock is off, a store is unreadable, a leak."""
EXIT_CONFIGURATION = 2
"""The configuration is wrong (settings that do not resolve, a malformed store key)."""

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True, slots=True)
class Check:
    """One result: what was checked, how it went, one line for a person, facts for scripts."""

    name: str
    status: Status
    summary: str
    details: Mapping[str, Any] = field(default_factory=dict)
    configuration: bool = False
    """A failure of the configuration itself (exit status 2, not 1)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "summary": self.summary,
            "details": dict(self.details),
        }


@dataclass(frozen=True, slots=True)
class Report:
    """Every check of one run, and the exit status they add up to."""

    checks: tuple[Check, ...]

    @property
    def exit_code(self) -> int:
        failed = [check for check in self.checks if check.status == "fail"]
        if any(check.configuration for check in failed):
            return EXIT_CONFIGURATION
        return EXIT_FAILED if failed else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        counts = Counter(check.status for check in self.checks)
        return {
            "version": __version__,
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "counts": {status: counts.get(status, 0) for status in ("ok", "warn", "fail", "skip")},
            "checks": [check.to_dict() for check in self.checks],
        }


def safe(text: object) -> str:
    """``text`` on one line, with every secret the process holds and every credential masked."""
    flat = " ".join(str(text).split())
    return redact_credentials(_secrets.scrub(flat))
