"""The add-on's model lists: fixed enum numbers, old files' choices, and the engine's registry.

Blender saves an enum property as its item's number, not its identifier: a .blend stores
the scene's model as a number, userpref.blend the preferences' default models. So:

* every (identifier, number) pair released so far must never change (``RELEASED``), numbers
  are unique within a list, and every enum the add-on registers is in ``RELEASED``;
* a .blend saved by the add-on before the numbers were written down (numbered by position)
  opens with the same choice in today's add-on, and would not have with today's presets
  numbered by position (the test can fail: a preset inserted before LTX or Wan shifts them);
* the add-on's own pipeline tables (it cannot import torch) agree with the engine's
  torch-free registry ``spherediff_core.families.FAMILIES``.

Each check runs model_enum_script.py in every bpy interpreter (bpy 5.0 and 4.2).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from addon_support import BPY_PYTHONS, bpy_exe_param, scenario_env
from spherediff_core import families

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "model_enum_script.py"
TIMEOUT_S = 120

# The lists as released before issue 14, in their order: the scene's model list numbered
# stills from 1, Custom next, then the video models (its code used enumerate), and the
# preferences' lists by position. Never edit these: files saved by those versions hold them.
HISTORICAL_IMAGES = (
    "SANA",
    "SD15",
    "SDXL",
    "FLUX_SCHNELL",
    "FLUX_DEV",
    "SD35_MEDIUM",
    "SD35_LARGE",
)
HISTORICAL_VIDEOS = ("LTX", "WAN")

# Every (identifier -> number) pair released, per enum. Append new pairs; never change or
# remove one (a removed item's number stays unused).
RELEASED = {
    "scene.model_preset": {
        "DEFAULT": 0,
        "SANA": 1,
        "SD15": 2,
        "SDXL": 3,
        "FLUX_SCHNELL": 4,
        "FLUX_DEV": 5,
        "SD35_MEDIUM": 6,
        "SD35_LARGE": 7,
        "CUSTOM": 8,
        "LTX": 9,
        "WAN": 10,
        # issue 14
        "FLUX2_DEV": 11,
        "FLUX2_KLEIN_4B": 12,
        "QWEN_IMAGE": 13,
        "ZIMAGE_TURBO": 14,
        "ZIMAGE": 15,
        "WAN22_TI2V_5B": 16,
        "WAN22_T2V_A14B": 17,
        "HUNYUANVIDEO15": 18,
    },
    "prefs.default_model": {
        "SANA": 0,
        "SD15": 1,
        "SDXL": 2,
        "FLUX_SCHNELL": 3,
        "FLUX_DEV": 4,
        "SD35_MEDIUM": 5,
        "SD35_LARGE": 6,
        "CUSTOM": 7,
        # issue 14
        "FLUX2_DEV": 8,
        "FLUX2_KLEIN_4B": 9,
        "QWEN_IMAGE": 10,
        "ZIMAGE_TURBO": 11,
        "ZIMAGE": 12,
    },
    "prefs.default_video_model": {
        "LTX": 0,
        "WAN": 1,
        "CUSTOM": 2,
        # issue 14
        "WAN22_TI2V_5B": 3,
        "WAN22_T2V_A14B": 4,
        "HUNYUANVIDEO15": 5,
    },
    "prefs.device": {"auto": 0, "cuda": 1, "mps": 2, "cpu": 3},
    "prefs.precision": {"auto": 0, "fp16": 1, "bf16": 2, "fp32": 3},
    "scene.size": {"1K": 0, "2K": 1, "4K": 2, "8K": 3, "CUSTOM": 4, "AUTO": 5},
    # issue 15
    "scene.draft_size": {"1K": 0, "2K": 1, "4K": 2},
}
# Where each enum of the add-on's registered classes is checked (class.property -> RELEASED).
ENUM_OWNERS = {
    "SPHEREDIFF_PG_settings.model_preset": "scene.model_preset",
    "SPHEREDIFF_PG_settings.size": "scene.size",
    "SPHEREDIFF_OT_generate.model_preset": "scene.model_preset",
    "SPHEREDIFF_OT_generate.size": "scene.size",
    "SPHEREDIFF_PG_settings.draft_size": "scene.draft_size",
    "SPHEREDIFF_OT_generate.draft_size": "scene.draft_size",
    "SphereDiffPreferences.default_model": "prefs.default_model",
    "SphereDiffPreferences.default_video_model": "prefs.default_video_model",
    "SphereDiffPreferences.device": "prefs.device",
    "SphereDiffPreferences.precision": "prefs.precision",
}

# Each preset's engine family (a Hub id's pipeline class is not known without the network).
PRESET_FAMILIES = {
    "SANA": "sana",
    "SD15": "sd",
    "SDXL": "sdxl",
    "FLUX_SCHNELL": "flux",
    "FLUX_DEV": "flux",
    "SD35_MEDIUM": "sd3",
    "SD35_LARGE": "sd3",
    "FLUX2_DEV": "flux2",
    "FLUX2_KLEIN_4B": "flux2-klein",
    "QWEN_IMAGE": "qwenimage",
    "ZIMAGE_TURBO": "zimage",
    "ZIMAGE": "zimage",
    "LTX": "ltx",
    "WAN": "wan",
    "WAN22_TI2V_5B": "wan",
    "WAN22_T2V_A14B": "wan",
    "HUNYUANVIDEO15": "hunyuanvideo15",
}
# Presets whose frame rate is not their family's default: the engine's "wan" facts hold
# Wan 2.1's 16 fps, and Wan 2.2 TI2V 5B's card says 24 (its folders carry
# "expand_timesteps": true, which the add-on reads for a local folder too).
FPS_EXCEPTIONS = {"WAN22_TI2V_5B": 24}


def _run(exe: str, tmp_path: Path, mode: str, *args: str) -> dict:
    out = tmp_path / f"{mode}.json"
    proc = subprocess.run(
        [exe, str(SCRIPT), mode, str(out), *args],
        env=scenario_env(tmp_path / f"env-{mode}"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.fixture(scope="module", params=BPY_PYTHONS or [None])
def bpy_exe(request) -> str:
    return bpy_exe_param(request)


@pytest.fixture(scope="module")
def dumped(bpy_exe, tmp_path_factory) -> dict:
    return _run(bpy_exe, tmp_path_factory.mktemp("dump"), "dump")


def test_released_numbers_never_change(dumped):
    """Blender's own numbers of every list keep the released pairs, are unique, and every
    item has a released number (a new preset must be added to RELEASED, so chosen once)."""
    for name, numbers in dumped["enums"].items():
        released = RELEASED[name.replace("operator.", "scene.")]
        assert numbers == released, (name, numbers)
        assert len(set(numbers.values())) == len(numbers), (name, numbers)


def test_historical_pairs_are_the_positional_ones():
    """RELEASED starts with exactly what the positional formula gave the pre-issue-14 lists
    (guards this file itself against an edit of the historical pairs)."""
    # The old code: DEFAULT 0, enumerate(MODEL_PRESETS, start=1), Custom at
    # len(MODEL_PRESETS) + 1, enumerate(VIDEO_MODEL_PRESETS, start=len(MODEL_PRESETS) + 2).
    n = len(HISTORICAL_IMAGES)
    scene = {"DEFAULT": 0, "CUSTOM": n + 1}
    scene.update({k: i for i, k in enumerate(HISTORICAL_IMAGES, start=1)})
    scene.update({k: i for i, k in enumerate(HISTORICAL_VIDEOS, start=n + 2)})
    assert scene["CUSTOM"] == 8 and scene["LTX"] == 9 and scene["WAN"] == 10
    prefs = {k: i for i, k in enumerate((*HISTORICAL_IMAGES, "CUSTOM"))}
    video_prefs = {k: i for i, k in enumerate((*HISTORICAL_VIDEOS, "CUSTOM"))}
    for name, old in (
        ("scene.model_preset", scene),
        ("prefs.default_model", prefs),
        ("prefs.default_video_model", video_prefs),
    ):
        assert {k: RELEASED[name][k] for k in old} == old, name


def test_every_enum_of_the_addon_is_pinned(dumped):
    """No enum of a registered class is left out of RELEASED (a new one gets its pairs)."""
    assert set(dumped["all_enums"]) == set(ENUM_OWNERS), sorted(dumped["all_enums"])
    for owner, numbers in dumped["all_enums"].items():
        assert numbers == RELEASED[ENUM_OWNERS[owner]], owner


def test_old_file_keeps_its_model(bpy_exe, tmp_path):
    """A .blend saved with the positional numbering opens with the same model in today's
    add-on, for every historical choice (one scene each); with today's presets numbered by
    position the video models and Custom would turn into other models."""
    blend = tmp_path / "old.blend"
    choices = ["DEFAULT", *HISTORICAL_IMAGES, "CUSTOM", *HISTORICAL_VIDEOS]
    history = {"images": HISTORICAL_IMAGES, "videos": HISTORICAL_VIDEOS, "choices": choices}
    saved = _run(bpy_exe, tmp_path, "save_old", str(blend), json.dumps(history))
    assert sorted(saved["scenes"].values()) == sorted(choices)

    opened = _run(bpy_exe, tmp_path, "open", str(blend))
    assert opened["scenes"] == saved["scenes"]

    # The control: numbering today's lists by position (the old code with the new presets)
    # reads the same file differently, so this test fails if numbers go positional again.
    positional = _run(bpy_exe, tmp_path, "open_positional", str(blend))
    changed = {saved["scenes"][n]: v for n, v in positional["scenes"].items()}
    changed = {k: v for k, v in changed.items() if k != v}
    assert {"LTX", "WAN", "CUSTOM"} <= set(changed), changed


def test_tables_agree_with_the_engine_registry(dumped):
    """Every engine pipeline class is in exactly one of the add-on's tables (image vs video
    as the engine says), with the engine's time compression and frame rate; and the add-on
    lists no class the engine cannot drive."""
    image, video = dumped["image_pipelines"], dumped["video_pipelines"]
    assert not set(image) & set(video)
    engine = {c: f for f in families.FAMILIES for c in f.pipeline_classes}
    problems = []
    for cls, facts in engine.items():
        if facts.is_video:
            if cls not in video:
                problems.append(f"{cls}: engine video ({facts.family}), not in VIDEO_PIPELINES")
                continue
            _, compression, fps = video[cls]
            if (compression, fps) != (facts.temporal_compression, facts.default_fps):
                problems.append(
                    f"{cls}: add-on {compression}k+1 at {fps} fps, engine "
                    f"{facts.temporal_compression}k+1 at {facts.default_fps} fps"
                )
        elif cls not in image:
            problems.append(f"{cls}: engine image ({facts.family}), not in IMAGE_PIPELINES")
    for cls in (*image, *video):
        if cls not in engine:
            problems.append(f"{cls}: in the add-on's tables, but no engine family drives it")
    assert not problems, "\n".join(problems)


def test_presets_agree_with_their_families(dumped):
    """Each preset belongs to an engine family of its kind; a video preset's rule has its
    family's compression and frame rate (but for FPS_EXCEPTIONS)."""
    presets = [*dumped["image_presets"], *dumped["video_presets"]]
    assert set(presets) == set(PRESET_FAMILIES)
    assert set(dumped["video_preset_rules"]) == set(dumped["video_presets"])
    by_family = {f.family: f for f in families.FAMILIES}
    problems = []
    for key in presets:
        facts = by_family.get(PRESET_FAMILIES[key])
        if facts is None:
            problems.append(f"{key}: engine family {PRESET_FAMILIES[key]!r} not registered")
            continue
        kind, compression, fps = dumped["model_info"][key]
        if (kind == "video") != facts.is_video:
            problems.append(f"{key}: add-on says {kind}, engine is_video={facts.is_video}")
        if facts.is_video:
            want = (facts.temporal_compression, FPS_EXCEPTIONS.get(key, facts.default_fps))
            if (compression, fps) != want:
                problems.append(f"{key}: {compression}k+1 at {fps} fps, want {want}")
    assert not problems, "\n".join(problems)


def test_new_presets_and_local_folders(dumped):
    """The issue-14 presets: Hub ids, kinds and frame rules, sizes known, descriptions; a
    local folder's kind from its model_index.json (Wan 2.2 TI2V 5B: 24 fps)."""
    ids = dumped["hub_ids"]
    assert ids["FLUX2_DEV"] == "black-forest-labs/FLUX.2-dev"
    assert ids["FLUX2_KLEIN_4B"] == "black-forest-labs/FLUX.2-klein-4B"
    assert ids["QWEN_IMAGE"] == "Qwen/Qwen-Image"
    assert ids["ZIMAGE_TURBO"] == "Tongyi-MAI/Z-Image-Turbo"
    assert ids["ZIMAGE"] == "Tongyi-MAI/Z-Image"
    assert ids["WAN22_TI2V_5B"] == "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    assert ids["WAN22_T2V_A14B"] == "Wan-AI/Wan2.2-T2V-A14B-Diffusers"
    assert ids["HUNYUANVIDEO15"] == "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v"
    info = dumped["model_info"]
    assert info["WAN22_TI2V_5B"] == ["video", 4, 24]
    assert info["WAN22_T2V_A14B"] == ["video", 4, 16]
    assert info["HUNYUANVIDEO15"] == ["video", 4, 24]
    assert info["ZIMAGE_TURBO"][0] == "image" and info["FLUX2_DEV"][0] == "image"
    assert set(dumped["preset_sizes"]) == set(PRESET_FAMILIES)
    for key, text in dumped["descriptions"].items():
        assert "GB" in text, (key, text)  # every preset says roughly how much VRAM
    folders = dumped["folder_info"]
    assert folders["wan21"] == ["video", 4, 16]
    assert folders["wan22_5b"] == ["video", 4, 24]
    assert folders["wan22_a14b"] == ["video", 4, 16]
    assert folders["hv15"] == ["video", 4, 24]
    assert folders["flux2"][0] == "image"
