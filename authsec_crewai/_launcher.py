"""The ``authsec-crewai`` console script: the command, or one line saying which extra it
needs.

The command's modules (click, rich) are the ``cli`` extra: without it a bare
import would end in a traceback, where every other failure of the command is
one line on standard error.
"""

from __future__ import annotations

import sys

from .errors import MissingExtraError

__all__ = ["main"]

EXIT_CONFIGURATION = 2
"""As the command itself exits on configuration errors."""


def main() -> None:
    try:
        from .cli import main as command
    except MissingExtraError as exc:
        sys.stderr.write(f"error: {exc}\n")
        raise SystemExit(EXIT_CONFIGURATION) from None
    command()
