"""The engine worker: one job per process, JSON-lines events on standard output.

This is the process the Blender add-on starts; docs/worker-protocol.md is its contract::

    python -m spherediff_core.worker [--job JOB.json] [--hello]

Standard output carries only the protocol's events. To keep it pure, :func:`main` moves
the real standard output to a private descriptor for the events and points descriptor 1
(and ``sys.stdout``) at standard error, so a stray ``print`` or a library's progress bar
can never corrupt the stream.

Cancelling: a ``cancel`` line on standard input (read by a background thread), SIGINT or
SIGTERM (POSIX), CTRL_BREAK_EVENT (Windows, SIGBREAK) set a flag that the pipeline polls
before every view batch, between the plan build's rounds and between blended views. A
second signal interrupts at once. Either way the worker removes partial outputs, sends an
``error`` event with code ``cancelled`` and exits 130. With ``--parent-pid``, the client
going away (its process ends, or standard input reaches its end) stops the worker the same
way. Whatever stopped it, the worker ends within :data:`STOP_GRACE_S` (plus a file being
written): a main thread still inside one long model call is ended by
:class:`~spherediff_core.lifecycle.StopDeadline`, which leaves nothing behind either.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from . import lifecycle
from .errors import EXIT_CANCELLED, EXIT_OK, BadInputError, CancelledError
from .options import GenerationOptions, OptionsError

__all__ = ["JOB_KEYS", "PROTOCOL_VERSION", "STOP_GRACE_S", "EventWriter", "main", "parse_job"]

PROTOCOL_VERSION = 1
JOB_KEYS = ("protocol", "options", "plan_cache_dir", "staging_dir", "id")
STOP_GRACE_S = 1.2
"""After a stop request the main thread has this long to stop by itself (it polls the
cancel flag a fraction of a second apart, save during one model call); then the process
is ended by the stop deadline."""
CLIENT_ENV = "SPHEREDIFF_CLIENT"
"""Who started the worker ("blender" from the add-on; "worker" when unset): messages give
advice in its words (where to choose a local model folder). An environment variable, not
a job field, so that an add-on can tell any engine version: an older one ignores it."""
CLIENTS = ("worker", "blender")

logger = logging.getLogger("spherediff.worker")


# --------------------------------------------------------------------------------------
# Standard output: events only
# --------------------------------------------------------------------------------------


def _claim_stdout() -> IO[str]:
    """Keep the real standard output for events; send everything else to standard error."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stdout.flush()
    try:
        events_fd = os.dup(1)
        os.dup2(2, 1)  # C-level writes to descriptor 1 now land on standard error
    except OSError:  # no usable descriptors (e.g. a GUI Python); keep what there is
        stream = sys.stdout if sys.stdout is not None else open(os.devnull, "w")  # noqa: SIM115
    else:
        stream = open(events_fd, "w", encoding="utf-8", newline="\n", buffering=1)  # noqa: SIM115
    sys.stdout = sys.stderr
    return stream


class EventWriter:
    """Writes one JSON object per line and flushes; thread-safe; never raises.

    When the reader goes away (the add-on's Blender crashed or was killed), the stream
    breaks; ``on_broken`` is then called once, so the worker can cancel itself rather
    than run on as an orphan.
    """

    def __init__(self, stream: IO[str], on_broken: Callable[[], None] | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.broken = False
        self.on_broken = on_broken
        self.job_id: Any = None
        """A serving worker's current job's ``id``: every event of the job carries it."""

    def emit(self, event: str, **fields: Any) -> None:
        if self.job_id is not None and event != "hello":
            fields = {**fields, "job": self.job_id}
        line = json.dumps({"event": event, **fields}, ensure_ascii=True, allow_nan=False)
        with self._lock:
            if self.broken:
                return
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError):  # the reader went away; nothing left to tell
                self.broken = True
                if self.on_broken is not None:
                    self.on_broken()


class ProgressThrottle:
    """Forwards progress as events: every phase change and phase end, else at most 10/s."""

    def __init__(self, events: EventWriter, min_interval_s: float = 0.1) -> None:
        self.events = events
        self.min_interval_s = min_interval_s
        self._phase = ""
        self._last = 0.0

    def __call__(self, p: Any) -> None:
        now = time.monotonic()
        if p.phase == self._phase and p.step < p.total and now - self._last < self.min_interval_s:
            return
        self._phase = p.phase
        self._last = now
        eta = p.eta_s
        if eta is not None and not math.isfinite(eta):
            eta = None
        self.events.emit(
            "progress",
            phase=p.phase,
            step=int(p.step),
            total=int(p.total),
            eta_s=None if eta is None else round(float(eta), 2),
            message=p.message or f"{p.phase} {p.step}/{p.total}",
        )


# --------------------------------------------------------------------------------------
# Standard input: the job line, then cancel lines
# --------------------------------------------------------------------------------------


class _LineReader:
    """Lines from a raw descriptor (no buffered-reader locks, so a daemon thread may block)."""

    def __init__(self, fd: int = 0) -> None:
        self.fd = fd
        self._buf = b""
        self._eof = False

    def readline(self) -> bytes | None:
        while b"\n" not in self._buf and not self._eof:
            try:
                chunk = os.read(self.fd, 65536)
            except (OSError, ValueError):
                chunk = b""
            if chunk:
                self._buf += chunk
            else:
                self._eof = True
        if b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            return line
        if self._buf:
            line, self._buf = self._buf, b""
            return line
        return None


def _watch_stdin(reader: _LineReader, token: Any, on_eof: Callable[[], None] | None = None) -> None:
    """Cancel on a ``cancel`` line. At end of input call ``on_eof`` (with --parent-pid:
    the client is gone), else end quietly (closing standard input is no cancel)."""
    while True:
        line = reader.readline()
        if line is None:
            if on_eof is not None:
                on_eof()
            return
        text = line.decode("utf-8", "replace").strip()
        if text.lower() == "cancel":
            logger.info("cancel requested on standard input")
            token.cancel("'cancel' on standard input")
        elif text:
            logger.warning("ignoring unknown line on standard input: %.80r", text)


# --------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------


def parse_job(data: Any) -> tuple[GenerationOptions, str | None]:
    """Check a decoded job; return its options (validated) and plan_cache_dir."""
    if not isinstance(data, dict):
        raise BadInputError(f"the job must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(JOB_KEYS))
    if unknown:
        raise BadInputError(f"job: unknown field {unknown[0]!r}; a job has {', '.join(JOB_KEYS)}")
    protocol = data.get("protocol", PROTOCOL_VERSION)
    if protocol != PROTOCOL_VERSION or isinstance(protocol, bool):
        raise BadInputError(
            f"protocol: {protocol!r} is not supported; this worker speaks protocol "
            f"{PROTOCOL_VERSION} (update the add-on or the engine so that they match)"
        )
    if "options" not in data:
        raise BadInputError("options: missing; a job needs an options object with a prompt")
    _job_id(data)
    plan_cache_dir = data.get("plan_cache_dir")
    if plan_cache_dir is not None and (
        not isinstance(plan_cache_dir, str) or not plan_cache_dir.strip()
    ):
        raise BadInputError(f"plan_cache_dir: {plan_cache_dir!r} must be a folder path or null")
    from .runner import check_options

    options = GenerationOptions.from_dict(data["options"])
    check_options(options)
    return options, plan_cache_dir


def _job_id(data: Any) -> str | int | None:
    """The job's optional ``id`` (a string or an integer), echoed on its events."""
    value = data.get("id") if isinstance(data, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadInputError(f"id: {value!r} must be a string, an integer or null")
    if isinstance(value, str) and len(value) > 200:
        raise BadInputError(f"id: {value[:40]!r}... is too long; use at most 200 characters")
    return value


def _decode_job(line: bytes, source: str) -> Any:
    """A job line (UTF-8 JSON) decoded, or BadInputError naming what is wrong."""
    try:
        return _parse_json(line.decode("utf-8-sig"), source)
    except UnicodeDecodeError as exc:
        raise BadInputError(f"the job line is not UTF-8 ({exc})") from exc


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadInputError(f"the job from {source} is not valid JSON ({exc})") from exc
    except RecursionError as exc:  # e.g. [[[[...]]]] thousands deep
        raise BadInputError(
            f"the job from {source} is nested too deeply to be read; a job is a flat JSON "
            "object of options"
        ) from exc


def _read_job(args: argparse.Namespace, stdin: _LineReader) -> Any:
    if args.job is not None:
        try:
            text = Path(args.job).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(f"--job: cannot read {args.job!r} ({exc})") from exc
        return _parse_json(text, args.job)
    line = stdin.readline()
    if line is None or not line.strip():
        raise BadInputError(
            "no job: give --job FILE or write the job as the first line of standard input"
        )
    return _decode_job(line, "standard input")


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentError(message)


def build_parser(prog: str = "python -m spherediff_core.worker") -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        description=(
            "SphereDiff engine worker: runs one job and reports JSON-lines events on "
            f"standard output (protocol {PROTOCOL_VERSION}, see docs/worker-protocol.md)."
        ),
    )
    parser.add_argument(
        "--job", metavar="FILE", help="read the job from FILE (default: first line of stdin)"
    )
    parser.add_argument(
        "--hello", action="store_true", help="print the hello event and exit (loads no model)"
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help=(
            "serve many jobs: read job lines from standard input one after another, keep "
            "the loaded model between them, exit at end of input"
        ),
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        metavar="PID",
        help=(
            "the client's process id: when that process ends, or standard input reaches "
            "its end (the client keeps it open), stop as on a cancel within 2 s"
        ),
    )
    return parser


def hello_fields() -> dict[str, Any]:
    from .runner import device_summary, package_versions

    versions = package_versions()
    device, devices = device_summary()
    return {
        "protocol": PROTOCOL_VERSION,
        "version": versions["spherediff"],
        "python": versions["python"],
        "torch": versions["torch"],
        "diffusers": versions["diffusers"],
        "transformers": versions["transformers"],
        "device": device,
        "devices": devices,
        "pid": os.getpid(),
    }


def _configure_logging() -> None:
    level = os.environ.get("SPHEREDIFF_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


class _Stopping:
    """Why the worker stops, shared by the watcher threads, the deadline and ``main``.

    ``orphaned``: the client is gone (its process ended, its end of standard input or of
    standard output closed), so nobody will read the result or clean up after the job:
    the worker removes the job's files itself, and the client's staging folder if the
    job named one (``staging_dir``) and it is empty then.
    """

    def __init__(self, token: Any, events: EventWriter) -> None:
        self.token = token
        self.events = events
        self.orphaned = False
        self.ending = False
        """The worker itself must stop (a signal, the client gone), not just one job."""
        self.staging: Path | None = None
        self.signal_name = ""
        self.deadline = lifecycle.StopDeadline(STOP_GRACE_S, self.hard_stop)

    def request(self, reason: str, orphaned: bool = False) -> None:
        """Any thread: cancel the job and start the stop deadline."""
        if orphaned and not self.orphaned:
            self.orphaned = True
            logger.info("%s: stopping", reason)
        if orphaned:
            self.ending = True
        self.token.cancel(reason)
        self.deadline.arm()

    cancel = request  # what the standard-input watcher calls for a "cancel" line

    def on_signal(self, signum: int) -> None:
        """A signal arrived (the wake-up thread; its Python handler may run much later)."""
        import signal

        with contextlib.suppress(ValueError):
            self.signal_name = signal.Signals(signum).name
        self.ending = True
        self.deadline.arm()

    def hard_stop(self) -> int:
        """The deadline's thread, the main thread still busy: report and tidy up."""
        reason = self.token.reason or self.signal_name or "stop requested"
        from .preview import remove_live_previews

        remove_live_previews()  # the running job's live previews (never inside protected)
        if self.orphaned:
            _remove_staging(self.staging)
        self.events.emit(
            "error",
            code="cancelled",
            message=(
                f"cancelled ({reason}); stopped during a long computation, nothing was written"
            ),
            traceback="",
        )
        return EXIT_CANCELLED


def _staging_dir(data: Any, options: GenerationOptions) -> Path | None:
    """The job's ``staging_dir``: the output's own folder, made by the client for this job."""
    value = data.get("staging_dir") if isinstance(data, dict) else None
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise BadInputError(f"staging_dir: {value!r} must be a folder path or null")
    folder = Path(value)
    output_folder = Path(str(options.output)).expanduser().absolute().parent
    if (
        not folder.is_absolute()
        or not folder.is_dir()
        or folder.resolve() != output_folder.resolve()
    ):
        raise BadInputError(
            f"staging_dir: {value!r} must be the existing absolute folder of the output "
            f"({str(output_folder)!r})"
        )
    return folder


def _remove_staging(staging: Path | None) -> None:
    """Remove the client's staging folder if it holds nothing any more (never its files)."""
    if staging is None:
        return
    try:
        staging.rmdir()  # only an empty folder: what is in it is not the worker's to remove
        logger.info("removed the staging folder %s (its client is gone)", staging)
    except OSError as exc:
        logger.warning("left the staging folder %s (%s)", staging, exc)


def _discard_outcome(outcome: Any) -> None:
    """Remove the files a finished job wrote (its client is gone and will not take them)."""
    import shutil

    paths = [outcome.image, outcome.exr, outcome.sidecar]
    if outcome.video:
        paths = [outcome.sidecar, outcome.mp4]
        if outcome.frames_dir is not None:
            shutil.rmtree(outcome.frames_dir, ignore_errors=True)
    for path in paths:
        if path is not None:
            with contextlib.suppress(OSError):
                Path(path).unlink(missing_ok=True)


@dataclasses.dataclass
class _Worker:
    """What every job of this worker process shares."""

    events: EventWriter
    stopping: _Stopping
    token: Any
    client: str
    dist: Any = None
    models: Any = None
    """A serving worker's :class:`~spherediff_core.runner.ModelCache` (None: one job)."""

    @property
    def serving(self) -> bool:
        return self.models is not None


def _run_job(w: _Worker, data: Any) -> int:
    """One job, from its options to its ``result`` or ``error`` event; the exit code.

    One job per process: the stop deadline is settled with the code after the last event.
    A serving worker's deadline is disarmed instead (the next job may follow).
    """
    from .distributed import check_device
    from .runner import describe_error, generate

    events, stopping, token, dist = w.events, w.stopping, w.token, w.dist
    stopping.staging = None

    def conclude(code: int) -> None:  # inside lifecycle.protected(), after the last event
        if w.serving:
            stopping.deadline.disarm()
        else:
            stopping.deadline.settle(code)

    # Held from the start of the write phase until the final event is sent: the stop
    # deadline never cuts the writing or placing of files, nor the discarding of them.
    writing = contextlib.ExitStack()
    try:
        try:
            options, plan_cache_dir = parse_job(data)
        except OptionsError as exc:
            raise BadInputError(str(exc)) from exc
        if dist is not None:
            check_device(options.device)
        if dist is None or dist.is_root:  # the client's staging folder is rank 0's to clear
            stopping.staging = _staging_dir(data, options)
        logger.info("job: %s, %s px, seed %d", options.model, options.resolved_width, options.seed)
        throttle = ProgressThrottle(events)
        in_write: list[bool] = []

        def on_progress(p: Any) -> None:
            if p.phase == "write" and not in_write:
                writing.enter_context(lifecycle.protected())
                in_write.append(True)
            throttle(p)

        outcome = generate(
            options,
            on_progress=on_progress,
            should_cancel=token,
            plan_cache_dir=plan_cache_dir,
            dist=dist,
            models=w.models,
            on_preview=lambda path, step, total: events.emit(
                "preview", image=str(path), step=int(step), total=int(total)
            ),
        )
        if outcome is None:  # a rank other than 0: rank 0 reports the result
            stopping.deadline.settle(EXIT_OK)
            return EXIT_OK
        if stopping.orphaned and stopping.staging is not None:
            _discard_outcome(outcome)  # in the client's staging folder: nobody will take it
            token.check()
        video: dict[str, Any] = {}
        if outcome.video:  # additive: a still's result has none of these fields
            video = {
                "video": True,
                "frames": outcome.frames,
                "fps": outcome.fps,
                "frames_dir": str(outcome.frames_dir),
                "first_frame": str(outcome.image),
                "mp4": None if outcome.mp4 is None else str(outcome.mp4),
            }
        with lifecycle.protected():
            events.emit(
                "result",
                image=str(outcome.image),
                sidecar=str(outcome.sidecar),
                width=outcome.width,
                height=outcome.height,
                seconds=round(outcome.seconds, 3),
                seed=outcome.seed,
                warnings=list(outcome.warnings),  # additive: notes for the user
                exr=None if outcome.exr is None else str(outcome.exr),  # additive (hdr)
                sun=outcome.sun,  # additive: the sidecar's hdr.sun block, or null
                loaded=outcome.loaded,  # additive: false when the model was loaded already
                **video,
            )
            conclude(EXIT_OK)
        return EXIT_OK
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        report = describe_error(exc, token.reason, w.client)
        if dist is not None and not dist.is_root and report.code == "cancelled":
            # Stopped with the others: exit as done, so torchrun does not tear down rank 0
            # while it removes its partial files and reports the cancel.
            stopping.deadline.settle(EXIT_OK)
            return EXIT_OK
        if report.code == "internal":
            logger.error("%s\n%s", report.message, report.traceback)
        else:
            logger.info("%s: %s", report.code, report.message)
        with lifecycle.protected():
            if stopping.orphaned:
                _remove_staging(stopping.staging)
            events.emit(
                "error", code=report.code, message=report.message, traceback=report.traceback
            )
            conclude(report.exit_code)
        return report.exit_code
    finally:
        writing.close()


class _JobLine:
    """A job line read by a serving worker, and whether a ``cancel`` came for it."""

    def __init__(self, line: bytes) -> None:
        self.line = line
        self.cancelled = False


class _Serving:
    """A serving worker's queue of job lines, fed by the standard-input thread.

    ``cancel`` applies to the latest job line sent before it: the running job is
    cancelled (it answers ``error``/``cancelled`` and the worker goes on), a job still
    waiting is answered the same way without running.
    """

    def __init__(self, stopping: _Stopping) -> None:
        self.stopping = stopping
        self.jobs: queue.Queue[_JobLine | None] = queue.Queue()
        self._lock = threading.Lock()
        self._latest: _JobLine | None = None
        self._current: _JobLine | None = None
        self._closed = False  # the client closed its end while no job ran: stop, exit 0

    def read(self, reader: _LineReader, on_eof: Callable[[], None] | None) -> None:
        """The standard-input thread: job lines and ``cancel`` lines until end of input.

        ``on_eof`` (``--parent-pid``: the client keeps its end open while it lives): the
        end of input during a job means the client is gone, so the job is cancelled and
        the worker ends; between jobs it is how the client lets the worker go (exit 0,
        jobs still waiting dropped). Without it, the jobs read are run, then exit 0.
        """
        while True:
            line = reader.readline()
            if line is None:
                with self._lock:
                    busy = self._current is not None
                    self._closed = on_eof is not None and not busy
                if busy and on_eof is not None:
                    on_eof()
                self.jobs.put(None)
                return
            text = line.strip()
            if not text:
                continue
            if text.lower() == b"cancel":
                self.cancel_latest()
                continue
            item = _JobLine(line)
            with self._lock:
                self._latest = item
            self.jobs.put(item)

    def cancel_latest(self) -> None:
        with self._lock:
            item = self._latest
            if item is None or item.cancelled:
                return
            item.cancelled = True
            if item is self._current:
                logger.info("cancel requested on standard input")
                self.stopping.request("'cancel' on standard input")

    def begin(self, item: _JobLine) -> bool:
        """The main thread starts ``item``; False when it was cancelled while waiting."""
        with self._lock:
            self.stopping.token.reset()
            self._current = item
            return not item.cancelled and not self._closed

    def end(self) -> None:
        """The job has sent its last event. Under the lock that ``cancel`` takes too, so a
        cancel that came after the job's last event cannot leave the deadline armed."""
        with self._lock:
            self._current = None
            if not self.stopping.ending:
                self.stopping.token.reset()
                self.stopping.deadline.disarm()

    def next_job(self) -> _JobLine | None:
        """The next job line; None at end of input or when the worker must stop."""
        while not self.stopping.ending:
            with self._lock:
                if self._closed:
                    return None
            try:
                return self.jobs.get(timeout=0.1)
            except queue.Empty:
                continue
        return None


def _report(w: _Worker, exc: BaseException) -> int:
    """Send the ``error`` event of a job that never ran; the exit code."""
    from .runner import describe_error

    report = describe_error(exc, w.token.reason, w.client)
    logger.info("%s: %s", report.code, report.message)
    with lifecycle.protected():
        if w.stopping.orphaned:
            _remove_staging(w.stopping.staging)
        w.events.emit("error", code=report.code, message=report.message, traceback=report.traceback)
        if not w.serving:
            w.stopping.deadline.settle(report.exit_code)
    return report.exit_code


def _serve(w: _Worker, serving: _Serving) -> int:
    """Run job lines one after another until end of input; the exit code."""
    code = EXIT_OK
    try:
        while True:
            item = serving.next_job()
            if item is None:  # end of input (exit 0), or stopped while waiting for a job
                code = EXIT_CANCELLED if w.stopping.ending else EXIT_OK
                break
            started = serving.begin(item)
            try:
                data = _decode_job(item.line, "standard input")
                w.events.job_id = _job_id(data)
                if not started:
                    raise CancelledError("cancelled ('cancel' on standard input) before it started")
                code = _run_job(w, data)
            except (BadInputError, CancelledError) as exc:  # never started
                code = _report(w, exc)
            finally:
                w.events.job_id = None
                serving.end()
            if w.stopping.ending:  # a signal, or the client is gone: stopped, not done
                code = code or EXIT_CANCELLED
                break
    except KeyboardInterrupt:  # a second signal while waiting for a job
        code = EXIT_CANCELLED
    w.stopping.deadline.settle(code)  # first: an armed deadline then ends with this code
    if w.models is not None:
        w.models.unload()
    return code


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the worker; returns the exit code (see docs/worker-protocol.md)."""
    from .distributed import init_from_env, launched
    from .runner import (
        CancelToken,
        ModelCache,
        install_cancel_signals,
        prepare_environment,
    )

    _configure_logging()
    token = CancelToken()
    # Under torchrun (several GPUs) rank 0 alone speaks the protocol: the other ranks'
    # events go nowhere, and they never read standard input (rank 0 shares the job).
    rank = int(os.environ.get("RANK", "0")) if launched() else 0
    stream = _claim_stdout()  # on every rank: stray prints go to standard error
    if rank != 0:
        stream.close()
        stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - lives as long as the worker
        logging.getLogger().setLevel(logging.ERROR)  # rank 0 says what there is to say
    events = EventWriter(stream)
    stopping = _Stopping(token, events)
    events.on_broken = lambda: stopping.request(
        "the event stream's reader went away", orphaned=True
    )

    def on_signal(name: str) -> None:
        logger.info("%s received: cancelling", name)
        stopping.ending = True
        stopping.deadline.arm()

    install_cancel_signals(token, on_first=on_signal)
    lifecycle.SignalWakeup(stopping.on_signal).start()
    w = _Worker(events, stopping, token, os.environ.get(CLIENT_ENV, "worker"))
    if w.client not in CLIENTS:
        logger.warning("ignoring %s=%.40r: expected one of %s", CLIENT_ENV, w.client, CLIENTS)
        w.client = "worker"
    args_error = None
    try:
        args = build_parser(prog or "python -m spherediff_core.worker").parse_args(argv)
    except _ArgumentError as exc:
        args, args_error = None, BadInputError(f"command line: {exc}")
    except SystemExit as exc:  # --help (printed on standard error)
        return int(exc.code or 0)
    if args is not None and args.serve and args.job is not None:
        args_error = BadInputError(
            "command line: --serve reads its jobs from standard input; leave out --job"
        )
    if args is not None and args.serve and launched():
        args_error = BadInputError(
            "command line: --serve is for one worker process; under torchrun run one job "
            "per launch (leave out --serve)"
        )
    try:
        # Before torch (for hello) or anything Hugging Face is imported; the job's own
        # offline switch is applied once the job is read (HF_HUB_OFFLINE set outside
        # the worker is honoured by huggingface_hub itself).
        prepare_environment(offline=False)
        serve = {"serve": True} if args is not None and args.serve else {}
        events.emit("hello", **hello_fields(), **serve)
        if args_error is not None:
            raise args_error
        assert args is not None
        if args.hello:
            return EXIT_OK
        on_eof = None
        if args.parent_pid is not None:
            lifecycle.ParentWatch(
                args.parent_pid, lambda why: stopping.request(why, orphaned=True)
            ).start()
            on_eof = lambda: stopping.request(  # noqa: E731
                "standard input closed: the client is gone", orphaned=True
            )
        if args.serve:
            w.models = ModelCache()
            serving = _Serving(stopping)
            threading.Thread(
                target=serving.read, args=(_LineReader(0), on_eof), name="stdin-jobs", daemon=True
            ).start()
            return _serve(w, serving)
        if launched():
            # torchrun's agent is every rank's parent: a killed agent (SIGKILL cannot be
            # forwarded) must not leave ranks holding the GPUs.
            lifecycle.ParentWatch(
                os.getppid(), lambda why: stopping.request(why, orphaned=True)
            ).start()
            w.dist = init_from_env("auto")
        dist = w.dist
        if dist is None or dist.is_root:
            stdin = _LineReader(0)
            try:
                data = _read_job(args, stdin)
            except BadInputError:
                if dist is not None:
                    dist.broadcast_text(None)  # the other ranks stop quietly
                raise
            if dist is not None:
                dist.broadcast_text(json.dumps(data))
            threading.Thread(
                target=_watch_stdin,
                args=(stdin, stopping, on_eof),
                name="stdin-cancel",
                daemon=True,
            ).start()
        else:
            text = dist.broadcast_text(None)
            if text is None:  # rank 0 could not read a job and reports it
                return EXIT_OK  # (a failure code would make torchrun cut rank 0 short)
            data = json.loads(text)
        events.job_id = _job_id(data) if isinstance(data, dict) else None
        return _run_job(w, data)
    except BaseException as exc:  # before any job ran: the command line or the job line
        if isinstance(exc, SystemExit):
            raise
        return _report(w, exc)
    finally:
        if w.dist is not None:
            w.dist.close()


def run() -> None:
    """Entry point: exit with main()'s code, quickly."""
    code = main()
    from .runner import prepare_exit

    prepare_exit()
    sys.exit(code)


if __name__ == "__main__":
    run()
