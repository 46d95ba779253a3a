"""Packaging: the core installs and works without any extra, and a missing extra says
which one to install.

A fresh virtualenv per test would take minutes, so each check runs in a
subprocess whose import system refuses every extra's modules (a meta-path
finder that raises ``ModuleNotFoundError`` for them, as if they were not
installed), then exercises the core for real.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from authsec_crewai import errors
from authsec_crewai._lazy import EXTRAS, requires_extra

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


BLOCKER = """
import importlib.abc, sys

REFUSED = set({refused!r})


class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == r or name.startswith(r + ".") for r in REFUSED):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
"""


def run_without(refused: set[str], body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter where the ``refused`` modules cannot be imported."""
    script = BLOCKER.format(refused=sorted(refused)) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )


EVERY_EXTRA = set().union(*EXTRAS.values())


def test_the_core_dependencies_name_no_framework_and_dev_brings_every_extra() -> None:
    core = {requirement_name(r) for r in PYPROJECT["dependencies"]}
    extras = PYPROJECT["optional-dependencies"]
    for name in ("crewai", "click", "rich", "uvicorn", "typer", "coredis", "httpx2"):
        assert name not in core
    assert not any(name.startswith(("langchain", "pydantic-ai", "openai")) for name in core)
    (self_reference,) = [r for r in extras["dev"] if r.startswith("authsec-crewai[")]
    brought = set(self_reference.partition("[")[2].rstrip("]").split(","))
    assert brought == set(extras) - {"dev"} == set(EXTRAS)
    assert "crewai" in {requirement_name(r) for r in extras["crewai"]}


def test_the_package_declares_its_license_and_types() -> None:
    assert PYPROJECT["license"] == "MIT"
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Typing :: Typed" in PYPROJECT["classifiers"]
    assert (ROOT / "authsec_crewai" / "py.typed").is_file()


def test_the_broker_and_broker_auth_work_without_any_extra() -> None:
    done = run_without(
        EVERY_EXTRA,
        """
        import anyio, httpx
        from authsec_crewai import BrokerAuth, SyncTokenBroker, TokenBroker, build_fetcher
        from authsec_crewai import AuthSecSettings
        from authsec_crewai.stores import SQLiteStore
        from authsec_crewai.transports import MockTransport

        CLIENT = "6f1c2b9e-2f4d-4c1a-9a57-3d0f5b8e7a21"
        seen = []

        def api(request):
            seen.append(request.headers["authorization"][:10])
            return httpx.Response(200, json={"ok": True})

        async def main():
            async with TokenBroker(MockTransport(), client_id=CLIENT) as broker:
                token = await broker.token("read:records")
                async with httpx.AsyncClient(
                    transport=httpx.MockTransport(api), auth=BrokerAuth(broker, "read:records")
                ) as client:
                    assert (await client.get("https://api.test/x")).status_code == 200
                settings = AuthSecSettings(mode="mock", client_id=CLIENT)
                fetched = await build_fetcher(broker, settings).fetch(
                    "secure-vault/records", "read:records"
                )
                assert fetched.data["count"] == 6, fetched
            return token

        token = anyio.run(main)
        with SyncTokenBroker(MockTransport(), client_id=CLIENT) as sync:
            assert sync.token("read:records").permissions
        import sys
        loaded = sorted({m.partition(".")[0] for m in sys.modules} & REFUSED)
        print("ok", seen, loaded)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == "ok" and "'Bearer eyJ'" in done.stdout, done.stdout
    assert done.stdout.strip().endswith("[]")


@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("authsec_crewai.tools", "crewai"),
        ("authsec_crewai.demo", "crewai"),
        ("authsec_crewai.cli", "cli"),
        ("authsec_crewai.testing.loopback", "cli"),
        ("authsec_crewai.integrations.langchain", "langchain"),
        ("authsec_crewai.integrations.pydantic_ai", "pydantic-ai"),
        ("authsec_crewai.integrations.openai_agents", "openai-agents"),
        ("authsec_crewai.integrations.httpx2", "httpx2"),
        ("authsec_crewai.integrations.mcp_server", "mcp"),
        ("authsec_crewai.integrations.mcp", "mcp"),
        ("authsec_crewai.testing.mcpserver", "cli"),  # LoopbackServer first, then mcp
        ("authsec_crewai.otel_scrub", "otel"),
    ],
)
def test_a_missing_extra_names_the_extra_to_install(module: str, extra: str) -> None:
    done = run_without(
        EVERY_EXTRA,
        f"""
        from authsec_crewai.errors import MissingExtraError
        try:
            import {module}
        except MissingExtraError as exc:
            print(exc.extra, "|", exc)
        """,
    )
    assert done.returncode == 0, done.stderr
    named, _, message = done.stdout.strip().partition(" | ")
    assert named == extra
    assert f"pip install 'authsec-crewai[{extra}]'" in message


def test_a_redis_store_without_coredis_names_the_redis_extra() -> None:
    done = run_without(
        {"coredis"},
        """
        from authsec_crewai.errors import ConfigurationError
        from authsec_crewai.stores import RedisStore
        try:
            RedisStore("redis://127.0.0.1:1/0", keys=[b"k" * 32])
        except ConfigurationError as exc:
            print(type(exc).__name__, exc)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MissingExtraError ")
    assert "pip install 'authsec-crewai[redis]'" in done.stdout


def test_the_helper_blames_only_the_extras_own_modules() -> None:
    """A missing module that is not the extra's propagates as it is: the extra is not at
    fault, and saying so would send the user to reinstall the wrong thing."""
    with pytest.raises(ModuleNotFoundError) as caught, requires_extra("crewai", "the tools"):
        import authsec_crewai_no_such_module  # type: ignore[import-not-found]  # noqa: F401
    assert not isinstance(caught.value, errors.MissingExtraError)
    missing = ModuleNotFoundError("No module named 'crewai.tools'", name="crewai.tools")
    with pytest.raises(errors.MissingExtraError) as named, requires_extra("crewai", "the tools"):
        raise missing
    assert isinstance(named.value, ImportError | errors.ConfigurationError)
    assert named.value.name == "crewai" and named.value.extra == "crewai"
    assert named.value.kind == "missing_extra"


def test_the_langchain_tool_works_without_crewai_or_any_other_extra() -> None:
    done = run_without(
        EVERY_EXTRA - EXTRAS["langchain"] - EXTRAS["httpx2"],  # langsmith imports httpx2
        """
        import asyncio, json, os
        os.environ.update(AUTHSEC_MODE="mock")
        from authsec_crewai.integrations.langchain import secure_fetch_tool

        tool = secure_fetch_tool()
        call = {"name": tool.name, "id": "1", "type": "tool_call",
                "args": {"endpoint": "secure-vault/records", "scope": "read:records"}}
        sync = tool.invoke(call)
        asynchronous = asyncio.run(tool.ainvoke(call))
        assert sync.status == asynchronous.status == "success", (sync, asynchronous)
        assert json.loads(sync.content)["data"]["count"] == 6
        import sys
        print("ok", sorted({m.partition(".")[0] for m in sys.modules} & REFUSED))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok []"


def test_the_console_script_without_the_cli_extra_says_so_in_one_line() -> None:
    (script,) = PYPROJECT["scripts"].values()
    module, _, function = script.partition(":")
    done = run_without(EVERY_EXTRA, f"from {module} import {function}; {function}()")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: the authsec-crewai command: the 'cli' extra is not installed (click is "
        "missing); pip install 'authsec-crewai[cli]'"
    ]


def test_the_console_script_runs_the_command() -> None:
    (script,) = PYPROJECT["scripts"].values()
    module, _, function = script.partition(":")
    done = run_without(
        set(),
        f"import sys; sys.argv = ['authsec-crewai', '--version']; from {module} "
        f"import {function}; {function}()",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("authsec-crewai, version ")
