"""The HDR lift (spherediff_core.hdr), its EXR + sidecar (exr.py) and ``spherediff hdr``.

Synthetic panoramas only (fast, no Blender): a clear sky with a sun made from the CIE
standard clear-sky formula, exposed and clipped the way a generator shows it. The lift's
accuracy on Blender-rendered ground truth is tests/blender/test_hdr_ground_truth.py's.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from spherediff_core import cli
from spherediff_core.errors import BadInputError, OutputError
from spherediff_core.exr import read_exr, write_hdr_outputs
from spherediff_core.geometry import erp_pixel_directions
from spherediff_core.hdr import (
    HALF_MAX,
    diffuse_irradiance,
    erp_directions,
    erp_solid_angles,
    lift_to_hdr,
    linear_to_srgb,
    srgb_to_linear,
)

from tests.support.hdr_truth import angle_deg, fibonacci_normals, fidelity_db, to_ldr8

SUN_LON, SUN_LAT = math.radians(-60.0), math.radians(30.0)


def clear_sky(h: int = 128, sun_irradiance: float = 400.0) -> np.ndarray:
    """CIE clear sky (type 12) over a grey ground, plus a 0.545 deg sun: (H, 2H, 3) linear."""
    d = erp_directions(h, 2 * h)
    s = np.array(
        [
            math.cos(SUN_LAT) * math.cos(SUN_LON),
            math.cos(SUN_LAT) * math.sin(SUN_LON),
            math.sin(SUN_LAT),
        ]
    )
    cosg = np.clip(d @ s, -1, 1)
    g = np.arccos(cosg)
    f = 1 + 10 * (np.exp(-3 * g) - math.exp(-3 * math.pi / 2)) + 0.45 * cosg**2
    phi = 1 - np.exp(-0.32 / np.maximum(d[..., 2], 0.01))
    sky = (f * phi)[..., None] * np.array([0.55, 0.75, 1.0])
    ground = np.array([0.25, 0.22, 0.18]) * 2.0
    img = np.where(d[..., 2:] > 0, sky, ground)
    omega = erp_solid_angles(h, 2 * h)[:, None]
    disc = g < max(math.radians(0.6), 0.75 * math.pi / h)
    img = img + np.where(disc, sun_irradiance / (omega * disc).sum(), 0.0)[..., None] * np.array(
        [1.0, 0.95, 0.85]
    )
    return img.astype(np.float32)


def test_erp_convention_matches_geometry():
    got = erp_directions(16, 32)
    want = erp_pixel_directions(16, 32).numpy()
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert math.isclose(erp_solid_angles(16, 32).sum() * 32, 4 * math.pi, rel_tol=1e-12)


def test_srgb_round_trip():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=2e-6)


def test_unclipped_pixels_kept_and_sun_found():
    hdr = clear_sky()
    ldr = to_ldr8(hdr)
    assert (ldr.max(axis=-1) >= 254).any(), "the test sky must clip"
    result = lift_to_hdr(ldr)
    img = result.image.astype(np.float16).astype(np.float32)  # as the EXR stores it
    assert fidelity_db(ldr, img, result.exposure) >= 40.0
    keep = ldr.max(axis=-1) < 254
    np.testing.assert_array_equal(result.image[keep], srgb_to_linear(ldr[keep] / 255.0))
    assert np.isfinite(result.image).all() and result.image.max() <= HALF_MAX
    sun = result.sun
    assert sun.visible, result.details
    want = [
        math.cos(SUN_LAT) * math.cos(SUN_LON),
        math.cos(SUN_LAT) * math.sin(SUN_LON),
        math.sin(SUN_LAT),
    ]
    assert angle_deg(sun.direction, want) < 3.0, (sun, result.details)
    assert math.isclose(
        sun.azimuth_deg, math.degrees(math.atan2(sun.direction[1], sun.direction[0]))
    )
    assert sun.strength > 0 and max(sun.color) == pytest.approx(1.0)
    # The EXR carries the sun: its irradiance towards the sun grows by about the lamp's.
    n = np.array([sun.direction])
    with_sun = diffuse_irradiance(result.image, n)[0].max()
    without = diffuse_irradiance(np.where(keep[..., None], result.image, 1.0), n)[0].max()
    assert with_sun - without > 0.5 * sun.strength


def test_highlights_rise_smoothly_towards_the_sun():
    hdr = clear_sky()
    ldr = to_ldr8(hdr)
    lum_true = hdr.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])
    exposed = lum_true * 0.18 / math.exp(float(np.log(np.maximum(lum_true, 1e-6)).mean()))
    result = lift_to_hdr(ldr)
    lum = result.image @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    h, w = lum.shape
    col = round((0.5 - SUN_LON / (2 * math.pi)) * w - 0.5)
    row_sun = round((0.5 - SUN_LAT / math.pi) * h - 0.5)
    # Down the sun's column from 25 deg above it to 2 deg above (outside the painted disc):
    # never falling, and no neighbour-to-neighbour jump (ring, block) above 60 %.
    top = row_sun - round(25 / 180 * h)
    prof = lum[top : row_sun - round(2 / 180 * h), col]
    assert (np.diff(prof) >= -1e-3 * prof[:-1]).all(), prof
    assert (prof[1:] / prof[:-1]).max() < 1.6, prof
    # Lifted above the clip level, and not wildly beyond the true radiance (the aureole
    # model is Blender's sky's, whose aureole is stronger than this CIE sky's: accuracy is
    # measured on Blender's ground truth, tests/blender/test_hdr_ground_truth.py).
    truth = exposed[row_sun - round(2 / 180 * h) - 1, col]
    assert truth > 1.1, "the test sky must clip there"
    assert 1.2 < prof[-1] < 2.0 * truth, (prof[-1], truth)


def test_no_clipping_no_sun_and_exact():
    ldr = (np.random.default_rng(0).random((64, 128, 3)) * 200).astype(np.uint8)
    result = lift_to_hdr(ldr)
    assert not result.sun.visible and result.sun.strength == 0.0
    np.testing.assert_array_equal(result.image, srgb_to_linear(ldr / 255.0))
    assert result.sun.to_dict()["direction"] is None


def test_sixteen_bit_codes_decoded_at_full_precision():
    ldr8 = to_ldr8(clear_sky(64))
    codes = ldr8.astype(np.uint16) * 257  # the same display values in 16 bits
    codes[0, 0, 0] += 100  # a value 8 bits cannot hold
    result = lift_to_hdr(codes)
    assert result.image[0, 0, 0] == pytest.approx(float(srgb_to_linear(codes[0, 0, 0] / 65535.0)))
    assert result.sun.visible
    assert result.sun.direction == lift_to_hdr(ldr8).sun.direction


def test_generation_float_image_accepted():
    ldr = to_ldr8(clear_sky(64))
    chw = torch.from_numpy(ldr.astype(np.float32) / 255.0).permute(2, 0, 1)
    result = lift_to_hdr(chw)
    assert result.image.shape == (64, 128, 3)
    assert result.sun.visible


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (np.zeros((64, 128), np.uint8), "grayscale"),
        (np.zeros((64, 128, 1), np.uint8), "grayscale"),
        (np.zeros((64, 128, 4), np.uint8), "alpha"),
        (np.zeros((64, 100, 3), np.uint8), "twice as wide"),
        (np.full((64, 128, 3), 3.5, np.float32), "already HDR"),
        (np.full((64, 128, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_arrays_refused_by_name(image, words):
    with pytest.raises(BadInputError, match=words):
        lift_to_hdr(image)


def test_disc_masked_with_its_surround_plus_a_sun_lamp_gives_the_same_light():
    """What the add-on does with Sun Lamp on: the World shows ``surround`` inside the disc
    (angle/2 + 1.5 pixels) and a lamp of ``strength * color`` carries the sun. Diffuse
    irradiance at every normal must match the EXR's own (the sun counted once)."""
    result = lift_to_hdr(to_ldr8(clear_sky(256)))
    sun = result.sun
    assert sun.visible and sun.surround is not None
    h, w = result.image.shape[:2]
    dirs = erp_directions(h, w)
    s = np.array(sun.direction)
    cone = np.radians(sun.angle_deg / 2 + 1.5 * 180.0 / h)
    masked = result.image.copy()
    masked[dirs @ s > np.cos(cone)] = sun.surround
    normals = fibonacci_normals(200)
    full = diffuse_irradiance(result.image, normals)
    lamp = np.maximum(normals @ s, 0.0)[:, None] * (sun.strength * np.array(sun.color))[None]
    split = diffuse_irradiance(masked, normals) + lamp
    # (Normals at grazing incidence see part of the disc, widened to a pixel: compare with
    # the light's scale, not each normal's own.)
    assert np.abs(split - full).max() < 0.02 * full.max()
    assert np.median(np.abs(split / full - 1)) < 0.01
    # ... and without the lamp the masked World lacks the sun (most of the light).
    assert (diffuse_irradiance(masked, normals) @ [0.2126, 0.7152, 0.0722]).mean() < 0.5 * (
        full @ [0.2126, 0.7152, 0.0722]
    ).mean()


def test_exr_and_sidecar_round_trip(tmp_path):
    result = lift_to_hdr(to_ldr8(clear_sky(64)))
    paths = write_hdr_outputs(result, tmp_path / "sub" / "pano.exr", source="pano.png")
    back = read_exr(paths.exr)
    np.testing.assert_array_equal(back, result.image.astype(np.float16).astype(np.float32))
    doc = json.loads(paths.sidecar.read_text())
    assert set(doc["hdr"]) == {"exr", "exposure", "method", "sun"}
    assert doc["hdr"]["exr"] == "pano.exr" and doc["hdr"]["exposure"] == 1.0
    assert set(doc["hdr"]["sun"]) == {
        "visible", "direction", "azimuth_deg", "elevation_deg", "angle_deg", "color", "strength",
        "surround",
    }  # fmt: skip
    assert doc["hdr"]["sun"]["visible"] is True and len(doc["hdr"]["sun"]["direction"]) == 3
    assert sorted(p.name for p in paths.exr.parent.iterdir()) == ["pano.exr", "pano.json"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from spherediff_core import exr

    result = lift_to_hdr(to_ldr8(clear_sky(64)))

    def broken(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(exr, "_save_text", broken)
    with pytest.raises(OutputError, match="disk full"):
        write_hdr_outputs(result, tmp_path / "pano.exr")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- command line
def test_cli_hdr_writes_exr_and_sidecar(tmp_path, capsys):
    png = tmp_path / "pano.png"
    Image.fromarray(to_ldr8(clear_sky(64))).save(png)
    code = cli.main(["hdr", str(png), "--out", str(tmp_path / "out" / "pano.exr")])
    assert code == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "out" / "pano.json").read_text())
    assert doc["hdr"]["sun"]["visible"] is True and doc["source"] == str(png)
    assert read_exr(tmp_path / "out" / "pano.exr").shape == (64, 128, 3)
    assert "sun at azimuth" in capsys.readouterr().out


def _bad_inputs(folder):
    rgb = to_ldr8(clear_sky(32))
    Image.fromarray(rgb[:, :50]).save(folder / "not21.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    write_hdr_outputs(lift_to_hdr(rgb), folder / "already.exr")
    (folder / "already.json").unlink()
    Image.fromarray(rgb[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(
        folder / "alpha.png"
    )
    return {
        "not21.png": "twice as wide",
        "broken.png": "cannot be read",
        "already.exr": "already HDR",
        "gray.png": "grayscale",
        "alpha.png": "alpha",
        "missing.png": "does not exist",
    }


def test_cli_hdr_refuses_bad_input_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    cases = _bad_inputs(src)
    out = tmp_path / "out"
    for name, words in cases.items():
        code = cli.main(["hdr", str(src / name), "--out", str(out / "x.exr")])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert words in err and name in err, (name, err)
        assert not out.exists() or list(out.iterdir()) == [], name
    assert cli.main(["hdr", str(src / "not21.png"), "--out", str(out / "x.png")]) == 2
    assert "must end in .exr" in capsys.readouterr().err


def test_cli_hdr_refuses_bad_exposure(tmp_path, capsys):
    png = tmp_path / "pano.png"
    Image.fromarray(to_ldr8(clear_sky(32))).save(png)
    assert cli.main(["hdr", str(png), "--exposure", "0", "--out", str(tmp_path / "o.exr")]) == 2
    assert "exposure must be a positive number" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pano.png"]
