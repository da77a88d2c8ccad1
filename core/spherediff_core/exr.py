"""Writing a lifted panorama: a linear half-float OpenEXR and its JSON sidecar, atomically.

The EXR is written through the Academy Software Foundation's ``OpenEXR`` Python bindings
(the library Blender itself uses): one scanline part, channels R, G, B as HALF, ZIP
compression, top row first, linear Rec.709 (no chromaticities attribute: Rec.709 is
OpenEXR's default). Like the PNG (:mod:`spherediff_core.outputs`), both files go to
temporary names in the output folder and are renamed into place (``os.replace``); any
failure removes the temporaries, and an EXR is never left without its sidecar.

The sidecar of ``spherediff hdr`` holds the ``hdr`` block of issue 10::

    "hdr": {"exr": "pano.exr", "exposure": 1.0, "method": "...",
            "sun": {"visible": true, "direction": [x, y, z], "azimuth_deg": ...,
                    "elevation_deg": ..., "angle_deg": ..., "color": [r, g, b],
                    "strength": ...}}
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import placing
from .hdr import HDRResult
from .outputs import (
    METADATA_VERSION,
    _dumps,
    _put_in_place,
    _save_exr,
    _save_text,
    _temp_name,
    _writing,
)

__all__ = ["HDROutputPaths", "read_exr", "read_ldr_panorama", "write_hdr_outputs"]


@dataclass(frozen=True)
class HDROutputPaths:
    exr: Path
    sidecar: Path


def read_exr(path: str | os.PathLike[str]) -> np.ndarray:
    """An RGB EXR -> (H, W, 3) float32, top row first."""
    import OpenEXR

    with OpenEXR.File(str(path)) as exr:
        channels = exr.channels()
        if "RGB" in channels:
            rgb = channels["RGB"].pixels
        else:
            rgb = np.stack([channels[c].pixels for c in ("R", "G", "B")], axis=-1)
    return np.asarray(rgb, dtype=np.float32)


def write_hdr_outputs(
    result: HDRResult,
    output: str | os.PathLike[str],
    *,
    source: str | os.PathLike[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> HDROutputPaths:
    """Write ``output`` (.exr) and its sidecar (.json, same stem) for a lifted panorama."""
    exr_path = placing.output_path(output)
    if exr_path.suffix.lower() != ".exr":
        raise ValueError(f"output {str(output)!r} must end in .exr")
    sidecar = exr_path.with_suffix(".json")
    h, w = result.image.shape[:2]
    doc: dict[str, Any] = {
        "format": "spherediff",
        "metadata_version": METADATA_VERSION,
        "projection": "equirectangular",
        "width": int(w),
        "height": int(h),
        **({"source": str(source)} if source is not None else {}),
        **(extra or {}),
        "image": exr_path.name,
        "hdr": result.hdr_block(exr_path.name),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "timings": {"lift": round(float(result.seconds), 4)},
    }
    # The same safety as the PNG's (outputs.write_outputs): checks, temporaries, the
    # output's lock, and an earlier pair kept whole when anything fails.
    folder = exr_path.parent
    with _writing(exr_path, sidecar) as temps:
        tmp_exr = _temp_name(folder, exr_path)
        temps.append(tmp_exr)
        _save_exr(result.image, tmp_exr)
        tmp_side = _temp_name(folder, sidecar)
        temps.append(tmp_side)
        _save_text(_dumps(doc, 2) + "\n", tmp_side)
        _put_in_place(exr_path, sidecar, [(tmp_exr, exr_path), (tmp_side, sidecar)])
    return HDROutputPaths(exr=exr_path, sidecar=sidecar)


_HDR_MAGIC = {
    b"\x76\x2f\x31\x01": "OpenEXR",
    b"#?RADIANCE": "Radiance HDR",
    b"#?RGBE": "Radiance HDR",
}


def read_ldr_panorama(path: str | os.PathLike[str]) -> np.ndarray:
    """An 8- or 16-bit sRGB RGB image file -> (H, W, 3) uint8 / uint16, refused by name.

    Refused (BadInputError): a missing file, an HDR file (OpenEXR, Radiance), a file no
    image reader understands, grayscale, and anything with alpha. The 2:1 check is the
    lift's own.
    """
    from .errors import BadInputError

    p = Path(path).expanduser()
    if not p.is_file():
        raise BadInputError(f"input {str(path)!r} does not exist (or is not a file)")
    with open(p, "rb") as fh:
        head = fh.read(16)
    for magic, kind in _HDR_MAGIC.items():
        if head.startswith(magic):
            raise BadInputError(
                f"input {str(path)!r} is already HDR ({kind}): the lift takes an 8- or 16-bit "
                "sRGB panorama (PNG, JPEG); load the HDR image as the World directly"
            )
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - Pillow comes with spherediff[models]
        raise BadInputError("reading images needs Pillow: pip install pillow") from exc
    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            has_alpha = "A" in mode or "transparency" in im.info
            if mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "F") and not has_alpha:
                raise BadInputError(
                    f"input {str(path)!r} is grayscale (mode {mode}): the lift needs an RGB "
                    "panorama; convert it to RGB first"
                )
            if has_alpha:
                raise BadInputError(
                    f"input {str(path)!r} has an alpha channel (mode {mode}): an environment "
                    "has no transparency; save it as RGB without alpha"
                )
            if mode == "RGB":
                return np.asarray(im, dtype=np.uint8).copy()
            if mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
                return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
            raise BadInputError(
                f"input {str(path)!r} has pixel mode {mode}, which the lift cannot read; "
                "save it as an 8- or 16-bit RGB PNG"
            )
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadInputError(
            f"input {str(path)!r} cannot be read as an image ({exc}); use an RGB PNG or JPEG"
        ) from exc
