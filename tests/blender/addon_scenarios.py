"""Scenarios for the SphereDiff extension, run INSIDE a bpy interpreter (never torch here).

    <bpy python> tests/blender/addon_scenarios.py --scenario NAME --zip EXT.zip --out OUT.json
        [--work DIR] [--model TINY_MODEL_DIR] [--wheelhouse DIR]

The caller points ``BLENDER_USER_RESOURCES`` at a fresh temporary folder, so the extension
is installed into a throw-away user repository (``user_default``) with
``bpy.ops.extensions.package_install_files`` and Blender's own wheel handling. Every
scenario writes what it saw to OUT.json (also when it fails: ``"fatal"`` holds the
traceback); the pytest side (test_addon_*.py) makes the assertions.

Scenarios:

register   install, enable, check what registered; disable, check it all went; re-enable
           and disable again.
generate   generations with a tiny model through the worker (SPHEREDIFF_PYTHON): the node
           chain, Cycles renders towards +X and straight up, a re-run that reuses the
           nodes, failures that must leave the World untouched, cancel, a killed worker;
           afterwards no torch in sys.modules, no worker process, no temporary files.
installer  Install Dependencies from a local wheel folder (engine only, --no-deps) into
           the extension's user folder, then Check Worker against that environment.
files      saving the outputs (fake worker, a still and a sequence): the sidecar describes
           the saved files, not the staging folder; with the staging folder on another
           file system and a file-size limit that cuts Blender's copies short, nothing
           half-written is left in the output folder and the World stays as it was.
video      animated worlds: synthetic frame sequences from a fake worker
           (fake_video_worker.py) loaded as an image sequence, Cycles renders of several
           frames with and without loop, Match Scene, the Animated switch and its checks,
           failures and cancel; then (with --model, a tiny video pipeline) a real
           generation and a real cancel through the worker.
hdr        HDR worlds (fake_hdr_worker.py: the project's ground truth as "generations"):
           the EXR World with its sun masked, the SphereDiff Sun lamp created, turned
           and scaled live, updated on regenerate, hidden without a sun or HDR; failure
           and cancel leave World and lamp as they were; Cycles renders of a sphere's
           shadow under the lifted World + lamp, the ground truth and the 8-bit World;
           Lift to HDR on the World's current image with the real engine.
extend     Extend Image (fake_plate_worker.py: the World a known image implies): Match
           Camera for a level, a tilted and a rolled camera, with a Cycles render through
           each; what Match Camera refuses; an image data-block without a file.
arguments  a script's values: out of range, NUL characters, contradicting size and
           width; refused by name before any worker starts (recording_worker.py sees
           the jobs that get through), never clamped or cut.
history    the scene's generations (fake_history_worker.py: real PNG and EXR files): Restore
           gives back the exact World of an earlier generation (a missing file leaves it
           untouched), the history survives saving, moving and reopening the .blend,
           Reuse Seed (a seed beyond 32 bits), Variations, drafts and Make Final (the jobs
           the worker received).
gpus       the GPUs preferences: the worker's argv and CUDA_VISIBLE_DEVICES for one GPU
           (as before), several (torchrun) and listed GPU ids, from the pure function and
           through the operator (recording_worker.py records how it was started); bad
           settings refused by name before any worker starts.
warm       the warm worker (fake_serve_worker.py): two jobs through one process, live
           previews shown in the World, cancel and failure putting the World back
           exactly, a killed and a crashed worker restarted with a message, a cancel it
           ignores, several seeds, the idle limit, Keep Model Loaded off, Unload Model,
           disabling the add-on; then Blender exits with the worker warm.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import bpy
import mathutils

HERE = Path(__file__).resolve().parent
PKG = "bl_ext.user_default.spherediff"
SUB = PKG + ".spherediff_blender"


def parse_args() -> argparse.Namespace:
    argv = sys.argv[1:]
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    p = argparse.ArgumentParser()
    p.add_argument(
        "--scenario",
        required=True,
        choices=[
            "register",
            "generate",
            "installer",
            "video",
            "arguments",
            "files",
            "hdr",
            "extend",
            "gpus",
            "history",
            "warm",
        ],
    )
    p.add_argument("--zip", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--work", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--wheelhouse", default=None)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- helpers
def install_and_enable(zip_path: str) -> dict:
    t0 = time.monotonic()
    result = bpy.ops.extensions.package_install_files(
        filepath=zip_path, repo="user_default", enable_on_install=True
    )
    enabled = [a.module for a in bpy.context.preferences.addons]
    info = {
        "install_result": sorted(result),
        "enabled": PKG in enabled,
        "install_s": time.monotonic() - t0,
        "extension_dir": bpy.utils.user_resource("EXTENSIONS", path="user_default/spherediff"),
    }
    if PKG not in enabled:
        raise RuntimeError(f"extension not enabled after install: {enabled}")
    return info


def registered() -> dict:
    ops = bpy.ops.spherediff
    return {
        "panel": hasattr(bpy.types, "WORLD_PT_spherediff"),
        "subpanels": sorted(n for n in dir(bpy.types) if n.startswith("WORLD_PT_spherediff_")),
        "op_generate": hasattr(bpy.types, "SPHEREDIFF_OT_generate"),
        "ops": sorted(n for n in dir(ops) if not n.startswith("_")),
        "scene_prop": hasattr(bpy.types.Scene, "spherediff"),
        "prefs": (
            bpy.context.preferences.addons.get(PKG) is not None
            and bpy.context.preferences.addons[PKG].preferences is not None
        ),
        "statusbar_draw": any(
            getattr(f, "__name__", "") == "draw_status_bar"
            for f in getattr(bpy.types.STATUSBAR_HT_header, "_dyn_ui_initialize", lambda: [])()
        ),
        "load_pre_handlers": [getattr(h, "__name__", "") for h in bpy.app.handlers.load_pre],
    }


def heavy_modules() -> list[str]:
    return sorted(
        m for m in ("torch", "diffusers", "transformers", "numpy.torch") if m in sys.modules
    )


def world_snapshot(scene) -> dict | None:
    """Everything the tests compare before and after a failed generation."""
    world = scene.world
    if world is None:
        return None
    tree = world.node_tree
    snap = {"world": world.name, "users": world.users, "nodes": [], "links": []}
    if tree is None:
        return snap
    for n in sorted(tree.nodes, key=lambda n: n.name):
        entry = {
            "name": n.name,
            "type": n.bl_idname,
            "tag": n.get("spherediff"),
            "location": [round(v, 3) for v in n.location],
            "inputs": {},
        }
        for s in n.inputs:
            if hasattr(s, "default_value"):
                v = s.default_value
                try:
                    v = [round(float(x), 6) for x in v]
                except TypeError:
                    v = round(float(v), 6) if isinstance(v, float) else v
                entry["inputs"][s.identifier] = v
        if n.bl_idname == "ShaderNodeTexEnvironment":
            entry["image"] = n.image.name if n.image else None
            entry["image_path"] = n.image.filepath if n.image else None
        snap["nodes"].append(entry)
    for link in tree.links:
        snap["links"].append(
            [
                link.from_node.name,
                link.from_socket.identifier,
                link.to_node.name,
                link.to_socket.identifier,
            ]
        )
    snap["links"].sort()
    snap["images"] = sorted(i.name for i in bpy.data.images)
    return snap


def staging_leftovers() -> list[str]:
    tmp = Path(tempfile.gettempdir())
    return sorted(p.name for p in tmp.glob("spherediff-*"))


def child_processes() -> list[dict]:
    """Processes whose parent is this one, or in a process group we started (Linux /proc)."""
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2 :].split()
        state, ppid, pgrp = rest[0], int(rest[1]), int(rest[2])
        if ppid == me:
            out.append({"pid": int(entry.name), "state": state, "pgrp": pgrp})
    return out


def stray_children() -> list[dict]:
    """child_processes() but the add-on's warm worker, kept on purpose between jobs
    (issue 15; stopped when the add-on is disabled)."""
    wc = sys.modules.get(SUB + ".worker_client")
    warm = wc.WARM.pid if wc is not None else None
    return [c for c in child_processes() if c["pid"] != warm]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); check its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rfind(")") + 2] != "Z"
    except OSError:
        return False


def call_generate(**kwargs) -> dict:
    """Run the operator; returns its result or the error it raised, and the time."""
    t0 = time.monotonic()
    try:
        result = bpy.ops.spherediff.generate(**kwargs)
        out = {"result": sorted(result), "error": None}
    except RuntimeError as exc:
        out = {"result": None, "error": str(exc)}
    out["seconds"] = time.monotonic() - t0
    out["last_error"] = bpy.context.scene.spherediff.last_error
    return out


class Watcher(threading.Thread):
    """Waits until the running generation reaches the denoise phase, then acts on it."""

    def __init__(self, operators_module, action: str):
        super().__init__(daemon=True)
        self.ops = operators_module
        self.action = action
        self.info: dict = {}

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            gen = self.ops.active_generation()
            if gen is not None and gen.run.phase == "denoise":
                self.info["pid"] = gen.run.pid
                self.info["phase"] = gen.run.phase
                self.info["at"] = time.monotonic()
                self.info["generation"] = gen
                if self.action == "kill":
                    os.kill(gen.run.pid, signal.SIGKILL)
                else:
                    self.ops.request_cancel()
                return
            time.sleep(0.01)
        self.info["timeout"] = True


# --------------------------------------------------------------------------- UI drawing
class UIRecorder:
    """A stand-in for UILayout (background Blender draws no UI): records what a panel
    draws and checks every property and operator it names exists."""

    def __init__(self, log: list, problems: list):
        self._log, self._problems = log, problems

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)

    def _child(self, *args, **kwargs):
        return UIRecorder(self._log, self._problems)

    row = column = box = split = grid_flow = column_flow = _child

    def prop(self, data, prop, **kwargs):
        data = getattr(data, "_target", data)
        if prop not in data.bl_rna.properties:
            self._problems.append(f"prop {type(data).__name__}.{prop} does not exist")
        self._log.append(("prop", prop))

    def operator(self, idname, **kwargs):
        cat, _, name = idname.partition(".")
        op = getattr(getattr(bpy.ops, cat), name)
        try:
            rna = op.get_rna_type()
        except KeyError:
            self._problems.append(f"operator {idname} does not exist")
            rna = None
        self._log.append(("operator", idname))
        return OperatorProps(rna, idname, self._problems)

    def prop_search(self, data, prop, search_data, search_prop, **kwargs):
        self.prop(data, prop)
        if search_prop not in search_data.bl_rna.properties:
            self._problems.append(f"prop_search over {search_prop} does not exist")

    def label(self, text="", **kwargs):
        self._log.append(("label", text))

    def template_list(self, listtype, list_id, data, prop, active_data, active_prop, **kw):
        if getattr(bpy.types, listtype, None) is None:
            self._problems.append(f"UIList {listtype} does not exist")
        for target, name in ((data, prop), (active_data, active_prop)):
            if name not in target.bl_rna.properties:
                self._problems.append(f"template_list: {name} does not exist")
        self._log.append(("list", prop))

    def template_icon(self, icon_value=0, scale=1.0):
        self._log.append(("icon", icon_value))

    def icon(self, data):
        return 1

    def progress(self, factor=0.0, type="BAR", text=""):
        assert 0.0 <= factor <= 1.0, factor
        self._log.append(("progress", text))

    def separator(self, **kwargs):
        pass


class OperatorProps:
    def __init__(self, rna, idname, problems):
        object.__setattr__(self, "_rna", rna)
        object.__setattr__(self, "_idname", idname)
        object.__setattr__(self, "_problems", problems)

    def __setattr__(self, name, value):
        if self._rna is not None and name not in self._rna.properties:
            self._problems.append(f"operator {self._idname} has no property {name}")


class PanelProxy:
    """``self`` for a draw function: a layout, everything else from the real object."""

    def __init__(self, target, layout):
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "layout", layout)

    def __getattr__(self, name):
        return getattr(self._target, name)


def draw_everything(sub) -> dict:
    """Draw every panel, the preferences and the status bar, idle and while running."""
    context = bpy.context
    results = {}
    panels = [getattr(bpy.types, n) for n in dir(bpy.types) if n.startswith("WORLD_PT_sphere")]
    prefs = context.preferences.addons[PKG].preferences

    def draw_all(label):
        log, problems = [], []
        for cls in panels:
            if cls.poll(context):
                if hasattr(cls, "draw_header"):
                    cls.draw_header(PanelProxy(None, UIRecorder(log, problems)), context)
                cls.draw(PanelProxy(None, UIRecorder(log, problems)), context)
        type(prefs).draw(PanelProxy(prefs, UIRecorder(log, problems)), context)
        sub.panels.draw_status_bar(PanelProxy(None, UIRecorder(log, problems)), context)
        results[label] = {"log": log, "problems": problems}

    draw_all("idle")
    ops = sub.operators
    run = sub.worker_client.GenerationRun("python", {"prompt": "x"})
    ops._ACTIVE = ops.Generation(run, Path(tempfile.gettempdir()), "Scene", {}, {})
    sub.installer.STATE.running, sub.installer.STATE.total = True, 3
    sub.worker_client.LAST_CHECK.done = True
    sub.worker_client.LAST_CHECK.lines = ["SphereDiff engine 0.1.0"]
    sub.worker_client.LAST_CHECK.problems = ["Missing in the worker Python: torch"]
    scene = context.scene
    scene.spherediff.last_image = "//spherediff/x.png"
    scene.spherediff.last_error = "a long error message " * 8
    scene.spherediff.model_preset = "FLUX_DEV"
    scene.spherediff.size = "1K"
    draw_all("size note")
    scene.spherediff.model_preset = "CUSTOM"
    scene.spherediff.size = "CUSTOM"
    scene.spherediff.video = True  # the Animated panel's own rows
    try:
        draw_all("running")
    finally:
        ops._ACTIVE = None
        sub.installer.STATE.running = False
    return results


# --------------------------------------------------------------------------- scenarios
def scenario_register(args, out: dict) -> None:
    out["before"] = registered()
    out["install"] = install_and_enable(args.zip)
    out["enabled"] = registered()
    import spherediff_core

    out["engine_file"] = spherediff_core.__file__
    from spherediff_core import options  # the add-on's validation: torch-free

    out["engine_default_model"] = options.DEFAULT_MODEL
    sub = sys.modules[SUB]
    out["addon_package"] = sub.preferences.ADDON_PACKAGE
    out["user_folder"] = str(sub.preferences.user_folder())
    out["heavy_modules"] = heavy_modules()
    # The size field's note and the view sizes the add-on computes, per preset and size
    # (compared with the engine's size_advice by the test).
    props = sub.properties
    out["size_notes"] = {
        f"{preset} {size}": [
            props.view_px_for(props.SIZE_WIDTHS[size], *props.PRESET_SIZES[preset][3:]),
            props.size_note(preset, "", size, 0),
        ]
        for preset in props.PRESET_SIZES
        for size in props.SIZE_WIDTHS
    }
    out["size_default"] = bpy.context.scene.spherediff.size
    out["auto_note"] = props.size_note("DEFAULT", props.MODEL_IDS["FLUX_DEV"], "AUTO", 0)
    # Drawing the panel needs a window; check at least that its poll and the ops' polls run.
    out["ui"] = draw_everything(sub)
    out["generate_options"] = sorted(bpy.types.SPHEREDIFF_OT_generate.bl_options)
    out["generate_poll"] = bpy.ops.spherediff.generate.poll()
    out["cancel_poll"] = bpy.ops.spherediff.cancel.poll()
    bpy.ops.preferences.addon_disable(module=PKG)
    out["disabled"] = registered()
    bpy.ops.preferences.addon_enable(module=PKG)
    out["reenabled"] = registered()
    bpy.ops.preferences.addon_disable(module=PKG)
    out["disabled_again"] = registered()
    out["heavy_modules_end"] = heavy_modules()


def scenario_generate(args, out: dict) -> None:
    work = Path(args.work)
    model = args.model
    # An empty file (no World: the first generation must create one), then the extension.
    bpy.ops.wm.read_factory_settings(use_empty=True)
    out["install"] = install_and_enable(args.zip)
    ops_mod = sys.modules[SUB + ".operators"]
    world_mod = sys.modules[SUB + ".world"]
    scene = bpy.context.scene
    out["world_before_first"] = scene.world.name if scene.world else None

    # The unsaved-file folder rule, then save so that // is work/.
    out["unsaved_output_folder"] = str(world_mod.output_folder("//spherediff/"))
    blend = work / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    out["saved_output_folder"] = str(world_mod.output_folder("//spherediff/"))

    s = scene.spherediff
    s.prompt = "a misty pine forest at dawn"
    s.model_preset = "CUSTOM"
    s.custom_model = model
    s.size = "CUSTOM"
    s.width = 256
    s.auto_steps = False
    s.steps = 2
    s.random_seed = False
    s.seed = 7
    s.hdr = False  # the renders below compare with the PNG; HDR has its own step (3b)

    worker_pids = []
    wc = sys.modules[SUB + ".worker_client"]
    runs: list[dict] = []  # every job's worker run (issue 15: the warm worker)

    def after_finish(calls, result, context, gen):
        run = gen.run
        runs.append(
            {
                "pid": run.pid,
                "ok": result[0],
                "loaded": getattr(run, "loaded", None),
                "phases": list(run.phases),
                "first_denoise_s": run.first_denoise_s,
                "elapsed_s": run.elapsed_s,
                "served": getattr(run, "served", None) is not None,
                "previews_seen": run.previews_seen,
            }
        )

    Spy(ops_mod, "finish_generation", after_finish)
    shown: list[dict] = []  # live previews shown in the World (the second generation's)
    Spy(
        ops_mod,
        "show_latest_preview",
        lambda calls, ok, gen: ok and shown.append(preview_state(scene, world_mod)),
    )

    # 1. First generation: creates the World and the node chain.
    first = call_generate()
    first["run"] = runs[-1] if runs else None
    out["first"] = first
    out["first_snapshot"] = world_snapshot(scene)
    env = world_mod.find_node(scene.world.node_tree, "environment")
    img = env.image
    out["first_image"] = {
        "name": img.name,
        "filepath": img.filepath,
        "abspath": bpy.path.abspath(img.filepath),
        "size": list(img.size),
        "colorspace": img.colorspace_settings.name,
        "packed": img.packed_file is not None,
        "sidecar_exists": Path(bpy.path.abspath(img.filepath)).with_suffix(".json").is_file(),
        "sidecar": saved_result(work, img.filepath)["sidecar_text"],
        "projection": env.projection,
        "custom": {k: img[k] for k in img.keys() if k.startswith("spherediff")},  # noqa: SIM118
    }
    out["first_settings"] = {
        "last_image": s.last_image,
        "last_seed": s.last_seed,
        "last_seconds": s.last_seconds,
        "last_model": s.last_model,
        "last_error": s.last_error,
    }
    out["active_output"] = [
        n.name
        for n in scene.world.node_tree.nodes
        if n.bl_idname == "ShaderNodeOutputWorld" and n.is_active_output
    ]
    out["after_first"] = {
        "staging": staging_leftovers(),
        "children": child_processes(),
        "heavy_modules": heavy_modules(),
        "warm_pid": wc.WARM.pid,
    }

    # 2. Cycles renders of the world towards +X and straight up.
    out["renders"] = render_views(scene, work)

    # 3. Re-run: a user node, a new seed, rotation and strength, packing.
    tree = scene.world.node_tree
    user = tree.nodes.new("ShaderNodeRGB")
    user.name = "User RGB"
    user.location = (-600, 400)
    user_mix = tree.nodes.new("ShaderNodeValue")
    user_mix.name = "User Value"
    nodes_before = {n.name: n.as_pointer() for n in tree.nodes}
    second = call_generate(seed=8, rotation_z=0.5, strength=2.0, pack_image=True, preview=True)
    second["run"] = runs[-1] if runs else None
    second["previews_shown"] = shown[:3]
    out["second"] = second
    out["second_snapshot"] = world_snapshot(scene)
    nodes_after = {n.name: n.as_pointer() for n in tree.nodes}
    out["second_same_nodes"] = {
        name: nodes_before.get(name) == ptr for name, ptr in nodes_after.items()
    }
    env = world_mod.find_node(tree, "environment")
    out["second_image"] = {
        "name": env.image.name,
        "filepath": env.image.filepath,
        "packed": env.image.packed_file is not None,
        "old_image_still_there": out["first_image"]["name"] in bpy.data.images,
        "files": sorted(p.name for p in (work / "spherediff").iterdir()),
    }

    # 3b. HDR Lighting with the real engine: the EXR beside the PNG is the World.
    out["hdr"] = call_generate(seed=9, hdr=True, pack_image=False)
    env = world_mod.find_node(tree, "environment")
    out["hdr_image"] = {
        "filepath": env.image.filepath,
        "abspath": bpy.path.abspath(env.image.filepath),
        "colorspace": env.image.colorspace_settings.name,
        "is_float": env.image.is_float,
        "size": list(env.image.size),
        "files": sorted(p.name for p in (work / "spherediff").iterdir()),
        "last_hdr": s.last_hdr,
    }

    # 4. Failures: each must leave the World untouched and report a clear error.
    failures = {}

    def failure(name, env_python=None, **kwargs):
        before = world_snapshot(scene)
        saved = os.environ.get("SPHEREDIFF_PYTHON")
        if env_python is not None:
            os.environ["SPHEREDIFF_PYTHON"] = env_python
        try:
            res = call_generate(**kwargs)
        finally:
            if saved is None:
                os.environ.pop("SPHEREDIFF_PYTHON", None)
            else:
                os.environ["SPHEREDIFF_PYTHON"] = saved
        res["unchanged"] = world_snapshot(scene) == before
        if not res["unchanged"]:
            res["before"], res["after"] = before, world_snapshot(scene)
        res["staging"] = staging_leftovers()
        res["children"] = child_processes()
        res["warm_pid"] = wc.WARM.pid  # the warm worker (between jobs) may be a child
        failures[name] = res
        return res

    failure("missing_python", env_python=str(work / "no-such-python"))
    failure("python_without_engine", env_python=sys.executable)
    failure("empty_prompt", prompt="")
    failure("odd_width", width=301)
    failure("missing_model_folder", custom_model=str(work / "no-such-model"))
    failure("model_not_cached", custom_model="nobody/not-in-the-cache")
    odd_model = work / "not-a-pipeline"
    odd_model.mkdir(exist_ok=True)
    (odd_model / "model_index.json").write_text(json.dumps({"_class_name": "NotAPipeline"}))
    failure("unsupported_model", custom_model=str(odd_model))

    slow = {"steps": 400, "seed": 9}
    watcher = Watcher(ops_mod, "kill")
    watcher.start()
    res = failure("killed", **slow)
    watcher.join(5)
    gen = watcher.info.pop("generation", None)
    res["watcher"] = dict(watcher.info)
    if gen is not None:
        worker_pids.append(gen.run.pid)

    watcher = Watcher(ops_mod, "cancel")
    watcher.start()
    res = failure("cancel", **slow)
    watcher.join(5)
    gen = watcher.info.pop("generation", None)
    res["watcher"] = dict(watcher.info)
    if gen is not None:
        worker_pids.append(gen.run.pid)
        res["stop_s"] = (gen.run.finished_at or 0) - watcher.info["at"]
        res["worker_returncode"] = gen.run.process.returncode()
        res["worker_serving_on"] = gen.run.pid == wc.WARM.pid and pid_alive(gen.run.pid)
        res["cancel_escalation"] = {
            "terminated": gen.run.process.terminated,
            "killed": gen.run.process.killed,
        }
    out["failures"] = failures

    # 5. Afterwards: nothing heavy imported; once the add-on is disabled (which stops the
    # warm worker), nothing running; nothing left behind.
    worker_pids += [run["pid"] for run in runs if run["pid"]]
    warm_pid = wc.WARM.pid
    bpy.ops.preferences.addon_disable(module=PKG)
    out["end"] = {
        "heavy_modules": heavy_modules(),
        "children": child_processes(),
        "worker_pids_alive": [pid for pid in worker_pids if pid_alive(pid)],
        "staging": staging_leftovers(),
        "active_generation": ops_mod.active_generation() is not None,
        "tempdir": tempfile.gettempdir(),
        "warm_pid_before_disable": warm_pid,
    }


def render_views(scene, work: Path) -> dict:
    """Cycles renders (float EXR) through cameras looking at +X and straight up."""
    sys.path.insert(0, str(HERE))
    import render_erp_convention as rec  # the ERP convention test's own render set-up

    res, fov = 8, 20.0
    rec.configure_render(
        scene,
        argparse.Namespace(samples=4, filter_width=0.01, resolution=res, no_persistent_data=False),
    )
    cam = rec.make_camera(scene, fov)
    views = {}
    for name, fwd in (("+X", (1.0, 0.0, 0.0)), ("+Z", (0.0, 0.0, 1.0))):
        view = {"name": name, "forward": list(fwd), "up": list(rec.default_up(fwd))}
        rgb = rec.render_view(scene, cam, view, str(work / f"render_{name[1]}.exr"))
        views[name] = {"up": view["up"], "pixels": rgb.astype(float).round(6).tolist()}
    bpy.data.objects.remove(cam)
    return {"resolution": res, "fov_deg": fov, "views": views}


# --------------------------------------------------------------------------- video
def make_fake_python(work: Path, python: str, worker: str = "fake_video_worker.py") -> str:
    """An executable that runs ``worker`` (a script of this folder) whatever arguments it
    gets."""
    path = work / f"{Path(worker).stem}-python"
    worker = HERE / worker
    path.write_text(f'#!/bin/sh\nexec "{python}" "{worker}" "$@"\n', encoding="utf-8")
    path.chmod(0o755)
    return str(path)


def output_files(work: Path) -> list[str]:
    folder = work / "spherediff"
    if not folder.is_dir():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def scene_state(scene, world_mod, work: Path) -> dict:
    """The World, the sequence's image user, the scene's frame range and rate, the files."""
    state = {
        "world": world_snapshot(scene),
        "frame_start": scene.frame_start,
        "frame_end": scene.frame_end,
        "fps": scene.render.fps,
        "fps_base": round(scene.render.fps_base, 6),
        "files": output_files(work),
    }
    env = None
    if scene.world is not None and scene.world.node_tree is not None:
        env = world_mod.find_node(scene.world.node_tree, "environment")
    if env is not None:
        user = env.image_user
        state["image_user"] = {
            "frame_duration": user.frame_duration,
            "frame_start": user.frame_start,
            "frame_offset": user.frame_offset,
            "use_cyclic": user.use_cyclic,
            "use_auto_refresh": user.use_auto_refresh,
        }
        img = env.image
        if img is not None:
            state["image"] = {
                "name": img.name,
                "source": img.source,
                "filepath": img.filepath,
                "abspath": bpy.path.abspath(img.filepath),
                "packed": img.packed_file is not None,
                "colorspace": img.colorspace_settings.name,
                "custom": {k: img[k] for k in img.keys() if k.startswith("spherediff")},  # noqa: SIM118
            }
    return state


def render_frames(scene, work: Path, frames, tag: str, res: int = 2, samples: int = 1) -> dict:
    """Cycles renders (float EXR) towards +X at the given scene frames."""
    sys.path.insert(0, str(HERE))
    import render_erp_convention as rec

    rec.configure_render(
        scene,
        argparse.Namespace(
            samples=samples, filter_width=0.01, resolution=res, no_persistent_data=False
        ),
    )
    cam = rec.make_camera(scene, 20.0)
    view = {"forward": (1.0, 0.0, 0.0), "up": list(rec.default_up((1.0, 0.0, 0.0)))}
    out = {}
    current = scene.frame_current
    for frame in frames:
        scene.frame_set(frame)
        rgb = rec.render_view(scene, cam, view, str(work / f"render_{tag}_{frame}.exr"))
        out[str(frame)] = rgb.astype(float).round(6).tolist()
    scene.frame_set(current)
    bpy.data.objects.remove(cam)
    return {"resolution": res, "fov_deg": 20.0, "frames": out}


class FakeMode:
    """FAKE_VIDEO_WORKER_MODE for the calls inside the block."""

    def __init__(self, mode: str):
        self.mode = mode

    def __enter__(self):
        os.environ["FAKE_VIDEO_WORKER_MODE"] = self.mode

    def __exit__(self, *exc):
        os.environ.pop("FAKE_VIDEO_WORKER_MODE", None)


def draw_panels(context) -> dict:
    """Draw the World panels (recording layout): what they show and any bad names."""
    log, problems = [], []
    for name in dir(bpy.types):
        if name.startswith("WORLD_PT_spherediff"):
            cls = getattr(bpy.types, name)
            if hasattr(cls, "draw_header"):
                cls.draw_header(PanelProxy(None, UIRecorder(log, problems)), context)
            cls.draw(PanelProxy(None, UIRecorder(log, problems)), context)
    return {"log": log, "problems": problems}


def scenario_video(args, out: dict) -> None:
    work = Path(args.work)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    out["install"] = install_and_enable(args.zip)
    ops_mod = sys.modules[SUB + ".operators"]
    world_mod = sys.modules[SUB + ".world"]
    scene = bpy.context.scene
    bpy.ops.wm.save_as_mainfile(filepath=str(work / "scene.blend"))
    real_python = os.environ["SPHEREDIFF_PYTHON"]
    fake_python = make_fake_python(work, real_python)
    os.environ["SPHEREDIFF_PYTHON"] = fake_python
    worker_pids: list[int] = []

    # A scene that does not start at frame 1 and runs at 30 / 1.001 fps.
    scene.frame_start, scene.frame_end = 11, 250
    scene.render.fps, scene.render.fps_base = 30, 1.001
    s = scene.spherediff
    s.prompt = "a stormy sky over the sea"
    s.size = "CUSTOM"
    s.width = 64

    # 1. The Animated switch swaps image and video presets; the checks say why not.
    toggles = []
    s.model_preset = "SDXL"
    for video in (True, False, True):
        s.video = video
        toggles.append([video, s.model_preset])
    s.video = False
    s.model_preset = "LTX"  # a video model for a still: the panel and the button say why
    fake_context = argparse.Namespace(
        area=argparse.Namespace(type="PROPERTIES"),
        scene=scene,
        preferences=bpy.context.preferences,
    )
    checks = {
        "toggles": toggles,
        "video_model_for_still": ops_mod.generate_poll_problem(fake_context),
        "ui_video_model_for_still": draw_panels(bpy.context),
        "background_poll": bpy.ops.spherediff.generate.poll(),  # scripts are not blocked
    }
    s.video = True
    s.model_preset = "SANA"
    checks["image_model_for_video"] = ops_mod.generate_poll_problem(fake_context)
    s.model_preset = "LTX"
    s.frames = 50
    checks["bad_frames"] = ops_mod.generate_poll_problem(fake_context)
    checks["ui_bad_frames"] = draw_panels(bpy.context)
    s.frames = 49
    checks["good_frames"] = ops_mod.generate_poll_problem(fake_context)
    s.pack_image = True
    checks["ui_fine"] = draw_panels(bpy.context)
    s.pack_image = False
    s.video = False
    s.model_preset = "DEFAULT"
    checks["scene_video_after"] = [s.video, s.model_preset]
    out["checks"] = checks

    # 2. A synthetic sequence (5 frames, 12 fps), loop on, scene range kept.
    before = scene_state(scene, world_mod, work)
    first = call_generate(
        video=True, model_preset="WAN", frames=5, fps=12, seed=3, loop=True, match_scene=False
    )
    out["first"] = first
    out["first_before"] = before
    out["first_state"] = scene_state(scene, world_mod, work)
    out["first_settings"] = {
        "last_image": s.last_image,
        "last_frames": s.last_frames,
        "last_fps": s.last_fps,
        "last_seed": s.last_seed,
        "last_error": s.last_error,
        "video": s.video,
    }
    out["ui_after_first"] = draw_panels(bpy.context)
    out["first_renders"] = render_frames(scene, work, (11, 13, 15, 16), "first")

    # 3. Re-run: loop off, Match Scene, the model's own fps (auto): the same nodes.
    tree = scene.world.node_tree
    nodes_before = {n.name: n.as_pointer() for n in tree.nodes}
    second = call_generate(
        video=True, model_preset="WAN", frames=5, seed=4, loop=False, match_scene=True
    )
    out["second"] = second
    out["second_state"] = scene_state(scene, world_mod, work)
    nodes_after = {n.name: n.as_pointer() for n in tree.nodes}
    out["second_same_nodes"] = nodes_before == nodes_after
    out["first_image_still_there"] = out["first_state"]["image"]["name"] in bpy.data.images
    out["second_renders"] = render_frames(scene, work, (11, 15, 16), "second")
    # Loop switched on in the panel plays it again (live update of the node).
    s.loop = True
    out["live_loop"] = scene_state(scene, world_mod, work)["image_user"]["use_cyclic"]
    s.loop = False
    out["live_loop_off"] = scene_state(scene, world_mod, work)["image_user"]["use_cyclic"]

    # 4. Failures: the World, the scene's range and rate and the files stay as they were.
    failures = {}

    def failure(name, mode="ok", watch=None, **kwargs):
        before = scene_state(scene, world_mod, work)
        watcher = None
        if watch is not None:
            watcher = Watcher(ops_mod, watch)
            watcher.start()
        with FakeMode(mode):
            res = call_generate(**kwargs)
        after = scene_state(scene, world_mod, work)
        res["unchanged"] = after == before
        if not res["unchanged"]:
            res["before"], res["after"] = before, after
        res["staging"] = staging_leftovers()
        res["children"] = stray_children()
        if watcher is not None:
            watcher.join(5)
            gen = watcher.info.pop("generation", None)
            res["watcher"] = dict(watcher.info)
            if gen is not None:
                worker_pids.append(gen.run.pid)
                res["stop_s"] = (gen.run.finished_at or 0) - watcher.info["at"]
                res["worker_returncode"] = gen.run.process.returncode()
        failures[name] = res
        return res

    video = {"video": True, "model_preset": "WAN", "frames": 5, "seed": 9, "match_scene": True}
    failure("pack_refused", pack_image=True, **video)
    failure("bad_frames", **{**video, "model_preset": "LTX", "frames": 50})
    failure("loop_too_few", **{**video, "model_preset": "LTX", "frames": 1, "loop": True})
    failure("image_model", **{**video, "model_preset": "SDXL"})
    failure("video_model_for_still", video=False, model_preset="LTX")
    failure("worker_error", mode="fail", **video)
    failure("cancel", mode="slow", watch="cancel", **video)
    out["failures"] = failures

    # 5. Pack Image on in the scene (a still's setting): ignored for a sequence, with a
    # warning, and the generation goes on.
    s.pack_image = True
    third = call_generate(video=True, model_preset="WAN", frames=9, fps=10, seed=5)
    s.pack_image = False
    out["third"] = third
    out["third_state"] = scene_state(scene, world_mod, work)

    # 6. The real thing: a tiny video pipeline through the real worker.
    os.environ["SPHEREDIFF_PYTHON"] = real_python
    if args.model:
        real = {
            "video": True,
            "model_preset": "CUSTOM",
            "custom_model": args.model,
            "width": 128,
            "frames": 9,
            "fps": 8,
            "steps": 2,
            "seed": 1,
            "loop": True,
            "match_scene": True,
        }
        res = call_generate(**real)
        res["state"] = scene_state(scene, world_mod, work)
        # A loop of 9 frames: 8 are made; scene frame 19 plays the first again.
        res["renders"] = render_frames(scene, work, (11, 18, 19), "real", res=8, samples=4)
        res["after"] = {"staging": staging_leftovers(), "children": stray_children()}
        out["real"] = res
        out["real_cancel"] = failure(
            "real_cancel", watch="cancel", **{**real, "steps": 400, "seed": 2}
        )
        # A local video folder's frame rule is known before any worker starts.
        out["custom_bad_frames"] = failure("custom_bad_frames", **{**real, "frames": 6})

    # 7. Afterwards: nothing heavy imported; once the add-on is disabled (which stops the
    # warm worker), nothing running; nothing left behind.
    bpy.ops.preferences.addon_disable(module=PKG)
    out["end"] = {
        "heavy_modules": heavy_modules(),
        "children": child_processes(),
        "worker_pids_alive": [pid for pid in worker_pids if pid_alive(pid)],
        "staging": staging_leftovers(),
        "active_generation": ops_mod.active_generation() is not None,
    }


def use_recording_worker(work: Path, log: Path) -> None:
    """Make the add-on start recording_worker.py (it writes each job down to ``log``) as
    its worker, run by the bpy interpreter's own Python: it needs no engine."""
    worker = work / "recording-python"
    worker.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "recording_worker.py"}" "$@"\n',
        encoding="utf-8",
    )
    worker.chmod(0o755)
    os.environ["SPHEREDIFF_PYTHON"] = str(worker)
    os.environ["RECORDING_WORKER_LOG"] = str(log)


def scenario_arguments(args, out: dict) -> None:
    """A script's values reach the worker as passed, or are refused by name."""
    work = Path(args.work)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    out["install"] = install_and_enable(args.zip)
    props_mod = sys.modules[SUB + ".properties"]
    scene = bpy.context.scene
    bpy.ops.wm.save_as_mainfile(filepath=str(work / "scene.blend"))
    log = work / "jobs.jsonl"
    log.touch()
    use_recording_worker(work, log)
    s = scene.spherediff
    s.prompt = "a stormy sky over the sea"
    s.model_preset = "SD15"  # never loaded: the recording worker only writes the job down
    s.size = "2K"

    def files() -> list[str]:
        skip = {"scene.blend", "jobs.jsonl", "recording-python"}
        return sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.name not in skip)

    calls = {}

    def call(name: str, **kwargs) -> None:
        jobs_before = len(log.read_text(encoding="utf-8").splitlines())
        files_before = files()
        res = call_generate(**kwargs)
        res["jobs"] = [json.loads(x) for x in log.read_text().splitlines()[jobs_before:]]
        res["new_files"] = sorted(set(files()) - set(files_before))
        res["staging"] = staging_leftovers()
        calls[name] = res

    nan = float("nan")
    call("steps_zero", steps=0)
    call("steps_huge", steps=100000)
    call("seed_negative", seed=-1)
    call("width_huge", width=100000)
    call("width_small", width=32)
    call("guidance_negative", guidance=-1.0)
    call("guidance_inf", guidance=float("inf"))
    call("guidance_beyond_float32", guidance=1e39)
    call("strength_negative", strength=-2.0)
    call("rotation_nan", rotation_z=nan)
    call("frames_zero", video=True, model_preset="WAN", frames=0)
    call("fps_huge", video=True, model_preset="WAN", frames=5, fps=1000)
    call("steps_unused_still_refused", steps=0, auto_steps=True)
    call("nul_output_dir", output_dir=str(work / "renders") + "\x00/elsewhere")
    call("nul_prompt", prompt="a quiet lake\x00 at night")
    call("nul_custom_model", custom_model=str(work) + "\x00/model")
    call("size_and_width", size="4K", width=256)
    call("steps_and_auto_steps", steps=30, auto_steps=True)
    call("seed_and_random_seed", seed=5, random_seed=True)
    call("custom_model_and_preset", custom_model=str(work), model_preset="SDXL")
    # What gets through: a custom width (alone or with size='CUSTOM'), a preset size, a
    # value with its switch set the matching way, and the range's ends.
    call("width_alone", width=256, steps=3, seed=11)
    call("custom_size_and_width", size="CUSTOM", width=256)
    call("size_alone", size="1K")
    call("steps_and_auto_off", steps=7, auto_steps=False)
    call("range_ends", width=64, steps=1000, seed=2**31 - 1, guidance=50.0, strength=0.0)
    out["calls"] = calls

    # The panel's settings still clamp (the UI's behaviour), and the operator keeps the
    # slider (soft) limits while taking any number a script passes.
    s.steps = 0
    s.width = 100000
    out["scene_clamped"] = {"steps": s.steps, "width": s.width}
    rna = bpy.ops.spherediff.generate.get_rna_type().properties
    out["operator_limits"] = {
        key: {
            "hard": [rna[key].hard_min, rna[key].hard_max],
            "soft": [rna[key].soft_min, rna[key].soft_max],
        }
        for key in ("width", "steps", "guidance", "seed", "frames", "fps", "strength")
    }
    from spherediff_core import options as engine

    ranges = getattr(props_mod, "VALUE_RANGES", {})  # (none before the add-on had them)
    out["ranges"] = {k: list(v) for k, v in ranges.items()}
    out["engine_ranges"] = {
        "width": [64, engine.MAX_WIDTH],
        "steps": [1, engine.MAX_STEPS],
        "frames": [1, engine.MAX_FRAMES],
        "fps": [1, engine.MAX_FPS],
    }
    out["end"] = {"children": child_processes(), "staging": staging_leftovers()}
    bpy.ops.preferences.addon_disable(module=PKG)


# GPUs preferences -> (processes, CUDA_VISIBLE_DEVICES) or the refusal, for the pure
# function (worker_client.plan_gpus + launch_command) and through the operator.
GPU_CASES = {
    "one": (1, "", "auto"),
    "one_cpu": (1, "", "cpu"),
    "four": (4, "", "auto"),
    "four_cuda": (4, "", "cuda"),
    "ids_0_2": (4, "0,2", "auto"),  # the ids decide: 2 processes
    "ids_spaced": (1, " 3, 1 ", "cuda"),
    "one_id": (1, "1", "auto"),
    "bad_id_letter": (1, "0,x", "auto"),
    "bad_id_empty": (1, "0,,1", "auto"),
    "bad_id_negative": (1, "-1", "auto"),
    "bad_id_cuda_name": (1, "cuda:1", "auto"),
    "duplicate_ids": (1, "0,1,0", "auto"),
    "several_cpu": (4, "", "cpu"),
    "several_mps": (2, "", "mps"),
    "ids_cpu": (1, "0,1", "cpu"),
}
GPU_PURE_ONLY = {  # values the preferences cannot hold (they clamp to 1..64)
    "zero": (0, "", "auto"),
    "too_many": (65, "", "auto"),
    "job_device_cuda_1": (2, "", "cuda:1"),
    "several_on_windows": (2, "", "auto", "win32"),
    "ids_on_macos": (1, "0,1", "cuda", "darwin"),
}


def scenario_gpus(args, out: dict) -> None:
    """GPUs and GPU IDs: the worker's argv and environment, or a refusal by name."""
    work = Path(args.work)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    out["install"] = install_and_enable(args.zip)
    sub = sys.modules[SUB]
    wc = sub.worker_client
    prefs = bpy.context.preferences.addons[PKG].preferences

    # The preferences' own properties: descriptions, defaults, limits.
    base_props = set(bpy.types.AddonPreferences.bl_rna.properties.keys())
    rna = prefs.bl_rna.properties
    out["descriptions"] = {
        p.identifier: p.description for p in rna if p.identifier not in base_props
    }
    count = rna["gpu_count"]
    out["gpu_count_prop"] = {
        "name": count.name,
        "type": count.type,
        "default": count.default,
        "hard": [count.hard_min, count.hard_max],
        "soft": [count.soft_min, count.soft_max],
    }
    out["gpu_ids_prop"] = {
        "name": rna["gpu_ids"].name,
        "type": rna["gpu_ids"].type,
        "default": rna["gpu_ids"].default,
    }
    out["values_default"] = [prefs.gpu_count, prefs.gpu_ids, prefs.device]
    prefs.gpu_count = 0
    low = prefs.gpu_count
    prefs.gpu_count = 1000
    out["gpu_count_clamped"] = [low, prefs.gpu_count]
    prefs.gpu_count = 1

    # The pure function: plan_gpus + launch_command.
    def plan(gpu_count, gpu_ids, device, platform="linux") -> dict:
        try:
            gpus = wc.plan_gpus(gpu_count, gpu_ids, device, platform)
        except wc.LaunchError as exc:
            return {"error": str(exc)}
        argv, env = wc.launch_command("/x/python", ["--parent-pid", "7"], gpus, {"BASE": "1"})
        return {
            "processes": gpus.processes,
            "visible": gpus.visible_devices,
            "argv": argv,
            "env": env,
        }

    out["plans"] = {name: plan(*case) for name, case in {**GPU_CASES, **GPU_PURE_ONLY}.items()}
    out["worker_argv"] = wc.worker_argv("/x/python", "--parent-pid", "7")  # as it always was
    out["bootstrap"] = wc.python_argv("/x/python", "torch.distributed.run")[:3]
    one, _ = wc.launch_command("/x/python", ["--hello"])
    out["default_launch"] = one

    # Through the operator: recording_worker.py writes down its argv and environment.
    scene = bpy.context.scene
    bpy.ops.wm.save_as_mainfile(filepath=str(work / "scene.blend"))
    log, launches = work / "jobs.jsonl", work / "launches.jsonl"
    log.touch()
    launches.touch()
    use_recording_worker(work, log)
    os.environ["RECORDING_WORKER_LAUNCH_LOG"] = str(launches)
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)  # only the add-on may set it here
    s = scene.spherediff
    s.prompt = "a stormy sky over the sea"
    s.model_preset = "SD15"  # never loaded: the recording worker only writes the job down
    s.size = "2K"

    def files() -> list[str]:
        skip = {"scene.blend", "jobs.jsonl", "launches.jsonl", "recording-python"}
        return sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.name not in skip)

    calls, drawn = {}, {}
    for name, (gpu_count, gpu_ids, device) in GPU_CASES.items():
        prefs.gpu_count, prefs.gpu_ids, prefs.device = gpu_count, gpu_ids, device
        log_, problems = [], []
        type(prefs).draw(PanelProxy(prefs, UIRecorder(log_, problems)), bpy.context)
        drawn[name] = {"log": log_, "problems": problems}
        before = len(launches.read_text(encoding="utf-8").splitlines())
        files_before = files()
        res = call_generate()
        res["launches"] = [
            json.loads(x) for x in launches.read_text(encoding="utf-8").splitlines()[before:]
        ]
        res["new_files"] = sorted(set(files()) - set(files_before))
        res["staging"] = staging_leftovers()
        calls[name] = res
    prefs.gpu_count, prefs.gpu_ids, prefs.device = 1, "", "auto"
    out["calls"] = calls
    out["drawn"] = drawn
    out["pid"] = os.getpid()
    out["end"] = {"children": child_processes(), "staging": staging_leftovers()}
    bpy.ops.preferences.addon_disable(module=PKG)


def saved_result(work: Path, first_frame_or_image: str) -> dict:
    """What a generation saved under //spherediff/: its files and its sidecar."""
    path = Path(bpy.path.abspath(first_frame_or_image))
    stem_file = path.parent if path.parent.name.endswith("_frames") else path
    stem = stem_file.name.removesuffix("_frames") if stem_file.is_dir() else stem_file.stem
    sidecar = stem_file.parent / f"{stem}.json"
    return {
        "path": str(path),
        "stem": stem,
        "folder": str(stem_file.parent),
        "sidecar_text": sidecar.read_text(encoding="utf-8") if sidecar.is_file() else None,
        "files": output_files(work),
    }


def other_file_system_folder(work: Path) -> Path | None:
    """A folder on another file system than ``work`` (/dev/shm on Linux), or None."""
    for candidate in ("/dev/shm", "/run/shm"):
        if os.path.isdir(candidate) and os.stat(candidate).st_dev != os.stat(work).st_dev:
            return Path(tempfile.mkdtemp(prefix="sd-files-", dir=candidate))
    return None


def scenario_files(args, out: dict) -> None:
    import shutil

    work = Path(args.work)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    out["install"] = install_and_enable(args.zip)
    world_mod = sys.modules[SUB + ".world"]
    scene = bpy.context.scene
    bpy.ops.wm.save_as_mainfile(filepath=str(work / "scene.blend"))
    os.environ["SPHEREDIFF_PYTHON"] = make_fake_python(work, os.environ["SPHEREDIFF_PYTHON"])
    s = scene.spherediff
    s.prompt = "a quiet harbour at night"
    s.size = "CUSTOM"
    s.width = 64
    video = {"video": True, "model_preset": "WAN", "frames": 5, "fps": 12}

    # 1. Saved files and their sidecars (the still, then a sequence).
    out["still"] = call_generate(seed=21)
    out["still_saved"] = saved_result(work, s.last_image)
    out["video"] = call_generate(seed=22, **video)
    out["video_saved"] = saved_result(work, s.last_image)
    out["staging_dir"] = tempfile.gettempdir()

    # 2. A full disk while saving across file systems: the staging folder elsewhere, and a
    # file-size limit on Blender (not on the worker) below the still's PNG and the MP4.
    other = other_file_system_folder(work)
    out["cross_fs"] = other is not None
    try:
        import resource
    except ImportError:
        resource = None
    if other is not None and resource is not None:
        saved_tempdir = tempfile.tempdir
        tempfile.tempdir = str(other)
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        cases = {}
        try:
            for name, kwargs in (("still", {"seed": 23}), ("video", {"seed": 24, **video})):
                before = {"state": scene_state(scene, world_mod, work), "files": output_files(work)}
                resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
                try:
                    res = call_generate(**kwargs)
                finally:
                    resource.setrlimit(resource.RLIMIT_FSIZE, limits)
                res["files_before"] = before["files"]
                res["files_after"] = output_files(work)
                res["unchanged"] = scene_state(scene, world_mod, work) == before["state"]
                res["staging"] = sorted(p.name for p in other.iterdir())
                cases[name] = res
        finally:
            tempfile.tempdir = saved_tempdir
            shutil.rmtree(other, ignore_errors=True)
        out["disk_full"] = cases
    out["end"] = {"staging": staging_leftovers(), "children": child_processes()}
    bpy.ops.preferences.addon_disable(module=PKG)


def scenario_installer(args, out: dict) -> None:
    out["install"] = install_and_enable(args.zip)
    sub = sys.modules[SUB]
    prefs_mod = sub.preferences
    wc = sub.worker_client
    os.environ.pop("SPHEREDIFF_PYTHON", None)
    out["before"] = prefs_mod.resolve_worker_python()
    t0 = time.monotonic()
    try:
        res = bpy.ops.spherediff.install_dependencies(
            wheel_folder=args.wheelhouse, with_dependencies=False
        )
        out["result"], out["error"] = sorted(res), None
    except RuntimeError as exc:
        out["result"], out["error"] = None, str(exc)
    out["install_s"] = time.monotonic() - t0
    state = sub.installer.STATE
    out["state"] = {"message": state.message, "failed": state.failed, "hello": state.hello}
    out["venv"] = str(prefs_mod.venv_folder())
    out["after"] = prefs_mod.resolve_worker_python()
    log = sub.installer.log_path(prefs_mod.user_folder())
    out["log_exists"] = log.is_file()
    out["log_text"] = log.read_text(encoding="utf-8")[-6000:] if log.is_file() else ""
    try:
        res = bpy.ops.spherediff.check_worker()
        out["check_result"] = sorted(res)
    except RuntimeError as exc:
        out["check_result"] = str(exc)
    check = wc.LAST_CHECK
    out["check"] = {"lines": check.lines, "problems": check.problems, "ok": check.ok}
    out["heavy_modules"] = heavy_modules()
    bpy.ops.preferences.addon_disable(module=PKG)


# --------------------------------------------------------------------------- HDR
SHADOW_RES = 64
SHADOW_SCALE = 6.0  # the top camera sees the plane from -3 to 3 m


def lamp_state(world_mod, scene) -> dict | None:
    """Our Sun lamp as the tests compare it (None: there is none in the scene)."""
    lamps = [ob for ob in scene.objects if ob.get(world_mod.SUN_TAG)]
    if not lamps:
        return None
    ob = lamps[0]
    bpy.context.view_layer.update()  # matrix_world follows rotation_euler after an update
    towards = ob.matrix_world.to_3x3() @ mathutils.Vector((0.0, 0.0, 1.0))
    return {
        "count": len(lamps),
        "name": ob.name,
        "pointer": ob.as_pointer(),
        "type": ob.data.type,
        "energy": round(ob.data.energy, 5),
        "color": [round(c, 5) for c in ob.data.color],
        "angle_deg": round(math.degrees(ob.data.angle), 5),
        "towards": [round(c, 5) for c in towards],
        "rotation": [round(c, 6) for c in ob.rotation_euler],
        "hidden": [ob.hide_render, ob.hide_viewport],
        "in_collection": ob.name in scene.collection.objects,
    }


def mask_state(world_mod, scene) -> dict | None:
    tree = scene.world.node_tree if scene.world is not None else None
    if tree is None:
        return None
    cone, dot = world_mod.find_node(tree, "sun_cone"), world_mod.find_node(tree, "sun_dot")
    mask = world_mod.find_node(tree, "sun_mask")
    if cone is None or dot is None or mask is None:
        return None
    fill = next(sock for sock in mask.inputs if sock.identifier == "B_Color")
    return {
        "threshold": round(cone.inputs[1].default_value, 8),
        "direction": [round(c, 6) for c in dot.inputs[1].default_value],
        "fill": [round(c, 6) for c in fill.default_value][:3],
    }


def hdr_state(world_mod, scene, work: Path) -> dict:
    env = world_mod.find_node(scene.world.node_tree, "environment")
    img = env.image
    s = scene.spherediff
    return {
        "world": world_snapshot(scene),
        "image": {
            "name": img.name,
            "filepath": img.filepath,
            "abspath": bpy.path.abspath(img.filepath),
            "colorspace": img.colorspace_settings.name,
            "is_float": img.is_float,
            "size": list(img.size),
        },
        "lamp": lamp_state(world_mod, scene),
        "mask": mask_state(world_mod, scene),
        "files": output_files(work),
        "last": {
            "hdr": s.last_hdr,
            "sun": s.last_sun,
            "azimuth": round(s.last_sun_azimuth, 4),
            "elevation": round(s.last_sun_elevation, 4),
            "energy": round(s.last_sun_energy, 5),
            "image": s.last_image,
            "error": s.last_error,
        },
    }


def same_hdr_state(a: dict, b: dict) -> bool:
    """Equal but for the last error (a failure's reason is shown there, on purpose)."""

    def strip(state: dict) -> dict:
        return {**state, "last": {k: v for k, v in state["last"].items() if k != "error"}}

    return strip(a) == strip(b)


def set_cycles(scene, samples: int) -> None:
    scene.render.engine = "CYCLES"
    cy = scene.cycles
    cy.device, cy.samples, cy.seed = "CPU", samples, 0
    cy.use_adaptive_sampling = False
    cy.use_denoising = False
    cy.max_bounces, cy.diffuse_bounces, cy.glossy_bounces = 4, 3, 0
    cy.sample_clamp_direct = cy.sample_clamp_indirect = 0.0
    r = scene.render
    r.resolution_x = r.resolution_y = SHADOW_RES
    r.resolution_percentage = 100
    r.film_transparent = False
    scene.view_settings.view_transform = "Standard"
    im = r.image_settings
    if hasattr(im, "media_type"):  # 5.0+
        im.media_type = "IMAGE"
    im.file_format, im.color_mode, im.color_depth = "OPEN_EXR", "RGB", "32"


def shadow_scene(scene) -> list:
    """A white diffuse sphere (r 0.5 m) on a grey plane, seen from straight above."""
    sys.path.insert(0, str(HERE))
    import render_hdr_ground_truth as gt

    made = [
        gt.add_mesh(
            scene,
            "Plane",
            [(-20, -20, 0), (20, -20, 0), (20, 20, 0), (-20, 20, 0)],
            [(0, 1, 2, 3)],
            gt.diffuse_material("Plane", (0.5, 0.5, 0.5)),
        ),
        gt.add_sphere(
            scene, "Ball", (0.0, 0.0, 0.5), 0.5, gt.diffuse_material("Ball", (0.8, 0.8, 0.8)),
            n_lon=48, n_lat=24,
        ),
    ]  # fmt: skip
    cd = bpy.data.cameras.new("Top")
    cd.type, cd.ortho_scale = "ORTHO", SHADOW_SCALE
    cam = bpy.data.objects.new("Top", cd)
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0.0, 0.0, 10.0), (0.0, 0.0, 0.0)
    scene.camera = cam
    return [*made, cam]


def render_top(scene, work: Path, tag: str) -> list:
    import render_hdr_ground_truth as gt

    return gt.render_to_array(scene, str(work / f"shadow_{tag}.exr")).astype(float).tolist()


def truth_world(scene, hdr, name: str):
    """A World showing a ground-truth HDR (numpy (H, W, 3), top row first) as it is."""
    import numpy as np

    h, w = hdr.shape[:2]
    img = bpy.data.images.new(name, w, h, alpha=False, float_buffer=True)
    rgba = np.concatenate([hdr[::-1], np.ones((h, w, 1), np.float32)], axis=-1)
    img.pixels.foreach_set(rgba.astype(np.float32).ravel())
    return image_world(img, name)


def ldr_world(png: str):
    """A World of the 8-bit panorama as it was loaded before HDR (sRGB, strength 1)."""
    img = bpy.data.images.load(png, check_existing=False)
    img.colorspace_settings.name = "sRGB"
    return image_world(img, "LDR")


def image_world(img, name: str):
    """A new World showing ``img`` as it is: Environment Texture -> Background (1)."""
    world = bpy.data.worlds.new(name)
    if bpy.app.version < (5, 0, 0) or world.node_tree is None:
        world.use_nodes = True
    nt = world.node_tree
    nt.nodes.clear()
    env = nt.nodes.new("ShaderNodeTexEnvironment")
    env.image, env.interpolation = img, "Linear"
    bg = nt.nodes.new("ShaderNodeBackground")
    out = nt.nodes.new("ShaderNodeOutputWorld")
    nt.links.new(env.outputs["Color"], bg.inputs["Color"])
    nt.links.new(bg.outputs["Background"], out.inputs["Surface"])
    return world


def shadow_renders(scene, world_mod, work: Path, truth_npy: str, png: str) -> dict:
    """Top views of the sphere's shadow under three lights: the add-on's World with its
    Sun Lamp (as generated), the ground-truth HDR, and the 8-bit panorama as a World."""
    import numpy as np

    set_cycles(scene, samples=64)
    made = shadow_scene(scene)
    ours = scene.world
    lamp = world_mod.find_sun_lamp(scene)
    out = {"res": SHADOW_RES, "scale": SHADOW_SCALE}
    out["lifted"] = render_top(scene, work, "lifted")
    lamp.hide_render = True
    scene.world = truth_world(scene, np.load(truth_npy), "Truth")
    out["truth"] = render_top(scene, work, "truth")
    scene.world = ldr_world(png)
    out["ldr"] = render_top(scene, work, "ldr")
    # Back to the add-on's World and lamp, the test objects gone.
    scene.world = ours
    lamp.hide_render = False
    for ob in made:
        bpy.data.objects.remove(ob)
    return out


def scenario_hdr(args, out: dict) -> None:
    work = Path(args.work)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    out["install"] = install_and_enable(args.zip)
    ops_mod = sys.modules[SUB + ".operators"]
    world_mod = sys.modules[SUB + ".world"]
    scene = bpy.context.scene
    bpy.ops.wm.save_as_mainfile(filepath=str(work / "scene.blend"))
    real_python = os.environ["SPHEREDIFF_PYTHON"]
    os.environ["SPHEREDIFF_PYTHON"] = make_fake_python(work, real_python, "fake_hdr_worker.py")
    s = scene.spherediff
    s.prompt = "a clear afternoon over the fields"
    s.random_seed = False
    out["defaults"] = {"hdr": s.hdr, "sun_lamp": s.sun_lamp, "sun_strength": s.sun_strength}

    # 1. HDR Lighting and Sun Lamp on (the defaults): the EXR World, its disc masked, a lamp.
    out["first"] = call_generate(seed=1)
    out["first_state"] = hdr_state(world_mod, scene, work)
    out["first_panels"] = draw_panels(bpy.context)
    png = str(Path(out["first_state"]["image"]["abspath"]).with_suffix(".png"))
    names = os.environ["FAKE_HDR_SCENES"].split(",")
    truth = str(Path(os.environ["FAKE_HDR_TRUTH_DIR"]) / f"{names[0]}.npy")
    out["shadows"] = shadow_renders(scene, world_mod, work, truth, png)

    # 2. Live settings: the World's rotation turns the lamp, Sun Strength scales it.
    s.rotation_z = 0.5
    s.sun_strength = 2.0
    out["live"] = lamp_state(world_mod, scene)
    s.rotation_z = 0.0
    s.sun_strength = 1.0

    # 3. Regenerate (another sun): the same lamp, updated, not duplicated.
    out["second"] = call_generate(seed=2)
    out["second_state"] = hdr_state(world_mod, scene, work)

    # 4. Failure and cancel: World, lamp and files exactly as they were.
    failures = {}
    for name, mode in (("fail", "fail"), ("cancel", "slow")):
        before = hdr_state(world_mod, scene, work)
        os.environ["FAKE_HDR_MODE"] = mode
        watcher = None
        if mode == "slow":
            watcher = Watcher(ops_mod, "cancel")
            watcher.start()
        try:
            res = call_generate(seed=3)
        finally:
            os.environ.pop("FAKE_HDR_MODE", None)
        if watcher is not None:
            watcher.join(5)
            watcher.info.pop("generation", None)
        after = hdr_state(world_mod, scene, work)
        res["unchanged"] = same_hdr_state(after, before)
        if not res["unchanged"]:
            res["before"], res["after"] = before, after
        res["staging"] = staging_leftovers()
        failures[name] = res
    out["failures"] = failures

    # 5. A panorama without a sun: the lamp is hidden, the mask let through.
    out["no_sun"] = call_generate(seed=3)
    out["no_sun_state"] = hdr_state(world_mod, scene, work)

    # 6. HDR off: the PNG in sRGB, no lamp shining; refusals of what cannot be honoured.
    out["ldr"] = call_generate(seed=1, hdr=False)
    out["ldr_state"] = hdr_state(world_mod, scene, work)
    before = hdr_state(world_mod, scene, work)
    out["refused_video"] = call_generate(seed=1, hdr=True, video=True)
    out["refused_sun_without_hdr"] = call_generate(seed=1, hdr=False, sun_lamp=True)
    out["refused_unchanged"] = same_hdr_state(hdr_state(world_mod, scene, work), before)

    # 7. Lift to HDR on the World's current (8-bit) image, with the real engine.
    os.environ["SPHEREDIFF_PYTHON"] = real_python
    try:
        res = bpy.ops.spherediff.lift_to_hdr()
        out["lift"] = {"result": sorted(res), "error": None}
    except RuntimeError as exc:
        out["lift"] = {"result": None, "error": str(exc)}
    out["lift_state"] = hdr_state(world_mod, scene, work)
    out["lift_again_poll"] = bpy.ops.spherediff.lift_to_hdr.poll()
    try:
        bpy.ops.spherediff.lift_to_hdr()
        out["lift_again"] = None
    except RuntimeError as exc:
        out["lift_again"] = str(exc)
    out["end"] = {"staging": staging_leftovers(), "children": child_processes()}
    bpy.ops.preferences.addon_disable(module=PKG)


# --------------------------------------------------------------------------- extend image
EXTEND_RES = 64
EXTEND_CAMERAS = {  # name -> (yaw, tilt up, roll) in degrees
    "level": (30.0, 0.0, 0.0),
    "tilted": (-60.0, 30.0, 0.0),
    "rolled": (150.0, 0.0, 10.0),
}


def aim_camera(cam, yaw_deg: float, tilt_deg: float, roll_deg: float) -> None:
    """A camera looking at azimuth yaw, tilted up, then rolled about its own axis."""
    base = mathutils.Euler(
        (math.radians(90.0 + tilt_deg), 0.0, math.radians(yaw_deg - 90.0)), "XYZ"
    ).to_matrix()
    cam.matrix_world = (base @ mathutils.Matrix.Rotation(math.radians(roll_deg), 3, "Z")).to_4x4()


def render_camera(scene, work: Path, tag: str) -> list:
    sys.path.insert(0, str(HERE))
    import render_hdr_ground_truth as gt

    return gt.render_to_array(scene, str(work / f"extend_{tag}.exr")).astype(float).tolist()


def scenario_extend(args, out: dict) -> None:
    work = Path(args.work)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    out["install"] = install_and_enable(args.zip)
    cm = sys.modules[SUB + ".camera_match"]
    scene = bpy.context.scene
    bpy.ops.wm.save_as_mainfile(filepath=str(work / "scene.blend"))
    real_python = os.environ["SPHEREDIFF_PYTHON"]
    os.environ["SPHEREDIFF_PYTHON"] = make_fake_python(work, real_python, "fake_plate_worker.py")
    plate = os.environ["EXTEND_PLATE"]

    set_cycles(scene, samples=8)
    scene.render.resolution_x = scene.render.resolution_y = EXTEND_RES
    scene.cycles.filter_width = 0.01
    data = bpy.data.cameras.new("Plate Camera")
    data.lens = 35.0
    cam = bpy.data.objects.new("Plate Camera", data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    s = scene.spherediff
    s.prompt = "the rest of the harbour"
    s.random_seed = False
    s.hdr = False
    s.extend_image = True
    s.image_path = plate
    out["defaults"] = {"match_camera": s.match_camera, "strength": s.image_strength}

    # 1. Match Camera for a level, a tilted and a rolled camera: render through it.
    cases = {}
    for i, (name, (yaw, tilt, roll)) in enumerate(EXTEND_CAMERAS.items()):
        aim_camera(cam, yaw, tilt, roll)
        bpy.context.view_layer.update()
        placement, problem = cm.camera_placement(scene)
        res = call_generate(seed=i + 1)
        env = sys.modules[SUB + ".world"].find_node(scene.world.node_tree, "environment")
        sidecar = Path(bpy.path.abspath(env.image.filepath)).with_suffix(".json")
        job = json.loads(sidecar.read_text(encoding="utf-8"))["options"]
        res.update(
            placement=placement,
            problem=problem,
            job={k: v for k, v in job.items() if k.startswith("image")},
            render=render_camera(scene, work, name),
            readout=cm.current_camera_text(scene),
        )
        cases[name] = res
    out["cases"] = cases
    out["panels"] = draw_panels(bpy.context)

    # 2. What Match Camera refuses, by name; the World untouched.
    refusals = {}
    before = world_snapshot(scene)
    data.shift_x = 0.1
    refusals["shift"] = call_generate(seed=9)
    data.shift_x = 0.0
    data.type = "ORTHO"
    refusals["ortho"] = call_generate(seed=9)
    data.type = "PERSP"
    scene.camera = None
    refusals["no_camera"] = call_generate(seed=9)
    scene.camera = cam
    s.image_path = ""
    refusals["no_image"] = call_generate(seed=9)
    s.image_path = str(work / "missing.png")
    refusals["missing_file"] = call_generate(seed=9)
    s.image_path = plate
    refusals["video"] = call_generate(seed=9, video=True, model_preset="LTX")
    out["refusals"] = refusals
    out["refused_unchanged"] = world_snapshot(scene) == before
    out["refused_staging"] = staging_leftovers()

    # 3. An image data-block without a file (saved as seen into the staging folder), and
    #    a manual placement.
    import numpy as np

    made = bpy.data.images.new("Painted Plate", 32, 24, alpha=False)
    made.pixels.foreach_set(np.tile([0.8, 0.3, 0.1, 1.0], 32 * 24).astype(np.float32))
    s.image_name = made.name
    s.match_camera = False
    out["datablock"] = call_generate(
        seed=11, image_yaw=math.radians(90.0), image_fov=math.radians(40.0)
    )
    env = sys.modules[SUB + ".world"].find_node(scene.world.node_tree, "environment")
    sidecar = Path(bpy.path.abspath(env.image.filepath)).with_suffix(".json")
    job = json.loads(sidecar.read_text(encoding="utf-8"))["options"]
    out["datablock_job"] = {k: v for k, v in job.items() if k.startswith("image")}

    # 4. The Render Result as the plate (rendered just now, saved as displayed).
    bpy.ops.render.render()
    s.image_name = "Render Result"
    out["render_result"] = call_generate(seed=12, image_fov=math.radians(50.0))
    env = sys.modules[SUB + ".world"].find_node(scene.world.node_tree, "environment")
    sidecar = Path(bpy.path.abspath(env.image.filepath)).with_suffix(".json")
    out["render_result_job"] = json.loads(sidecar.read_text(encoding="utf-8"))["options"]

    # 5. A script's values mean it: an image turns Extend Image on, a placement Match
    #    Camera off; a placement with match_camera=True contradicts it.
    s.extend_image, s.match_camera, s.image_name = False, True, ""
    out["implied"] = call_generate(
        seed=13, image_path=plate, image_yaw=math.radians(45.0), image_fov=math.radians(30.0)
    )
    env = sys.modules[SUB + ".world"].find_node(scene.world.node_tree, "environment")
    sidecar = Path(bpy.path.abspath(env.image.filepath)).with_suffix(".json")
    out["implied_job"] = json.loads(sidecar.read_text(encoding="utf-8"))["options"]
    out["contradiction"] = call_generate(seed=14, image_yaw=0.5, match_camera=True)
    out["end"] = {"staging": staging_leftovers(), "children": child_processes()}
    bpy.ops.preferences.addon_disable(module=PKG)


# --------------------------------------------------------------------------- history
def restorable_state(world_mod, scene) -> dict:
    """What Restore must give back: the World's nodes and links (image paths, not
    data-block names: a restored image is a fresh data-block), the image, the mapping's
    rotation, the strength, the sun mask and lamp, and the panel's World settings."""
    snap = world_snapshot(scene)
    snap.pop("images", None)
    for node in snap["nodes"]:
        node.pop("image", None)
    env = world_mod.find_node(scene.world.node_tree, "environment")
    mapping = world_mod.find_node(scene.world.node_tree, "mapping")
    background = world_mod.find_node(scene.world.node_tree, "background")
    img = env.image
    s = scene.spherediff
    # A hidden lamp's other values are nobody's: the rotation and strength settings still
    # turn and scale it while hidden, and the next sun shows it with its own.
    lamp = lamp_state(world_mod, scene)
    return {
        "world": snap,
        "image": {
            "abspath": os.path.realpath(bpy.path.abspath(img.filepath)),
            "source": img.source,
            "colorspace": img.colorspace_settings.name,
            "size": list(img.size),
            "packed": img.packed_file is not None,
        },
        "rotation": [round(v, 6) for v in mapping.inputs["Rotation"].default_value],
        "strength": round(background.inputs["Strength"].default_value, 6),
        "mask": mask_state(world_mod, scene),
        "lamp": lamp if lamp is None or lamp["hidden"] != [True, True] else {"hidden": [True] * 2},
        "settings": {
            "rotation_z": round(s.rotation_z, 6),
            "strength": round(s.strength, 6),
            "sun_strength": round(s.sun_strength, 6),
        },
    }


def history_entries(scene) -> list[dict]:
    out = []
    for e in scene.spherediff.history:
        thumb = e.thumbnail
        out.append(
            {
                "prompt": e.prompt,
                "seed": e.seed,
                "model": e.model,
                "width": e.width,
                "steps": e.steps,
                "draft": e.draft,
                "final_width": e.final_width,
                "hdr": e.hdr,
                "time": e.time,
                "paths": {k: getattr(e, k) for k in ("image_path", "exr_path", "sidecar_path")},
                "abspaths": {
                    k: os.path.realpath(bpy.path.abspath(getattr(e, k))) if getattr(e, k) else ""
                    for k in ("image_path", "exr_path", "sidecar_path")
                },
                "exists": {
                    k: bool(getattr(e, k)) and os.path.isfile(bpy.path.abspath(getattr(e, k)))
                    for k in ("image_path", "exr_path", "sidecar_path")
                },
                "thumbnail": None
                if thumb is None
                else {
                    "name": thumb.name,
                    "size": list(thumb.size),
                    "packed": thumb.packed_file is not None,
                    "pixel": [round(v, 4) for v in thumb.pixels[:3]],
                },
            }
        )
    return out


def call_op(op, **kwargs) -> dict:
    """A SphereDiff operator's result, or the error it raised (a poll refusal too)."""
    try:
        return {"result": sorted(op(**kwargs)), "error": None}
    except RuntimeError as exc:
        return {"result": None, "error": str(exc)}


def scenario_history(args, out: dict) -> None:
    """History, seeds, variations, drafts and finals, through the operators."""
    import shutil

    work = Path(args.work)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    out["install"] = install_and_enable(args.zip)
    world_mod = sys.modules[SUB + ".world"]
    ops = bpy.ops.spherediff
    scene = bpy.context.scene
    project = work / "project"
    project.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(project / "scene.blend"))
    log = work / "jobs.jsonl"
    log.touch()
    python = os.environ["SPHEREDIFF_PYTHON"]
    os.environ["SPHEREDIFF_PYTHON"] = make_fake_python(work, python, "fake_history_worker.py")
    os.environ["FAKE_HISTORY_LOG"] = str(log)
    s = scene.spherediff
    s.prompt = "a quiet harbour at dawn"
    s.model_preset = "SD15"  # never loaded: the fake worker paints one colour per seed
    s.size = "CUSTOM"
    s.width = 128

    def jobs_of(fn, *a, **kw) -> tuple[dict, list[dict]]:
        before = len(log.read_text(encoding="utf-8").splitlines())
        res = fn(*a, **kw)
        lines = log.read_text(encoding="utf-8").splitlines()[before:]
        return res, [json.loads(x) for x in lines]

    # Nothing to act on yet: the operators say why.
    out["empty"] = {
        name: call_op(getattr(ops, name))
        for name in ("history_restore", "copy_seed", "reuse_seed", "make_final")
    }

    # 1. Two generations; restoring the first gives back its World exactly.
    out["a"] = call_generate(
        seed=101, hdr=True, sun_lamp=True, rotation_z=0.5, strength=2.0, sun_strength=1.5
    )
    state_a = restorable_state(world_mod, scene)
    out["b"] = call_generate(seed=202, hdr=False, rotation_z=-1.0, strength=0.7)
    state_b = restorable_state(world_mod, scene)
    out["restore_a"] = call_op(ops.history_restore, index=0)
    out["restore"] = {"a": state_a, "b": state_b, "restored": restorable_state(world_mod, scene)}
    out["restore_b"] = call_op(ops.history_restore, index=1)
    out["restore"]["restored_b"] = restorable_state(world_mod, scene)

    # 2. A missing file: a clear error, the World untouched.
    exr = Path(bpy.path.abspath(s.history[0].exr_path))
    hidden = exr.with_name("moved-away.exr")
    exr.rename(hidden)
    try:
        before = restorable_state(world_mod, scene)
        out["missing"] = call_op(ops.history_restore, index=0)
        out["missing"].update(
            path=str(exr),
            unchanged=restorable_state(world_mod, scene) == before,
            last_error=s.last_error,
        )
    finally:
        hidden.rename(exr)

    # 2b. An animated world (fake_video_worker.py): restored as its frame sequence.
    history_python = os.environ["SPHEREDIFF_PYTHON"]
    os.environ["SPHEREDIFF_PYTHON"] = make_fake_python(work, python, "fake_video_worker.py")
    try:
        video = {"video": True, "model_preset": "WAN", "frames": 5, "fps": 12, "loop": True}
        out["video"] = call_generate(seed=55, rotation_z=0.25, **video)
        out["video_index"] = len(s.history) - 1
        video_state = restorable_state(world_mod, scene)
        video_state["user"] = scene_state(scene, world_mod, work).get("image_user")
    finally:
        os.environ["SPHEREDIFF_PYTHON"] = history_python
    out["after_video"] = call_generate(seed=56)
    out["restore_video"] = call_op(ops.history_restore, index=out["video_index"])
    restored_video = restorable_state(world_mod, scene)
    restored_video["user"] = scene_state(scene, world_mod, work).get("image_user")
    out["video_states"] = {"made": video_state, "restored": restored_video}

    # 3. Seeds: a seed beyond 32 bits made, reused exactly, made again.
    big = 2**31 + 5
    out["big"], out["big_jobs"] = jobs_of(call_generate, exact_seed=str(big))
    s.random_seed, s.seed = True, 7
    out["reuse_big"] = call_op(ops.reuse_seed)
    out["after_reuse_big"] = {
        "exact_seed": s.exact_seed,
        "random_seed": s.random_seed,
        "seed": s.seed,
    }
    out["again"], out["again_jobs"] = jobs_of(call_generate)
    try:
        out["copy"] = call_op(ops.copy_seed)
        out["clipboard"] = bpy.context.window_manager.clipboard
    except Exception as exc:  # noqa: BLE001 - no clipboard in this background Blender
        out["copy"] = {"error": repr(exc)}
    s.history_index = 0
    out["reuse_small"] = call_op(ops.reuse_seed)
    out["after_reuse_small"] = {"exact_seed": s.exact_seed, "random_seed": s.random_seed}
    out["after_reuse_small"]["seed"] = s.seed
    s.exact_seed = "12ab"
    out["bad_exact"], out["bad_exact_jobs"] = jobs_of(call_generate)
    s.exact_seed = ""

    # 4. Variations: three seeds, three files, three entries; the World is the last.
    s.random_seed = True
    count_before = len(s.history)
    out["variations"], out["variation_jobs"] = jobs_of(call_op, ops.variations, count=3)
    out["variation_entries"] = history_entries(scene)[count_before:]
    env = world_mod.find_node(scene.world.node_tree, "environment")
    out["variation_world"] = os.path.realpath(bpy.path.abspath(env.image.filepath))

    # 5. A draft, then Make Final.
    s.size, s.auto_steps, s.steps = "2K", False, 20
    s.draft, s.draft_size, s.draft_steps = True, "1K", 4
    s.hdr = False
    out["draft"], out["draft_jobs"] = jobs_of(call_generate, seed=303)
    s.seed = 9  # the scene moves on; the final keeps the draft's seed
    out["final"], out["final_jobs"] = jobs_of(call_op, ops.make_final)
    s.size = "AUTO"  # SD 1.5's own size: 2K
    out["auto_draft"], out["auto_draft_jobs"] = jobs_of(call_generate, seed=304)
    s.draft_size = "4K"  # larger than the final's 2K: refused by name
    out["big_draft"], out["big_draft_jobs"] = jobs_of(call_generate, seed=305)
    s.draft_size = "1K"
    out["custom_auto_draft"], out["custom_jobs"] = jobs_of(
        call_generate, seed=306, custom_model=str(work / "some-model")
    )
    s.draft = False
    s.size = "2K"
    # A script's draft: the operator's own arguments.
    out["op_draft"], out["op_draft_jobs"] = jobs_of(
        call_generate, seed=307, draft=True, draft_size="1K", draft_steps=3
    )
    out["op_draft_zero"], out["op_draft_zero_jobs"] = jobs_of(
        call_generate, seed=308, draft=True, draft_steps=0
    )
    out["entries"] = history_entries(scene)
    out["panels"] = draw_panels(bpy.context)

    # 6. Save, move the project folder, reopen: the history, relative paths, thumbnails.
    bpy.ops.wm.save_mainfile()
    out["saved_entries"] = history_entries(scene)
    moved = work / "moved" / "project"
    shutil.copytree(project, moved)
    shutil.rmtree(project)
    bpy.ops.wm.open_mainfile(filepath=str(moved / "scene.blend"))
    scene = bpy.context.scene
    out["moved_blend"] = bpy.data.filepath
    out["moved_entries"] = history_entries(scene)
    out["moved_restore"] = call_op(ops.history_restore, index=0)
    out["moved_state"] = restorable_state(world_mod, scene)
    out["moved_panels"] = draw_panels(bpy.context)
    # Saved elsewhere: the paths follow (relative to the new .blend, the same files).
    (moved / "sub").mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(moved / "sub" / "elsewhere.blend"))
    out["elsewhere_entries"] = history_entries(scene)
    # Save Copy: the open file's paths stay relative to it, the copy's to the copy.
    copy = moved / "copies" / "deeper" / "copy.blend"
    copy.parent.mkdir(parents=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(copy), copy=True)
    out["after_copy_entries"] = history_entries(scene)
    bpy.ops.wm.open_mainfile(filepath=str(copy))
    out["copy_entries"] = history_entries(bpy.context.scene)
    bpy.ops.wm.open_mainfile(filepath=str(moved / "sub" / "elsewhere.blend"))
    scene = bpy.context.scene

    # 7. Remove entries: the files stay; with Delete Files they go.
    count = len(scene.spherediff.history)
    first = history_entries(scene)[1]
    out["remove"] = call_op(ops.history_remove, index=1)
    out["remove_after"] = {"count": len(scene.spherediff.history), "before": count}
    out["remove_files_kept"] = all(os.path.isfile(p) for p in first["abspaths"].values() if p)
    victim = history_entries(scene)[1]
    out["remove_delete"] = call_op(ops.history_remove, index=1, delete_files=True)
    out["remove_deleted"] = [os.path.exists(p) for p in victim["abspaths"].values() if p]
    if hasattr(ops, "unload_model"):  # the warm worker, idle now: stopped like the add-on does
        call_op(ops.unload_model)
    out["end"] = {"children": child_processes(), "staging": staging_leftovers()}
    bpy.ops.preferences.addon_disable(module=PKG)
    handlers = (*bpy.app.handlers.save_pre, *bpy.app.handlers.save_post)
    out["save_handlers_after_disable"] = [getattr(h, "__name__", "") for h in handlers]


# --------------------------------------------------------------------------- warm worker
class Spy:
    """Calls through to ``module.name`` and records what the test asks for after each call
    (the add-on's own function runs: nothing is replaced)."""

    def __init__(self, module, name: str, after) -> None:
        self.module, self.name, self.after = module, name, after
        self.real = getattr(module, name)
        self.calls: list = []

        def spy(*args, **kwargs):
            result = self.real(*args, **kwargs)
            self.after(self.calls, result, *args, **kwargs)
            return result

        setattr(module, name, spy)

    def restore(self) -> None:
        setattr(self.module, self.name, self.real)


def fake_serve_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wait_dead(pid: int | None, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while pid is not None and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return pid is None or not pid_alive(pid)


def preview_state(scene, world_mod) -> dict:
    """What the World shows while a preview is up: its name, image and one pixel."""
    env = world_mod.find_node(scene.world.node_tree, "environment") if scene.world else None
    image = env.image if env is not None else None
    state = {"world": scene.world.name if scene.world else None, "image": None}
    if image is not None:
        state.update(
            image=image.name,
            size=list(image.size),
            source=image.source,
            pixel=[round(v * 255) for v in image.pixels[:3]],
            tagged=bool(image.get(world_mod.PREVIEW_TAG)),
        )
    return state


def world_state(scene) -> dict:
    """world_snapshot and the World data-blocks and images there are."""
    return {
        "snapshot": world_snapshot(scene),
        "fake_user": bool(scene.world.use_fake_user) if scene.world else None,
        "worlds": sorted(w.name for w in bpy.data.worlds),
        "images": sorted(i.name for i in bpy.data.images),
    }


def scenario_warm(args, out: dict) -> None:
    """The warm worker and live previews with fake_serve_worker.py (see its docstring)."""
    work = Path(args.work)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    out["install"] = install_and_enable(args.zip)
    ops_mod = sys.modules[SUB + ".operators"]
    world_mod = sys.modules[SUB + ".world"]
    wc = sys.modules[SUB + ".worker_client"]
    scene = bpy.context.scene
    bpy.ops.wm.save_as_mainfile(filepath=str(work / "scene.blend"))
    os.environ["SPHEREDIFF_PYTHON"] = make_fake_python(
        work, os.environ["SPHEREDIFF_PYTHON"], "fake_serve_worker.py"
    )
    control, log = work / "control.json", work / "serve.jsonl"
    os.environ["FAKE_SERVE_CONTROL"], os.environ["FAKE_SERVE_LOG"] = str(control), str(log)

    def mode(name: str, step_s: float = 0.05) -> None:
        control.write_text(json.dumps({"mode": name, "step_s": step_s}), encoding="utf-8")

    prefs = bpy.context.preferences.addons[PKG].preferences
    out["prefs_default"] = {
        "keep_model_loaded": prefs.keep_model_loaded,
        "unload_after": round(prefs.unload_after, 3),
        "live_preview": prefs.live_preview,
        "preview_every": prefs.preview_every,
    }
    s = scene.spherediff
    s.prompt = "a quiet harbour at dusk"
    s.model_preset = "SD15"
    s.size, s.width = "CUSTOM", 64
    s.auto_steps, s.steps = False, 4
    s.random_seed = False
    s.hdr = s.sun_lamp = False
    # A World of the user's own, with a colour to keep.
    mine = bpy.data.worlds.new("My World")
    scene.world = mine
    mine.use_nodes = True
    mine.node_tree.nodes["Background"].inputs["Color"].default_value = (0.2, 0.4, 0.6, 1.0)

    runs: list[dict] = []

    def after_finish(calls, result, context, gen):
        run = gen.run
        runs.append(
            {
                "pid": run.pid,
                "ok": result[0],
                "message": result[1],
                "loaded": getattr(run, "loaded", None),
                "phases": list(run.phases),
                "first_denoise_s": run.first_denoise_s,
                "served": type(run).__name__ == "ServedRun" and not run.one_shot,
                "seed": gen.options["seed"],
                "preview_every": gen.options.get("preview_every"),
                "previews_seen": run.previews_seen,
                "failure": run.failure.code if run.failure else None,
            }
        )

    finish_spy = Spy(ops_mod, "finish_generation", after_finish)
    shown: list[dict] = []
    shown_event = threading.Event()
    save_at_preview: list[Path] = []  # save a copy of the file while this preview shows

    def after_show(calls, result, gen):
        if result:
            state = preview_state(scene, world_mod)
            prev = gen.preview.previous
            state["previous"] = prev.name if prev is not None else None
            state["previous_fake_user"] = bool(prev.use_fake_user) if prev else None
            state["shown"] = gen.preview.shown
            if save_at_preview:
                path = save_at_preview.pop()
                bpy.ops.wm.save_as_mainfile(filepath=str(path), copy=True)
                state["saved"] = str(path)
                state["world_after_save"] = scene.world.name if scene.world else None
            shown.append(state)
            shown_event.set()

    show_spy = Spy(ops_mod, "show_latest_preview", after_show)

    def call(name: str, **kwargs) -> dict:
        before = len(runs)
        res = call_generate(**kwargs)
        res["runs"] = runs[before:]
        res["warm_pid"] = wc.WARM.pid
        res["children"] = child_processes()
        res["staging"] = staging_leftovers()
        out[name] = res
        return res

    # 1. Two jobs through one warm worker: one hello, the second without load events.
    mode("ok")
    call("first", seed=1)
    call("second", seed=2)
    out["after_two"] = {"log": fake_serve_log(log), "world": world_state(scene)}

    # 2. Previews (a script asks for them in background mode) shown in the World.
    shown.clear()
    before = world_state(scene)
    mode("ok", step_s=0.15)
    save_at_preview.append(work / "saved_during_preview.blend")
    res = call("preview", seed=3, steps=6, preview=True)
    res["shown"] = list(shown)
    res["before"], res["after"] = before, world_state(scene)
    saved = work / "saved_during_preview.blend"
    if saved.is_file():  # what the file holds: the scene's own World, not the preview's
        with bpy.data.libraries.load(str(saved)) as (data_from, _data_to):
            res["saved_worlds"] = sorted(data_from.worlds)
            res["saved_images"] = sorted(data_from.images)

    # 3. Cancel while a preview shows: the World exactly as it was, the worker serving on.
    def cancel_when_shown(delay: float = 0.0):
        def watch():
            if shown_event.wait(30):
                time.sleep(delay)
                watch.at = time.monotonic()
                ops_mod.request_cancel()

        watch.at = None
        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        return watch

    for name, kind in (("cancel", "slow"), ("fail", "fail")):
        shown.clear()
        shown_event.clear()
        mode(kind, step_s=0.1)
        before = world_state(scene)
        watch = cancel_when_shown() if kind == "slow" else None
        res = call(name, seed=4, preview=True)
        res["shown"] = list(shown)
        res["before"], res["after"] = before, world_state(scene)
        res["unchanged"] = res["before"] == res["after"]
        if watch is not None and watch.at is not None:
            res["stop_s"] = time.monotonic() - watch.at

    # 4. The warm worker killed between jobs: a clean restart, and the user is told.
    mode("ok")
    killed = wc.WARM.pid
    os.kill(killed, signal.SIGKILL)
    out["killed_dead"] = wait_dead(killed)
    call("after_kill", seed=5)
    # ... and one that crashes by itself after a job.
    mode("crash_after")
    call("crash", seed=6)
    crashed = out["crash"]["warm_pid"] or out["crash"]["runs"][0]["pid"]
    out["crash_dead"] = wait_dead(crashed)
    mode("ok")
    call("after_crash", seed=7)

    # 5. A cancel the worker does not answer: ended within a second; no "had stopped".
    shown.clear()
    shown_event.clear()
    mode("deaf", step_s=0.1)
    deaf_pid = wc.WARM.pid
    watch = cancel_when_shown()
    res = call("deaf", seed=8, preview=True)
    res["stop_s"] = time.monotonic() - watch.at if watch.at else None
    res["old_pid_dead"] = wait_dead(deaf_pid)
    mode("ok")
    call("after_deaf", seed=9)

    # 6. Several seeds in one generation (Variations fills Generation.seeds): one worker.
    history_before = len(getattr(s, "history", []))
    s.seed = 10
    gen, error = ops_mod.start_generation(bpy.context)
    reports: list = []
    seeds = {"error": error}
    if gen is not None:
        gen.seeds = [11, 12]
        before = len(runs)
        ok, message = ops_mod.run_generation(bpy.context, gen, lambda *a: reports.append(a))
        env = world_mod.find_node(scene.world.node_tree, "environment")
        seeds.update(
            ok=ok,
            message=message,
            results=[r.get("seed") for r in gen.results],
            runs=runs[before:],
            image=env.image.get("spherediff_seed"),
            last_seed=s.last_seed,
            history=len(getattr(s, "history", [])) - history_before,
            active=ops_mod.active_generation() is not None,
            staging=staging_leftovers(),
        )
    seeds["reports"] = reports
    out["seeds"] = seeds

    # 7. The idle limit (the preference, in minutes) stops the worker.
    idle_pid = wc.WARM.pid
    prefs.unload_after = 0.02  # 1.2 s
    time.sleep(2.5)
    out["idle"] = {
        "pid": idle_pid,
        "dead": not pid_alive(idle_pid),
        "warm_running": wc.WARM.running(),
        "log": fake_serve_log(log)[-1],
    }
    prefs.unload_after = 10.0

    # 8. Keep Model Loaded off: a worker per job, without --serve; the Unload operator.
    prefs.keep_model_loaded = False
    call("one_shot_a", seed=13)
    call("one_shot_b", seed=14)
    prefs.keep_model_loaded = True
    call("warm_again", seed=15)
    unload_pid = wc.WARM.pid
    out["unload"] = {
        "poll": bpy.ops.spherediff.unload_model.poll(),
        "result": sorted(bpy.ops.spherediff.unload_model()),
        "dead": wait_dead(unload_pid),
        "poll_after": bpy.ops.spherediff.unload_model.poll(),
    }

    # 9. Disabling the add-on stops the warm worker (gracefully: it exits 0).
    call("before_disable", seed=16)
    disable_pid = wc.WARM.pid
    finish_spy.restore()
    show_spy.restore()
    bpy.ops.preferences.addon_disable(module=PKG)
    out["disable"] = {
        "pid": disable_pid,
        "dead": wait_dead(disable_pid),
        "children": child_processes(),
        "log": [e for e in fake_serve_log(log) if e["pid"] == disable_pid][-1],
    }
    out["log"] = fake_serve_log(log)

    # 10. Enabled again, two jobs, then Blender exits without disabling (test: no worker
    # left once this process is gone).
    bpy.ops.preferences.addon_enable(module=PKG)
    wc = sys.modules[SUB + ".worker_client"]  # (reloaded)
    exit_runs = [call_generate(seed=17), call_generate(seed=18)]
    out["exit"] = {"runs": exit_runs, "pid": wc.WARM.pid, "log_lines": len(fake_serve_log(log))}
    out["heavy_modules"] = heavy_modules()


def main() -> int:
    args = parse_args()
    out: dict = {"blender_version": bpy.app.version_string, "scenario": args.scenario}
    code = 0
    try:
        {
            "register": scenario_register,
            "generate": scenario_generate,
            "installer": scenario_installer,
            "video": scenario_video,
            "arguments": scenario_arguments,
            "files": scenario_files,
            "hdr": scenario_hdr,
            "extend": scenario_extend,
            "gpus": scenario_gpus,
            "history": scenario_history,
            "warm": scenario_warm,
        }[args.scenario](args, out)
    except Exception:  # noqa: BLE001 - reported to the test, which fails on it
        out["fatal"] = traceback.format_exc()
        code = 1
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1, default=str)
    return code


if __name__ == "__main__":
    sys.exit(main())
