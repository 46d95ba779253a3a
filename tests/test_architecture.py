"""The import graph runs one way: no cycles, and no module imports a layer above its own.

Every import counts, those under ``TYPE_CHECKING`` included: a type-only import
upward still means a lower layer knows a higher one. The layers are the ones
``docs/architecture.md`` draws; a new module gets its layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "authsec_crewai"

# Lower numbers are lower layers. Within the broker package the order is finer.
LAYERS: dict[str, float] = {
    # values and helpers that know nothing of the rest
    "_version": 0,
    "errors": 0,
    "redact": 0,
    "_urls": 0,
    "_capped": 0,
    "_lazy": 0,
    "_loopref": 0,
    "_secrets": 0,
    "_redis_urls": 0,
    "token": 1,
    "identity": 1,
    "policy": 1,
    "logging": 1,
    # the wire, telemetry, the contracts of transports and stores, cassettes
    "wire": 2,
    "telemetry": 2,
    "transports.base": 2,
    "stores.base": 2,
    "stores.events": 2,
    "otel_scrub": 2,
    "cassettes": 2,
    "testing.authority": 2,
    "testing.loopback": 2,
    "testing.dripserver": 2,
    # verification, the stores, the mock server
    "verify": 3,
    "stores": 3,
    "testing.mockserver": 3,
    "testing._netguard": 3,
    # configuration values (built into objects only by the wiring, far above)
    "settings": 4,
    # transports
    "transports": 4,
    # the broker, one job per module
    "broker.stats": 5.0,
    "broker.cache": 5.0,
    "broker.failures": 5.0,
    "broker.agents": 5.1,
    "broker.flights": 5.1,
    "broker.events": 5.1,
    "broker.outcomes": 5.2,
    "broker.shared": 5.2,
    "broker.view": 5.2,
    "broker.core": 5.3,
    "broker": 5.4,
    # threads and the things built on the broker
    "_brokerthread": 6,
    "sync": 6,
    "auth": 7,
    "fetch": 7,
    "wiring": 8,
    # what applications and frameworks use
    "toolspec": 9,
    "_toolruntime": 9,
    "doctor": 9,
    "canary": 9,
    "_launcher": 9,
    "tools": 9,
    "integrations": 9,
    "demo": 9,
    "cli": 9,
    "testing": 9,
    "testing.pytest_plugin": 9,
    "": 10,  # the package itself: the public API, re-exported lazily
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module(path): path for path in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> float:
    """The layer of ``module``: its own entry, else its nearest listed package's."""
    name = module
    while True:
        if name in LAYERS:
            return LAYERS[name]
        if not name:
            raise KeyError(module)
        name = name.rpartition(".")[0]


def imports_of(module: str) -> set[str]:
    """The package's modules that ``module`` imports (relative or absolute)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            stem = ".".join([*base, *([node.module] if node.module else [])])
            targets = [f"{stem}.{alias.name}".strip(".") for alias in node.names] + [stem]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("authsec_crewai"):
            stem = (node.module or "").removeprefix("authsec_crewai").lstrip(".")
            targets = [f"{stem}.{alias.name}".strip(".") for alias in node.names] + [stem]
        elif isinstance(node, ast.Import):
            targets = [
                alias.name.removeprefix("authsec_crewai").lstrip(".")
                for alias in node.names
                if alias.name.startswith("authsec_crewai")
            ]
        for target in targets:
            if target in MODULES and target != module:
                found.add(target)
                break
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [
        f"{module} ({layer_of(module)}) -> {target} ({layer_of(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_the_import_graph_has_no_cycles() -> None:
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for target in sorted(GRAPH[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, [])


def test_the_checker_sees_an_upward_import() -> None:
    """The checks can fail: the broker's events do import telemetry, a lower layer."""
    assert "telemetry" in GRAPH["broker.events"]
    assert layer_of("telemetry") < layer_of("broker.events")
    assert "broker.core" in GRAPH["broker"]
