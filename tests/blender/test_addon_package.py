"""The extension package: built by scripts/build_extension.py, validated by Blender's own
tool, installed into a temporary user repository of each bpy, registered and unregistered.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

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
        "WORLD_PT_spherediff_history",
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
        "draft",
        "draft_size",
        "draft_steps",
        "variation_count",
    ):
        assert ("prop", prop) in idle, prop
    assert ("operator", "spherediff.generate") in idle
    for op in ("variations", "make_final", "copy_seed", "reuse_seed", "history_restore"):
        assert ("operator", f"spherediff.{op}") in idle, op
    assert ("list", "history") in idle
    assert ("operator", "spherediff.check_worker") in idle
    assert ("operator", "spherediff.install_dependencies") in idle
    assert ("operator", "spherediff.generate") not in running
    assert ("operator", "spherediff.cancel") in running
    assert any(kind == "progress" for kind, _ in running)
    assert ("prop", "custom_model") in running and ("prop", "width") in running


# --------------------------------------------------------------------------- the build
def _checkout_copy(dest: Path) -> Path:
    """This repository's files as a fresh clone has them (tracked or not ignored)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        src = REPO_ROOT / name
        if src.is_file():  # (a deleted, not yet committed file is still listed)
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _build(
    python: str, root: Path, out: Path, *extra: str, env=None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, str(root / "scripts" / "build_extension.py"), "--output-dir", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def _addon_sources(root: Path) -> set[str]:
    return {f"spherediff_blender/{p.name}" for p in (root / "spherediff_blender").glob("*.py")}


def _plant_strays(root: Path) -> None:
    """What a user's folder holds after make_world.sh and some work in it."""
    for name, data in {
        "out/forest/spherediff/pano.png": b"\x89PNG not really",
        "out/forest/world.blend": b"BLENDER-v500",
        "scene.blend": b"BLENDER-v500",
        "scene.blend1": b"BLENDER-v500",
        "stray.py": b"print('not part of the add-on')\n",
        "notes.txt": b"todo\n",
        "LICENSE.bak": b"old\n",
        "spherediff_blender/notes.txt": b"todo\n",
        "spherediff_blender/sky.blend": b"BLENDER-v500",
        "spherediff_blender/__pycache__/operators.cpython-311.pyc": b"\0",
        "spherediff_blender/sub/extra.py": b"x = 1\n",
        "spherediff_blender/.hidden.py": b"x = 1\n",
        "wheels/old_thing-1.0-py3-none-any.whl": b"PK not really",
        ".env": b"SECRET=1\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "tests" / "blender" / "scratch.json").write_text("{}")


@pytest.fixture(scope="module")
def blender_ext():
    tools = blender_ext_tools()
    if not tools:
        pytest.fail("no Blender extension tool (blender_ext.py) found in the bpy installations")
    return tools[0]


def test_package_is_the_allow_list_only(tmp_path, blender_ext):
    """Outputs, .blend files, stray scripts, tests, caches in the folder: none is packed.

    The copy finds Blender's tool the way a checkout after make_world.sh does: through
    a .venv-bpy* folder beside the scripts.
    """
    root = _checkout_copy(tmp_path / "clone")
    _plant_strays(root)
    bpy_venv = blender_ext.parents[9]  # <venv>/lib/pythonX/site-packages/bpy/<v>/scripts/...
    assert (bpy_venv / "pyvenv.cfg").is_file(), bpy_venv
    (root / ".venv-bpy-found").symlink_to(bpy_venv, target_is_directory=True)
    proc = _build(sys.executable, root, tmp_path / "dist")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (package,) = (tmp_path / "dist").glob("spherediff-*.zip")
    manifest = tomllib.loads((root / "blender_manifest.toml").read_text())
    wheel = manifest["wheels"][0].removeprefix("./")
    names = {n for n in zipfile.ZipFile(package).namelist() if not n.endswith("/")}
    expected = {"blender_manifest.toml", "__init__.py", wheel} | _addon_sources(root)
    expected -= {"spherediff_blender/.hidden.py"}
    assert names == expected, {"extra": names - expected, "missing": expected - names}


def test_build_refuses_a_package_beyond_the_allow_list(tmp_path, blender_ext):
    """The build script checks the .zip itself: a manifest (or a Blender) that lets more
    in fails the build, and no .zip is left."""
    root = _checkout_copy(tmp_path / "clone")
    _plant_strays(root)
    manifest = root / "blender_manifest.toml"
    text = manifest.read_text()
    head = text[: text.index("[build]")]
    manifest.write_text(head + '[build]\npaths_exclude_pattern = ["__pycache__/", ".*"]\n')
    proc = _build(sys.executable, root, tmp_path / "dist", "--blender-ext", str(blender_ext))
    assert proc.returncode != 0, proc.stdout[-3000:]
    err = proc.stderr
    assert "allow-list" in err and "out/forest/world.blend" in err and "stray.py" in err, err
    assert not list((tmp_path / "dist").glob("*.zip"))


def test_build_with_old_setuptools(tmp_path, blender_ext):
    """A stock Python 3.11 venv (setuptools 65, no wheel package) builds the extension:
    pyproject.toml asks for setuptools >= 68, so the wheel is built in isolation instead
    of failing with "invalid command 'bdist_wheel'"."""
    venv = tmp_path / "py311"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "setuptools<66"],
        check=True,
        timeout=300,
        capture_output=True,
    )
    subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "wheel"], timeout=120)
    probe = "import setuptools; print(setuptools.__version__)"
    version = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout
    assert int(version.split(".")[0]) < 66, version
    root = _checkout_copy(tmp_path / "clone")
    proc = _build(python, root, tmp_path / "dist", "--blender-ext", str(blender_ext))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "isolated" in proc.stdout, proc.stdout
    (package,) = (tmp_path / "dist").glob("spherediff-*.zip")
    with zipfile.ZipFile(package) as z:
        assert "__init__.py" in z.namelist()


def test_build_without_blender_tool_says_what_it_needs(tmp_path):
    """No Blender tool anywhere and --no-blender-setup: one clear line, nothing built."""
    root = _checkout_copy(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if k not in ("BLENDER_EXT", "BLENDER")}
    env["PATH"] = str(Path(sys.executable).parent)  # no `blender` on it
    proc = _build(sys.executable, root, tmp_path / "dist", "--no-blender-setup", env=env)
    assert proc.returncode != 0
    assert "blender_ext.py was not found" in proc.stderr and "--blender" in proc.stderr, proc
    assert not (root / "wheels").exists() or not list((root / "wheels").glob("*.whl"))


def _fake_bpy_wheel(folder: Path, blender_ext: Path) -> Path:
    """A stand-in for PyPI's bpy 5.0.1 wheel: just Blender's extension tool, where the
    real module has it (the real one is a 1 GB download)."""
    import base64
    import hashlib

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bpy-5.0.1-py3-none-any.whl"
    files = {
        "bpy/__init__.py": b"",
        "bpy/5.0/scripts/addons_core/bl_pkg/cli/blender_ext.py": blender_ext.read_bytes(),
        "bpy-5.0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: bpy\nVersion: 5.0.1\n",
        "bpy-5.0.1.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{name},sha256={digest.decode()},{len(data)}")
        record.append("bpy-5.0.1.dist-info/RECORD,,")
        z.writestr("bpy-5.0.1.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def test_build_installs_blender_tool_when_none_is_found(tmp_path, blender_ext):
    """A fresh clone with no Blender anywhere: the one command makes .venv-bpy50 with
    bpy 5.0.1 (here a local stand-in wheel, no download) and builds with its tool."""
    wheelhouse = tmp_path / "wheelhouse"
    _fake_bpy_wheel(wheelhouse, blender_ext)
    root = _checkout_copy(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if k not in ("BLENDER_EXT", "BLENDER")}
    env.update(
        PATH=str(Path(sys.executable).parent) + os.pathsep + "/usr/bin" + os.pathsep + "/bin",
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(wheelhouse),
    )
    proc = _build(sys.executable, root, tmp_path / "dist", env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "installing Blender 5.0 as a Python module" in proc.stdout, proc.stdout
    tools = list((root / ".venv-bpy50").glob("lib/python*/site-packages/bpy/5.0/scripts/*"))
    assert tools, "no bpy in .venv-bpy50"
    assert len(list((tmp_path / "dist").glob("spherediff-*.zip"))) == 1


# Preset -> the diffusers pipeline class of its Hub model (the engine's adapter drives it),
# and what that adapter sets once it has loaded the preset's model where that differs from
# its class values (Wan 2.2 TI2V 5B's 16x VAE), for the size check below.
PRESET_PIPELINES = {
    "SANA": "SanaPipeline",
    "SD15": "StableDiffusionPipeline",
    "SDXL": "StableDiffusionXLPipeline",
    "FLUX_SCHNELL": "FluxPipeline",
    "FLUX_DEV": "FluxPipeline",
    "SD35_MEDIUM": "StableDiffusion3Pipeline",
    "SD35_LARGE": "StableDiffusion3Pipeline",
    "LTX": "LTXPipeline",
    "WAN": "WanPipeline",
    "FLUX2_DEV": "Flux2Pipeline",
    "FLUX2_KLEIN_4B": "Flux2KleinPipeline",
    "QWEN_IMAGE": "QwenImagePipeline",
    "ZIMAGE_TURBO": "ZImagePipeline",
    "ZIMAGE": "ZImagePipeline",
    "WAN22_TI2V_5B": "WanPipeline",
    "WAN22_T2V_A14B": "WanPipeline",
    "HUNYUANVIDEO15": "HunyuanVideo15Pipeline",
}
LOADED_SIZES = {
    "WAN22_TI2V_5B": {"native_view_px": 704, "min_view_px": 528, "typical_vae_scale_factor": 16},
}


def _preset_adapter(preset: str):
    from spherediff_core import adapters

    adapter = adapters.adapter_for_class(PRESET_PIPELINES[preset])
    assert adapter is not None, f"{preset}: no engine adapter for {PRESET_PIPELINES[preset]}"
    if preset in LOADED_SIZES:
        adapter = type(f"{adapter.__name__}_{preset}", (adapter,), LOADED_SIZES[preset])
    return adapter


def test_size_notes_agree_with_the_engine(registered):
    """The panel's size note (computed without torch) says what the engine's size_advice
    says, for every preset model and size; the default size is Auto (the model's own)."""
    from spherediff_core.options import GenerationOptions
    from spherediff_core.pipeline import size_advice

    assert registered["size_default"] == "AUTO"
    assert registered["auto_note"] == ""  # FLUX.1 at its own size (4K): no note
    notes = registered["size_notes"]
    assert set(notes) == {f"{p} {s}" for p in PRESET_PIPELINES for s in ("1K", "2K", "4K", "8K")}
    for key, (view_px, note) in notes.items():
        preset, size = key.split()
        adapter = _preset_adapter(preset)
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
