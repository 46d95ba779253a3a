"""Real worker processes for fleet tests and benchmarks (each runs fleet_worker.py).

``Worker`` starts one process with the given AUTHSEC_* environment, reads its
JSON answers on a thread (so a read can time out), and keeps its stderr in a
file for failure messages. ``start_fleet`` starts many at once and waits until
every broker runs, so a herd starts cold and together.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

WORKER = Path(__file__).resolve().parent / "fleet_worker.py"


def _inherited() -> dict[str, str]:
    """The environment without the machine's own AUTHSEC_* settings: the test's only."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("AUTHSEC_")}


class Worker:
    """One fleet process driven over stdin/stdout."""

    def __init__(self, backend: str, env: Mapping[str, str]) -> None:
        self.backend = backend
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by close())
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), backend],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**_inherited(), **env},
            cwd=WORKER.parent,  # no stray .env file from wherever the tests run
            text=True,
            bufsize=1,
        )
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("{"):
                self._answers.put(json.loads(line))
        self._answers.put(None)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def answer(self, timeout: float = 60.0) -> dict[str, Any]:
        try:
            found = self._answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"worker gave no answer in {timeout}s:\n{self.stderr()[-3000:]}"
            ) from None
        if found is None:
            raise AssertionError(f"worker exited ({self.process.poll()}):\n{self.stderr()[-3000:]}")
        return found

    def ask(self, timeout: float = 60.0, **command: Any) -> dict[str, Any]:
        self.send(**command)
        return self.answer(timeout)

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind runs in the worker."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def quit(self) -> None:
        """Ask the worker to stop (its broker closes cleanly); ``close`` waits for it."""
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
            except OSError:
                pass

    def close(self) -> None:
        self.quit()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):  # a worker stopped by SIGTERM closed its end
                self.process.stdin.close()
        self._reader.join(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._stderr.close()


def start_fleet(backends: Iterable[str], env: Mapping[str, str]) -> list[Worker]:
    """Start one worker per backend and wait until each broker runs."""
    workers = [Worker(backend, env) for backend in backends]
    try:
        for worker in workers:
            ready = worker.answer(timeout=60)
            assert ready.get("ready"), ready
    except BaseException:
        stop_fleet(workers)
        raise
    return workers


def stop_fleet(workers: Iterable[Worker], *, graceful: bool = True) -> None:
    """Stop every worker: by asking (their brokers close), or at once by SIGTERM."""
    workers = list(workers)
    for worker in workers:  # all at once: each takes a moment to close its broker
        if not graceful and worker.process.poll() is None:
            worker.process.terminate()
        worker.quit()
    for worker in workers:
        worker.close()


def mixed(count: int) -> list[str]:
    """``count`` backends, alternating asyncio and trio: one fleet proves both."""
    return ["asyncio" if i % 2 == 0 else "trio" for i in range(count)]
