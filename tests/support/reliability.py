"""The bad-input and fault table: what each case is, how it is run, what it left behind.

Every case runs in a :class:`Sandbox`: a fresh folder that is the process's working folder,
its ``TMPDIR`` and the home of the outputs, and an environment variable
(``SPHEREDIFF_RELIABILITY_CASE``) that tags every process the case starts. After the case,
the sandbox lists what is left on disk (anything but the files the case set up itself) and
which tagged processes still run. ``tests/test_reliability.py`` runs every case, asserts
each, and writes the table of docs/reliability.md (``SPHEREDIFF_WRITE_RELIABILITY=1``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.engine_process import REPO

__all__ = [
    "CASE_ENV",
    "Case",
    "Record",
    "Sandbox",
    "render_table",
    "tagged_processes",
]

CASE_ENV = "SPHEREDIFF_RELIABILITY_CASE"
"""Every process a case starts carries this variable, so leftovers can be found."""


@dataclass
class Record:
    """What one case did. ``left`` and ``processes`` must be empty for every case."""

    outcome: str  # "refused", "recovered", "failed cleanly", "succeeded"
    code: str = ""  # the exit code, error code or operator result
    message: str = ""
    seconds: float = 0.0
    left: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    notes: str = ""


@dataclass
class Case:
    """One row of the table.

    ``run(sandbox)`` does the case and returns (outcome, code, message, notes); it may
    assert. ``names`` are words the message must contain (the bad value's name, the fix).
    """

    id: str
    surface: str  # command line, worker job, model folder, fault, Blender operator
    what: str
    run: Callable[[Sandbox], tuple[str, str, str, str]]
    expect: str = "refused"
    names: tuple[str, ...] = ()
    defect: str = ""  # the issue-8 item it guards, if any
    max_refuse_s: float = 2.0


class Sandbox:
    """A case's private folder, environment and accounting of leftovers."""

    def __init__(self, root: Path, case_id: str, base_env: dict[str, str]) -> None:
        self.root = root
        self.case_id = case_id
        self.tmp = root / "tmp"
        self.out = root / "out"
        for folder in (self.tmp, self.out):
            folder.mkdir(parents=True, exist_ok=True)
        self.env = dict(base_env)
        self.env.update(TMPDIR=str(self.tmp), TEMP=str(self.tmp), TMP=str(self.tmp))
        self.env[CASE_ENV] = case_id
        self.seconds = 0.0  # time to the answer (refusal) or to the stop (faults)
        self.fixtures: dict[str, Any] = {}
        self._setup: set[str] = set()

    # -- set-up -----------------------------------------------------------------------
    def keep(self, *paths: Path) -> None:
        """Files and folders the case made itself: not counted as leftovers."""
        for path in paths:
            self._setup.add(str(Path(path).relative_to(self.root)))

    def snapshot_setup(self) -> None:
        """Everything in the sandbox now belongs to the case's set-up."""
        for path in self.root.rglob("*"):
            self._setup.add(str(path.relative_to(self.root)))

    # -- running ----------------------------------------------------------------------
    def python(self, *args: str, timeout: float = 120, stdin: str | bytes | None = None):
        """``python ARGS`` in the sandbox: (returncode, stdout, stderr, seconds)."""
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, *args],
            input=stdin.encode("utf-8") if isinstance(stdin, str) else stdin,
            capture_output=True,
            env=self.env,
            cwd=self.root,
            timeout=timeout,
        )
        seconds = time.monotonic() - t0
        out = proc.stdout.decode("utf-8", "replace")
        err = proc.stderr.decode("utf-8", "replace")
        return proc.returncode, out, err, seconds

    def popen(self, *args: str, **kwargs: Any) -> subprocess.Popen:
        kwargs.setdefault("stdin", subprocess.PIPE)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen([sys.executable, *args], env=self.env, cwd=self.root, **kwargs)

    # -- accounting -------------------------------------------------------------------
    def leftovers(self, ignore: Iterable[str] = ()) -> list[str]:
        ignored = set(ignore)
        left = []
        for path in sorted(self.root.rglob("*")):
            rel = str(path.relative_to(self.root))
            if rel in self._setup or rel in ignored or (path.is_dir() and any(path.iterdir())):
                continue
            if path.is_dir() and rel in ("tmp", "out"):
                continue
            left.append(rel + ("/" if path.is_dir() else ""))
        return left

    def processes(self) -> list[str]:
        return tagged_processes(self.case_id)

    def stop_processes(self) -> None:
        for pid in _tagged_pids(self.case_id):
            with contextlib.suppress(OSError):
                os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _tagged_pids(case_id: str) -> list[int]:
    import psutil

    wanted = f"{CASE_ENV}={case_id}"
    pids = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid == os.getpid():
                continue
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        if f"{CASE_ENV}={env.get(CASE_ENV)}" == wanted:
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            pids.append(proc.pid)
    return pids


def tagged_processes(case_id: str, settle_s: float = 3.0) -> list[str]:
    """Live processes started by the case (waiting up to ``settle_s`` for them to end)."""
    import psutil

    deadline = time.monotonic() + settle_s
    while True:
        pids = _tagged_pids(case_id)
        if not pids or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    out = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            out.append(f"{pid} {' '.join(psutil.Process(pid).cmdline())[:80]}")
    return out


def _cell(text: str, limit: int = 110) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|") or "—"


def render_table(rows: list[tuple[Case, Record]]) -> str:
    """docs/reliability.md: one row per case."""
    counts: dict[str, int] = {}
    for case, _ in rows:
        counts[case.surface] = counts.get(case.surface, 0) + 1
    lines = [
        "# Reliability: bad input and faults",
        "",
        "Generated by `tests/test_reliability.py` (run it with `SPHEREDIFF_WRITE_RELIABILITY=1`",
        "to rewrite this file); every row is a case that the test suite runs and checks on",
        "every CI run. *Refused*: the input was rejected with a message that names the bad",
        "value (and the fix) before any model loaded. *Recovered*: the fault was survived and",
        "the next run works. *Failed cleanly*: the run stopped with a clear error and the",
        "earlier files intact. *Left on disk* and *processes left* must be empty on every row:",
        "they are counted after each case in its own folder (its working folder, `TMPDIR` and",
        "output folder) and among the processes it started. Times are from the CI machine",
        "(2 cores); *time* is from the start of the process to its answer.",
        "",
        "Cases per surface: "
        + ", ".join(f"{surface} {n}" for surface, n in counts.items())
        + f"; {len(rows)} in all.",
        "",
        "| # | surface | case | issue 8 | outcome | code | message | left on disk | "
        "processes left | time |",
        "|---:|---|---|---|---|---|---|---|---|---:|",
    ]
    for i, (case, rec) in enumerate(rows, 1):
        lines.append(
            f"| {i} | {case.surface} | `{case.id}`: {_cell(case.what, 80)} | "
            f"{case.defect or ''} | {rec.outcome} | {_cell(rec.code, 30)} | "
            f"{_cell(rec.message)} | {_cell(', '.join(rec.left)) if rec.left else 'nothing'} | "
            f"{len(rec.processes) or 'none'} | {rec.seconds:.2f} s |"
        )
    lines.append("")
    return "\n".join(lines)


DOC_PATH = REPO / "docs" / "reliability.md"
