"""The documentation runs: every Python block of the README and of docs/, each in a fresh
interpreter; the README's record-and-replay example end to end; and a strict docs build.

A block runs as a file with ``python`` in an empty directory, with no ``AUTHSEC_*``
variable set (so ``auto`` mode is mock) and CrewAI quiet. An HTML comment on the
line before a block changes how it runs:

- ``<!-- docs-test: server -->``: LIVE mode against the mock AuthSec server on
  loopback (``AUTHSEC_MODE``, ``AUTHSEC_BASE_URL`` and ``AUTHSEC_CLIENT_ID`` set);
- ``<!-- docs-test: fetcher -->``: the block is the body of an async function
  given ``fetcher``, a running ``SecureFetcher`` in mock mode (for snippets that
  show one step of a larger program).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from authsec_crewai.testing import LoopbackServer, MockAuthority, create_app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
QUIET_CREWAI = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "CREWAI_TESTING": "true",
}
_FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_DIRECTIVE = re.compile(r"<!--\s*docs-test:\s*([\w-]+)\s*-->\s*$")

FETCHER_PRELUDE = """\
import anyio

from authsec_crewai import AuthSecSettings, SecureFetcher, build_broker, build_fetcher


async def _block(fetcher: SecureFetcher) -> None:
{body}


async def _main() -> None:
    settings = AuthSecSettings(mode="mock")
    async with build_broker(settings) as broker:
        await _block(build_fetcher(broker, settings))


anyio.run(_main)
"""


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    code: str
    directive: str | None

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def python_blocks() -> list[Block]:
    blocks = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            directive = _DIRECTIVE.search(before)
            blocks.append(
                Block(
                    page=page,
                    line=text.count("\n", 0, match.start()) + 1,
                    code=match.group(1),
                    directive=directive.group(1) if directive else None,
                )
            )
    return blocks


BLOCKS = python_blocks()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHSEC_", "OPENAI_"))}
    return {**env, **QUIET_CREWAI, **extra}


@pytest.fixture(scope="module")
def live_env() -> Iterator[dict[str, str]]:
    """The mock AuthSec server and vault on loopback, for blocks marked ``server``."""
    client_id = str(uuid.uuid4())
    authority = MockAuthority()
    authority.delegate(client_id)
    with LoopbackServer(create_app(authority)) as server:
        yield {
            "AUTHSEC_MODE": "live",
            "AUTHSEC_BASE_URL": server.url,
            "AUTHSEC_CLIENT_ID": client_id,
        }


def test_the_pages_have_python_blocks_to_run() -> None:
    assert len(BLOCKS) >= 25  # a broken pattern must not turn this into no test
    assert {b.directive for b in BLOCKS} >= {None, "server", "fetcher"}
    unknown = {b.directive for b in BLOCKS} - {None, "server", "fetcher"}
    assert not unknown, f"unknown docs-test directive(s): {unknown}"


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_every_python_block_runs(
    block: Block, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    code = block.code
    env = clean_env()
    if block.directive == "server":
        env.update(request.getfixturevalue("live_env"))
    elif block.directive == "fetcher":
        code = FETCHER_PRELUDE.format(body=textwrap.indent(code, "    "))
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{block} failed:\n{code}\n--- stderr:\n{done.stderr}"
    assert "eyJ" not in done.stdout + done.stderr  # no page prints a token


def _bash_lines(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [
        line.strip()
        for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)
        for line in block.splitlines()
    ]


def test_the_readme_records_the_cassette_its_marker_example_replays(tmp_path: Path) -> None:
    """Record with the README's command, then run the README's pytest example on it."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    record = next(line for line in _bash_lines(ROOT / "README.md") if " record -o " in line)
    words = shlex.split(record)
    cassette = words[words.index("-o") + 1]
    (marked,) = [b for b in BLOCKS if b.page.name == "README.md" and "authsec_cassette" in b.code]
    test_name = re.search(r"def (test_\w+)", marked.code)
    assert test_name is not None and "```" in readme
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / f"{test_name.group(1)}.py").write_text(marked.code, encoding="utf-8")
    (tmp_path / "my_crew.py").write_text(
        "from authsec_crewai.tools import AuthSecSecureFetchTool\n"
        "print(AuthSecSecureFetchTool().run(endpoint='secure-vault/records', "
        "scope='read:records'))\n",
        encoding="utf-8",
    )
    bin_dir = str(Path(sys.executable).parent)  # `python` in the command is this one
    recorded = subprocess.run(
        words,
        cwd=tmp_path,
        env=clean_env(PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")])),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert recorded.returncode == 0, recorded.stderr
    assert (tmp_path / cassette).is_file(), recorded.stderr
    replayed = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "1 passed" in replayed.stdout


def test_the_docs_build_strictly(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "integrations" / "index.html").is_file()
    assert (tmp_path / "observability" / "index.html").is_file()
