"""A stand-in for the engine's worker for the history tests: real files, jobs written down.

    <test python> fake_history_worker.py [-c BOOTSTRAP] [--parent-pid PID] [--serve]

It speaks the worker protocol (docs/worker-protocol.md): ``hello`` once, then for each job
line ``progress`` events and a ``result``; one job, or with ``--serve`` one job per line
until the end of standard input (events carry ``"job": <id>`` when the job has an id).
Each job's options are appended as one JSON line to ``FAKE_HISTORY_LOG`` (so a test sees
what reached the worker: width, steps, seed, final_width).

What it writes for a job, at its ``output``: a real 8-bit PNG of the job's size (width from
``width``, ``size`` or 2048; height half of it) in one colour that the seed picks
(:func:`seed_colour`), and the sidecar; with ``hdr`` a real OpenEXR lifted from the PNG
by the engine (``spherediff_core.hdr.lift_to_hdr``, ``spherediff_core.exr``) and a fixed
sun (:data:`SUN`), so a restored World's lamp can be compared. Its result carries the
seed it was given (a seed beyond 32 bits included).
"""

from __future__ import annotations

import json
import os
import sys
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
# (Run with PYTHONSAFEPATH by the add-on: this folder is not on sys.path by itself.)
sys.path[:0] = [str(HERE), str(REPO_ROOT / "core")]

from fake_video_worker import png_bytes  # noqa: E402 - after the path

SIZES = {"1K": 1024, "2K": 2048, "4K": 4096, "8K": 8192}
SUN = {
    "visible": True,
    "direction": [0.663414, 0.383022, 0.642788],
    "azimuth_deg": 30.0,
    "elevation_deg": 40.0,
    "angle_deg": 2.5,
    "color": [1.0, 0.9, 0.8],
    "strength": 5.5,
    "surround": [0.5, 0.6, 0.9],
}


def seed_colour(seed: int) -> tuple[int, int, int]:
    """The 8-bit sRGB colour of the panorama of ``seed`` (distinct for nearby seeds)."""
    h = zlib.crc32(str(seed).encode("ascii"))
    return (40 + h % 200, 40 + (h >> 8) % 200, 40 + (h >> 16) % 200)


def emit(event: str, job_id=None, **fields) -> None:
    if job_id is not None:
        fields["job"] = job_id
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def run_job(job: dict) -> None:
    options = job["options"]
    job_id = job.get("id")
    with open(os.environ["FAKE_HISTORY_LOG"], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(options) + "\n")
    t0 = time.monotonic()
    seed = int(options["seed"])
    width = int(options.get("width") or SIZES.get(options.get("size") or "", 2048))
    height = width // 2
    output = Path(options["output"])
    emit("progress", job_id, phase="load", step=1, total=1, eta_s=None, message="loaded")
    steps = int(options.get("steps") or 2)
    for step in range(1, steps + 1):
        emit("progress", job_id, phase="denoise", step=step, total=steps, eta_s=None, message="")
    rgb = seed_colour(seed)
    output.write_bytes(png_bytes(width, height, rgb))
    exr, sun, hdr_block = None, None, None
    if options.get("hdr"):
        import numpy as np
        from spherediff_core.exr import write_hdr_outputs
        from spherediff_core.hdr import lift_to_hdr

        ldr = np.empty((height, width, 3), dtype=np.uint8)
        ldr[...] = rgb
        lifted = lift_to_hdr(ldr)
        exr = write_hdr_outputs(lifted, output.with_suffix(".exr"), source=str(output)).exr
        sun = dict(SUN)
        hdr_block = {**lifted.hdr_block(exr.name), "sun": sun}
    doc = {
        "format": "spherediff",
        "metadata_version": 1,
        "seed": seed,
        "options": dict(options),
        "image": output.name,
        "fake": True,
        **({"hdr": hdr_block} if hdr_block else {}),
    }
    output.with_suffix(".json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    emit("progress", job_id, phase="write", step=1, total=1, eta_s=None, message="written")
    emit(
        "result",
        job_id,
        image=str(output),
        sidecar=str(output.with_suffix(".json")),
        width=width,
        height=height,
        seconds=round(time.monotonic() - t0, 3),
        seed=seed,
        warnings=[],
        exr=str(exr) if exr is not None else None,
        sun=sun,
        loaded=True,
    )


def main() -> int:
    serve = "--serve" in sys.argv[1:]
    hello = {"protocol": 1, "version": "fake-history", "python": sys.version.split()[0]}
    emit("hello", **hello, pid=os.getpid(), **({"serve": True} if serve else {}))
    for line in sys.stdin:
        line = line.strip()
        if not line or line == "cancel":
            continue
        run_job(json.loads(line))
        if not serve:
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
