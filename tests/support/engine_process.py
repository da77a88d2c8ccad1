"""Run the engine's command and worker as real subprocesses in tests.

The subprocesses get ``PYTHONPATH=<repo>/core`` (so a clean clone works without
installing the package), one torch thread, offline Hugging Face settings and private
caches, so they never touch the user's caches or the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

__all__ = ["REPO", "WorkerProcess", "engine_env", "run_cli", "run_worker", "torchrun"]


def engine_env(cache: Path) -> dict[str, str]:
    """The environment for an engine subprocess (cache: a private scratch folder)."""
    env = dict(os.environ)
    env.pop("PYTHONSTARTUP", None)
    env.update(
        PYTHONPATH=str(REPO / "core"),
        PYTHONIOENCODING="utf-8",
        SPHEREDIFF_TORCH_THREADS="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        SPHEREDIFF_CACHE_DIR=str(cache / "spherediff"),
        HF_HOME=str(cache / "hf"),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120, **kw: Any):
    """``python -m spherediff_core.cli ARGS`` -> CompletedProcess (text, captured)."""
    return subprocess.run(
        [sys.executable, "-m", "spherediff_core.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        **kw,
    )


def torchrun(n_procs: int) -> list[str]:
    """The argv prefix that starts ``-m MODULE`` as n_procs ranks on this machine."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={n_procs}",
    ]


class WorkerProcess:
    """A worker subprocess whose stdout events are read by a thread into a queue.

    ``launcher``: an argv prefix such as :func:`torchrun` (default: this Python)."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        stderr_path: Path,
        launcher: list[str] | None = None,
    ) -> None:
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 - closed in wait()
        self.stderr_path = stderr_path
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        self.proc = subprocess.Popen(
            [*(launcher or [sys.executable]), "-m", "spherediff_core.worker", *args],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            **kwargs,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._queue.put(raw.decode("utf-8"))
        self._queue.put(None)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((line + "\n").encode("utf-8"))
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def next_event(self, timeout: float = 120) -> dict[str, Any] | None:
        """The next event (None at end of output); every line must be one JSON object."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty as exc:
            self.proc.kill()
            raise AssertionError(f"no event within {timeout} s; stderr:\n{self.stderr()}") from exc
        if line is None:
            return None
        self.lines.append(line)
        event = json.loads(line)
        assert isinstance(event, dict) and "event" in event, line
        return event

    def events(self, timeout: float = 120) -> list[dict[str, Any]]:
        out = []
        deadline = time.monotonic() + timeout
        while (ev := self.next_event(max(1.0, deadline - time.monotonic()))) is not None:
            out.append(ev)
        return out

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._stderr.close()
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


def run_worker(
    args: list[str],
    env: dict[str, str],
    tmp: Path,
    job: dict[str, Any] | str | None = None,
    timeout: float = 120,
    launcher: list[str] | None = None,
) -> tuple[int, list[dict[str, Any]], WorkerProcess]:
    """Run a worker to the end: (exit code, events, process)."""
    stderr_path = tmp / f"worker-stderr-{time.monotonic_ns()}.txt"
    worker = WorkerProcess(args, env, stderr_path, launcher)
    if job is not None:
        worker.send(job if isinstance(job, str) else json.dumps(job))
    worker.close_stdin()
    events = worker.events(timeout)
    return worker.wait(timeout), events, worker


def run_cli_and_worker(
    args: list[str],
    job: dict[str, Any],
    env: dict[str, str],
    tmp: Path,
    timeout: float = 300,
) -> tuple[subprocess.CompletedProcess, tuple[int, list[dict[str, Any]], WorkerProcess]]:
    """The command (``args``) and a worker (``job``) run side by side: (the command's
    CompletedProcess, run_worker's result). Each engine process uses one thread, so on a
    2-core machine the pair takes about the time of one."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        cli = pool.submit(run_cli, args, env, timeout)
        worker = pool.submit(run_worker, [], env, tmp, job, timeout)
        return cli.result(), worker.result()
