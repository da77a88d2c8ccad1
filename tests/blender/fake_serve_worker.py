"""A stand-in for the engine's serving worker (``--serve``): many jobs, one process.

    <python> fake_serve_worker.py [-c BOOTSTRAP] [--serve] [--parent-pid PID]

It speaks the protocol of docs/worker-protocol.md with the issue-15 additions: ``hello``
(with ``"serve": true`` under ``--serve``) once, then job lines read one after another
from standard input, each job's events carrying its ``"id"`` as ``"job"`` and ending
with its ``result`` (``"loaded"``: true for the first job only, the "model" stays
loaded) or ``error``; ``cancel`` cancels the running job (an ``error`` with code
``cancelled``) and the worker goes on serving; end of input between jobs: exit 0 (during
a job: cancel, exit 130). Without ``--serve``: one job, then exit, as before.

Previews (the job's ``preview_every``): solid colours, :func:`preview_colour` of the step,
written as hidden PNGs (``.<stem>.preview-<step>.png``) in the output's folder; only the
latest two are kept and all are removed at the end of the job, as the engine does. The
still is one solid colour too, :func:`result_colour` of the seed (64 x 32).

``FAKE_SERVE_CONTROL`` (environment): a JSON file read at the start of every job (so one
process can be driven through several behaviours), ``{"mode": ..., "step_s": 0.05}``:

* ``ok``: load progress (first job only), denoise steps with previews, the files, ``result``;
* ``slow``: denoise steps (with previews) until ``cancel``; ``deaf``: the same, but a
  ``cancel`` is ignored (the client has to end the process);
* ``fail``: three steps (with previews), then an ``internal`` error;
* ``crash_after``: the result, then the process exits 1 between jobs.

``FAKE_SERVE_LOG``: one JSON line per hello, job and exit (pid, job id, mode, loaded).
Standard library only.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE)]  # (run with PYTHONSAFEPATH: this folder is not on sys.path)

from fake_video_worker import PALETTE, emit, png_bytes, sidecar_doc  # noqa: E402


def preview_colour(step: int) -> tuple[int, int, int]:
    """The 8-bit sRGB colour of the preview after denoising step ``step``."""
    return PALETTE[step % len(PALETTE)]


def result_colour(seed: int) -> tuple[int, int, int]:
    return PALETTE[(seed * 3 + 1) % len(PALETTE)]


def log(**fields) -> None:
    path = os.environ.get("FAKE_SERVE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "t": time.time(), **fields}) + "\n")


def control() -> dict:
    path = os.environ.get("FAKE_SERVE_CONTROL")
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    return {}


class Input:
    """Standard input read by a thread: job lines queued (numbered from 1), ``cancel``
    (for the latest job sent before it) and the end flagged."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[tuple[int, str] | None] = queue.Queue()
        self.read = 0
        self.cancelled_job = 0
        self.eof = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            text = line.strip()
            if text == "cancel":
                self.cancelled_job = self.read
            elif text:
                self.read += 1
                self.jobs.put((self.read, text))
        self.eof.set()
        self.jobs.put(None)


class Cancelled(Exception):
    pass


def run_job(job: dict, number: int, first: bool, inp: Input, parent_watch: bool) -> dict | None:
    """One job's events; returns the result fields (None: it ended with an error)."""
    options = job["options"]
    job_id = job.get("id")
    tag = {} if job_id is None else {"job": job_id}
    ctl = control()
    mode = ctl.get("mode", "ok")
    step_s = float(ctl.get("step_s", 0.05))
    log(event="job", id=job_id, mode=mode, loaded=first, seed=options.get("seed"))
    output = Path(options["output"])
    every = int(options.get("preview_every") or 0)
    width = int(options.get("preview_width") or 512)
    previews: list[Path] = []

    def check() -> None:
        if inp.cancelled_job == number and mode != "deaf":
            raise Cancelled("cancel on standard input")
        if parent_watch and inp.eof.is_set():
            raise Cancelled("standard input closed: the client is gone")

    def preview(step: int, total: int) -> None:
        path = output.parent / f".{output.stem}.preview-{step}.png"
        path.write_bytes(png_bytes(width, width // 2, preview_colour(step)))
        previews.append(path)
        while len(previews) > 2:  # the latest two stay, as the engine keeps them
            previews.pop(0).unlink(missing_ok=True)
        emit("preview", image=str(path), step=step, total=total, **tag)

    t0 = time.monotonic()
    try:
        if first:
            emit("progress", phase="load", step=0, total=1, eta_s=None, message="loading", **tag)
            emit("progress", phase="load", step=1, total=1, eta_s=None, message="loaded", **tag)
        steps = int(options.get("steps") or 4)
        endless = mode in ("slow", "deaf")
        total = 100_000 if endless else steps
        for step in range(1, total + 1):
            check()
            time.sleep(step_s)
            check()
            emit("progress", phase="denoise", step=step, total=total, eta_s=None, message="", **tag)
            if every and (step % every == 0 or step == total):
                preview(step, total)
            if mode == "fail" and step == 3:
                message = "the fake worker failed on purpose"
                emit("error", code="internal", message=message, traceback="", **tag)
                return None
        seed = int(options["seed"])
        output.write_bytes(png_bytes(64, 32, result_colour(seed)))
        sidecar = output.with_suffix(".json")
        sidecar.write_text(json.dumps(sidecar_doc(options, output.name)), encoding="utf-8")
        emit("progress", phase="write", step=1, total=1, eta_s=None, message="written", **tag)
        emit(
            "result",
            image=str(output),
            sidecar=str(sidecar),
            width=64,
            height=32,
            seconds=round(time.monotonic() - t0, 3),
            seed=seed,
            warnings=[],
            exr=None,
            sun=None,
            loaded=first,
            **tag,
        )
        return {"mode": mode}
    except Cancelled:
        emit("error", code="cancelled", message="cancelled", traceback="", **tag)
        return None
    finally:
        for path in previews:
            path.unlink(missing_ok=True)


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["-c"]:  # the add-on's bootstrap: python -c CODE ARGS
        args = args[2:]
    serve = "--serve" in args
    parent_watch = "--parent-pid" in args
    serving = {"serve": True} if serve else {}
    python = sys.version.split()[0]
    emit("hello", protocol=1, version="fake-serve", python=python, pid=os.getpid(), **serving)
    log(event="hello", argv=args)
    inp = Input()
    first = True
    while True:
        item = inp.jobs.get()
        if item is None:  # end of input between jobs
            log(event="exit", code=0)
            return 0
        number, line = item
        try:
            job = json.loads(line)
        except ValueError:
            emit("error", code="bad_input", message="the job is not JSON", traceback="")
            continue
        outcome = run_job(job, number, first, inp, parent_watch)
        first = False
        if parent_watch and inp.eof.is_set() and outcome is None:
            log(event="exit", code=130)
            return 130
        if not serve:
            return 0 if outcome is not None else 1
        if outcome is not None and outcome["mode"] == "crash_after":
            log(event="exit", code=1)
            sys.stdout.flush()
            os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
