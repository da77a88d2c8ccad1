"""The extension package: built by scripts/build_extension.py, validated by Blender's own
tool, installed into a temporary user repository of each bpy, registered and unregistered.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
import tomllib
from addon_support import (
    BPY_PYTHONS,
    REPO_ROOT,
    ScenarioPool,
    blender_ext_tools,
    bpy_exe_param,
)

ADDON_FILES = {
    "spherediff_blender/__init__.py",
    "spherediff_blender/properties.py",
    "spherediff_blender/preferences.py",
    "spherediff_blender/operators.py",
    "spherediff_blender/panels.py",
    "spherediff_blender/worker_client.py",
    "spherediff_blender/world.py",
    "spherediff_blender/installer.py",
}


def test_package_contents(extension_zip):
    manifest = tomllib.loads((REPO_ROOT / "blender_manifest.toml").read_text())
    assert manifest["id"] == "spherediff"
    assert manifest["schema_version"] == "1.0.0"
    assert manifest["blender_version_min"] == "4.2.0"
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    assert set(manifest["permissions"]) == {"files", "network"}
    names = set(zipfile.ZipFile(extension_zip).namelist())
    wheel = manifest["wheels"][0].removeprefix("./")
    assert {"blender_manifest.toml", "__init__.py", wheel} | ADDON_FILES <= names, names
    stray = sorted(
        n
        for n in names
        if n.split("/")[0] in {"core", "tests", "benchmarks", "docs", "scripts", "build", "dist"}
        or n.startswith(".")
        or "__pycache__" in n
        or (n.endswith((".pyc", ".toml")) and n != "blender_manifest.toml")
    )
    assert not stray, f"files that must not be packaged: {stray}"
    # The engine wheel holds spherediff_core and nothing of the add-on or tests.
    with zipfile.ZipFile(extension_zip) as z, z.open(wheel) as fh:
        wheel_names = zipfile.ZipFile(fh).namelist()
    assert "spherediff_core/options.py" in wheel_names
    assert "spherediff_core/worker.py" in wheel_names
    assert not [n for n in wheel_names if n.startswith(("tests/", "spherediff_blender/"))]


def test_add_on_imports_no_torch():
    """The add-on's source never imports torch, diffusers or transformers."""
    banned = (
        "import torch",
        "from torch",
        "import diffusers",
        "from diffusers",
        "import transformers",
        "from transformers",
    )
    for path in [
        REPO_ROOT / "__init__.py",
        *sorted((REPO_ROOT / "spherediff_blender").glob("*.py")),
    ]:
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            assert not line.strip().startswith(banned), f"{path.name}: {line.strip()}"
        assert "shell=True" not in text, path


@pytest.mark.parametrize(
    "tool", blender_ext_tools() or [None], ids=lambda p: str(p).split("/bpy/")[-1].split("/")[0]
)
def test_blender_tool_validates(extension_zip, tool):
    if tool is None:
        pytest.fail("no Blender extension tool (blender_ext.py) found in the bpy installations")
    proc = subprocess.run(
        [sys.executable, str(tool), "validate", str(extension_zip)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout, proc.stdout


@pytest.fixture(scope="module")
def pool(extension_zip, tmp_path_factory):
    def make_args(exe):
        return extension_zip, tmp_path_factory.mktemp("register"), {"timeout": 120}

    pool = ScenarioPool("register", make_args)
    yield pool
    pool.close()


@pytest.fixture(params=BPY_PYTHONS or [None], ids=str)
def registered(request, pool):
    return pool.get(bpy_exe_param(request))


def test_install_enable_disable(registered):
    r = registered
    assert not r["before"]["panel"] and not r["before"]["scene_prop"]
    assert r["install"]["enabled"]
    on = r["enabled"]
    assert on["panel"] and on["op_generate"] and on["scene_prop"] and on["prefs"], on
    assert {
        "WORLD_PT_spherediff_directional",
        "WORLD_PT_spherediff_settings",
        "WORLD_PT_spherediff_animated",
        "WORLD_PT_spherediff_output",
        "WORLD_PT_spherediff_generate",
    } <= set(on["subpanels"]), on["subpanels"]
    assert {"generate", "cancel", "check_worker", "install_dependencies"} <= set(on["ops"])
    assert on["statusbar_draw"], "status bar progress not registered"
    assert "_on_load_pre" in on["load_pre_handlers"]
    # The engine comes from the wheel Blender installed, not from this checkout.
    assert "extensions" in r["engine_file"] and "site-packages" in r["engine_file"], r
    assert r["addon_package"] == "bl_ext.user_default.spherediff"
    assert r["heavy_modules"] == [] and r["heavy_modules_end"] == []
    assert r["generate_poll"] is True and r["cancel_poll"] is False
    assert "UNDO" in r["generate_options"]  # a finished generation is one undo step
    for key in ("disabled", "disabled_again"):
        off = r[key]
        assert not off["panel"] and not off["op_generate"] and not off["scene_prop"], off
        assert off["subpanels"] == [] and not off["statusbar_draw"], off
        assert "_on_load_pre" not in off["load_pre_handlers"]
    assert r["reenabled"]["panel"] and r["reenabled"]["scene_prop"]
    assert "Traceback" not in r["_stderr"], r["_stderr"][-3000:]


def test_panels_and_preferences_draw(registered):
    """Every panel, the preferences and the status bar draw (with a recording layout):
    idle, and while a generation and an installation run."""
    ui = registered["ui"]
    for state in ("idle", "running"):
        assert ui[state]["problems"] == [], (state, ui[state]["problems"])
    idle = [tuple(x) for x in ui["idle"]["log"]]
    running = [tuple(x) for x in ui["running"]["log"]]
    for prop in (
        "prompt",
        "sky_prompt",
        "horizon_prompt",
        "ground_prompt",
        "negative_prompt",
        "model_preset",
        "size",
        "steps",
        "guidance",
        "seed",
        "random_seed",
        "output_dir",
        "worker_python",
        "cache_dir",
        "offline",
        "device",
        "precision",
        "default_model",
        "default_video_model",
        "video",
        "frames",
        "auto_fps",
        "fps",
        "loop",
        "match_scene",
    ):
        assert ("prop", prop) in idle, prop
    assert ("operator", "spherediff.generate") in idle
    assert ("operator", "spherediff.check_worker") in idle
    assert ("operator", "spherediff.install_dependencies") in idle
    assert ("operator", "spherediff.generate") not in running
    assert ("operator", "spherediff.cancel") in running
    assert any(kind == "progress" for kind, _ in running)
    assert ("prop", "custom_model") in running and ("prop", "width") in running


# Preset -> the engine's adapter class name, for the size check below.
PRESET_ADAPTERS = {
    "SANA": "SanaAdapter",
    "SD15": "StableDiffusionAdapter",
    "SDXL": "StableDiffusionXLAdapter",
    "FLUX_SCHNELL": "FluxAdapter",
    "FLUX_DEV": "FluxAdapter",
    "SD35_MEDIUM": "StableDiffusion3Adapter",
    "SD35_LARGE": "StableDiffusion3Adapter",
    "LTX": "LTXVideoAdapter",
    "WAN": "WanAdapter",
}


def test_size_notes_agree_with_the_engine(registered):
    """The panel's size note (computed without torch) says what the engine's size_advice
    says, for every preset model and size; the default size is Auto (the model's own)."""
    from spherediff_core import adapters
    from spherediff_core.options import GenerationOptions
    from spherediff_core.pipeline import size_advice

    assert registered["size_default"] == "AUTO"
    assert registered["auto_note"] == ""  # FLUX.1 at its own size (4K): no note
    notes = registered["size_notes"]
    assert set(notes) == {f"{p} {s}" for p in PRESET_ADAPTERS for s in ("1K", "2K", "4K", "8K")}
    for key, (view_px, note) in notes.items():
        preset, size = key.split()
        adapter = getattr(adapters, PRESET_ADAPTERS[preset])
        advice = size_advice(GenerationOptions(prompt="x", size=size), adapter)
        assert view_px == advice.view_px, key
        far_below = advice.note is not None and "far below" in advice.note
        assert bool(note) == far_below, (key, note, advice.note)
        if note:
            assert f"{view_px} px" in note and f"native {adapter.native_view_px} px" in note
    assert notes["FLUX_DEV 2K"][1] and not notes["FLUX_DEV 4K"][1]
    assert not notes["SANA 2K"][1] and notes["SANA 1K"][1]
    # The note shows under the size field.
    labels = [x for x in registered["ui"]["size note"]["log"] if "far below" in str(x)]
    assert labels, registered["ui"]["size note"]["log"]
