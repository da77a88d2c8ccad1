"""Animated worlds in real Blender (4.2 and 5.0): ``bpy.ops.spherediff.generate(video=True)``.

One ``video`` scenario per bpy interpreter (addon_scenarios.py) records what happened; the
tests below check it:

* a synthetic 5-frame sequence (solid, distinct colours, from fake_video_worker.py, which
  writes the engine's video layout and speaks the worker protocol) loads into the World's
  Environment Texture as an image sequence (``SEQUENCE``; the image user plays 5 frames
  from the scene's start frame 11, cyclic, auto-refreshed), saved under //spherediff/
  with relative paths;
* Cycles renders at scene frames 11, 13 and 15 show frames 1, 3 and 5; with loop on frame
  16 shows frame 1 again, with loop off it holds frame 5;
* a re-run updates the same nodes; Match Scene sets the frame range (11..15) and the
  frame rate (the model's own, from the worker's result), and only then;
* Pack Image is refused when a script asks for it and ignored (with a warning) when it is
  the scene's setting; image models for Animated, video models for stills and frame
  counts the model cannot take are refused before a worker starts, with the reason (the
  panel's button says the same through its poll);
* a failing worker and a cancel leave the World, the scene's range and rate and the
  output folder exactly as they were;
* end to end with the tiny random-weight Wan pipeline (tests/support/tiny_pipelines.py)
  through the real worker: the frames load and renders of frames 1 and 5 show the PNGs'
  colours where Blender's mapping puts them; a real cancel leaves no frames behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from addon_support import BPY_PYTHONS, ScenarioPool, bpy_exe_param
from test_addon_generate import (
    FOREIGN_TMP,
    GUARD_MIN,
    RENDER_TOL,
    TAGS,
    _predicted,
    _srgb_to_linear,
)

COLOUR_TOL = 0.01  # solid frames: the render is the texel's linear colour


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory) -> Path:
    """A tiny random-weight Wan 2.1 text-to-video pipeline folder (built offline)."""
    import torch

    try:
        from tests.support.tiny_pipelines import build_tiny_pipeline
    except ImportError:
        from support.tiny_pipelines import build_tiny_pipeline
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("models") / "tiny-wan"
        build_tiny_pipeline("wan", folder)
    finally:
        torch.set_num_threads(before)
    return folder


@pytest.fixture(scope="module")
def pool(extension_zip, tiny_wan, plan_cache, tmp_path_factory):
    """The video scenario, started in every bpy at once (they run side by side)."""

    def make_args(exe):
        kwargs = {"extra": ["--model", str(tiny_wan)], "plan_cache": plan_cache}
        return extension_zip, tmp_path_factory.mktemp("video"), {**kwargs, "timeout": 400}

    pool = ScenarioPool("video", make_args)
    yield pool
    pool.close()


@pytest.fixture(params=BPY_PYTHONS or [None], ids=str)
def scenario(request, pool) -> dict:
    return pool.get(bpy_exe_param(request))


def _frame_colour(png: Path) -> np.ndarray:
    """The linear colour of a solid frame PNG."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3).astype(np.float64) / 255.0
    assert np.ptp(rgb, axis=0).max() == 0, f"{png} is not one solid colour"
    return _srgb_to_linear(rgb[0])


def _frames_of(state: dict) -> list[Path]:
    first = Path(state["image"]["abspath"])
    return sorted(first.parent.glob("frame_*.png"))


def _rendered(renders: dict, frame: int) -> np.ndarray:
    return np.array(renders["frames"][str(frame)]).reshape(-1, 3)


def _shows(renders: dict, frame: int, png: Path) -> float:
    """Max error between the render at scene ``frame`` and the solid colour of ``png``."""
    return float(np.abs(_rendered(renders, frame) - _frame_colour(png)).max())


# --------------------------------------------------------------------------- the switch
def test_animated_switch_and_its_checks(scenario):
    c = scenario["checks"]
    # Animated on swaps an image preset for a video preset, off swaps it back.
    assert c["toggles"] == [[True, "LTX"], [False, "SDXL"], [True, "LTX"]], c["toggles"]
    assert "LTX-Video is a video model" in c["video_model_for_still"]
    assert "turn on Animated" in c["video_model_for_still"]
    assert "SANA 1600M makes still images" in c["image_model_for_video"]
    assert "LTX-Video, Wan or HunyuanVideo 1.5" in c["image_model_for_video"]
    assert "50 frames is not valid for LTX-Video" in c["bad_frames"], c["bad_frames"]
    assert "8k+1" in c["bad_frames"] and "49 or 57" in c["bad_frames"]
    assert c["good_frames"] == ""
    # The generate button's poll blocks only the button; a script's call is not blocked.
    assert c["background_poll"] is True
    for key in ("ui_video_model_for_still", "ui_bad_frames", "ui_fine"):
        assert c[key]["problems"] == [], (key, c[key]["problems"])
    labels = {
        key: " ".join(t for k, t in c[key]["log"] if k == "label") for key in c if "ui" in key
    }
    assert "LTX-Video is a video model" in labels["ui_video_model_for_still"]
    assert "49 or 57" in labels["ui_bad_frames"]
    assert "cannot pack" in labels["ui_fine"] and "8k+1 frames" in labels["ui_fine"]
    props = {t for k, t in c["ui_fine"]["log"] if k == "prop"}
    assert {"video", "frames", "auto_fps", "fps", "loop", "match_scene"} <= props


# --------------------------------------------------------------------------- loading
def test_sequence_loads_into_the_environment_texture(scenario):
    s = scenario
    assert s["first"]["result"] == ["FINISHED"], s["first"]
    st = s["first_state"]
    img = st["image"]
    assert img["source"] == "SEQUENCE" and not img["packed"] and img["colorspace"] == "sRGB"
    assert img["filepath"].startswith("//spherediff/spherediff_"), img
    assert img["filepath"].endswith("_seed3_frames/frame_0001.png"), img
    assert Path(img["abspath"]).parent.parent == Path(s["_work"]) / "spherediff"
    assert img["custom"]["spherediff_frames"] == 5 and img["custom"]["spherediff_fps"] == 12
    assert st["image_user"] == {
        "frame_duration": 5,
        "frame_start": 11,  # the scene's start frame
        "frame_offset": 0,
        "use_cyclic": True,
        "use_auto_refresh": True,
    }
    # The same node chain as a still.
    tags = {n["tag"] for n in st["world"]["nodes"] if n["tag"]}
    assert tags == TAGS  # (the sun-disc mask open: animated worlds stay LDR)
    # Match Scene off: the scene's range and rate are untouched.
    before = s["first_before"]
    assert (st["frame_start"], st["frame_end"], st["fps"], st["fps_base"]) == (11, 250, 30, 1.001)
    assert (before["frame_start"], before["frame_end"]) == (11, 250)
    # The engine's layout under //spherediff/: frames folder, MP4 preview and sidecar.
    stem = Path(img["filepath"]).parent.name.removesuffix("_frames")
    assert st["files"] == sorted(
        [
            f"{stem}.json",
            f"{stem}.mp4",
            f"{stem}_frames",
            *(f"{stem}_frames/frame_{i:04d}.png" for i in range(1, 6)),
        ]
    ), st["files"]
    settings = s["first_settings"]
    assert settings["last_image"] == img["filepath"] and settings["last_frames"] == 5
    assert settings["last_fps"] == 12 and settings["last_seed"] == 3
    assert (
        settings["last_error"] == "" and settings["video"] is False
    )  # the call's, not the scene's
    ui = s["ui_after_first"]
    assert ui["problems"] == [] and ("label", "5 frames at 12 fps") in [tuple(x) for x in ui["log"]]


def test_renders_play_the_frames_and_loop(scenario):
    frames = _frames_of(scenario["first_state"])
    assert len(frames) == 5
    colours = [_frame_colour(p) for p in frames]
    for i in range(5):  # the check can fail: every frame has its own colour
        for j in range(i):
            assert np.abs(colours[i] - colours[j]).max() > 0.1
    renders = scenario["first_renders"]
    # Scene frame 11 (the start) is frame 1, 13 is 3, 15 is 5; looping, 16 is 1 again.
    for scene_frame, index in ((11, 0), (13, 2), (15, 4), (16, 0)):
        err = _shows(renders, scene_frame, frames[index])
        assert err < COLOUR_TOL, (scene_frame, index + 1, err, _rendered(renders, scene_frame))


def test_rerun_with_loop_off_and_match_scene(scenario):
    s = scenario
    assert s["second"]["result"] == ["FINISHED"], s["second"]
    assert s["second_same_nodes"], "the re-run made new nodes"
    st = s["second_state"]
    assert st["image_user"]["use_cyclic"] is False and st["image_user"]["frame_duration"] == 5
    assert st["image"]["filepath"].endswith("_seed4_frames/frame_0001.png")
    assert not s["first_image_still_there"]  # our unused previous sequence is removed
    # Match Scene: start .. start + 5 - 1, the model's own rate (Wan: 16, auto fps).
    assert (st["frame_start"], st["frame_end"], st["fps"], st["fps_base"]) == (11, 15, 16, 1.0)
    assert st["image"]["custom"]["spherediff_fps"] == 16
    frames = _frames_of(st)
    # A new sequence (seed 4), not the first one's frames.
    first_run = _frames_of(s["first_state"])[0]
    assert np.abs(_frame_colour(frames[0]) - _frame_colour(first_run)).max() > 0.1
    renders = s["second_renders"]
    # Loop off: after the last frame it holds.
    for scene_frame, index in ((11, 0), (15, 4), (16, 4)):
        err = _shows(renders, scene_frame, frames[index])
        assert err < COLOUR_TOL, (scene_frame, index + 1, err)
    # The Loop setting updates the node live.
    assert s["live_loop"] is True and s["live_loop_off"] is False


# --------------------------------------------------------------------------- failures
FAILURES = {
    "pack_refused": ["Pack Image cannot be used for an animated world", "cannot pack"],
    "bad_frames": ["50 frames is not valid for LTX-Video", "8k+1", "49 or 57"],
    "loop_too_few": ["1 frames is too few for a loop with LTX-Video", "at least 9", "use 17"],
    "image_model": ["Stable Diffusion XL makes still images", "LTX-Video, Wan or HunyuanVideo 1.5"],
    "video_model_for_still": ["LTX-Video is a video model", "turn on Animated"],
    "worker_error": ["the fake worker failed on purpose"],
    "cancel": ["cancelled"],
}


@pytest.mark.parametrize("name", list(FAILURES))
def test_failures_leave_world_and_scene_untouched(scenario, name):
    f = scenario["failures"][name]
    assert f["unchanged"], f"{name}: changed:\n{f.get('before')}\n{f.get('after')}"
    assert f["staging"] == [] and f["children"] == [], f
    for fragment in FAILURES[name]:
        assert fragment in f["last_error"], (name, f["last_error"])
    if name == "cancel":
        assert f["result"] == ["CANCELLED"] and f["error"] is None, f
    else:  # an ERROR report: bpy.ops raises RuntimeError with the message
        assert f["result"] is None and FAILURES[name][0] in f["error"], f


def test_cancel_stops_the_worker_and_leaves_no_frames(scenario):
    f = scenario["failures"]["cancel"]
    assert f["watcher"].get("phase") == "denoise", f["watcher"]
    assert f["stop_s"] < 1.0, f"the worker took {f['stop_s']:.2f} s to stop"
    assert f["worker_returncode"] in (130, -15, -9), f["worker_returncode"]


def test_pack_image_setting_is_ignored_for_sequences(scenario):
    s = scenario
    assert s["third"]["result"] == ["FINISHED"], s["third"]
    st = s["third_state"]
    assert st["image"]["source"] == "SEQUENCE" and not st["image"]["packed"]
    assert st["image_user"]["frame_duration"] == 9
    assert "Pack Image ignored: Blender cannot pack an image sequence" in (
        s["_stdout"] + s["_stderr"]
    )


# --------------------------------------------------------------------------- real worker
def test_real_generation_with_tiny_wan(scenario):
    r = scenario["real"]
    assert r["result"] == ["FINISHED"], r
    st = r["state"]
    assert st["image"]["source"] == "SEQUENCE"
    # Frames 9 with Loop: a seamless loop of 8 frames (the 9th would be the first again).
    assert st["image_user"]["frame_duration"] == 8 and st["image_user"]["frame_start"] == 11
    assert st["image_user"]["use_cyclic"] is True
    assert (st["frame_start"], st["frame_end"], st["fps"], st["fps_base"]) == (11, 18, 8, 1.0)
    stem = Path(st["image"]["filepath"]).parent.name.removesuffix("_frames")
    for name in (
        f"{stem}.json",
        f"{stem}.mp4",
        *(f"{stem}_frames/frame_{i:04d}.png" for i in (1, 8)),
    ):
        assert name in st["files"], (name, st["files"])
    assert r["after"] == {"staging": [], "children": []}

    from PIL import Image

    frames = _frames_of(st)
    assert len(frames) == 8
    pngs = [np.asarray(Image.open(p).convert("RGB")).astype(np.float64) / 255.0 for p in frames]
    assert pngs[0].shape == (64, 128, 3)
    renders = r["renders"]
    res, fov = renders["resolution"], renders["fov_deg"]
    predicted = [_predicted(png, (1.0, 0.0, 0.0), fov, res) for png in pngs]
    for scene_frame, index in ((11, 0), (18, 7), (19, 0)):
        measured = np.array(renders["frames"][str(scene_frame)])
        err = np.abs(measured - predicted[index]).max()
        assert err < RENDER_TOL, (scene_frame, err)
    # The check can fail: frame 1's render is not that of frame 5, the loop's far side
    # (frame 8, which leads into frame 1, is close to it: 0.08 apart where 1 and 5 are not).
    off = np.abs(np.array(renders["frames"]["11"]) - predicted[4]).max()
    assert off > GUARD_MIN, off


def test_real_cancel_leaves_no_frames(scenario):
    f = scenario["real_cancel"]
    assert f["result"] == ["CANCELLED"], f
    assert f["unchanged"], f"changed:\n{f.get('before')}\n{f.get('after')}"
    assert f["staging"] == [] and f["children"] == [], f
    assert f["watcher"].get("phase") == "denoise", f["watcher"]
    assert f["stop_s"] < 1.0, f"the worker took {f['stop_s']:.2f} s to stop"


def test_local_video_folder_frame_rule_is_checked_before_the_worker(scenario):
    f = scenario["custom_bad_frames"]
    assert f["result"] is None and f["unchanged"] and f["children"] == [], f
    assert (
        "6 frames is not valid for tiny-wan (Wan): it makes 4k+1 frames; use 5 or 9" in (f["error"])
    ), f["error"]
    assert f["seconds"] < 1.0, f  # refused before a worker started


def test_nothing_left_behind(scenario):
    end = scenario["end"]
    assert end["heavy_modules"] == [], "Blender imported " + ", ".join(end["heavy_modules"])
    assert end["children"] == [] and end["worker_pids_alive"] == [], end
    assert end["staging"] == [] and not end["active_generation"]
    left = sorted(p for p in os.listdir(scenario["_tmp"]) if not p.startswith(FOREIGN_TMP))
    assert left == [], f"left in TMPDIR: {left}"
    for noise in ("RuntimeWarning", "DeprecationWarning", "Traceback"):
        assert noise not in scenario["_stderr"], scenario["_stderr"][-3000:]
