"""Lazy re-exports for a package's front door: a name's module is imported on first use.

Keeps ``import authsec_crewai.transports`` (or ``.testing``) cheap: a mode, or a
test suite, only loads what it uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, where: Mapping[str, str], public: list[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` that imports each name of ``where`` (name -> relative
    module) from its module when first asked for, and a ``__dir__`` listing ``public``."""

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(import_module(where[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(public)

    return __getattr__, __dir__
