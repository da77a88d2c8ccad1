"""Load image files with Blender's own image loader and save their pixels as .npy.

Run INSIDE a Blender Python interpreter (``pip install bpy``)::

    <bpy venv>/bin/python tests/blender/load_image_pixels.py IMAGE OUT.npy [IMAGE OUT.npy ...]

Each OUT.npy is float32 (H, W, 4), top row first (Blender stores the bottom row first), the
values as Blender's loader gives them with colour space Non-Color (no transform).
"""

from __future__ import annotations

import os
import sys

import bpy
import numpy as np


def main(argv: list[str]) -> int:
    pairs = list(zip(argv[0::2], argv[1::2], strict=True))
    for src, dst in pairs:
        img = bpy.data.images.load(os.path.abspath(src), check_existing=False)
        img.colorspace_settings.name = "Non-Color"
        w, h = img.size
        buf = np.empty(w * h * 4, dtype=np.float32)
        img.pixels.foreach_get(buf)
        np.save(dst, buf.reshape(h, w, 4)[::-1])
        print(f"{src}: {w}x{h} float={img.is_float} blender {bpy.app.version_string}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
