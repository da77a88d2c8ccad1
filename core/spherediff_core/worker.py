"""The engine worker: one job per process, JSON-lines events on standard output.

This is the process the Blender add-on starts; docs/worker-protocol.md is its contract::

    python -m spherediff_core.worker [--job JOB.json] [--hello]

Standard output carries only the protocol's events. To keep it pure, :func:`main` moves
the real standard output to a private descriptor for the events and points descriptor 1
(and ``sys.stdout``) at standard error, so a stray ``print`` or a library's progress bar
can never corrupt the stream.

Cancelling: a ``cancel`` line on standard input (read by a background thread), SIGINT or
SIGTERM (POSIX), CTRL_BREAK_EVENT (Windows, SIGBREAK) set a flag that the pipeline polls
before every view batch. A second signal interrupts at once. Either way the worker
removes partial outputs, sends an ``error`` event with code ``cancelled`` and exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .errors import EXIT_OK, BadInputError
from .options import GenerationOptions, OptionsError

__all__ = ["JOB_KEYS", "PROTOCOL_VERSION", "EventWriter", "main", "parse_job"]

PROTOCOL_VERSION = 1
JOB_KEYS = ("protocol", "options", "plan_cache_dir")

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

    def emit(self, event: str, **fields: Any) -> None:
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


def _watch_stdin(reader: _LineReader, token: Any) -> None:
    """Cancel on a ``cancel`` line; end quietly at end of input (closing is no cancel)."""
    while True:
        line = reader.readline()
        if line is None:
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
    plan_cache_dir = data.get("plan_cache_dir")
    if plan_cache_dir is not None and (
        not isinstance(plan_cache_dir, str) or not plan_cache_dir.strip()
    ):
        raise BadInputError(f"plan_cache_dir: {plan_cache_dir!r} must be a folder path or null")
    from .runner import check_options

    options = GenerationOptions.from_dict(data["options"])
    check_options(options)
    return options, plan_cache_dir


def _read_job(args: argparse.Namespace, stdin: _LineReader) -> Any:
    if args.job is not None:
        try:
            text = Path(args.job).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(f"--job: cannot read {args.job!r} ({exc})") from exc
        source = args.job
    else:
        line = stdin.readline()
        if line is None or not line.strip():
            raise BadInputError(
                "no job: give --job FILE or write the job as the first line of standard input"
            )
        try:
            text = line.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise BadInputError(f"the job line is not UTF-8 ({exc})") from exc
        source = "standard input"
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadInputError(f"the job from {source} is not valid JSON ({exc})") from exc


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


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the worker; returns the exit code (see docs/worker-protocol.md)."""
    from .runner import (
        CancelToken,
        describe_error,
        generate,
        install_cancel_signals,
        prepare_environment,
    )

    _configure_logging()
    token = CancelToken()
    events = EventWriter(
        _claim_stdout(), on_broken=lambda: token.cancel("the event stream's reader went away")
    )
    install_cancel_signals(
        token, on_first=lambda name: logger.info("%s received: cancelling", name)
    )
    args_error = None
    try:
        args = build_parser(prog or "python -m spherediff_core.worker").parse_args(argv)
    except _ArgumentError as exc:
        args, args_error = None, BadInputError(f"command line: {exc}")
    except SystemExit as exc:  # --help (printed on standard error)
        return int(exc.code or 0)
    try:
        # Before torch (for hello) or anything Hugging Face is imported; the job's own
        # offline switch is applied once the job is read (HF_HUB_OFFLINE set outside
        # the worker is honoured by huggingface_hub itself).
        prepare_environment(offline=False)
        events.emit("hello", **hello_fields())
        if args_error is not None:
            raise args_error
        assert args is not None
        if args.hello:
            return EXIT_OK
        stdin = _LineReader(0)
        data = _read_job(args, stdin)
        threading.Thread(
            target=_watch_stdin, args=(stdin, token), name="stdin-cancel", daemon=True
        ).start()
        try:
            options, plan_cache_dir = parse_job(data)
        except OptionsError as exc:
            raise BadInputError(str(exc)) from exc
        logger.info("job: %s, %s px, seed %d", options.model, options.resolved_width, options.seed)
        outcome = generate(
            options,
            on_progress=ProgressThrottle(events),
            should_cancel=token,
            plan_cache_dir=plan_cache_dir,
        )
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
        events.emit(
            "result",
            image=str(outcome.image),
            sidecar=str(outcome.sidecar),
            width=outcome.width,
            height=outcome.height,
            seconds=round(outcome.seconds, 3),
            seed=outcome.seed,
            warnings=list(outcome.warnings),  # additive: notes for the user
            **video,
        )
        return EXIT_OK
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        report = describe_error(exc, token.reason)
        if report.code == "internal":
            logger.error("%s\n%s", report.message, report.traceback)
        else:
            logger.info("%s: %s", report.code, report.message)
        events.emit("error", code=report.code, message=report.message, traceback=report.traceback)
        return report.exit_code


def run() -> None:
    """Entry point: exit with main()'s code, quickly."""
    code = main()
    from .runner import prepare_exit

    prepare_exit()
    sys.exit(code)


if __name__ == "__main__":
    run()
