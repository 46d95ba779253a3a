"""The public surface: what ``__all__`` names exists, the docs import nothing else,
and the front door stays light."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted(
    [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").glob("*.py")]
)
PUBLIC_MODULES = [
    "authsec_crewai",
    "authsec_crewai.errors",
    "authsec_crewai.transports",
    "authsec_crewai.wiring",
    "authsec_crewai.settings",
    "authsec_crewai.logging",
    "authsec_crewai.fetch",
    "authsec_crewai.testing",
    "authsec_crewai.cassettes",
    "authsec_crewai.auth",
    "authsec_crewai.telemetry",
    "authsec_crewai.toolspec",
    "authsec_crewai.integrations.langchain",
    "authsec_crewai.integrations.pydantic_ai",
    "authsec_crewai.integrations.openai_agents",
    "authsec_crewai.integrations.httpx2",
]


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_name_in_all_exists(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__all__, module_name
    for name in module.__all__:
        assert getattr(module, name) is not None, name


def test_the_front_door_names_what_users_import() -> None:
    import authsec_crewai
    from authsec_crewai import errors

    for name in errors.__all__:
        assert getattr(authsec_crewai, name) is getattr(errors, name)
    for name in ("FetchResult", "DEMO_CLIENT_ID", "build_broker", "build_fetcher"):
        assert name in authsec_crewai.__all__
    assert set(dir(authsec_crewai)) == set(authsec_crewai.__all__)


def _imports(path: Path) -> list[tuple[str, str, int]]:
    """``(module, name, line)`` for every ``from authsec_crewai... import name`` in a
    document's Python code (a Markdown file's fenced blocks, or a whole script)."""
    text = path.read_text(encoding="utf-8")
    found: list[tuple[str, str, int]] = []
    blocks = [text] if path.suffix == ".py" else text.split("```")[1::2]
    for block in blocks:
        code = block.removeprefix("python").removeprefix("py")
        try:
            tree = ast.parse(code)
        except SyntaxError:
            continue  # a shell session or output, not Python
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("authsec_crewai")
            ):
                found += [(node.module, alias.name, node.lineno) for alias in node.names]
    return found


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_the_docs_import_only_public_names(document: Path) -> None:
    for module_name, name, _ in _imports(document):
        module = importlib.import_module(module_name)
        public = getattr(module, "__all__", None)
        assert public is not None, f"{document.name}: {module_name} has no __all__"
        assert name in public, f"{document.name}: {name} is not in {module_name}.__all__"


def test_the_docs_were_read() -> None:
    """The check above finds imports (a parser that found none would pass vacuously)."""
    everything = [item for document in DOCUMENTS for item in _imports(document)]
    assert ("authsec_crewai", "build_broker") in {(m, n) for m, n, _ in everything}
    assert len(everything) > 20


@pytest.mark.parametrize(
    ("module", "heavy"),
    [
        (
            "authsec_crewai",
            ["crewai", "httpx", "pydantic", "authsec_crewai.broker", "authsec_crewai.wiring"],
        ),
        ("authsec_crewai.settings", ["crewai", "httpx", "authsec_crewai.broker"]),
        ("authsec_crewai.wiring", ["crewai", "httpx", "authsec_crewai.transports.live"]),
        ("authsec_crewai.auth", ["crewai", "httpx2", "langchain_core"]),
        ("authsec_crewai._toolruntime", ["crewai", "httpx2", "langchain_core", "pydantic_ai"]),
        ("authsec_crewai.integrations.langchain", ["crewai", "pydantic_ai", "agents"]),
    ],
)
def test_importing_stays_light(module: str, heavy: list[str]) -> None:
    code = f"import sys, {module}\nprint([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == "[]"


def test_low_modules_do_not_import_the_front_door() -> None:
    """``__version__`` has a module of its own; the transports and the fetcher use it."""
    for path in [
        ROOT / "authsec_crewai" / "fetch.py",
        ROOT / "authsec_crewai" / "cli.py",
        ROOT / "authsec_crewai" / "transports" / "live.py",
    ]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module is None and node.level >= 1:
                assert "__version__" not in {a.name for a in node.names}, path.name
