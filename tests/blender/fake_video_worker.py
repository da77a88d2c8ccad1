"""A stand-in for the engine's worker that "generates" a synthetic 360° video at once
(or, for a job without ``video``, a still: a noisy PNG of a few KB).

    <python> fake_video_worker.py [-m spherediff_core.worker]   (job on standard input)

It speaks the worker protocol (docs/worker-protocol.md): ``hello``, ``progress``, then a
video ``result`` or an ``error``, and writes the engine's video layout for the job's
``output`` (``<stem>_frames/frame_0001.png``..., ``<stem>.mp4``, ``<stem>.json``). Every
frame is one solid colour, :func:`frame_colour` (distinct frame to frame), so renders in
Blender show which frame the World played. No torch, no numpy: only the standard library.

The sidecar is laid out as the engine's (``format``, ``options`` with ``output``, ``image``,
``video``), so the add-on's rewriting of it can be checked. The fake worker lifts its own
soft file-size limit (a scenario lowers Blender's to make its copies fail, not these
writes).

``FAKE_VIDEO_WORKER_MODE`` (environment) picks the run:

* ``ok`` (default): the frames, the MP4 (a placeholder) and the sidecar, then ``result``;
* ``fail``: two frames, then an ``internal`` error (exit 1), leaving the frames behind;
* ``slow``: two frames, then denoise progress until ``cancel`` arrives on standard input
  (then a ``cancelled`` error, exit 130, the partial frames left behind for the add-on
  to clean up).
"""

from __future__ import annotations

import json
import os
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

PALETTE = (
    (230, 25, 25),
    (25, 200, 40),
    (30, 60, 230),
    (240, 220, 20),
    (20, 220, 220),
    (220, 30, 220),
    (250, 140, 20),
    (128, 128, 128),
)
WIDTH, HEIGHT = 16, 8


def frame_colour(index: int, seed: int) -> tuple[int, int, int]:
    """The 8-bit sRGB colour of frame ``index`` (0-based) of a video with ``seed``."""
    return PALETTE[(index + seed) % len(PALETTE)]


def png_bytes(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def noise_png(width: int, height: int, seed: int) -> bytes:
    """A PNG of pseudo-random pixels (it does not compress: ~3 bytes a pixel)."""
    state = seed * 2654435761 + 1
    data = bytearray()
    for _ in range(height):
        data.append(0)
        for _ in range(width * 3):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            data.append(state >> 16 & 0xFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(data)))
        + chunk(b"IEND", b"")
    )


def sidecar_doc(options: dict, image: str, video: dict | None = None) -> dict:
    """The engine's sidecar layout (outputs.build_metadata), for the job's own paths."""
    doc = {"format": "spherediff", "metadata_version": 1, "seed": int(options["seed"])}
    doc.update(options=dict(options), image=image, fake=True)
    if video is not None:
        doc["video"] = video
    return doc


def denoise_until_cancelled() -> int:
    """Denoise progress until ``cancel`` arrives on standard input; then ``cancelled``."""
    cancelled = threading.Event()

    def watch() -> None:
        for line in sys.stdin:
            if line.strip() == "cancel":
                cancelled.set()
                return

    threading.Thread(target=watch, daemon=True).start()
    for step in range(1, 100_000):
        if cancelled.wait(0.02):
            emit("error", code="cancelled", message="cancelled", traceback="")
            return 130
        emit("progress", phase="denoise", step=step, total=100_000, eta_s=None, message="")
    return 1


def lift_file_size_limit() -> None:
    try:
        import resource
    except ImportError:  # Windows
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))


def write_still(options: dict, output: Path) -> int:
    seed = int(options["seed"])
    output.write_bytes(noise_png(64, 32, seed))
    sidecar = output.with_suffix(".json")
    sidecar.write_text(json.dumps(sidecar_doc(options, output.name), indent=2))
    emit("progress", phase="write", step=1, total=1, eta_s=None, message="written")
    emit("result", image=str(output), sidecar=str(sidecar), width=64, height=32, seconds=0.1,
         seed=seed)  # fmt: skip
    return 0


def main() -> int:
    lift_file_size_limit()
    job = json.loads(sys.stdin.readline())
    options = job["options"]
    mode = os.environ.get("FAKE_VIDEO_WORKER_MODE", "ok")
    emit("hello", protocol=1, version="fake", python=sys.version.split()[0], pid=os.getpid())
    t0 = time.monotonic()
    output = Path(options["output"])
    stem = output.with_suffix("")
    frames_dir = stem.parent / f"{stem.name}_frames"
    mp4, sidecar = stem.with_suffix(".mp4"), stem.with_suffix(".json")
    count = int(options.get("frames") or 9)
    fps = options.get("fps") or (16 if "wan" in options["model"].lower() else 24)
    seed = int(options["seed"])
    emit("progress", phase="load", step=1, total=1, eta_s=None, message="loaded")
    if not options.get("video"):
        return write_still(options, output)
    frames_dir.mkdir(parents=True)

    def write_frame(i: int) -> Path:
        path = frames_dir / f"frame_{i + 1:04d}.png"
        path.write_bytes(png_bytes(WIDTH, HEIGHT, frame_colour(i, seed)))
        return path

    if mode in ("fail", "slow"):
        for i in range(min(2, count)):
            write_frame(i)
    if mode == "fail":
        emit("error", code="internal", message="the fake worker failed on purpose", traceback="")
        return 1
    if mode == "slow":
        return denoise_until_cancelled()

    for step in range(1, 3):
        emit("progress", phase="denoise", step=step, total=2, eta_s=None, message="")
    paths = [write_frame(i) for i in range(count)]
    mp4.write_bytes(b"not really an MP4\n" * 1000)  # 18 KB
    first = f"{frames_dir.name}/{paths[0].name}"
    video = {
        "frames": count,
        "fps": fps,
        "frames_folder": frames_dir.name,
        "first_frame": first,
        "frame_pattern": "frame_%04d.png",
        "first_frame_number": 1,
        "mp4": mp4.name,
    }
    sidecar.write_text(json.dumps(sidecar_doc(options, first, video), indent=2))
    emit("progress", phase="write", step=1, total=1, eta_s=None, message="written")
    emit(
        "result",
        image=str(paths[0]),
        sidecar=str(sidecar),
        width=WIDTH,
        height=HEIGHT,
        seconds=round(time.monotonic() - t0, 3),
        seed=seed,
        video=True,
        frames=count,
        fps=fps,
        frames_dir=str(frames_dir),
        first_frame=str(paths[0]),
        mp4=str(mp4),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
