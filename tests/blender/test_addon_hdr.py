"""HDR worlds in real Blender (4.2 and 5.0): HDR Lighting, the Sun Lamp and Lift to HDR.

One ``hdr`` scenario per bpy interpreter (addon_scenarios.py) drives the add-on with
fake_hdr_worker.py, whose "generations" are the project's own ground truth (Cycles renders
with known sun, tests/support/hdr_truth.py) shown as 8-bit panoramas and lifted by the real
engine; the tests below check what it recorded:

* with the defaults (HDR Lighting and Sun Lamp on) the World shows the EXR in linear
  Rec.709, its sun disc masked in the node tree with the sky around it, and one Sun light
  ``SphereDiff Sun`` points at the sun (within 3 degrees of the truth) with the estimated
  strength, colour and angle; the panel shows the sun's azimuth and elevation;
* a Cycles render of a sphere on a plane lit by that World and lamp casts a shadow whose
  lit/shadow ratio is within 30 % of the same render lit by the ground-truth HDR, where
  the 8-bit World's is not;
* the World's rotation turns the lamp and Sun Strength scales it, live; regenerating
  updates the same lamp (never a second one); without a sun, or with HDR off, the lamp is
  hidden and the mask lets the texture through; failure and cancel leave World, lamp and
  files exactly as they were; contradictions (hdr with video, sun_lamp without hdr) are
  refused by name;
* Lift to HDR lifts the World's current 8-bit image with the real engine and relights.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from addon_support import BPY_PYTHONS, ScenarioPool, bpy_exe_param

try:
    from tests.support.hdr_truth import angle_deg, default_cache_dir, ensure_ground_truth
except ImportError:
    from support.hdr_truth import angle_deg, default_cache_dir, ensure_ground_truth

SCENES = ("sun_e25_a-45", "sun_e55_a-170", "overcast")  # seeds 1, 2, 3
LUMA = np.array([0.2126, 0.7152, 0.0722])
RATIO_TOL = 0.30


@pytest.fixture(scope="module")
def truth() -> dict:
    if not BPY_PYTHONS:
        pytest.fail("no bpy interpreter: set SPHEREDIFF_BPY_PYTHONS")
    folder = default_cache_dir()
    if not os.environ.get("SPHEREDIFF_HDR_TRUTH_DIR"):
        folder = folder / "hdr-truth"
    scenes = ensure_ground_truth(folder, BPY_PYTHONS[0])
    return {"folder": folder, "scenes": scenes}


@pytest.fixture(scope="module")
def pool(extension_zip, truth, tmp_path_factory):
    env = {"FAKE_HDR_TRUTH_DIR": str(truth["folder"]), "FAKE_HDR_SCENES": ",".join(SCENES)}

    def make_args(exe):
        return extension_zip, tmp_path_factory.mktemp("hdr"), {"timeout": 400, "env": env}

    pool = ScenarioPool("hdr", make_args)
    yield pool
    pool.close()


@pytest.fixture(params=BPY_PYTHONS or [None], ids=str)
def scenario(request, pool) -> dict:
    return pool.get(bpy_exe_param(request))


def _sun_direction(truth, name: str) -> np.ndarray:
    sun = truth["scenes"][name].sun
    return np.array(sun["direction"], dtype=float)


def _tags(state: dict) -> dict:
    return {n["tag"]: n for n in state["world"]["nodes"] if n["tag"]}


# --------------------------------------------------------------------------- the World
def test_hdr_world_and_sun_lamp_by_default(scenario, truth):
    s = scenario
    assert s["defaults"] == {"hdr": True, "sun_lamp": True, "sun_strength": 1.0}
    assert s["first"]["result"] == ["FINISHED"], s["first"]
    st = s["first_state"]
    img = st["image"]
    assert img["filepath"].startswith("//spherediff/") and img["filepath"].endswith("_seed1.exr")
    assert img["colorspace"] == "Linear Rec.709" and img["is_float"], img
    stem = Path(img["abspath"]).stem
    assert {f"{stem}.exr", f"{stem}.png", f"{stem}.json"} <= set(st["files"])
    sidecar = json.loads(Path(img["abspath"]).with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["hdr"]["exr"] == f"{stem}.exr" and sidecar["image"] == f"{stem}.png"
    sun = sidecar["hdr"]["sun"]
    assert sun["visible"] is True

    # The mask: the texture's own sun direction, a cone just wider than the disc.
    mask = st["mask"]
    np.testing.assert_allclose(mask["direction"], sun["direction"], atol=1e-5)
    half_deg = math.degrees(math.acos(mask["threshold"]))
    px_deg = 180.0 / img["size"][1]
    assert sun["angle_deg"] / 2 < half_deg <= sun["angle_deg"] / 2 + 2 * px_deg
    np.testing.assert_allclose(mask["fill"], sun["surround"], rtol=1e-4)
    links = {tuple(link) for link in st["world"]["links"]}
    assert ("SphereDiff Environment", "Color", "SphereDiff Sun Mask", "A_Color") in links
    assert ("SphereDiff Sun Mask", "Result_Color", "SphereDiff Background", "Color") in links
    assert ("SphereDiff Sun Disc", "Value", "SphereDiff Sun Mask", "Factor_Float") in links

    # The lamp: one Sun light at the sun (truth within 3 deg), the estimate's energy.
    lamp = st["lamp"]
    assert lamp["count"] == 1 and lamp["name"] == "SphereDiff Sun" and lamp["type"] == "SUN"
    assert lamp["hidden"] == [False, False] and lamp["in_collection"]
    assert angle_deg(lamp["towards"], _sun_direction(truth, SCENES[0])) < 3.0
    assert angle_deg(lamp["towards"], sun["direction"]) < 0.01
    assert lamp["energy"] == pytest.approx(sun["strength"], rel=1e-4)
    np.testing.assert_allclose(lamp["color"], sun["color"], atol=1e-4)
    assert lamp["angle_deg"] == pytest.approx(sun["angle_deg"], rel=1e-4)
    last = st["last"]
    assert last["hdr"] and last["sun"] and last["error"] == ""
    assert last["azimuth"] == pytest.approx(sun["azimuth_deg"], abs=1e-3)
    assert last["elevation"] == pytest.approx(sun["elevation_deg"], abs=1e-3)
    # The panel: the options and the sun's position.
    panels = s["first_panels"]
    assert panels["problems"] == []
    props = {t for k, t in panels["log"] if k == "prop"}
    assert {"hdr", "sun_lamp", "sun_strength"} <= props
    labels = " ".join(t for k, t in panels["log"] if k == "label")
    assert f"azimuth {sun['azimuth_deg']:.1f}°, elevation {sun['elevation_deg']:.1f}°" in labels


def _patch(image: np.ndarray, xy, res: int, scale: float, half: int = 1) -> float:
    """Mean luminance of the (2 half + 1)^2 pixels of the top view around plane point xy."""
    col = int((xy[0] + scale / 2) / scale * res)
    row = int((scale / 2 - xy[1]) / scale * res)
    block = image[row - half : row + half + 1, col - half : col + half + 1]
    return float((block.reshape(-1, 3) @ LUMA).mean())


def test_lifted_world_and_lamp_cast_the_true_shadow(scenario, truth):
    """Lit/shadow ratio on the plane: lifted World + Sun Lamp within 30 % of the ground
    truth's; the 8-bit World's is not (its sun was clipped away)."""
    sh = scenario["shadows"]
    res, scale = sh["res"], sh["scale"]
    s = _sun_direction(truth, SCENES[0])
    flat = s[:2] / np.linalg.norm(s[:2])
    shadow_xy = -flat * 0.5 / math.tan(math.asin(s[2]))  # below the ball's centre's shadow
    lit_xy = np.array([-flat[1], flat[0]]) * 2.0  # to the side, far from the ball
    ratios = {}
    for key in ("truth", "lifted", "ldr"):
        image = np.array(sh[key], dtype=float)
        assert image.shape == (res, res, 3)
        ratios[key] = _patch(image, lit_xy, res, scale) / _patch(image, shadow_xy, res, scale)
    print("lit/shadow ratios:", ratios)
    assert ratios["truth"] > 3.0, ratios  # a real sun shadow in the ground truth
    assert abs(ratios["lifted"] / ratios["truth"] - 1) <= RATIO_TOL, ratios
    assert abs(ratios["ldr"] / ratios["truth"] - 1) > RATIO_TOL, ratios


# --------------------------------------------------------------------------- the lamp
def test_rotation_and_sun_strength_drive_the_lamp_live(scenario):
    first, live = scenario["first_state"]["lamp"], scenario["live"]
    assert live["pointer"] == first["pointer"]
    assert live["energy"] == pytest.approx(2 * first["energy"], rel=1e-4)
    # A World rotation of +a shows the texture's longitude l at l - a: the lamp follows.
    a = -0.5
    x, y, z = first["towards"]
    turned = [x * math.cos(a) - y * math.sin(a), x * math.sin(a) + y * math.cos(a), z]
    np.testing.assert_allclose(live["towards"], turned, atol=1e-4)


def test_regenerating_updates_the_same_lamp(scenario, truth):
    s = scenario
    assert s["second"]["result"] == ["FINISHED"], s["second"]
    first, second = s["first_state"]["lamp"], s["second_state"]["lamp"]
    assert second["count"] == 1 and second["pointer"] == first["pointer"]
    assert second["name"] == "SphereDiff Sun" and second["hidden"] == [False, False]
    assert angle_deg(second["towards"], _sun_direction(truth, SCENES[1])) < 3.0
    assert angle_deg(second["towards"], first["towards"]) > 30.0
    assert second["energy"] != first["energy"]
    # The World's nodes are the same ones, the mask aimed at the new sun.
    assert set(_tags(s["second_state"])) == set(_tags(s["first_state"]))
    assert angle_deg(s["second_state"]["mask"]["direction"], second["towards"]) < 0.01


def test_failure_and_cancel_leave_world_lamp_and_files(scenario):
    for name, res in scenario["failures"].items():
        assert res["result"] is None or res["result"] == ["CANCELLED"], (name, res)
        assert res["unchanged"], (name, res.get("before"), res.get("after"))
        assert res["staging"] == [], (name, res["staging"])
    assert "failed on purpose" in scenario["failures"]["fail"]["last_error"]
    assert "cancelled" in scenario["failures"]["cancel"]["last_error"]


def test_no_sun_hides_the_lamp_and_unmasks(scenario):
    s = scenario
    assert s["no_sun"]["result"] == ["FINISHED"], s["no_sun"]
    st = s["no_sun_state"]
    assert st["image"]["filepath"].endswith("_seed3.exr") and st["image"]["is_float"]
    assert st["lamp"]["count"] == 1 and st["lamp"]["hidden"] == [True, True]
    assert st["mask"]["threshold"] > 1.0  # no direction passes: the texture as it is
    assert st["last"]["hdr"] and not st["last"]["sun"]


def test_hdr_off_loads_the_png_and_refuses_contradictions(scenario):
    s = scenario
    assert s["ldr"]["result"] == ["FINISHED"], s["ldr"]
    st = s["ldr_state"]
    assert st["image"]["filepath"].endswith("_seed1.png") and st["image"]["colorspace"] == "sRGB"
    assert not any(f.endswith("_seed1.exr") and f.startswith(Path(st["image"]["filepath"]).stem)
                   for f in st["files"])  # fmt: skip
    assert st["lamp"]["hidden"] == [True, True] and st["mask"]["threshold"] > 1.0
    assert not st["last"]["hdr"]
    video = s["refused_video"]
    assert video["result"] is None and "HDR Lighting is for stills" in video["error"]
    assert "hdr=False" in video["error"]
    lamp = s["refused_sun_without_hdr"]
    assert lamp["result"] is None and "sun_lamp=True needs hdr=True" in lamp["error"]
    assert s["refused_unchanged"]


def test_lift_to_hdr_relights_the_current_world(scenario, truth):
    s = scenario
    assert s["lift"] == {"result": ["FINISHED"], "error": None}, s["lift"]
    st = s["lift_state"]
    img = st["image"]
    assert img["filepath"].endswith("_seed1_hdr.exr") and img["colorspace"] == "Linear Rec.709"
    assert Path(img["abspath"]).is_file() and Path(img["abspath"]).with_suffix(".json").is_file()
    lamp = st["lamp"]
    assert lamp["count"] == 1 and lamp["hidden"] == [False, False]
    assert angle_deg(lamp["towards"], _sun_direction(truth, SCENES[0])) < 3.0
    assert st["last"]["hdr"] and st["last"]["sun"]
    # Already HDR: nothing to lift, and the button says why.
    assert s["lift_again_poll"] is False
    assert "already HDR" in s["lift_again"]
    assert s["end"] == {"staging": [], "children": []}
