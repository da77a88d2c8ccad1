"""Install Dependencies: a virtual environment for the worker, made with Blender's Python.

Steps (:func:`plan_steps`), each a subprocess with an argument list (never a shell):

1. ``<Blender's python> -m venv <extension user folder>/venv``
2. PyTorch: ``pip install torch`` from PyPI on Linux and macOS (Linux wheels there are
   CUDA builds); on Windows from PyTorch's CUDA index (:data:`TORCH_INDEX_WINDOWS`), since
   PyPI's Windows wheels are CPU-only.
3. The engine wheel bundled with the add-on, with its ``models`` extra (diffusers,
   transformers, safetensors, accelerate, ...): the add-on and the worker share one
   ``spherediff_core``.
4. ``python -m spherediff_core.worker --hello``: what got installed and which device.

Every ``-m`` above runs through :func:`worker_client.python_argv` (the current folder is
never on ``sys.path``) in the extension's user folder, never Blender's current folder.

With a local wheel folder every pip call gets ``--no-index --find-links FOLDER``: nothing
is downloaded. ``with_dependencies=False`` installs the engine wheel alone
(``--no-deps``), which the tests use to stay offline and fast.

Every line of output goes to ``install.log`` in the extension's user folder. No bpy here;
the operator in operators.py runs an :class:`InstallJob` on a thread and shows its
:data:`STATE`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .worker_client import WORKER_MODULE, popen_group_kwargs, python_argv, worker_env

TORCH_INDEX_WINDOWS = "https://download.pytorch.org/whl/cu128"
ENGINE_EXTRA = "models"
LOG_NAME = "install.log"


def venv_python(venv: Path, windows: bool | None = None) -> Path:
    windows = os.name == "nt" if windows is None else windows
    return venv / "Scripts" / "python.exe" if windows else venv / "bin" / "python"


def log_path(user_folder: Path) -> Path:
    return user_folder / LOG_NAME


def bundled_wheel(addon_root: Path) -> Path | None:
    """The engine wheel shipped in the extension's wheels/ folder (newest if several)."""
    wheels = sorted((addon_root / "wheels").glob("spherediff-*.whl"))
    return wheels[-1] if wheels else None


@dataclass
class Step:
    label: str
    argv: list[str]


def plan_steps(
    base_python: str,
    venv: Path,
    engine_wheel: Path,
    wheel_folder: str | None = None,
    with_dependencies: bool = True,
    platform: str = sys.platform,
) -> list[Step]:
    """The commands that make the worker environment (see the module docstring)."""
    python = str(venv_python(venv, windows=platform == "win32"))
    pip = [
        *python_argv(python, "pip"),
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
    ]
    local = ["--no-index", "--find-links", wheel_folder] if wheel_folder else []
    steps = [Step("Creating the Python environment", python_argv(base_python, "venv", str(venv)))]
    if with_dependencies:
        torch_source = local
        if not local and platform == "win32":
            torch_source = ["--index-url", TORCH_INDEX_WINDOWS]
        steps.append(Step("Installing PyTorch", [*pip, *torch_source, "torch"]))
        steps.append(
            Step(
                "Installing the engine, diffusers and transformers",
                [*pip, *local, "--upgrade", f"{engine_wheel}[{ENGINE_EXTRA}]"],
            )
        )
    else:
        steps.append(
            Step(
                "Installing the engine (without dependencies)",
                [*pip, *local, "--upgrade", "--no-deps", str(engine_wheel)],
            )
        )
    steps.append(Step("Checking the worker", python_argv(python, WORKER_MODULE, "--hello")))
    return steps


@dataclass
class InstallState:
    """Progress of the running (or last) installation, for the UI."""

    running: bool = False
    step: int = 0
    total: int = 0
    step_label: str = ""
    last_line: str = ""
    message: str = ""
    failed: bool = False
    hello: dict | None = None
    log: str = ""
    started_at: float = 0.0
    lines: list[str] = field(default_factory=list)

    @property
    def fraction(self) -> float:
        return min(1.0, max(0, self.step - 1) / self.total) if self.total else 0.0


STATE = InstallState()


class InstallJob:
    """Runs the steps one after another on a thread, logging everything."""

    def __init__(
        self,
        steps: list[Step],
        venv: Path,
        log: Path,
        clean: bool = False,
        state: InstallState = STATE,
    ) -> None:
        self.steps = steps
        self.venv = venv
        self.log = log
        self.clean = clean
        self.state = state
        self.thread: threading.Thread | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._cancel = threading.Event()

    def start(self) -> None:
        s = self.state
        s.running, s.failed, s.message, s.hello = True, False, "", None
        s.step, s.total, s.last_line, s.log = 0, len(self.steps), "", str(self.log)
        s.started_at = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="spherediff-install", daemon=True)
        self.thread.start()

    def cancel(self) -> None:
        self._cancel.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.terminate()

    def wait(self, timeout: float | None = None) -> bool:
        if self.thread is not None:
            self.thread.join(timeout)
        return not self.state.running

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        s = self.state
        try:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log, "w", encoding="utf-8") as log:
                log.write(f"SphereDiff dependency installation, {time.ctime()}\n")
                log.write(f"Python: {sys.executable} ({sys.version.split()[0]})\n")
                if self.clean and self.venv.exists():
                    log.write(f"Removing the old environment {self.venv}\n")
                    shutil.rmtree(self.venv)
                for i, step in enumerate(self.steps, 1):
                    s.step, s.step_label = i, step.label
                    if self._cancel.is_set():
                        raise _Stopped("cancelled")
                    code, output = self._run_step(step, log)
                    if self._cancel.is_set():
                        raise _Stopped("cancelled")
                    if code != 0:
                        last = next((x for x in reversed(output) if x.strip()), "")
                        raise _Stopped(
                            f"{step.label} failed (exit code {code}): {last.strip()[:200]}; "
                            f"see {self.log}"
                        )
                    if step.argv[-1] == "--hello":
                        s.hello = _parse_hello(output)
                s.message = _summary(s.hello)
                log.write(f"\n{s.message}\n")
        except _Stopped as exc:
            s.failed, s.message = True, str(exc)
            self._log_line(f"\n{exc}\n")
        except OSError as exc:
            s.failed, s.message = True, f"installation failed: {exc}"
            self._log_line(f"\ninstallation failed: {exc}\n")
        finally:
            s.running = False

    def _run_step(self, step: Step, log) -> tuple[int, list[str]]:
        log.write(f"\n=== {step.label}\n$ {subprocess.list2cmdline(step.argv)}\n")
        log.flush()
        env = worker_env()
        env["PIP_NO_INPUT"] = "1"
        env["PYTHONNOUSERSITE"] = "1"
        output: list[str] = []
        try:
            self._proc = subprocess.Popen(
                step.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.log.parent,  # a known folder, never Blender's current one
                **popen_group_kwargs(),
            )
        except OSError as exc:
            raise _Stopped(f"{step.label}: cannot run {step.argv[0]!r} ({exc})") from exc
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            output.append(line)
            log.write(line + "\n")
            log.flush()
            if line.strip():
                self.state.last_line = line.strip()
        code = self._proc.wait()
        self._proc.stdout.close()
        self._proc = None
        return code, output

    def _log_line(self, text: str) -> None:
        with contextlib.suppress(OSError), open(self.log, "a", encoding="utf-8") as log:
            log.write(text)


class _Stopped(Exception):
    pass


def _parse_hello(output: list[str]) -> dict | None:
    for line in output:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == "hello":
                return event
    return None


def _summary(hello: dict | None) -> str:
    if hello is None:
        return "Installed, but the worker did not say hello; see the log"
    missing = [name for name in ("torch", "diffusers", "transformers") if not hello.get(name)]
    if missing:
        return f"Installed the engine {hello.get('version')}; still missing: {', '.join(missing)}"
    return (
        f"Ready: engine {hello.get('version')}, torch {hello.get('torch')}, "
        f"diffusers {hello.get('diffusers')}, device {hello.get('device')}"
    )
