"""A stand-in for the engine's worker whose "generations" are the project's HDR ground truth.

    <test python> fake_hdr_worker.py [-m spherediff_core.worker]   (job on standard input)

It speaks the worker protocol (docs/worker-protocol.md) and writes what the real worker
writes for a still with ``hdr``: ``<stem>.png`` (the 8-bit panorama a generator shows of a
ground-truth scene rendered by Blender, tests/support/hdr_truth.to_ldr8), ``<stem>.exr``
lifted from it by the real engine (``spherediff_core.hdr.lift_to_hdr``, written by
``spherediff_core.exr``) and ``<stem>.json`` with the ``hdr`` block; the ``result`` event
carries ``exr`` and ``sun``. So the add-on's HDR World and Sun Lamp can be checked against
scenes whose lighting is known.

The job's seed picks the scene: ``FAKE_HDR_SCENES`` (comma-separated names of scenes in
``FAKE_HDR_TRUTH_DIR``, ``<name>.npy``), seed 1 the first. ``FAKE_HDR_MODE``: ``ok``
(default), ``fail`` (an ``internal`` error after writing a partial PNG), ``slow``
(progress until ``cancel`` arrives on standard input, then ``cancelled``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
# (Run with PYTHONSAFEPATH by the add-on: this folder is not on sys.path by itself.)
sys.path[:0] = [str(HERE), str(REPO_ROOT), str(REPO_ROOT / "core")]

from fake_video_worker import denoise_until_cancelled, emit  # noqa: E402 - after the path


def main() -> int:
    import numpy as np
    from PIL import Image
    from spherediff_core.exr import write_hdr_outputs
    from spherediff_core.hdr import lift_to_hdr

    from tests.support.hdr_truth import to_ldr8

    job = json.loads(sys.stdin.readline())
    options = job["options"]
    mode = os.environ.get("FAKE_HDR_MODE", "ok")
    emit("hello", protocol=1, version="fake-hdr", python=sys.version.split()[0], pid=os.getpid())
    output = Path(options["output"])
    seed = int(options["seed"])
    emit("progress", phase="load", step=1, total=1, eta_s=None, message="loaded")
    if mode == "fail":
        output.write_bytes(b"\x89PNG half")
        message = "the fake HDR worker failed on purpose"
        emit("error", code="internal", message=message, traceback="")
        return 1
    if mode == "slow":
        return denoise_until_cancelled()

    t0 = time.monotonic()
    names = os.environ["FAKE_HDR_SCENES"].split(",")
    name = names[(seed - 1) % len(names)]
    truth = np.load(Path(os.environ["FAKE_HDR_TRUTH_DIR"]) / f"{name}.npy")
    ldr = to_ldr8(truth)
    emit("progress", phase="denoise", step=1, total=1, eta_s=None, message="")
    Image.fromarray(ldr).save(output)
    sun = None
    if options.get("hdr"):
        emit("progress", phase="hdr", step=0, total=1, eta_s=None, message="lifting")
        lifted = lift_to_hdr(ldr)
        write_hdr_outputs(lifted, output.with_suffix(".exr"), source=str(output))
        sun = lifted.sun.to_dict()
        emit("progress", phase="hdr", step=1, total=1, eta_s=None, message="lifted")
    else:
        doc = {"format": "spherediff", "metadata_version": 1, "seed": seed, "image": output.name}
        output.with_suffix(".json").write_text(json.dumps(doc), encoding="utf-8")
    emit("progress", phase="write", step=1, total=1, eta_s=None, message="written")
    h, w = ldr.shape[:2]
    emit(
        "result",
        image=str(output),
        sidecar=str(output.with_suffix(".json")),
        width=w,
        height=h,
        seconds=round(time.monotonic() - t0, 3),
        seed=seed,
        warnings=[],
        exr=str(output.with_suffix(".exr")) if sun is not None else None,
        sun=sun,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
