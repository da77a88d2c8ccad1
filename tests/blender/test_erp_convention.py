"""The ERP convention of spherediff_core.geometry against a real Cycles render.

Synthesises an ERP image whose colour encodes direction (RGB = 0.5 + 0.5 * (x, y, z) of each
pixel's direction, from ``erp_pixel_directions``), saves it as a 16-bit PNG, renders it as
Blender's world (Environment Texture) through perspective cameras with Cycles in every bpy
interpreter listed in ``SPHEREDIFF_BPY_PYTHONS`` (``os.pathsep``-separated), and checks:

* the texture Blender loaded equals the synthesised one (exact 16-bit round trip);
* the centre colour of each camera looking along ``d`` equals the texel our convention maps
  ``d`` to (``directions_to_erp_uv``), and a mirrored convention (u -> 1 - u) fails that;
* every pixel of every render matches the ideal pinhole rays of ``view_rays`` with the
  camera frames of ``camera_frames`` (image orientation, roll at the poles, handedness).

Without ``SPHEREDIFF_BPY_PYTHONS`` it uses ``.venv-bpy50`` and ``.venv-bpy42`` at the repo
root (those that exist); it fails if there are none. Set them up with::

    python3.11 -m venv .venv-bpy50 && .venv-bpy50/bin/pip install bpy==5.0.1
    python3.11 -m venv .venv-bpy42 && .venv-bpy42/bin/pip install "bpy==4.2.*"
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from spherediff_core.geometry import (
    camera_frames,
    directions_to_erp_uv,
    directions_to_lonlat,
    erp_pixel_directions,
    view_rays,
)

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SCRIPT = HERE / "render_erp_convention.py"

ERP_H, ERP_W = 128, 256
RES = 16  # render size (px)
FOV_DEG = 60.0
# Max abs RGB error at the view centre. Measured: <= 0.0007 off-pole; at +-Z 0.0061, because
# the prediction at the exact pole is the single top/bottom-row texel at u = 0.5 (x = 0.5061)
# while the render's central 2x2 pixels circle the pole and average x to 0.5000.
CENTRE_TOL = 0.03
PIXEL_TOL = 0.03  # max abs RGB error anywhere in a render (measured <= 0.0025)
SUBPROCESS_TIMEOUT_S = 120

# Camera forward directions: the six axes (straight up/down get the roll of camera_frames)
# plus a few oblique ones that pin down both ERP axes away from the symmetry planes.
VIEW_DIRECTIONS = {
    "+X": (1.0, 0.0, 0.0),
    "-X": (-1.0, 0.0, 0.0),
    "+Y": (0.0, 1.0, 0.0),
    "-Y": (0.0, -1.0, 0.0),
    "+Z": (0.0, 0.0, 1.0),
    "-Z": (0.0, 0.0, -1.0),
    "+X+Y+Z": (1.0, 1.0, 1.0),
    "-X+Y-Z": (-1.0, 1.0, -1.0),
    "+X-Y+Z/2": (1.0, -1.0, 0.5),
}


# --------------------------------------------------------------------------- interpreters
def _bpy_pythons() -> list[str]:
    env = os.environ.get("SPHEREDIFF_BPY_PYTHONS")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    candidates = [
        REPO_ROOT / ".venv-bpy50" / "bin" / "python",
        REPO_ROOT / ".venv-bpy42" / "bin" / "python",
    ]
    return [str(p) for p in candidates if p.exists()]


BPY_PYTHONS = _bpy_pythons()


def test_bpy_interpreters_available():
    """Fail (not skip) when there is no Blender to test against."""
    assert BPY_PYTHONS, (
        "no bpy interpreter found: set SPHEREDIFF_BPY_PYTHONS to an os.pathsep-separated "
        f"list of python executables that can `import bpy`, or create {REPO_ROOT}/.venv-bpy50 "
        "(python3.11 -m venv .venv-bpy50 && .venv-bpy50/bin/pip install bpy==5.0.1) and/or "
        ".venv-bpy42 (... pip install 'bpy==4.2.*')"
    )
    for exe in BPY_PYTHONS:
        assert Path(exe).exists(), f"bpy interpreter {exe!r} (SPHEREDIFF_BPY_PYTHONS) not found"


# --------------------------------------------------------------------------- ERP image
def write_png16(path: Path, rgb16: np.ndarray) -> None:
    """Write an (H, W, 3) uint16 array as a 16-bit RGB PNG (top row first), stdlib only."""
    h, w, _ = rgb16.shape
    raw = np.ascontiguousarray(rgb16.astype(">u2")).view(np.uint8).reshape(h, w * 6)
    scanlines = np.concatenate([np.zeros((h, 1), np.uint8), raw], axis=1)  # filter 0

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bit, colour type 2 (RGB)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
        + chunk(b"IEND", b"")
    )
    path.write_bytes(png)


def make_erp_texels() -> np.ndarray:
    """(H, W, 3) float64 texels, exactly representable in 16 bits: 0.5 + 0.5 * direction."""
    dirs = erp_pixel_directions(ERP_H, ERP_W).numpy()
    q = np.round((0.5 + 0.5 * dirs) * 65535.0).astype(np.uint16)
    return q


def sample_erp(texels: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup at ERP coordinates (u right, v up), wrapping in u, clamping in v.

    Pixel (row, col) has its centre at u = (col + 0.5) / W, v = 1 - (row + 0.5) / H.
    """
    h, w, _ = texels.shape
    x = np.asarray(u) * w - 0.5
    y = (1.0 - np.asarray(v)) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    c0 = np.mod(x0, w).astype(int)
    c1 = np.mod(x0 + 1, w).astype(int)
    r0 = np.clip(y0, 0, h - 1).astype(int)
    r1 = np.clip(y0 + 1, 0, h - 1).astype(int)
    top = texels[r0, c0] * (1 - fx) + texels[r0, c1] * fx
    bot = texels[r1, c0] * (1 - fx) + texels[r1, c1] * fx
    return top * (1 - fy) + bot * fy


def predicted_colour(texels: np.ndarray, dirs: torch.Tensor, mirrored: bool = False):
    """Colour the world shows along ``dirs`` (..., 3) if Blender used our ERP convention."""
    u, v = directions_to_erp_uv(dirs.to(torch.float64))
    u, v = u.numpy(), v.numpy()
    if mirrored:
        u = 1.0 - u
    return sample_erp(texels, u, v)


def view_frames() -> tuple[list[str], torch.Tensor, torch.Tensor]:
    names = list(VIEW_DIRECTIONS)
    fwd = torch.tensor([VIEW_DIRECTIONS[n] for n in names], dtype=torch.float64)
    fwd = fwd / fwd.norm(dim=-1, keepdim=True)
    lon, lat = directions_to_lonlat(fwd)
    frames = camera_frames(lon, lat)  # rows right, up, forward
    return names, fwd, frames


# --------------------------------------------------------------------------- rendering
@pytest.fixture(scope="module")
def erp_image(tmp_path_factory):
    torch.set_num_threads(1)
    q = make_erp_texels()
    path = tmp_path_factory.mktemp("erp") / "direction_erp_256x128.png"
    write_png16(path, q)
    return path, q.astype(np.float64) / 65535.0


_RENDER_CACHE: dict[str, dict] = {}


def render(exe: str, erp_image, tmp_path_factory) -> dict:
    if exe in _RENDER_CACHE:
        return _RENDER_CACHE[exe]
    png, _ = erp_image
    work = tmp_path_factory.mktemp("render")
    names, _, frames = view_frames()
    views = [
        {"name": n, "forward": frames[i, 2].tolist(), "up": frames[i, 1].tolist()}
        for i, n in enumerate(names)
    ]
    (work / "views.json").write_text(json.dumps(views))
    cmd = [
        exe,
        str(SCRIPT),
        "--erp",
        str(png),
        "--out",
        str(work / "out.json"),
        "--views",
        str(work / "views.json"),
        "--texture-dump",
        str(work / "tex.npy"),
        "--resolution",
        str(RES),
        "--fov-deg",
        str(FOV_DEG),
    ]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, cwd=work, timeout=SUBPROCESS_TIMEOUT_S
    )
    assert proc.returncode == 0, (
        f"{exe} failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout[-4000:]}\n"
        f"STDERR:\n{proc.stderr[-4000:]}"
    )
    out = json.loads((work / "out.json").read_text())
    out["texture"] = np.load(work / "tex.npy")
    _RENDER_CACHE[exe] = out
    return out


@pytest.fixture(params=BPY_PYTHONS or [None], ids=lambda p: str(p))
def rendered(request, erp_image, tmp_path_factory):
    if request.param is None:
        pytest.fail("no bpy interpreter: see test_bpy_interpreters_available")
    if not Path(request.param).exists():
        pytest.fail(f"bpy interpreter {request.param!r} (SPHEREDIFF_BPY_PYTHONS) not found")
    return render(request.param, erp_image, tmp_path_factory)


def _fmt(rgb) -> str:
    return "(" + ", ".join(f"{c:.4f}" for c in rgb) + ")"


# --------------------------------------------------------------------------- tests
def test_texture_round_trips_exactly(rendered, erp_image):
    _, texels = erp_image
    tex = rendered["texture"]
    assert tex.shape == (ERP_H, ERP_W, 4), tex.shape
    err = np.abs(tex[..., :3] - texels).max()
    assert err < 1e-6, f"Blender {rendered['blender_version']} loaded the ERP off by {err}"


def test_centre_colour_matches_convention(rendered, erp_image):
    _, texels = erp_image
    names, fwd, _ = view_frames()
    expected = predicted_colour(texels, fwd)
    mirrored = predicted_colour(texels, fwd, mirrored=True)
    measured = np.array([v["centre_rgb"] for v in rendered["views"]])
    assert [v["name"] for v in rendered["views"]] == names
    report = "\n".join(
        f"  {n:>9}: measured {_fmt(m)} expected {_fmt(e)} mirrored {_fmt(x)}"
        for n, m, e, x in zip(names, measured, expected, mirrored, strict=False)
    )
    print(f"\nBlender {rendered['blender_version']}:\n{report}")
    err = np.abs(measured - expected).max(axis=-1)
    assert (err < CENTRE_TOL).all(), (
        f"Blender {rendered['blender_version']} disagrees with the ERP convention "
        f"(max abs err per view {err.round(4).tolist()}):\n{report}"
    )
    # The check can fail: a left-right mirrored ERP mapping must be rejected by it.
    err_mirrored = np.abs(measured - mirrored).max(axis=-1)
    assert not (err_mirrored < CENTRE_TOL).all(), "the check cannot tell u from 1 - u"
    assert err_mirrored.max() > 10 * CENTRE_TOL, err_mirrored


def test_full_render_matches_view_rays(rendered, erp_image):
    """Every pixel: Blender's camera rays equal view_rays of our camera frames."""
    _, texels = erp_image
    names, _, frames = view_frames()
    assert rendered["resolution"] == RES and rendered["fov_deg"] == FOV_DEG
    rays = view_rays(frames, FOV_DEG, RES, RES)  # (V, h, w, 3), row 0 at the top
    expected = predicted_colour(texels, rays)
    measured = np.array([v["pixels_rgb"] for v in rendered["views"]])
    err = np.abs(measured - expected).max(axis=(1, 2, 3))
    bad = {n: round(float(e), 4) for n, e in zip(names, err, strict=False) if e >= PIXEL_TOL}
    assert not bad, f"Blender {rendered['blender_version']}: per-view max pixel error {bad}"
    # A mirrored ERP mapping, or upside-down / left-right flipped renders, would not pass
    # (guards the test itself): each is far outside the tolerance in every single view.
    mirrored = predicted_colour(texels, rays, mirrored=True)
    assert (np.abs(measured - mirrored).max(axis=(1, 2, 3)) > 10 * PIXEL_TOL).all()
    assert np.abs(measured - expected[:, ::-1]).max() > 10 * PIXEL_TOL
    assert np.abs(measured - expected[:, :, ::-1]).max() > 10 * PIXEL_TOL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v", "-s"]))
