"""Run every benchmark script in this folder, one process each, and print their tables.

Usage: ``python benchmarks/run.py [name ...]`` where a name selects scripts whose
file name contains it (e.g. ``broker``). Each script measures its subject and
its floor side by side in the same run and prints ratios.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name not in {"run.py", "__init__.py"})
    if argv:
        scripts = [p for p in scripts if any(name in p.stem for name in argv)]
    if not scripts:
        print(f"no benchmark matches {argv}", file=sys.stderr)
        return 2
    failed = 0
    for script in scripts:
        print(f"== {script.name}", flush=True)
        failed += subprocess.run([sys.executable, str(script)], check=False).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
