"""End to end in real Blender: bpy.ops.spherediff.generate in background mode with a tiny
Stable Diffusion 1.5 model and the worker = this venv's Python (SPHEREDIFF_PYTHON).

One ``generate`` scenario per bpy interpreter (addon_scenarios.py, about a minute) makes
two worlds, renders them with Cycles, and walks through the failures; the tests below
check what it recorded:

* the World gets Texture Coordinate -> Mapping -> Environment Texture -> Background ->
  World Output, with the generated PNG saved under //spherediff/ (relative path);
* Cycles renders through cameras looking at +X and straight up show the PNG's colours
  where Blender's mapping puts them (the image centre and the top rows), predicted from
  the PNG with spherediff_core.geometry; mirrored or flipped predictions fail;
* a re-run updates the same nodes and keeps a user's nodes;
* a missing worker Python, a Python without the engine, invalid options, a missing or
  unsupported model folder, a worker killed mid-run and a cancel all leave the World's
  nodes, links and images exactly as they were, with a clear error;
* afterwards torch is not imported in Blender, no worker runs, no temporary file remains.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from addon_support import BPY_PYTHONS, ScenarioPool, bpy_exe_param
from spherediff_core.geometry import (
    camera_frames,
    directions_to_erp_uv,
    directions_to_lonlat,
    view_rays,
)

RENDER_TOL = 0.03  # max abs linear RGB error per pixel (measured <= 0.01)
GUARD_MIN = 0.1  # a wrong mapping is off by at least this much somewhere
# Left in TMPDIR by the worker's PyTorch (its compile cache folder), not by the add-on.
FOREIGN_TMP = ("torchinductor_",)


# Planted in Blender's current folder (the scenario's work/): a worker, pip or Check Worker
# that put the current folder on sys.path would import them (issue 8, item 11).
PLANTED_MODULES = ("argparse", "json", "optparse", "runpy")
PLANTED = (
    "import os\n"
    "with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'MARKER-{name}'),"
    " 'w') as f:\n"
    "    f.write('imported')\n"
    "raise SystemExit('planted {name}.py was imported')\n"
)


@pytest.fixture(scope="module")
def pool(extension_zip, tiny_sd15, plan_cache, tmp_path_factory):
    """The generate scenario, started in every bpy at once (they run side by side)."""

    def make_args(exe):
        kwargs = {"extra": ["--model", str(tiny_sd15)], "plan_cache": plan_cache}
        base = tmp_path_factory.mktemp("generate")
        work = base / "work"  # the Blender's current folder
        work.mkdir()
        for name in PLANTED_MODULES:
            (work / f"{name}.py").write_text(PLANTED.format(name=name), encoding="utf-8")
        return extension_zip, base, {**kwargs, "timeout": 400}

    pool = ScenarioPool("generate", make_args)
    yield pool
    pool.close()


@pytest.fixture(params=BPY_PYTHONS or [None], ids=str)
def scenario(request, pool) -> dict:
    return pool.get(bpy_exe_param(request))


def _links(snapshot) -> set[tuple[str, str, str, str]]:
    return {tuple(link) for link in snapshot["links"]}


def _by_tag(snapshot) -> dict[str, dict]:
    return {n["tag"]: n for n in snapshot["nodes"] if n["tag"]}


CHAIN = {
    ("SphereDiff Texture Coordinate", "Generated", "SphereDiff Mapping", "Vector"),
    ("SphereDiff Mapping", "Vector", "SphereDiff Environment", "Vector"),
    # Through the sun-disc mask (issue 10), open when there is no Sun Lamp.
    ("SphereDiff Environment", "Color", "SphereDiff Sun Mask", "A_Color"),
    ("SphereDiff Sun Mask", "Result_Color", "SphereDiff Background", "Color"),
}
TAGS = {
    "texcoord", "mapping", "environment", "background",
    "sun_normalize", "sun_dot", "sun_cone", "sun_mask",
}  # fmt: skip


def test_first_generation_builds_the_world(scenario):
    s = scenario
    assert s["first"]["result"] == ["FINISHED"], s["first"]
    assert s["world_before_first"] is None  # the empty file had no World: one was made
    snap = s["first_snapshot"]
    assert snap["world"] == "SphereDiff World"
    tags = _by_tag(snap)
    assert set(tags) == TAGS, tags
    assert tags["sun_cone"]["inputs"]["Value_001"] > 1.0  # the mask lets everything through
    links = _links(snap)
    assert links >= CHAIN, links
    output = s["active_output"]
    assert len(output) == 1
    assert ("SphereDiff Background", "Background", output[0], "Surface") in links
    assert tags["mapping"]["inputs"]["Rotation"] == [0.0, 0.0, 0.0]
    assert tags["background"]["inputs"]["Strength"] == 1.0

    img = s["first_image"]
    assert img["projection"] == "EQUIRECTANGULAR"
    assert img["filepath"].startswith("//spherediff/spherediff_"), img
    assert img["filepath"].endswith("_seed7.png")
    assert Path(img["abspath"]).parent == Path(s["_work"]) / "spherediff"
    assert Path(img["abspath"]).is_file() and img["sidecar_exists"]
    # The engine's sidecar describes the saved PNG, not the staging folder (issue 8, 2).
    sidecar = json.loads(img["sidecar"])
    assert sidecar["options"]["output"] == str(Path(img["abspath"]))
    assert sidecar["image"] == Path(img["abspath"]).name and sidecar["format"] == "spherediff"
    assert img["size"] == [256, 128]
    assert img["colorspace"] == "sRGB" and not img["packed"]
    assert img["custom"]["spherediff_seed"] == 7
    assert "pine forest" not in Path(img["abspath"]).name  # no prompt in file names

    st = s["first_settings"]
    assert st["last_image"] == img["filepath"] and st["last_seed"] == 7
    assert st["last_seconds"] > 0 and st["last_error"] == ""
    after = s["after_first"]
    assert after["staging"] == [] and after["heavy_modules"] == []
    # The one process left is the warm worker, waiting for the next job (issue 15).
    assert [c["pid"] for c in after["children"]] == [after["warm_pid"]], after
    # An unsaved file's // folder is the temporary folder, a saved one's is next to it.
    assert Path(s["unsaved_output_folder"]) == Path(s["_tmp"]) / "spherediff"
    assert Path(s["saved_output_folder"]) == Path(s["_work"]) / "spherediff"


# --------------------------------------------------------------------------- renders
def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _sample(tex: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup at ERP (u right, v up), wrapping in u and clamping in v."""
    h, w, _ = tex.shape
    x, y = u * w - 0.5, (1.0 - v) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    c0, c1 = np.mod(x0, w).astype(int), np.mod(x0 + 1, w).astype(int)
    r0, r1 = np.clip(y0, 0, h - 1).astype(int), np.clip(y0 + 1, 0, h - 1).astype(int)
    top = tex[r0, c0] * (1 - fx) + tex[r0, c1] * fx
    bottom = tex[r1, c0] * (1 - fx) + tex[r1, c1] * fx
    return top * (1 - fy) + bottom * fy


def _predicted(png: np.ndarray, forward, fov_deg: float, res: int, mirror=False, flip=False):
    """What a camera sees if the World uses Blender's mapping = spherediff's ERP convention.

    Cycles interpolates 8-bit sRGB textures before converting them to linear.
    """
    fwd = torch.tensor([forward], dtype=torch.float64)
    lon, lat = directions_to_lonlat(fwd)
    rays = view_rays(camera_frames(lon, lat), fov_deg, res, res)[0]
    u, v = (t.numpy() for t in directions_to_erp_uv(rays))
    if mirror:
        u = 1.0 - u
    if flip:
        v = 1.0 - v
    return _srgb_to_linear(_sample(png, u, v))


@pytest.mark.parametrize("view", ["+X", "+Z"])
def test_render_shows_the_panorama_where_blender_maps_it(scenario, view):
    from PIL import Image

    png = np.asarray(Image.open(scenario["first_image"]["abspath"]).convert("RGB"))
    png = png.astype(np.float64) / 255.0
    renders = scenario["renders"]
    res, fov = renders["resolution"], renders["fov_deg"]
    forward = {"+X": (1.0, 0.0, 0.0), "+Z": (0.0, 0.0, 1.0)}[view]
    measured = np.array(renders["views"][view]["pixels"])
    assert measured.shape == (res, res, 3)
    err = np.abs(measured - _predicted(png, forward, fov, res)).max()
    assert err < RENDER_TOL, f"{view}: max pixel error {err:.4f}"
    # The centre of the image faces +X; the top rows are straight up.
    h, w, _ = png.shape
    centre = measured[res // 2 - 1 : res // 2 + 1, res // 2 - 1 : res // 2 + 1].mean(axis=(0, 1))
    if view == "+X":
        reference = _srgb_to_linear(png[h // 2 - 1 : h // 2 + 1, w // 2 - 1 : w // 2 + 1])
    else:
        reference = _srgb_to_linear(png[:2])
    assert np.abs(centre - reference.mean(axis=(0, 1))).max() < 0.05, (centre, reference)
    # The check can fail: a mirrored or upside-down mapping is far off.
    for wrong in ({"mirror": True}, {"flip": True}):
        off = np.abs(measured - _predicted(png, forward, fov, res, **wrong)).max()
        assert off > GUARD_MIN, (view, wrong, off)


# --------------------------------------------------------------------------- re-run
def test_hdr_generation_through_the_real_worker(scenario):
    """hdr=True with the real engine: <stem>.exr saved beside the PNG and its sidecar, and
    loaded as the World in linear Rec.709 (the sidecar's hdr block names the saved EXR)."""
    s = scenario
    assert s["hdr"]["result"] == ["FINISHED"], s["hdr"]
    img = s["hdr_image"]
    assert img["filepath"].endswith("_seed9.exr"), img
    assert img["colorspace"] == "Linear Rec.709" and img["is_float"] and s["hdr_image"]["last_hdr"]
    assert img["size"] == [256, 128]
    exr = Path(img["abspath"])
    assert {exr.name, exr.with_suffix(".png").name, exr.with_suffix(".json").name} <= set(
        img["files"]
    )
    sidecar = json.loads(exr.with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["hdr"]["exr"] == exr.name and sidecar["image"] == exr.with_suffix(".png").name
    assert sidecar["options"]["hdr"] is True


def test_rerun_updates_the_same_nodes_and_keeps_user_nodes(scenario):
    s = scenario
    assert s["second"]["result"] == ["FINISHED"], s["second"]
    assert all(s["second_same_nodes"].values()), s["second_same_nodes"]
    snap = s["second_snapshot"]
    names = [n["name"] for n in snap["nodes"]]
    assert "User RGB" in names and "User Value" in names
    assert len(names) == len(set(names)) == len(s["first_snapshot"]["nodes"]) + 2
    tags = [n["tag"] for n in snap["nodes"] if n["tag"]]
    assert sorted(tags) == sorted(TAGS)
    assert _links(snap) == _links(s["first_snapshot"])
    by_tag = _by_tag(snap)
    assert by_tag["mapping"]["inputs"]["Rotation"] == [0.0, 0.0, 0.5]
    assert by_tag["background"]["inputs"]["Strength"] == 2.0
    img = s["second_image"]
    assert img["filepath"].endswith("_seed8.png") and img["packed"]
    assert not img["old_image_still_there"]  # our unused previous image is removed
    assert len([f for f in img["files"] if f.endswith(".png")]) == 2
    assert len([f for f in img["files"] if f.endswith(".json")]) == 2


def test_second_generation_reuses_the_warm_worker(scenario):
    """Issue 15: the second generation goes to the worker the first one started (the
    real engine's --serve), which has the model loaded: no load phase, ``loaded: false``,
    denoising within 2 s of the call."""
    first, second = scenario["first"]["run"], scenario["second"]["run"]
    assert first["served"] and second["served"], (first, second)
    assert first["pid"] == second["pid"] == scenario["after_first"]["warm_pid"]
    assert first["loaded"] is True and first["phases"][0] == "load", first
    assert second["loaded"] is False and "load" not in second["phases"], second
    assert second["first_denoise_s"] < 2.0, second
    # Live previews from the real engine (preview=True: background mode has none by
    # default), shown in the World while the job ran: a 512 x 256 ERP of its own.
    assert second["previews_seen"] >= 1, second
    shown = scenario["second"]["previews_shown"]
    assert shown and shown[0]["world"] == "SphereDiff Preview World", shown
    assert shown[0]["image"] == "SphereDiff Preview" and shown[0]["size"] == [512, 256]
    print(
        f"\nclick to first denoising step: cold {first['first_denoise_s']:.2f} s, "
        f"warm {second['first_denoise_s']:.2f} s"
    )


# --------------------------------------------------------------------------- failures
FAILURES = {
    "missing_python": ["does not exist", "SPHEREDIFF_PYTHON"],
    "python_without_engine": ["does not have the SphereDiff engine", "Install Dependencies"],
    "empty_prompt": ["invalid option", "prompt", "empty"],
    "odd_width": ["invalid option", "width: 301 is odd"],
    "missing_model_folder": ["invalid option", "no-such-model", "is not a folder"],
    "unsupported_model": ["NotAPipeline", "cannot drive"],
    # The engine's advice in Blender's words (the job says client "blender"), not --model.
    "model_not_cached": ["nobody/not-in-the-cache", "choose Custom in the Model menu"],
    "killed": ["worker was stopped by SIGKILL"],
    "cancel": ["cancelled"],
}


@pytest.mark.parametrize("name", list(FAILURES))
def test_failures_leave_the_world_untouched(scenario, name):
    f = scenario["failures"][name]
    assert f["unchanged"], f"{name}: the World changed:\n{f.get('before')}\n{f.get('after')}"
    assert f["staging"] == [], f
    # No process but the warm worker waiting for the next job.
    assert [c["pid"] for c in f["children"]] in ([], [f["warm_pid"]]), f
    for fragment in FAILURES[name]:
        assert fragment in f["last_error"], (name, f["last_error"])
    if name == "cancel":
        assert f["result"] == ["CANCELLED"] and f["error"] is None, f
    else:  # an ERROR report: bpy.ops raises RuntimeError with the message
        assert f["result"] is None and "SphereDiff: " in f["error"], f
        assert FAILURES[name][0] in f["error"]


def test_cancel_stops_the_worker_within_a_second(scenario):
    f = scenario["failures"]["cancel"]
    assert f["watcher"].get("phase") == "denoise", f["watcher"]
    assert f["stop_s"] < 1.0, f"the worker took {f['stop_s']:.2f} s to stop"
    # The warm worker answers the cancel and serves on; a one-shot one exits.
    if f["worker_returncode"] is None:
        assert f["worker_serving_on"], f
    else:
        assert f["worker_returncode"] in (130, -15, -9), f["worker_returncode"]


def test_killed_worker_is_reported(scenario):
    f = scenario["failures"]["killed"]
    assert f["watcher"].get("phase") == "denoise", f["watcher"]
    assert f["seconds"] < 60


def test_no_code_from_blenders_current_folder_ran(scenario):
    work = Path(scenario["_work"])
    assert sorted(p.name for p in work.glob("MARKER-*")) == []
    assert all((work / f"{name}.py").is_file() for name in PLANTED_MODULES)
    assert scenario["first"]["result"] == ["FINISHED"], scenario["first"]


def test_nothing_left_behind(scenario):
    end = scenario["end"]
    assert end["heavy_modules"] == [], "Blender imported " + ", ".join(end["heavy_modules"])
    assert end["children"] == [] and end["worker_pids_alive"] == [], end
    assert end["staging"] == [] and not end["active_generation"]
    # After Blender exited, its TMPDIR holds nothing of ours (nor Blender's session folder).
    left = sorted(p for p in os.listdir(scenario["_tmp"]) if not p.startswith(FOREIGN_TMP))
    assert left == [], f"left in TMPDIR: {left}"


def test_progress_is_printed_in_background_mode(scenario):
    out = scenario["_stdout"]
    assert "SphereDiff: Denoising" in out and "SphereDiff: generating with" in out
    for noise in ("RuntimeWarning", "DeprecationWarning", "Traceback"):
        assert noise not in scenario["_stderr"], scenario["_stderr"][-3000:]
