"""Development sessions: ``tests``, ``lint``, ``typecheck``, ``docs`` and ``bench``.

On a fresh machine ``nox`` (or ``nox -s tests``) builds one virtualenv per
session (with uv when it is installed, otherwise virtualenv) and installs what
the session needs; the environments are reused on later runs, so only the
first run pays for installing CrewAI.

To use an environment that already has everything (the project's ``.venv``),
run nox from it without virtualenvs: ``.venv/bin/nox --no-venv -s lint``.
Installs are then skipped and the tools of that environment are used.

Tool versions come from the ``dev`` extra in ``pyproject.toml``, so the
sessions and a ``pip install -e '.[dev]'`` cannot drift apart.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests", "lint", "typecheck", "docs"]  # bench runs on request


def _dev_requirement(name: str) -> str:
    """The requirement for ``name`` as the ``dev`` extra states it (e.g. ``ruff>=0.6``)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for requirement in pyproject["project"]["optional-dependencies"]["dev"]:
        if re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower() == name.lower():
            return str(requirement)
    return name


def _reusing(session: nox.Session) -> bool:
    """True when run with ``--no-venv``: the current environment is used as it is."""
    return session.venv_backend == "none"


def _install(session: nox.Session, *args: str) -> None:
    if _reusing(session):
        session.log(f"--no-venv: not installing {' '.join(args)}; using this environment")
        return
    session.install(*args)


def _python(session: nox.Session) -> str:
    # In a session virtualenv "python" is that environment's; without one, the
    # interpreter running nox is the environment being reused (not whatever
    # "python" happens to be first on PATH).
    return sys.executable if _reusing(session) else "python"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (asyncio and trio). Extra arguments go to pytest."""
    _install(session, "-e", ".[dev]")
    session.run(_python(session), "-m", "pytest", "-q", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    _install(session, _dev_requirement("ruff"))
    # .venv-ci is the virtualenv .ci/run builds; ruff only skips .venv by default.
    skip = ("--extend-exclude", ".venv-ci")
    session.run(_python(session), "-m", "ruff", "check", *skip, ".")
    session.run(_python(session), "-m", "ruff", "format", "--check", *skip, ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package (needs the dependencies for their types)."""
    _install(session, "-e", ".[dev]")
    session.run(_python(session), "-m", "mypy", "--strict", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The documentation site, with every mkdocs warning an error."""
    _install(session, _dev_requirement("mkdocs-material"))
    session.run(
        _python(session),
        "-m",
        "mkdocs",
        "build",
        "--strict",
        *session.posargs,
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session
def bench(session: nox.Session) -> None:
    """benchmarks/run.py, whatever it measures. Extra arguments go to it."""
    script = ROOT / "benchmarks" / "run.py"
    if not script.exists():
        session.error(f"{script.relative_to(ROOT)} does not exist")
    _install(session, "-e", ".[dev]")
    session.run(_python(session), str(script.relative_to(ROOT)), *session.posargs)
