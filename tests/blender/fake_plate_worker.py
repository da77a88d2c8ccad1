"""A stand-in for the engine's worker that "generates" the World a known image implies.

    <test python> fake_plate_worker.py [-m spherediff_core.worker]   (job on standard input)

For a job with ``image`` it writes the ERP panorama (1024 x 512, 8-bit sRGB PNG) that shows
the image exactly where the engine places it (``spherediff_core.known.footprint`` with the
job's yaw, pitch, roll and FOV: the same convention the denoising uses) and mid-grey
elsewhere, plus its sidecar, and answers with a ``result`` event. So a render through the
Blender camera that Match Camera read must show the image: the add-on's camera match,
the engine's placement convention and the World's mapping are checked together, without
a diffusion model in between (the engine's own tests hold the image through denoising).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
# (Run with PYTHONSAFEPATH by the add-on: this folder is not on sys.path by itself.)
sys.path[:0] = [str(HERE), str(REPO_ROOT), str(REPO_ROOT / "core")]

from fake_video_worker import emit  # noqa: E402 - after the path

WIDTH = 1024


def main() -> int:
    import numpy as np
    import torch
    from PIL import Image
    from spherediff_core import geometry
    from spherediff_core.known import ImagePlacement, footprint, sample_grid

    job = json.loads(sys.stdin.readline())
    options = job["options"]
    emit("hello", protocol=1, version="fake-plate", python=sys.version.split()[0], pid=os.getpid())
    output = Path(options["output"])
    with Image.open(options["image"]) as im:
        plate = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    placement = ImagePlacement(
        yaw_deg=options["image_yaw_deg"],
        pitch_deg=options["image_pitch_deg"],
        roll_deg=options["image_roll_deg"],
        fov_deg=options["image_fov_deg"],
        feather_deg=0.0,
    )
    h, w = WIDTH // 2, WIDTH
    dirs = geometry.erp_pixel_directions(h, w).reshape(-1, 3)
    fp = footprint(dirs, placement, plate.shape[0], plate.shape[1])
    grid = torch.from_numpy(plate).permute(2, 0, 1)
    colours = sample_grid(grid, fp.x.float(), fp.y.float()).T  # (N, 3)
    erp = torch.where(fp.inside[:, None], colours, torch.full_like(colours, 0.5))
    pixels = (erp.reshape(h, w, 3).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    Image.fromarray(pixels).save(output)
    doc = {"format": "spherediff", "metadata_version": 1, "seed": int(options["seed"])}
    doc.update(options=options, image=output.name)
    output.with_suffix(".json").write_text(json.dumps(doc), encoding="utf-8")
    emit("progress", phase="write", step=1, total=1, eta_s=None, message="written")
    emit(
        "result",
        image=str(output),
        sidecar=str(output.with_suffix(".json")),
        width=w,
        height=h,
        seconds=0.1,
        seed=int(options["seed"]),
        warnings=[],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
