"""Imports on first use: lazy re-exports for a package's front door, and the optional
extras whose absence must say what to install.

Keeps ``import authsec_crewai.transports`` (or ``.testing``) cheap: a mode, or a
test suite, only loads what it uses. And a feature whose framework is not
installed fails with the one line that fixes it (``pip install
'authsec-crewai[crewai]'``), not a bare ``No module named 'crewai'``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import import_module
from typing import Any, Final

__all__ = ["EXTRAS", "lazy_exports", "requires_extra"]

EXTRAS: Final[Mapping[str, frozenset[str]]] = {
    "crewai": frozenset({"crewai"}),
    "cli": frozenset({"click", "rich", "uvicorn"}),
    "httpx2": frozenset({"httpx2", "httpcore2"}),
    "langchain": frozenset({"langchain_core"}),
    "mcp": frozenset({"mcp"}),
    "otel": frozenset({"opentelemetry.sdk"}),
    "openai-agents": frozenset({"agents", "openai"}),
    "pydantic-ai": frozenset({"pydantic_ai"}),
    "redis": frozenset({"coredis"}),
}
"""Each optional extra of the distribution, and the modules it brings (top-level ones,
or a package below a core one: the SDK lives in the API's ``opentelemetry``)."""


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


@contextmanager
def requires_extra(extra: str, feature: str) -> Iterator[None]:
    """Imports in this block belong to ``extra``: a module of it that is missing raises
    :class:`~authsec_crewai.errors.MissingExtraError` naming the extra to install.

    A missing module that is not the extra's (a broken install of something
    else) propagates as it is: the message would otherwise blame the wrong thing.
    """
    modules = EXTRAS[extra]
    try:
        yield
    except ModuleNotFoundError as exc:
        name = exc.name or ""
        ours = [m for m in modules if name == m or name.startswith(f"{m}.")]
        if not ours:
            raise
        missing = ours[0]
        from .errors import MissingExtraError

        raise MissingExtraError(
            f"{feature}: the {extra!r} extra is not installed ({missing} is missing); "
            f"pip install 'authsec-crewai[{extra}]'",
            extra=extra,
            name=missing,
        ) from None
