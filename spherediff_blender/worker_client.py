"""The engine's worker process, seen from the add-on (docs/worker-protocol.md).

No bpy here (and never torch): the worker runs in its own Python as a subprocess in its
own process group; a reader thread turns its standard output's JSON lines into events on a
queue, another keeps the tail of its standard error for error messages. Only JSON and file
paths cross the process boundary.

:class:`GenerationRun` drives one job: ``start()``, then ``pump()`` until it returns True
(from a modal operator's timer, or in a loop by :func:`run_blocking`), then read
``result`` or ``failure``. ``request_cancel()`` may be called from any thread: the run
sends ``cancel`` on the worker's standard input, terminates the process group if the worker
is still running after :data:`TERMINATE_AFTER_S` and kills it after :data:`KILL_AFTER_S`.
The worker gets this process's id (``--parent-pid``) and keeps watching it: if Blender
dies, the worker stops by itself within two seconds and removes the job's files.

The warm worker (issue 15): :data:`WARM` keeps one worker started with ``--serve`` alive
between jobs, with the model loaded; :class:`ServedRun` is a job on it, which ends at its
own ``result`` or ``error`` (not at the end of the worker's output). It is replaced when a
job needs another Python, environment or device, when it died (the user is told), and it
is stopped after an idle limit, by Unload Model, when the add-on is disabled and at exit.
Several GPUs (torchrun) and Keep Model Loaded off use a one-shot :class:`GenerationRun`.

Every Python this module (and the installer) starts is started by :func:`python_argv`:
never with the current folder on ``sys.path`` and in a known working folder
(:func:`neutral_cwd`), so a ``json.py`` lying in the folder Blender was started from is
never imported by the worker or by pip.

Several GPUs (:func:`plan_gpus`, :func:`launch_command`): the worker runs under PyTorch's
launcher, ``torch.distributed.run --standalone --nproc-per-node=N -m
spherediff_core.worker``, one process per GPU; rank 0 alone reads the job and writes the
events, so the protocol is the same.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOCOL = 1
WORKER_MODULE = "spherediff_core.worker"
TORCHRUN_MODULE = "torch.distributed.run"  # what ``torchrun`` runs
GPU_DEVICES = ("auto", "cuda")  # the job devices several GPUs work with (cuda:LOCAL_RANK)
MAX_GPUS = 64
TERMINATE_AFTER_S = 0.4  # after "cancel": SIGTERM / CTRL_BREAK_EVENT to the process group
KILL_AFTER_S = 0.8  # then SIGKILL / TerminateProcess: stopped within a second
EXIT_WAIT_S = 5.0  # how long a worker may take to exit after its stdout closed
EXIT_CANCELLED = 130  # the engine's exit code after a cancel (docs/worker-protocol.md)
EOF = "_eof"  # pseudo event: the worker closed its standard output
PREVIEW_COPY_NAME = "live-preview.png"  # the newest preview, copied into preview_dir

# Variables of Blender's own Python that must not leak into the worker's Python.
_FOREIGN_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONEXECUTABLE",
    "__PYVENV_LAUNCHER__",
)

PHASES = {  # phase -> (share of the bar where it starts, where it ends, label)
    "start": (0.0, 0.0, "Starting"),
    "load": (0.0, 0.06, "Loading model"),
    "denoise": (0.06, 0.92, "Denoising"),
    "decode": (0.92, 0.97, "Decoding"),
    "hdr": (0.97, 0.98, "Lifting to HDR"),
    "write": (0.98, 1.0, "Writing"),
}


# ``python -m MODULE`` puts the current folder first on sys.path (and -P, which stops
# that, needs Python 3.11). This bootstrap drops it before anything is imported, then runs
# the module as ``-m`` would; every Python from 3.8 on understands it.
_BOOTSTRAP = (
    "import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
    "import runpy; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
)


def python_argv(python: str, module: str, *args: str) -> list[str]:
    """``python -m module args`` without the current folder on sys.path."""
    return [python, "-c", _BOOTSTRAP.format(module=module), *args]


def worker_argv(python: str, *args: str) -> list[str]:
    return python_argv(python, WORKER_MODULE, *args)


def neutral_cwd() -> str:
    """A known working folder for child processes: the user's home (never whatever folder
    Blender happened to be started from), else the temporary folder."""
    home = os.path.expanduser("~")
    return home if os.path.isdir(home) else tempfile.gettempdir()


def worker_env(offline: bool = False, base: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: this one without Blender's Python variables."""
    env = dict(os.environ if base is None else base)
    for key in _FOREIGN_ENV:
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env["SPHEREDIFF_CLIENT"] = "blender"  # the engine's advice in Blender's words
    env["PYTHONSAFEPATH"] = "1"  # 3.11+: no current folder on sys.path (see python_argv)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


class LaunchError(ValueError):
    """A GPU setting the worker cannot be started with (the message says what to change)."""


@dataclass(frozen=True)
class GpuPlan:
    """How many worker processes to start, and which GPUs they see.

    ``processes`` > 1 runs the worker under torch.distributed.run, one process per GPU;
    ``visible_devices`` (when not None) becomes ``CUDA_VISIBLE_DEVICES``.
    """

    processes: int = 1
    visible_devices: str | None = None

    @property
    def distributed(self) -> bool:
        return self.processes > 1


def parse_gpu_ids(text: str) -> list[int]:
    """``"0,1,3"`` -> [0, 1, 3]; empty -> []. Raises :class:`LaunchError` on anything else."""
    text = (text or "").strip()
    if not text:
        return []
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise LaunchError(
            f"GPU ids {text!r}: use comma-separated GPU numbers such as 0,1,3 "
            "(or leave GPU IDs empty for the first GPUs)"
        )
    ids = [int(part) for part in parts]
    seen: set[int] = set()
    for gpu in ids:
        if gpu in seen:
            raise LaunchError(
                f"GPU ids {text!r}: GPU {gpu} is listed twice; list each GPU once, such as 0,1,3"
            )
        seen.add(gpu)
    if len(ids) > MAX_GPUS:
        raise LaunchError(f"GPU ids {text!r}: {len(ids)} GPUs, at most {MAX_GPUS}")
    return ids


def plan_gpus(
    gpu_count: int = 1, gpu_ids: str = "", device: str = "auto", platform: str = sys.platform
) -> GpuPlan:
    """The worker processes for the GPUs preferences (``gpu_count``, ``gpu_ids``) and the
    job's ``device``. Raises :class:`LaunchError`, naming the bad value and the fix.

    ``gpu_ids`` (e.g. ``"0,1,3"``), when given, decides: one process per id, and it sets
    ``CUDA_VISIBLE_DEVICES``; empty: ``gpu_count`` processes on the first GPUs. Several
    processes need the job's device ``auto`` or ``cuda`` (each picks cuda:LOCAL_RANK),
    never a particular ``cuda:1``, ``mps`` or ``cpu``; and Linux (``platform``), where
    PyTorch has NCCL, the library the GPUs share their work through.
    """
    ids = parse_gpu_ids(gpu_ids)
    device = str(device or "auto")
    if ids:
        if device not in GPU_DEVICES:
            raise LaunchError(
                f"GPU ids {gpu_ids.strip()!r} need device auto or cuda, not {device!r}: "
                "set Device to Automatic or CUDA, or clear GPU IDs"
            )
        if len(ids) > 1:
            _check_multi_gpu_platform(f"GPU ids {gpu_ids.strip()!r}", platform)
        return GpuPlan(len(ids), ",".join(map(str, ids)))
    if isinstance(gpu_count, bool) or not isinstance(gpu_count, int):
        raise LaunchError(f"GPUs {gpu_count!r}: use a whole number from 1 to {MAX_GPUS}")
    if not 1 <= gpu_count <= MAX_GPUS:
        raise LaunchError(f"GPUs {gpu_count}: use a number from 1 to {MAX_GPUS}")
    if gpu_count > 1 and device not in GPU_DEVICES:
        raise LaunchError(
            f"GPUs {gpu_count} with device {device!r}: several GPUs need device auto or "
            "cuda; set Device to Automatic or CUDA, or GPUs to 1"
        )
    if gpu_count > 1:
        _check_multi_gpu_platform(f"GPUs {gpu_count}", platform)
    return GpuPlan(gpu_count, None)


def _check_multi_gpu_platform(what: str, platform: str) -> None:
    if not platform.startswith("linux"):
        raise LaunchError(
            f"{what}: several GPUs work on Linux only (PyTorch's NCCL, which they share "
            f"the work through, is not built for {platform}); set GPUs to 1"
        )


def launch_command(
    python: str,
    args: list[str] | tuple[str, ...] = (),
    plan: GpuPlan | None = None,
    env: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str] | None]:
    """(argv, env) that start the worker with ``args`` as ``plan`` says.

    One process: :func:`worker_argv`, ``env`` unchanged (what it always was). Several:
    ``python -m torch.distributed.run --standalone --nproc-per-node=N -m
    spherediff_core.worker ARGS`` (started as :func:`python_argv` starts any module: the
    current folder off ``sys.path``), with ``CUDA_VISIBLE_DEVICES`` when the plan names the
    GPUs (``env`` None: this process's environment plus that variable).
    """
    plan = plan or GpuPlan()
    if plan.distributed:
        argv = python_argv(
            python,
            TORCHRUN_MODULE,
            "--standalone",
            f"--nproc-per-node={plan.processes}",
            "-m",
            WORKER_MODULE,
            *args,
        )
    else:
        argv = worker_argv(python, *args)
    if plan.visible_devices is not None:
        env = {**(os.environ if env is None else env), "CUDA_VISIBLE_DEVICES": plan.visible_devices}
    return argv, env


def popen_group_kwargs() -> dict[str, Any]:
    """Start a child in its own process group, so it can be signalled as a whole."""
    if os.name == "nt":
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        return {"creationflags": flags}
    return {"start_new_session": True}


@dataclass
class WorkerFailure:
    """Why a run did not produce an image: a stable ``code`` and a message for people."""

    code: str
    message: str
    detail: str = ""

    def __str__(self) -> str:
        return self.message


class WorkerProcess:
    """One worker subprocess with its event queue and standard-error tail."""

    def __init__(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stderr_log: Path | None = None,
        stderr_lines: int = 200,
    ) -> None:
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.stderr_log = stderr_log
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=stderr_lines)
        self.proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._stdin_lock = threading.Lock()
        self.cancel_sent_at: float | None = None
        self.terminated = False
        self.killed = False
        self.terminate_after_s = TERMINATE_AFTER_S  # after "cancel" (see escalate)
        self.kill_after_s = KILL_AFTER_S

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start the process; raises OSError when the interpreter cannot be run."""
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd or neutral_cwd(),
            **popen_group_kwargs(),
        )
        for target, name in ((self._read_stdout, "stdout"), (self._read_stderr, "stderr")):
            thread = threading.Thread(target=target, name=f"spherediff-worker-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def close_input(self) -> None:
        """Close the worker's standard input: a serving worker exits 0 between jobs."""
        if self.proc is None or self.proc.stdin is None:
            return
        with self._stdin_lock, contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()

    def send_line(self, text: str) -> bool:
        """Write one line to the worker's standard input; False if it is gone."""
        if self.proc is None or self.proc.stdin is None:
            return False
        with self._stdin_lock:
            try:
                self.proc.stdin.write(text.encode("utf-8") + b"\n")
                self.proc.stdin.flush()
            except (OSError, ValueError):  # closed pipe: the worker has exited
                return False
        return True

    def get_events(self, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Events waiting on the queue (waits up to ``timeout`` for the first)."""
        out: list[dict[str, Any]] = []
        try:
            first = self.events.get(timeout=timeout) if timeout > 0 else self.events.get_nowait()
        except queue.Empty:
            return out
        out.append(first)
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                return out

    # -- stopping ---------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask politely (``cancel`` on stdin); :meth:`escalate` does the rest."""
        if self.cancel_sent_at is None:
            self.cancel_sent_at = time.monotonic()
            self.send_line("cancel")

    def escalate(self) -> None:
        """After a cancel: terminate the group, then kill it, if the worker lingers."""
        if self.cancel_sent_at is None or not self.running():
            return
        waited = time.monotonic() - self.cancel_sent_at
        if waited >= self.kill_after_s and not self.killed:
            self.kill()
        elif waited >= self.terminate_after_s and not self.terminated:
            self.terminate()

    def terminate(self) -> None:
        """SIGTERM to the process group (POSIX) or CTRL_BREAK_EVENT (Windows)."""
        self.terminated = True
        if not self.running():
            return
        assert self.proc is not None
        with contextlib.suppress(OSError):
            if os.name == "nt":
                self.proc.send_signal(signal.CTRL_BREAK_EVENT)
            else:
                os.killpg(self.proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the process group (POSIX) or TerminateProcess (Windows)."""
        self.killed = True
        if not self.running():
            return
        assert self.proc is not None
        with contextlib.suppress(OSError):
            if os.name == "nt":
                self.proc.kill()
            else:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Stop the process if it still runs, reap it and join the reader threads."""
        if self.proc is None:
            return
        if self.running():
            self.kill()
        self.wait(5.0)
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        for thread in self._threads:
            thread.join(timeout=2.0)
        for stream in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()

    # -- readers (threads) ----------------------------------------------------------------
    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with contextlib.suppress(OSError, ValueError):
            for raw in self.proc.stdout:
                text = raw.decode("utf-8", "replace").strip()
                if not text:
                    continue
                try:
                    event = json.loads(text)
                except ValueError:
                    event = None
                if isinstance(event, dict) and isinstance(event.get("event"), str):
                    self.events.put(event)
                else:  # not protocol: keep it for the error message
                    self.stderr_tail.append(f"(stdout) {text}")
        self.events.put({"event": EOF})

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        log = None
        if self.stderr_log is not None:
            with contextlib.suppress(OSError):
                log = open(self.stderr_log, "a", encoding="utf-8")  # noqa: SIM115
        try:
            with contextlib.suppress(OSError, ValueError):
                for raw in self.proc.stderr:
                    text = raw.decode("utf-8", "replace").rstrip()
                    self.stderr_tail.append(text)
                    if log is not None:
                        log.write(text + "\n")
                        log.flush()
        finally:
            if log is not None:
                log.close()


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def diagnose_exit(python: str, returncode: int | None, stderr: list[str]) -> WorkerFailure:
    """Why a worker ended without a result or error event."""
    text = "\n".join(stderr)
    tail = "\n".join(line for line in stderr[-12:] if line.strip())
    if "No module named spherediff_core" in text or "No module named 'spherediff_core'" in text:
        return WorkerFailure(
            "worker_not_ready",
            f"the worker Python {python} does not have the SphereDiff engine (spherediff_core): "
            "click Install Dependencies in the add-on's preferences, or choose a Python "
            "that has it",
            tail,
        )
    if returncode is not None and returncode < 0:
        name = _signal_name(returncode)
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        message = f"the worker was stopped by {name}{hint} before it finished"
    else:
        if returncode is None:
            message = "the worker closed its output but did not exit"
        else:
            message = f"the worker exited with code {returncode} before it finished"
        last = next((line for line in reversed(stderr) if line.strip()), "")
        if last:
            message += f": {last.strip()[:300]}"
    return WorkerFailure("worker_died", message, tail)


class GenerationRun:
    """One job in one worker process, with progress for the UI.

    Attributes read by the UI: ``phase``, ``step``, ``total``, ``eta_s``, ``message``,
    ``fraction`` (the whole job, 0..1), ``hello`` (the worker's hello event), and at the end
    ``result`` (the result event) or ``failure`` (a :class:`WorkerFailure`). ``notes``:
    sentences for the user about the worker itself (a warm worker restarted).

    Live previews (the job's ``preview_every``): the worker deletes older preview files as
    it goes, so each :meth:`pump` copies the newest preview it saw at once into
    ``preview_dir`` (a preview already gone is skipped); :meth:`take_preview` hands that
    copy out, once.
    """

    def __init__(
        self,
        python: str,
        options: dict[str, Any],
        env: dict[str, str] | None = None,
        stderr_log: Path | None = None,
        extra_job: dict[str, Any] | None = None,
        cwd: str | None = None,
        gpus: GpuPlan | None = None,
        preview_dir: Path | None = None,
    ) -> None:
        self.python = python
        self.job = {"protocol": PROTOCOL, "options": options, **(extra_job or {})}
        self.gpus = gpus or GpuPlan()
        # --parent-pid: the worker stops by itself when this process is gone; standard
        # input stays open until the run is over (its end means the same).
        argv, env = launch_command(python, ["--parent-pid", str(os.getpid())], self.gpus, env)
        self.process = WorkerProcess(
            argv,
            env=env,
            cwd=cwd,
            stderr_log=stderr_log,
        )
        self.phase = "start"
        self.step = 0
        self.total = 0
        self.eta_s: float | None = None
        self.message = "Starting the worker"
        self.fraction = 0.0
        self.hello: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None
        self.error_event: dict[str, Any] | None = None
        self.failure: WorkerFailure | None = None
        self.started_at = time.monotonic()
        self.finished_at: float | None = None
        self._cancel = threading.Event()
        self._eof = False
        self.finished = False
        self.notes: list[str] = []
        self.phases: list[str] = []  # the progress phases seen, in order (load: a cold model)
        self.first_denoise_s: float | None = None  # from the run's start to denoising
        self.preview_dir = preview_dir
        self.previews_seen = 0
        self._preview_event: dict[str, Any] | None = None
        self._preview: dict[str, Any] | None = None

    # -- control ----------------------------------------------------------------------
    def start(self) -> bool:
        """Start the worker and send the job; False (with ``failure``) if it cannot start."""
        try:
            self.process.start()
        except OSError as exc:
            self._finish(
                WorkerFailure(
                    "worker_missing",
                    f"cannot start the worker Python {self.python!r}: {exc.strerror or exc}",
                )
            )
            return False
        self.process.send_line(json.dumps(self.job, ensure_ascii=True))
        return True

    def request_cancel(self) -> None:
        """Thread-safe: the next :meth:`pump` cancels the worker."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def elapsed_s(self) -> float:
        return (self.finished_at or time.monotonic()) - self.started_at

    def pump(self, timeout: float = 0.0) -> bool:
        """Handle the worker's events; True once the run is over (result or failure)."""
        if self.finished:
            return True
        if self._cancel.is_set():
            self.message = "Cancelling"
            self.process.cancel()
            self.process.escalate()
        for event in self.process.get_events(timeout):
            self._handle(event)
            if self.finished:
                return True
        if self._eof:
            self._conclude()
        elif self._cancel.is_set():
            self.process.escalate()
        else:
            self._copy_preview()
        return self.finished

    def take_preview(self) -> dict[str, Any] | None:
        """The newest preview copied since the last call (``path``, ``step``, ``total``),
        or None."""
        shot, self._preview = self._preview, None
        return shot

    def _copy_preview(self) -> None:
        """Copy the newest announced preview now: the worker removes older ones."""
        event, self._preview_event = self._preview_event, None
        if event is None or self.preview_dir is None:
            return
        source = event.get("image")
        if not isinstance(source, str) or not source:
            return
        copy = Path(self.preview_dir) / PREVIEW_COPY_NAME
        try:
            shutil.copyfile(source, copy)
        except OSError:  # already removed by the worker (a newer one follows): skip it
            return
        self._preview = {"path": str(copy), "step": event.get("step"), "total": event.get("total")}

    def abort(self) -> None:
        """Stop at once (Blender is closing the file, the add-on is being disabled)."""
        self._cancel.set()
        if not self.finished:
            self.process.kill()
            self._finish(WorkerFailure("cancelled", "cancelled"))

    # -- events -----------------------------------------------------------------------
    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "hello":
            self.hello = event
            if event.get("protocol") != PROTOCOL:
                self.process.kill()
                self._finish(
                    WorkerFailure(
                        "protocol",
                        f"the worker speaks protocol {event.get('protocol')!r} but this add-on "
                        f"speaks {PROTOCOL}: install the engine that came with the add-on "
                        "(Install Dependencies)",
                    )
                )
                return
            self.message = "Worker started"
        elif kind == "progress":
            self._progress(event)
        elif kind == "preview":
            self._preview_event = event
            self.previews_seen += 1
        elif kind == "result":
            self.result = event
        elif kind == "error":
            self.error_event = event
        elif kind == EOF:
            self._eof = True

    def _progress(self, event: dict[str, Any]) -> None:
        phase = str(event.get("phase") or "")
        try:
            step, total = int(event.get("step") or 0), int(event.get("total") or 0)
        except (TypeError, ValueError):
            step, total = 0, 0
        eta = event.get("eta_s")
        if not self.phases or self.phases[-1] != phase:
            self.phases.append(phase)
        if phase == "denoise" and self.first_denoise_s is None:
            self.first_denoise_s = time.monotonic() - self.started_at
        self.phase, self.step, self.total = phase, step, total
        self.eta_s = float(eta) if isinstance(eta, (int, float)) else None
        self.message = str(event.get("message") or phase)
        lo, hi, _ = PHASES.get(phase, (self.fraction, self.fraction, phase))
        part = min(1.0, step / total) if total > 0 else 0.0
        self.fraction = max(self.fraction, lo + (hi - lo) * part)

    def _conclude(self) -> None:
        """Standard output is closed: reap the worker and decide how the run ended."""
        code = self.process.wait(EXIT_WAIT_S)
        if code is None:  # closed stdout but hangs: stop it
            self.process.kill()
            code = self.process.wait(EXIT_WAIT_S)
        self._decide(code, list(self.process.stderr_tail))

    def _decide(self, code: int | None, stderr: list[str]) -> None:
        """End the run by what it got: a result, a cancel, an error, or else the exit."""
        if self.result is not None and not self._cancel.is_set():
            image = self.result.get("image")
            if isinstance(image, str) and os.path.isfile(image):
                self.fraction = 1.0
                self._finish(None)
            else:
                self._finish(
                    WorkerFailure("internal", f"the worker reported {image!r} but it is missing")
                )
        elif self._cancel.is_set():
            self._finish(WorkerFailure("cancelled", "cancelled"))
        elif self.error_event is not None:
            err = self.error_event
            self._finish(
                WorkerFailure(
                    str(err.get("code") or "internal"),
                    str(err.get("message") or "the worker failed"),
                    str(err.get("traceback") or ""),
                )
            )
        else:
            self._finish(diagnose_exit(self.python, code, stderr))

    def _finish(self, failure: WorkerFailure | None) -> None:
        self.failure = failure
        self.finished = True
        self.finished_at = time.monotonic()
        self.process.close()

    # -- text for people --------------------------------------------------------------
    def status_text(self) -> str:
        label = PHASES.get(self.phase, (0, 0, self.phase.title()))[2]
        text = label
        if self.total and self.phase in ("denoise", "decode"):
            text += f" {self.step}/{self.total}"
        elif self.phase == "write" and self.total > 1:  # a video's frames
            text += f" {min(self.step, self.total - 1)}/{self.total - 1} frames"
        if self.eta_s is not None and self.phase == "denoise":
            text += f", {format_seconds(self.eta_s)} left"
        if self.cancel_requested:
            text = "Cancelling"
        return text


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def run_blocking(run: GenerationRun, report=None, interval: float = 0.1) -> None:
    """Pump ``run`` until it is over; ``report(run)`` after each batch of events.

    Ctrl+C (KeyboardInterrupt) cancels the worker and waits for it to stop.
    """
    while True:
        try:
            done = run.pump(timeout=interval)
        except KeyboardInterrupt:
            run.request_cancel()
            continue
        if report is not None:
            report(run)
        if done:
            return


# --------------------------------------------------------------------------------------
# The warm worker: one ``--serve`` worker keeps the model loaded between jobs
# --------------------------------------------------------------------------------------

SERVE_ARG = "--serve"
DEFAULT_IDLE_S = 600.0  # the preferences' Unload After: 10 minutes
# A serving worker answers "cancel" and keeps its model; one that cannot stop by itself
# (inside one long model call) exits 130 after its own stop deadline (1.2 s). The add-on
# waits past that deadline, so it never kills a worker that is about to answer.
SERVE_TERMINATE_AFTER_S = 1.5
SERVE_KILL_AFTER_S = 2.0
STOP_WAIT_S = 3.0  # after its input closes a serving worker exits (torch's teardown)


def exit_text(code: int | None) -> str:
    """How a process ended, for people: ``exit code 1``, ``killed by SIGKILL``."""
    if code is None:
        return "no exit code"
    if code < 0:
        return f"killed by {_signal_name(code)}"
    return f"exit code {code}"


def restart_note(code: int | None) -> str:
    """What the user is told when the warm worker had died by itself."""
    return (
        f"the SphereDiff worker had stopped ({exit_text(code)}); started a new one (the "
        "model loads again)"
    )


@dataclass(frozen=True)
class WarmKey:
    """What a warm worker was started with. A job with another key gets a new worker:
    another worker Python, another environment (offline, the Hugging Face variables, GPU
    ids...) or another device (so a model on the GPU never stays loaded beside one on the
    CPU). Model, precision and the rest are the worker's business: it reloads for them."""

    python: str
    device: str
    env: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, python: str, device: Any, env: dict[str, str] | None) -> WarmKey:
        env = dict(os.environ if env is None else env)
        return cls(python, str(device or "auto"), tuple(sorted(env.items())))


class ServedWorker:
    """One warm worker process and what the add-on knows of it."""

    def __init__(self, process: WorkerProcess, key: WarmKey) -> None:
        self.process = process
        self.key = key
        self.hello: dict[str, Any] | None = None
        self.serving: bool | None = None  # the hello's "serve" (None until it came)
        self.jobs = 0  # jobs sent to it
        self.busy = False
        self.model: str | None = None  # the last job's model (what it holds loaded)
        self.idle_since = time.monotonic()
        self.expected_exit = False  # ended by the add-on: unload, idle, an unanswered cancel
        self.death_reported = False  # a job already failed because it died
        self.cancelled = False  # its last job was cancelled (the engine may end with 130)

    @property
    def pid(self) -> int | None:
        return self.process.pid


def _log_line(path: Path | None, text: str, append: bool) -> None:
    if path is None or not text:
        return
    with contextlib.suppress(OSError), open(path, "a" if append else "w", encoding="utf-8") as fh:
        fh.write(text.rstrip("\n") + "\n")


def _ended(process: WorkerProcess) -> bool:
    """Whether an idle worker has ended: exited, or its output closed (a process that is
    exiting may not be reapable yet), then reaped."""
    if not process.running():
        return True
    if not any(event.get("event") == EOF for event in process.get_events()):
        return False  # (an idle worker's other events are stale: dropped)
    if process.wait(EXIT_WAIT_S) is None:
        process.kill()
        process.wait(EXIT_WAIT_S)
    return True


def _stop_served(served: ServedWorker) -> None:
    """Close its input (a serving worker then exits 0 between jobs; during a job, with
    --parent-pid, it cancels and cleans up first), SIGKILL if it lingers; reap it."""
    served.expected_exit = True
    process = served.process
    if process.running():
        process.close_input()
        if process.wait(STOP_WAIT_S) is None:
            process.kill()
    process.close()


class WarmWorker:
    """At most one warm worker (``--serve``) for the whole add-on: :data:`WARM`.

    :meth:`acquire` hands out the worker for a job's :class:`WarmKey`: the running one when
    the key matches, else a new one (the old one stopped first, so two models never share
    the memory); one that died while idle is replaced, and the note says so. After each
    job :meth:`release` starts the idle clock: after ``idle_s`` seconds without a job (0:
    no limit) its standard input is closed and it exits, freeing the model's memory. A
    worker Python whose engine cannot serve (no ``"serve": true`` in its hello) is
    remembered, and its jobs run one-shot. Thread-safe (the idle timer is a thread).
    """

    def __init__(self, idle_s: float = DEFAULT_IDLE_S) -> None:
        self._lock = threading.RLock()
        self._served: ServedWorker | None = None
        self._timer: threading.Timer | None = None
        self._one_shot: set[WarmKey] = set()
        self._next_id = 0
        self.idle_s = idle_s

    # -- state --------------------------------------------------------------------------
    @property
    def current(self) -> ServedWorker | None:
        return self._served

    def running(self) -> bool:
        served = self._served
        return served is not None and served.process.running()

    @property
    def pid(self) -> int | None:
        served = self._served
        return served.pid if served is not None and served.process.running() else None

    def busy(self) -> bool:
        served = self._served
        return served is not None and served.busy

    def serves(self, key: WarmKey) -> bool:
        """False once a worker started with ``key`` said it cannot serve."""
        return key not in self._one_shot

    def mark_one_shot(self, key: WarmKey) -> None:
        self._one_shot.add(key)

    # -- jobs ---------------------------------------------------------------------------
    def acquire(
        self,
        key: WarmKey,
        argv: list[str],
        env: dict[str, str] | None,
        stderr_log: Path | None = None,
        log_header: str = "",
    ) -> tuple[ServedWorker, int, str]:
        """(worker, job id, note): the warm worker for ``key``, started if needed, marked
        busy. ``note`` tells the user when the previous one had died by itself. Raises
        OSError when the interpreter cannot be started."""
        with self._lock:
            self._cancel_timer()
            note = ""
            served = self._served
            if served is not None and served.busy:
                raise RuntimeError("the warm worker is busy with another job")
            if served is not None and _ended(served.process):
                code = served.process.returncode()
                # A cancel inside one long model call ends the engine (exit 130): the
                # user asked for it, so no "had stopped" note.
                cancelled = served.cancelled and code == EXIT_CANCELLED
                if not (served.expected_exit or served.death_reported or cancelled):
                    note = restart_note(code)
                served.process.close()
                served = self._served = None
            elif served is not None and served.key != key:
                self._served = None
                _stop_served(served)
                served = None
            if served is None:
                _log_line(stderr_log, log_header, append=False)
                process = WorkerProcess(argv, env=env, cwd=neutral_cwd(), stderr_log=stderr_log)
                process.terminate_after_s = SERVE_TERMINATE_AFTER_S
                process.kill_after_s = SERVE_KILL_AFTER_S
                process.start()
                served = self._served = ServedWorker(process, key)
            else:
                _log_line(stderr_log, f"--- next job, {time.ctime()}", append=True)
            # A new job: its own cancel and escalation (the process is the same).
            served.cancelled = False
            served.process.cancel_sent_at = None
            served.process.terminated = served.process.killed = False
            served.busy = True
            served.jobs += 1
            self._next_id += 1
            return served, self._next_id, note

    def release(self, served: ServedWorker) -> None:
        """The job on ``served`` is over: keep it warm (idle clock) or let it go."""
        with self._lock:
            served.busy = False
            served.idle_since = time.monotonic()
            keep = served.serving and not served.expected_exit and served.process.running()
            if self._served is served and keep:
                self._schedule(served)
                return
            if self._served is served:
                self._served = None
        served.process.close()

    # -- stopping -----------------------------------------------------------------------
    def stop(self) -> bool:
        """Stop the warm worker now (Unload Model, quitting, disabling the add-on); True
        if there was one. Waits up to :data:`STOP_WAIT_S` for it to exit."""
        with self._lock:
            self._cancel_timer()
            served, self._served = self._served, None
        if served is None:
            return False
        _stop_served(served)
        return True

    def stop_if_idle(self) -> bool:
        """:meth:`stop`, unless a job is running on it."""
        with self._lock:
            if self.busy():
                return False
            return self.stop()

    def set_idle(self, seconds: float) -> None:
        """Change the idle limit (the preference); an idle worker's clock goes on."""
        with self._lock:
            self.idle_s = max(0.0, float(seconds))
            served = self._served
            self._cancel_timer()
            if served is not None and not served.busy:
                self._schedule(served)

    def _schedule(self, served: ServedWorker) -> None:
        self._cancel_timer()
        if self.idle_s <= 0:
            return
        delay = max(0.0, self.idle_s - (time.monotonic() - served.idle_since))
        timer = threading.Timer(delay, self._on_idle, args=(served, served.idle_since))
        timer.daemon = True
        timer.name = "spherediff-warm-idle"
        self._timer = timer
        timer.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_idle(self, served: ServedWorker, since: float) -> None:
        with self._lock:
            if self._served is not served or served.busy or served.idle_since != since:
                return  # a job came in the meantime
            self._served = None
            self._timer = None
        _stop_served(served)


WARM = WarmWorker()
"""The add-on's warm worker (stopped at exit, by unregister and by Unload Model)."""
atexit.register(WARM.stop)


class ServedRun(GenerationRun):
    """One job on the warm worker (:data:`WARM`, ``--serve``): the job line carries an
    ``id``, the events carrying another id (a late event of an earlier job) are dropped,
    and the run ends at the job's ``result`` or ``error`` while the worker stays for the
    next job with the model loaded (``loaded``: whether this job loaded it).

    A cancel sends ``cancel``; a worker that has not answered it when its own stop deadline
    is past (:data:`SERVE_TERMINATE_AFTER_S`, :data:`SERVE_KILL_AFTER_S`) is ended, and the
    next job starts a new one. A worker that dies during the job fails the job like a one-shot
    worker would. An engine without ``--serve`` (its hello has no ``"serve": true``): the
    job runs one-shot, in that process or (when it refused ``--serve``) in a new one.
    """

    def __init__(
        self,
        python: str,
        options: dict[str, Any],
        env: dict[str, str] | None = None,
        stderr_log: Path | None = None,
        extra_job: dict[str, Any] | None = None,
        gpus: GpuPlan | None = None,
        preview_dir: Path | None = None,
        pool: WarmWorker | None = None,
        log_header: str = "",
        cwd: str | None = None,
    ) -> None:
        super().__init__(
            python,
            options,
            env=env,
            stderr_log=stderr_log,
            extra_job=extra_job,
            cwd=cwd,
            gpus=gpus,
            preview_dir=preview_dir,
        )
        self.pool = pool or WARM
        self.env = env
        self.stderr_log = stderr_log
        self.log_header = log_header
        # The one-shot process the parent made (not started): the fallback.
        self._one_shot_process = self.process
        self.key = WarmKey.of(python, options.get("device"), self.process.env)
        self.served: ServedWorker | None = None
        self.job_id: int | None = None
        self.one_shot = False
        self.loaded: bool | None = None  # the result's "loaded": this job loaded the model
        self._retried = False
        self._reused = False  # the worker had served earlier jobs
        self._answered = False  # an event of this job came

    def start(self) -> bool:
        if not self.pool.serves(self.key):
            return self._start_one_shot()
        argv, env = launch_command(
            self.python, [SERVE_ARG, "--parent-pid", str(os.getpid())], self.gpus, self.env
        )
        try:
            served, job_id, note = self.pool.acquire(
                self.key, argv, env, self.stderr_log, self.log_header
            )
        except OSError as exc:
            self._finish(
                WorkerFailure(
                    "worker_missing",
                    f"cannot start the worker Python {self.python!r}: {exc.strerror or exc}",
                )
            )
            return False
        self.served, self.job_id, self.process = served, job_id, served.process
        self._reused, self._answered = served.jobs > 1, False
        if note:
            self.notes.append(note)
        if served.hello is not None:  # a warm worker: no hello again
            self.hello = served.hello
            self.message = "Sending the job to the warm worker"
        # (If it died just now, its end of output follows and the job fails by that.)
        self.process.send_line(json.dumps({**self.job, "id": job_id}, ensure_ascii=True))
        return True

    def _start_one_shot(self) -> bool:
        self.pool.stop_if_idle()  # (another key's warm worker: its memory is this job's)
        self.one_shot = True
        self.process = self._one_shot_process
        self.hello = self.error_event = self.result = None
        self._eof = False
        return GenerationRun.start(self)

    def abort(self) -> None:
        if self.served is not None and not self.one_shot:
            self.served.expected_exit = True
        super().abort()

    def request_cancel(self) -> None:
        if self.served is not None and not self.one_shot:
            self.served.cancelled = True
        super().request_cancel()

    # -- events -----------------------------------------------------------------------
    def _handle(self, event: dict[str, Any]) -> None:
        job = event.get("job")
        if job is not None and job != self.job_id:
            return  # a late event of an earlier job
        kind = event.get("event")
        if kind != EOF:
            self._answered = True
        if kind == "hello":
            super()._handle(event)
            served = self.served
            if served is not None and not self.one_shot and self.process is served.process:
                served.hello = event
                served.serving = event.get("serve") is True
                if not served.serving:
                    # An engine without --serve (or a stand-in that ignores it): this job
                    # runs one-shot in this process, and so will this key's next jobs.
                    self.one_shot = True
                    self.pool.mark_one_shot(self.key)
                    self.process.terminate_after_s = TERMINATE_AFTER_S
                    self.process.kill_after_s = KILL_AFTER_S
            return
        if self.one_shot or kind not in ("result", "error"):
            super()._handle(event)
            return
        # The job's last event: the worker goes on serving.
        if kind == "result":
            self.result = event
            loaded = event.get("loaded")
            self.loaded = loaded if isinstance(loaded, bool) else None
        else:
            self.error_event = event
        self._decide(None, [])

    def _conclude(self) -> None:
        if (
            self._reused
            and not self._answered
            and not self.one_shot
            and not self._cancel.is_set()
            and self.served is not None
        ):
            # The warm worker had died by itself just as this job was sent: the job runs
            # on a new one (the note says so), not failed for it.
            self._reused = False
            self.notes.append(restart_note(self.process.wait(EXIT_WAIT_S)))
            self.served.expected_exit = True  # (told here)
            self.pool.release(self.served)
            self.served = None
            self._eof, self.error_event, self.result = False, None, None
            self.start()
            return
        error = self.error_event or {}
        refused = (
            self.one_shot
            and not self._retried
            and self.result is None
            and not self._cancel.is_set()
            and self.served is not None
            and SERVE_ARG in str(error.get("message") or "")
        )
        if not refused:
            super()._conclude()
            return
        # An engine older than --serve refused the argument: run the job one-shot.
        self._retried = True
        self.process.wait(EXIT_WAIT_S)
        self.process.close()
        served, self.served = self.served, None
        served.expected_exit = True
        self.pool.release(served)
        self._start_one_shot()

    def _finish(self, failure: WorkerFailure | None) -> None:
        served = self.served
        if served is None or self.one_shot:
            super()._finish(failure)  # a one-shot process: closed
            if served is not None:
                self.pool.release(served)
            return
        self.failure = failure
        self.finished = True
        self.finished_at = time.monotonic()
        if self.process.terminated or self.process.killed:
            served.expected_exit = True  # an unanswered cancel: the next job starts anew
        if self._eof:
            served.death_reported = True  # this job's failure said so already
        served.model = str(self.job["options"].get("model") or "") or served.model
        self.pool.release(served)


# --------------------------------------------------------------------------------------
# "Check worker": the worker's --hello
# --------------------------------------------------------------------------------------


@dataclass
class CheckResult:
    """What ``--hello`` said, as lines for the preferences, and what is missing."""

    python: str = ""
    running: bool = False
    done: bool = False
    ok: bool = False
    hello: dict[str, Any] | None = None
    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


LAST_CHECK = CheckResult()
"""The last "Check Worker" result (shown in the preferences)."""

REQUIRED_PACKAGES = ("torch", "diffusers", "transformers")


def describe_hello(hello: dict[str, Any], addon_engine_version: str | None) -> CheckResult:
    result = CheckResult(hello=hello, done=True)
    result.lines.append(
        f"SphereDiff engine {hello.get('version')} (protocol {hello.get('protocol')}), "
        f"Python {hello.get('python')}"
    )
    result.lines.append(
        ", ".join(f"{name} {hello.get(name) or 'missing'}" for name in REQUIRED_PACKAGES)
    )
    devices = hello.get("devices") or []
    if hello.get("device"):
        result.lines.append(f"Device: {hello.get('device')} ({', '.join(map(str, devices))})")
    if hello.get("protocol") != PROTOCOL:
        result.problems.append(
            f"The worker speaks protocol {hello.get('protocol')!r}, the add-on {PROTOCOL}: "
            "click Install Dependencies to install the matching engine"
        )
    missing = [name for name in REQUIRED_PACKAGES if not hello.get(name)]
    if missing:
        result.problems.append(
            f"Missing in the worker Python: {', '.join(missing)}; click Install Dependencies"
        )
    elif hello.get("device") == "cpu":
        result.lines.append("No GPU found: generating on the CPU is very slow")
    if (
        addon_engine_version
        and hello.get("version")
        and hello.get("version") != addon_engine_version
    ):
        result.problems.append(
            f"The worker's engine is {hello.get('version')}, the add-on's "
            f"{addon_engine_version}: click Install Dependencies to update it"
        )
    result.ok = not result.problems
    return result


def check_worker(
    python: str,
    env: dict[str, str] | None = None,
    timeout: float = 180.0,
    addon_engine_version: str | None = None,
) -> CheckResult:
    """Run ``python -m spherediff_core.worker --hello`` and describe what it reports."""
    process = WorkerProcess(worker_argv(python, "--hello"), env=env)
    try:
        process.start()
    except OSError as exc:
        return CheckResult(
            python=python,
            done=True,
            problems=[f"Cannot run the worker Python {python!r}: {exc.strerror or exc}"],
        )
    hello = None
    deadline = time.monotonic() + timeout
    eof = False
    while not eof and time.monotonic() < deadline:
        for event in process.get_events(timeout=0.2):
            if event.get("event") == "hello":
                hello = event
            elif event.get("event") == EOF:
                eof = True
    code = process.wait(2.0) if eof else None
    stderr = list(process.stderr_tail)
    process.close()
    if hello is None:
        if not eof:
            failure = WorkerFailure("timeout", f"the worker did not answer in {timeout:.0f} s")
        else:
            failure = diagnose_exit(python, code, stderr)
        return CheckResult(python=python, done=True, problems=[failure.message])
    result = describe_hello(hello, addon_engine_version)
    result.python = python
    return result
