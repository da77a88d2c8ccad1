"""The HDR lift against ground truth rendered by Blender, and its EXR in Blender's loader.

The ground truth (tests/blender/render_hdr_ground_truth.py, Cycles in the first bpy of
``SPHEREDIFF_BPY_PYTHONS``) is 10 small HDR panoramas with known lighting: seven clear skies
(Blender's physical sky + a Sun lamp, sun elevation 2-70 deg, several azimuths), an
overcast sky, an interior lit by area lights, and a night scene. They are rendered once and
cached (``$SPHEREDIFF_HDR_TRUTH_DIR``, else ``$SPHEREDIFF_CACHE_DIR/hdr-truth``, else
``~/.cache/spherediff/hdr-truth``); the first run takes about 90 seconds on 2 cores.
Each is turned into the 8-bit panorama a generator shows (tests/support/hdr_truth.py) and
lifted.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from spherediff_core.exr import write_hdr_outputs
from spherediff_core.hdr import SKY_RATIO_TABLE, erp_directions, lift_to_hdr, srgb_to_linear

from tests.support.hdr_truth import (
    RENDER_SCRIPT,
    angle_deg,
    bpy_pythons,
    default_cache_dir,
    ensure_ground_truth,
    fibonacci_normals,
    lighting_errors,
    to_ldr8,
)

HERE = Path(__file__).resolve().parent
LOADER = HERE / "load_image_pixels.py"
BPY = bpy_pythons()


@pytest.fixture(scope="session")
def truth():
    if not BPY:
        pytest.fail("no bpy interpreter: set SPHEREDIFF_BPY_PYTHONS (see test_erp_convention)")
    folder = default_cache_dir()
    if not os.environ.get("SPHEREDIFF_HDR_TRUTH_DIR"):
        folder = folder / "hdr-truth"
    scenes = ensure_ground_truth(folder, BPY[0])
    lifted = {name: lift_to_hdr(to_ldr8(s.hdr)) for name, s in scenes.items()}
    return scenes, lifted


def test_ground_truth_sun_where_the_convention_says(truth):
    """The rendered disc sits at the lamp's direction in geometry's ERP convention."""
    scenes, _ = truth
    for s in scenes.values():
        if s.sun is None:
            continue
        lum = s.hdr @ np.array([0.2126, 0.7152, 0.0722])
        h, w = lum.shape
        peak = np.unravel_index(int(np.argmax(lum)), lum.shape)
        d = erp_directions(h, w)[peak]
        assert angle_deg(d, s.sun["direction"]) < 1.5, s.name


def test_sun_found_within_3_degrees_and_none_invented(truth):
    scenes, lifted = truth
    report = []
    for name, s in scenes.items():
        sun = lifted[name].sun
        if s.sun is None:
            report.append((name, "no sun", sun.visible))
            assert not sun.visible, f"{name}: a sun was invented at {sun.direction}"
        else:
            assert sun.visible, f"{name}: the sun was missed ({lifted[name].details})"
            err = angle_deg(sun.direction, s.sun["direction"])
            report.append((name, round(err, 2)))
            assert err <= 3.0, f"{name}: sun off by {err:.2f} deg"
    print(report)


def test_lighting_better_than_ldr_on_every_scene(truth):
    scenes, lifted = truth
    normals = fibonacci_normals()
    for name, s in scenes.items():
        ldr = to_ldr8(s.hdr)
        base = srgb_to_linear(ldr / 255.0)
        exr = lifted[name].image.astype(np.float16).astype(np.float32)
        e = lighting_errors(exr, s.hdr, normals)
        b = lighting_errors(base, s.hdr, normals)
        # Where nothing clipped the EXR is the LDR itself (up to half-float rounding).
        if not (ldr.max(axis=-1) >= 254).any():
            assert e.irradiance_stops == pytest.approx(b.irradiance_stops, abs=0.01), name
            assert e.directionality_stops == pytest.approx(b.directionality_stops, abs=0.01)
            continue
        assert e.irradiance_stops < b.irradiance_stops, (name, e, b)
        assert e.directionality_stops < b.directionality_stops, (name, e, b)


@pytest.mark.parametrize("exe", BPY or [None], ids=lambda p: str(p))
def test_exr_read_back_by_blender(exe, truth, tmp_path):
    """Blender's own loader reads the project's EXR with the same values and orientation."""
    if exe is None:
        pytest.fail("no bpy interpreter")
    scenes, _ = truth
    ldr = to_ldr8(scenes["sun_e25_a-45"].hdr)
    Image.fromarray(ldr).save(tmp_path / "pano.png")
    result = lift_to_hdr(ldr)
    paths = write_hdr_outputs(result, tmp_path / "pano.exr")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    cmd = [exe, str(LOADER), str(paths.exr), str(tmp_path / "exr.npy")]
    cmd += [str(tmp_path / "pano.png"), str(tmp_path / "png.npy")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exr = np.load(tmp_path / "exr.npy")[..., :3]
    png = np.load(tmp_path / "png.npy")[..., :3]
    want = result.image.astype(np.float16).astype(np.float32)
    assert exr.shape == want.shape
    np.testing.assert_allclose(exr, want, rtol=1e-3, atol=1e-6)
    # Same orientation as the PNG: Blender's PNG texels are the sRGB codes, top row first.
    np.testing.assert_allclose(png, ldr / 255.0, atol=1e-6)
    keep = ldr.max(axis=-1) < 254
    np.testing.assert_allclose(exr[keep], srgb_to_linear(png[keep]), rtol=2e-3, atol=1e-5)
    # The sun is where the PNG's clipped blob is, not mirrored or flipped.
    peak = np.unravel_index(int(np.argmax(exr.sum(-1))), exr.shape[:2])
    assert png[peak].min() > 0.99


def test_sky_ratio_table_is_blenders(tmp_path):
    """SKY_RATIO_TABLE is what the calibration measures in Blender now (two rows re-done)."""
    if not BPY:
        pytest.fail("no bpy interpreter")
    rows = {e: (r, c) for e, r, c in SKY_RATIO_TABLE}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    out = tmp_path / "cal.json"
    cmd = [BPY[0], str(RENDER_SCRIPT), "--out-dir", str(tmp_path), "--calibrate", str(out)]
    cmd += ["--elevations", "4", "30"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for row in json.loads(out.read_text())["rows"]:
        ratio, colour = rows[row["elevation_deg"]]
        assert row["ratio"] == pytest.approx(ratio, rel=0.05), row
        np.testing.assert_allclose(row["sun_color"], colour, atol=0.03)
