"""Writing a generation to disk: an 8-bit sRGB PNG and a JSON sidecar, both atomically.

The PNG carries its parameters in an iTXt chunk (key ``spherediff``, JSON) and an sRGB
chunk. Its bytes depend only on the parameters: the timings, the creation time and the
output path are left out of the PNG, so the same options and seed give a byte-identical
file wherever it is written. The sidecar (same stem, ``.json``) holds everything: the
parameters, the output file, the timings and the creation time.

Both files are written under temporary names in the output folder and renamed into place
(``os.replace``), so a reader never sees half a file; on any failure the temporaries are
removed. The temporary names derive from the output's own name, never from the prompt.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "METADATA_KEY",
    "METADATA_VERSION",
    "OutputPaths",
    "build_metadata",
    "image_to_uint8",
    "sidecar_path_for",
    "write_outputs",
]

METADATA_KEY = "spherediff"
METADATA_VERSION = 1
_O_BINARY = getattr(os, "O_BINARY", 0)


@dataclass(frozen=True)
class OutputPaths:
    image: Path
    sidecar: Path


def sidecar_path_for(image: str | os.PathLike[str]) -> Path:
    """``pano.png`` -> ``pano.json`` (same folder, same stem)."""
    return Path(image).with_suffix(".json")


def image_to_uint8(image: Any):
    """(3, H, W) float in [0, 1] (display-encoded) -> (H, W, 3) uint8 numpy array.

    The values are already sRGB-encoded (as the VAE decodes them): they are only
    quantised, value * 255 rounded to the nearest integer.
    """
    import numpy as np
    import torch

    t = torch.as_tensor(image).detach().to("cpu", torch.float32)
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(t.shape)}")
    t = torch.nan_to_num(t, nan=0.0).clamp(0.0, 1.0)
    q = (t * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    return np.ascontiguousarray(q.numpy())


def _model_info(model: dict[str, Any]) -> dict[str, Any]:
    info = dict(model)
    source = info.pop("source", None)
    return {"id": source, "revision": info.pop("revision", None), **info}


def build_metadata(
    result: Any,
    *,
    versions: dict[str, str | None] | None = None,
    timings: dict[str, float] | None = None,
    output: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The PNG chunk's JSON and the sidecar's JSON for a GenerationResult.

    The first holds every parameter (options with the resolved steps and guidance, less
    the output path), the model, seed, sphere and views, and package versions. The second
    adds the output files, the timings and the creation time.
    """
    from .runner import package_versions

    options = result.options.to_dict()
    height, width = int(result.image.shape[-2]), int(result.image.shape[-1])
    params = {k: v for k, v in options.items() if k != "output"}
    png_doc: dict[str, Any] = {
        "format": "spherediff",
        "metadata_version": METADATA_VERSION,
        "projection": "equirectangular",
        "width": width,
        "height": height,
        "seed": options["seed"],
        "options": params,
        "model": _model_info(result.model),
        "n_points": int(result.n_points),
        "grid": [int(v) for v in result.grid],
        "views": int(result.n_views),
        "versions": dict(versions if versions is not None else package_versions()),
    }
    used_timings = dict(result.timings if timings is None else timings)
    image_path = Path(output if output is not None else options["output"]).expanduser()
    sidecar_doc = {
        **png_doc,
        "options": {**options, "output": str(output) if output is not None else options["output"]},
        "image": image_path.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "timings": {k: round(float(v), 4) for k, v in used_timings.items()},
    }
    return png_doc, sidecar_doc


def _dumps(doc: dict[str, Any], indent: int | None) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=indent, sort_keys=False, default=str)


def _temp_name(folder: Path, final: Path) -> Path:
    """Create an empty, new temporary file next to ``final``; its mode follows the umask.

    (tempfile.mkstemp would make it private, 0600, and the rename would keep that.)
    """
    for _ in range(100):
        path = folder / f".{final.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(f"cannot create a temporary file in {folder}")


def _save_png(array: Any, path: Path, text: str) -> None:
    """Write (H, W, 3) uint8 as an 8-bit RGB PNG with the text and sRGB chunks."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add(b"sRGB", b"\x00")  # sRGB colour space, perceptual rendering intent
    info.add_itxt(METADATA_KEY, text)
    image = Image.fromarray(array, "RGB")
    with open(path, "wb") as fh:
        image.save(fh, format="PNG", pnginfo=info, compress_level=6)
        fh.flush()
        os.fsync(fh.fileno())


def _save_text(text: str, path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _replace(src: Path, dst: Path) -> None:
    """os.replace, retried briefly on Windows where a reader may hold the target open."""
    for attempt in range(10):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if os.name != "nt" or attempt == 9:
                raise
            time.sleep(0.1 * (attempt + 1))


def write_outputs(
    result: Any,
    output: str | os.PathLike[str],
    *,
    versions: dict[str, str | None] | None = None,
    timings: dict[str, float] | None = None,
) -> OutputPaths:
    """Write ``result`` as ``output`` (.png) and its sidecar (.json); return both paths.

    The folder is created when missing. Atomic: both files go to temporary names in the
    folder first and are renamed into place; any failure removes the temporaries (and the
    PNG, when the sidecar could not be put next to it).
    """
    image_path = Path(output).expanduser().absolute()
    if image_path.suffix.lower() != ".png":
        raise ValueError(f"output {str(output)!r} must end in .png")
    sidecar = sidecar_path_for(image_path)
    png_doc, sidecar_doc = build_metadata(result, versions=versions, timings=timings, output=output)
    array = image_to_uint8(result.image)

    folder = image_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    temps: list[Path] = []
    placed_image = False
    try:
        tmp_image = _temp_name(folder, image_path)
        temps.append(tmp_image)
        _save_png(array, tmp_image, _dumps(png_doc, None))
        tmp_sidecar = _temp_name(folder, sidecar)
        temps.append(tmp_sidecar)
        _save_text(_dumps(sidecar_doc, 2) + "\n", tmp_sidecar)
        _replace(tmp_image, image_path)
        placed_image = True
        _replace(tmp_sidecar, sidecar)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if placed_image:  # never leave an image without its sidecar
            image_path.unlink(missing_ok=True)
        raise
    return OutputPaths(image=image_path, sidecar=sidecar)
