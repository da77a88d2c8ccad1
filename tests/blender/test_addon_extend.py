"""Extend Image in real Blender (4.2 and 5.0): Match Camera and the placement convention.

One ``extend`` scenario per bpy interpreter (addon_scenarios.py) drives the add-on with
fake_plate_worker.py, which answers a job with the World its known image implies (the
image where ``spherediff_core.known`` places it, mid-grey elsewhere). The tests check:

* the placement convention end to end: with Match Camera on, a Cycles render through a
  level, a tilted (30 deg up) and a rolled (10 deg) camera shows the plate (PSNR >= 25 dB
  at 64 x 64 against the plate itself);
* the job's placement is the camera's (yaw, pitch, roll, FOV) and the panel reads it out;
* Match Camera's refusals (lens shift, orthographic, no camera), no image chosen, a
  missing file and an animated world are refused by name with the World untouched;
* an image data-block without a file (painted in Blender) and the Render Result are saved
  as seen and used, with a manual placement.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from addon_support import BPY_PYTHONS, ScenarioPool, bpy_exe_param
from PIL import Image

RES = 64


def _plate(path) -> str:
    """A smooth 128 x 128 plate with structure in both directions and no symmetry."""
    yy, xx = np.mgrid[0:128, 0:128] / 128.0
    rgb = np.stack(
        [0.5 + 0.4 * np.sin(5 * xx + 1), 0.5 + 0.4 * np.cos(4 * yy + 2 * xx), 0.2 + 0.7 * xx * yy],
        axis=-1,
    )
    Image.fromarray((rgb * 255 + 0.5).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> str:
    return _plate(tmp_path_factory.mktemp("plate") / "plate.png")


@pytest.fixture(scope="module")
def pool(extension_zip, plate, tmp_path_factory):
    def make_args(exe):
        base = tmp_path_factory.mktemp("extend")
        return extension_zip, base, {"timeout": 300, "env": {"EXTEND_PLATE": plate}}

    pool = ScenarioPool("extend", make_args)
    yield pool
    pool.close()


@pytest.fixture(params=BPY_PYTHONS or [None], ids=str)
def scenario(request, pool) -> dict:
    return pool.get(bpy_exe_param(request))


def _to_srgb(linear: np.ndarray) -> np.ndarray:
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(float(((a - b) ** 2).mean()), 1e-12)))


@pytest.mark.parametrize("camera", ["level", "tilted", "rolled"])
def test_match_camera_puts_the_plate_behind_the_camera_view(scenario, plate, camera):
    case = scenario["cases"][camera]
    assert case["result"] == ["FINISHED"], case
    render = _to_srgb(np.array(case["render"], dtype=float))
    assert render.shape == (RES, RES, 3)
    with Image.open(plate) as im:
        want = np.asarray(im.resize((RES, RES), Image.Resampling.BOX), dtype=float) / 255.0
    # 2 pixels of border: the plate's edge meets the grey of the fake World there.
    inner = (slice(2, -2), slice(2, -2))
    score = _psnr(render[inner], want[inner])
    print(f"{camera}: {score:.1f} dB")
    assert score >= 25.0, score
    # Not by chance: the plate turned upside down does not match.
    assert _psnr(render[inner], want[::-1][inner]) < score - 6


def test_the_job_carries_the_cameras_placement(scenario):
    expected = {
        "level": (30.0, 0.0, 0.0),
        "tilted": (-60.0, 30.0, 0.0),
        "rolled": (150.0, 0.0, 10.0),
    }
    fov = math.degrees(2 * math.atan(36.0 / 70.0))  # 35 mm lens, 36 mm sensor, square frame
    for name, (yaw, pitch, roll) in expected.items():
        job = scenario["cases"][name]["job"]
        assert job["image_yaw_deg"] == pytest.approx(yaw, abs=1e-3), (name, job)
        assert job["image_pitch_deg"] == pytest.approx(pitch, abs=1e-3), (name, job)
        assert job["image_roll_deg"] == pytest.approx(roll, abs=1e-3), (name, job)
        assert job["image_fov_deg"] == pytest.approx(fov, abs=1e-3), (name, job)
        assert job["image_strength"] == 1.0 and job["image_feather_deg"] == pytest.approx(4.0)
        readout = scenario["cases"][name]["readout"]
        assert readout.startswith(f"Lands at azimuth {yaw:.1f}°, elevation {pitch:.1f}°"), readout
    assert scenario["defaults"] == {"match_camera": True, "strength": 1.0}
    panels = scenario["panels"]
    assert panels["problems"] == []
    props = {t for k, t in panels["log"] if k == "prop"}
    assert {"extend_image", "image_name", "image_path", "match_camera"} <= props
    assert {"image_feather", "image_strength"} <= props


def test_refusals_name_the_problem_and_touch_nothing(scenario):
    r = scenario["refusals"]
    for name, res in r.items():
        assert res["result"] is None, (name, res)
    assert "lens shift" in r["shift"]["error"] and "Shift X and Y to 0" in r["shift"]["error"]
    assert "is ortho" in r["ortho"]["error"] and "perspective camera" in r["ortho"]["error"]
    assert "the scene has no camera" in r["no_camera"]["error"]
    assert "no image is chosen" in r["no_image"]["error"]
    assert "missing.png' does not exist" in r["missing_file"]["error"]
    assert "image models only" in r["video"]["error"]
    assert scenario["refused_unchanged"]
    assert scenario["refused_staging"] == []


def test_an_image_datablock_without_a_file_is_saved_and_used(scenario):
    res = scenario["datablock"]
    assert res["result"] == ["FINISHED"], res
    job = scenario["datablock_job"]
    assert job["image"].endswith("known.png")  # saved into the (now removed) staging folder
    assert job["image_yaw_deg"] == pytest.approx(90.0)
    assert job["image_fov_deg"] == pytest.approx(40.0)
    # The Render Result too (a render of the scene just made, saved as it is displayed).
    res = scenario["render_result"]
    assert res["result"] == ["FINISHED"], res
    assert scenario["render_result_job"]["image"].endswith("known.png")
    assert scenario["render_result_job"]["image_fov_deg"] == pytest.approx(50.0)
    assert scenario["end"] == {"staging": [], "children": []}


def test_a_scripts_image_and_placement_imply_their_switches(scenario):
    res = scenario["implied"]
    assert res["result"] == ["FINISHED"], res
    job = scenario["implied_job"]
    assert job["image"].endswith("plate.png")
    assert job["image_yaw_deg"] == pytest.approx(45.0) and job["image_fov_deg"] == pytest.approx(
        30.0
    )
    bad = scenario["contradiction"]
    assert bad["result"] is None
    assert "match_camera=True and image_yaw=0.5 contradict each other" in bad["error"], bad
