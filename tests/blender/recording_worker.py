"""A stand-in for the engine's worker that only records the job it was given.

    <python> recording_worker.py [-m spherediff_core.worker]   (job on standard input)

It appends the job's options as one JSON line to ``RECORDING_WORKER_LOG`` (environment),
says ``hello`` and answers with a ``bad_input`` error at once, so a test sees which values
reached a worker (and that a refused call started none) without generating anything. With
``RECORDING_WORKER_LAUNCH_LOG`` set it also appends how it was started there: its
arguments (``-c BOOTSTRAP --parent-pid PID``, or torchrun's) and ``CUDA_VISIBLE_DEVICES``.
Standard library only.
"""

from __future__ import annotations

import json
import os
import sys


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main() -> int:
    job = json.loads(sys.stdin.readline())
    with open(os.environ["RECORDING_WORKER_LOG"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(job.get("options")) + "\n")
    launch_log = os.environ.get("RECORDING_WORKER_LAUNCH_LOG")
    if launch_log:
        launch = {
            "argv": sys.argv[1:],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "options": job.get("options"),
        }
        with open(launch_log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(launch) + "\n")
    emit("hello", protocol=1, version="recording", python=sys.version.split()[0], pid=os.getpid())
    emit("error", code="bad_input", message="recorded by the test worker", traceback="")
    return 2


if __name__ == "__main__":
    sys.exit(main())
