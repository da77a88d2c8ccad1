"""A script's arguments to ``bpy.ops.spherediff.generate`` in real Blender (4.2 and 5.0).

Blender clamps a number outside an operator property's hard range and cuts a string at
its first NUL without a word: ``steps=0`` ran 1 step, ``seed=-1`` seed 0,
``width=100000`` a 16384-pixel job, a NUL in ``output_dir`` wrote elsewhere, and
``size='4K', width=256`` silently ran 4096 pixels. Now every such call is refused by name
(the property, the value, the range to use) before any worker starts; what gets through
reaches the worker exactly as passed. One ``arguments`` scenario per bpy interpreter
(addon_scenarios.py; recording_worker.py writes down the jobs that reach a worker).
"""

from __future__ import annotations

import math

import pytest
from addon_support import BPY_PYTHONS, ScenarioPool, bpy_exe_param

# call -> (words the error must contain). Each must start no worker and write nothing.
REFUSED = {
    "steps_zero": ("steps", "0", "1 to 1000"),
    "steps_huge": ("steps", "100000", "1 to 1000"),
    "seed_negative": ("seed", "-1", f"0 to {2**31 - 1}"),
    "width_huge": ("width", "100000", "64 to 16384"),
    "width_small": ("width", "32", "64 to 16384"),
    "guidance_negative": ("guidance", "-1", "0 to 50"),
    "guidance_inf": ("guidance", "inf", "0 to 50"),
    "guidance_beyond_float32": ("guidance", "1e+39", "0 to 50"),
    "strength_negative": ("strength", "-2", "0 to 1e+06"),
    "rotation_nan": ("rotation_z", "nan", "finite"),
    "frames_zero": ("frames", "0", "1 to 1025"),
    "fps_huge": ("fps", "1000", "1 to 240"),
    "steps_unused_still_refused": ("steps", "0", "1 to 1000"),
    "nul_output_dir": ("output_dir", "NUL"),
    "nul_prompt": ("prompt", "NUL"),
    "nul_custom_model": ("custom_model", "NUL"),
    "size_and_width": ("size='4K'", "width=256", "contradict"),
    "steps_and_auto_steps": ("auto_steps=True", "steps=30", "contradict"),
    "seed_and_random_seed": ("random_seed=True", "seed=5", "contradict"),
    "custom_model_and_preset": ("model_preset='SDXL'", "custom_model=", "contradict"),
}


@pytest.fixture(scope="module")
def pool(extension_zip, tmp_path_factory):
    def make_args(exe):
        return extension_zip, tmp_path_factory.mktemp("arguments"), {"timeout": 180}

    pool = ScenarioPool("arguments", make_args)
    yield pool
    pool.close()


@pytest.fixture(params=BPY_PYTHONS or [None], ids=str)
def scenario(request, pool) -> dict:
    return pool.get(bpy_exe_param(request))


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_bad_argument_refused_by_name(scenario, name):
    res = scenario["calls"][name]
    assert res["result"] is None and res["error"], res
    for words in REFUSED[name]:
        assert words in res["error"], (name, res["error"])
    assert res["last_error"] and res["last_error"] in res["error"], res
    assert res["jobs"] == [], f"{name}: a worker was started with {res['jobs']}"
    assert res["new_files"] == [] and res["staging"] == [], res
    assert res["seconds"] < 2.0, res  # refused up front, not after a worker started


def test_passed_values_reach_the_worker_unchanged(scenario):
    calls = scenario["calls"]

    def job(name: str) -> dict:
        res = calls[name]
        assert "recorded by the test worker" in (res["error"] or ""), res
        assert len(res["jobs"]) == 1, res
        return res["jobs"][0]

    alone = job("width_alone")
    assert (alone["width"], alone["steps"], alone["seed"]) == (256, 3, 11)
    assert job("custom_size_and_width")["width"] == 256
    assert job("size_alone")["width"] == 1024
    assert job("steps_and_auto_off")["steps"] == 7
    ends = job("range_ends")
    assert (ends["width"], ends["steps"], ends["seed"]) == (64, 1000, 2**31 - 1)
    assert math.isclose(ends["guidance"], 50.0)


def test_operator_takes_any_number_and_keeps_slider_limits(scenario):
    # The panel's settings still clamp as Blender properties do.
    assert scenario["scene_clamped"] == {"steps": 1, "width": 16384}
    limits = scenario["operator_limits"]
    for key in ("width", "steps", "seed", "frames", "fps"):
        assert limits[key]["hard"] == [-(2**31), 2**31 - 1], (key, limits[key])
    assert limits["steps"]["soft"] == [1, 100]
    assert limits["width"]["soft"] == [256, 8192]
    assert limits["guidance"]["soft"][0] == 0.0 and limits["guidance"]["hard"][0] < -1e30
    # The add-on's ranges are the engine's.
    for key, engine_range in scenario["engine_ranges"].items():
        assert scenario["ranges"][key] == engine_range, key


def test_nothing_left_running(scenario):
    assert scenario["end"]["children"] == [] and scenario["end"]["staging"] == []
