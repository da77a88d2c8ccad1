"""Operators: Generate World (modal in the UI, blocking in background), Cancel, Check
Worker and Install Dependencies.

A generation never touches the scene until it has succeeded: the worker writes into a
fresh staging folder (``tempfile.mkdtemp``); only a finished image (or, for an animated
world, the finished frame sequence) is saved into the output folder (saving.py: whole
files only, across file systems too, its sidecar rewritten to describe them) and loaded into the
World, in one undo step. On failure or cancel the staging folder is removed and the World
and the scene's frame range and rate are exactly as they were. Live previews
(world.LivePreview) only swap the scene's World for one of their own while the job runs;
the scene's own World is back, untouched, before a result is loaded or when it fails.

Jobs run on the warm worker (worker_client.WARM) unless several GPUs are set or Keep Model
Loaded is off; a generation with ``Generation.seeds`` runs one job per seed on it.
"""

import atexit
import contextlib
import dataclasses
import json
import math
import random
import shutil
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import bpy
from bpy.props import BoolProperty, StringProperty
from bpy.types import Operator

from . import camera_match, history, installer, properties, saving, worker_client, world
from .preferences import (
    default_model_id,
    default_video_model_id,
    get_preferences,
    gpu_plan,
    keep_model_loaded,
    live_preview,
    offline_forced,
    preview_every,
    resolve_worker_python,
    unload_after_s,
    user_folder,
    venv_folder,
)

ADDON_ROOT = Path(__file__).resolve().parent.parent
TIMER_INTERVAL_S = 0.1
PRINT_INTERVAL_S = 1.0


# --------------------------------------------------------------------------- engine bits
def engine_options_module():
    """spherediff_core.options from the bundled wheel (torch-free), or None."""
    try:
        from spherediff_core import options
    except ImportError:
        return None
    return options


def engine_version() -> str | None:
    try:
        import spherediff_core
    except ImportError:
        return None
    return getattr(spherediff_core, "__version__", None)


def validate_options(options: dict) -> str:
    """The engine's own validation, on Blender's side (empty string: valid).

    Without the bundled engine the worker validates the same way and answers bad_input.
    """
    module = engine_options_module()
    if module is None:
        return ""
    try:
        module.GenerationOptions.from_dict(options).validate()
    except module.OptionsError as exc:
        return str(exc)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return ""


# --------------------------------------------------------------------------- the job
class Generation:
    """The running generation: its worker run, staging folder and settings.

    One generation may run several jobs, one after another on the same warm worker:
    ``seeds`` are the seeds still to run after the current job (Variations fills it),
    ``results`` the result events of the jobs that succeeded. ``run``, ``staging`` and
    ``options`` are the current job's. ``preview``: the current job's live preview in the
    World (world.LivePreview), None until its first preview arrives.
    """

    def __init__(
        self,
        run,
        staging: Path,
        scene_name: str,
        values: dict,
        options: dict,
        notes: list[str] | None = None,
    ):
        self.run = run
        self.staging = staging
        self.scene_name = scene_name
        self.values = values
        self.options = options
        self.notes = list(notes or [])  # warnings for the report (e.g. Pack Image ignored)
        self.seeds: list[int] = []
        self.results: list[dict] = []
        self.preview = None
        self.launch: dict = {}  # how start_next_job starts the next job (python, gpus...)
        self._last_print = 0.0
        self._last_phase = ""
        self._last_text = ""

    def print_progress(self, run) -> None:
        """One line per phase, then at most one every PRINT_INTERVAL_S (background mode)."""
        now = time.monotonic()
        text = run.status_text()
        if run.phase == self._last_phase and (
            text == self._last_text or now - self._last_print < PRINT_INTERVAL_S
        ):
            return
        self._last_print, self._last_phase, self._last_text = now, run.phase, text
        print(f"SphereDiff: {text} ({run.fraction * 100:.0f}%)", flush=True)


_ACTIVE: Generation | None = None
_LOCK = threading.Lock()


def active_generation() -> Generation | None:
    return _ACTIVE


def request_cancel() -> bool:
    """Cancel the running generation (safe from any thread); False if none runs."""
    gen = _ACTIVE
    if gen is None:
        return False
    gen.run.request_cancel()
    return True


# A script that passes a value means it: (value, the switch it implies, the switch's
# setting). Passing the switch too with another setting is a contradiction, refused.
IMPLIED_SWITCHES = (
    ("steps", "auto_steps", False),
    ("guidance", "auto_guidance", False),
    ("seed", "random_seed", False),
    ("seed", "exact_seed", ""),  # (history: a seed beyond Seed's range, as text)
    ("exact_seed", "random_seed", False),
    ("fps", "auto_fps", False),
    ("custom_model", "model_preset", "CUSTOM"),
    ("width", "size", "CUSTOM"),
    ("image_path", "extend_image", True),
    ("image_name", "extend_image", True),
    ("image_yaw", "match_camera", False),
    ("image_pitch", "match_camera", False),
    ("image_roll", "match_camera", False),
    ("image_fov", "match_camera", False),
)


def script_arguments(idname: str = "spherediff.generate") -> dict | None:
    """The keyword arguments of the running ``bpy.ops`` call, as the script passed them.

    Blender converts a call's arguments to C before the operator sees them: a string is
    cut at its first NUL and a float beyond float32 becomes FLT_MAX, without a word. The
    Python frame of ``bpy.ops``'s call (bpy/ops.py, ``__call__(self, *args, **kw)``) is
    still on the stack while the operator runs, and holds them unchanged. None when the
    call came from the UI (no such frame) or a Blender version calls differently.
    """
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__call__" and code.co_filename.replace("\\", "/").endswith(
            "/bpy/ops.py"
        ):
            caller, kw = frame.f_locals.get("self"), frame.f_locals.get("kw")
            get_idname = getattr(caller, "idname_py", None)
            if callable(get_idname) and get_idname() == idname and isinstance(kw, dict):
                return kw
        frame = frame.f_back
    return None


def script_problem(op) -> str:
    """What is wrong with the values a script passed to the operator (empty: nothing).

    Refused by name, never clamped or cut: a number outside its range
    (properties.VALUE_RANGES), a string with a NUL character, and a value together with a
    switch that says otherwise (``size='4K', width=256``).
    """
    props = op.properties
    passed = script_arguments() or {}
    given = [key for key in properties.GENERATION_KEYS if props.is_property_set(key)]
    for key in given:
        value = getattr(op, key)
        raw = passed.get(key, value)
        if isinstance(value, str):
            if isinstance(raw, str) and "\x00" in raw:
                return (
                    f"{key}: {raw!r} contains a NUL character; Blender would cut the text "
                    "there, so remove it"
                )
            continue
        # The value as passed (a float beyond float32 arrives as FLT_MAX, inf as well).
        number = raw if isinstance(raw, (int, float)) and not isinstance(raw, bool) else value
        problem = properties.value_problem(key, number)
        if problem:
            return problem
    for value_key, switch, implied in IMPLIED_SWITCHES:
        if value_key in given and switch in given and getattr(op, switch) != implied:
            return (
                f"{switch}={getattr(op, switch)!r} and {value_key}={getattr(op, value_key)!r} "
                f"contradict each other: {value_key} needs {switch}={implied!r}; pass only "
                "one of them"
            )
    return ""


def resolve_values(settings, op=None) -> dict:
    """The settings of this call: the operator's set properties, else the scene's."""
    values = {}
    props = op.properties if op is not None else None
    for key in properties.GENERATION_KEYS:
        if props is not None and props.is_property_set(key):
            values[key] = getattr(op, key)
        else:
            values[key] = getattr(settings, key)
    if props is not None:  # a script that passes a value means it
        for given, switch, value in IMPLIED_SWITCHES:
            if props.is_property_set(given) and not props.is_property_set(switch):
                values[switch] = value
        # video=True (or False) without a model: when the scene's model is of the other
        # kind, "Preferences Default" (its video model when Animated) is meant.
        model_given = props.is_property_set("model_preset") or props.is_property_set("custom_model")
        if props.is_property_set("video") and not model_given:
            prefs = get_preferences()
            info = properties.model_info(values["model_preset"], resolve_model(values, prefs))
            if properties.kind_problem(values["video"], info):
                values["model_preset"] = "DEFAULT"
    return values


def resolve_model(values: dict, prefs) -> str:
    """The Hub id or folder these settings use ("Preferences Default" follows Animated)."""
    if values["model_preset"] == "DEFAULT":
        return default_video_model_id(prefs) if values.get("video") else default_model_id(prefs)
    return properties.model_id_for(values["model_preset"], values["custom_model"])


def job_device(prefs) -> str:
    """The job's device: the Device preference (auto, cuda, mps or cpu). Several GPUs
    need auto or cuda (each worker process takes cuda:LOCAL_RANK): gpu_plan refuses the
    others before any worker starts, so a job never names one GPU (cuda:1) for them all."""
    return prefs.device if prefs else "auto"


def build_options(values: dict, prefs, output: str) -> dict:
    """The worker job's options (spherediff_core.options.GenerationOptions fields)."""
    model = resolve_model(values, prefs)
    if values["size"] == "CUSTOM":
        width = int(values["width"])
    elif values["size"] == "AUTO":
        width = None  # the model family's own size (the engine knows the family)
    else:
        width = properties.SIZE_WIDTHS[values["size"]]
    seed = random.randint(0, properties.MAX_SEED) if values["random_seed"] else values["seed"]
    if not values["random_seed"] and values.get("exact_seed", "").strip():
        seed = int(values["exact_seed"])  # history: Reuse Seed of a seed beyond 32 bits
    cache_dir = bpy.path.abspath(prefs.cache_dir).strip() if prefs and prefs.cache_dir else ""
    return {
        "prompt": values["prompt"],
        "sky_prompt": values["sky_prompt"].strip() or None,
        "horizon_prompt": values["horizon_prompt"].strip() or None,
        "ground_prompt": values["ground_prompt"].strip() or None,
        "negative_prompt": values["negative_prompt"],
        "model": model,
        "steps": None if values["auto_steps"] else int(values["steps"]),
        "guidance": None if values["auto_guidance"] else float(values["guidance"]),
        "seed": int(seed),
        "width": width,
        "device": job_device(prefs),
        "precision": prefs.precision if prefs else "auto",
        "cpu_offload": bool(prefs.cpu_offload) if prefs else False,
        "vae_tiling": bool(prefs.vae_tiling) if prefs else False,
        "offline": bool(prefs.offline if prefs else False) or offline_forced(),
        "cache_dir": cache_dir or None,
        "output": output,
        # Only for videos: a still's job stays what an engine without video understands.
        **(
            {
                "video": True,
                "frames": int(values["frames"]),
                "fps": None if values["auto_fps"] else int(values["fps"]),
                # Loop: the engine makes a seamless loop (frames - 1 frames, the last
                # leading into the first) and the sequence plays cyclic. Sent only when
                # on: a plain clip's job stays what an engine before loops understands.
                **({"loop": True} if values["loop"] else {}),
            }
            if values.get("video")
            else {}
        ),
        # HDR: stills only (animated worlds stay LDR); absent otherwise, as before.
        **({"hdr": True} if values.get("hdr") and not values.get("video") else {}),
        # ---- history: Draft. The draft's width and steps replace the ones above, and
        # final_width is the width this job would have without Draft (the engine draws
        # that final's noise and pools it onto the draft's sphere, so Make Final makes
        # the same world). Absent without Draft, as before.
        **(properties.draft_options(values, model) if values.get("draft") else {}),
    }


def start_generation(context, op=None) -> tuple[Generation | None, str]:
    """Check everything, then start the worker. Returns (generation, "") or (None, error)."""
    global _ACTIVE
    with _LOCK:
        if _ACTIVE is not None:
            return None, "a generation is already running"
        scene = context.scene
        settings = scene.spherediff
        prefs = get_preferences(context)
        problem = script_problem(op) if op is not None else ""
        if problem:
            return None, f"invalid option: {problem}"
        values = resolve_values(settings, op)

        notes = []
        problem = hdr_problem(values, op)
        if problem:
            return None, problem
        if values["video"] and values["pack_image"]:
            if op is not None and op.properties.is_property_set("pack_image"):
                return None, PACK_SEQUENCE_REFUSED
            notes.append(PACK_SEQUENCE_IGNORED)
            values["pack_image"] = False

        python, source, problem = resolve_worker_python(context)
        if problem:
            return None, problem
        problem = properties.generation_problem(values, resolve_model(values, prefs))
        if problem:
            return None, problem
        try:  # GPUs and GPU IDs: how many worker processes, on which GPUs
            gpus = gpu_plan(prefs, job_device(prefs))
        except worker_client.LaunchError as exc:
            return None, str(exc)
        staging = Path(tempfile.mkdtemp(prefix="spherediff-"))
        placeholder = str(Path(tempfile.gettempdir()) / "spherediff.png")
        options = build_options(values, prefs, placeholder)
        problem = ""
        if values["extend_image"]:  # a data-block may be saved into the staging folder
            known, problem = known_image_options(values, scene, staging)
            options.update(known)
        if not problem:
            error = validate_options(options)
            problem = f"invalid option: {error}" if error else ""
        if not problem:
            problem = saving.folder_problem(world.output_folder(values["output_dir"]))
        if problem:
            shutil.rmtree(staging, ignore_errors=True)
            return None, problem

        # A video's outputs are named by the stem: world_frames/frame_0001.png..., world.mp4
        options["output"] = str(staging / ("world.png" if values["video"] else "panorama.png"))
        every = preview_steps(op, prefs)
        if every and engine_knows("preview_every"):  # absent without previews, as before
            options["preview_every"] = every
        launch = {
            "python": python,
            "source": source,
            "gpus": gpus,
            "keep": keep_model_loaded(prefs),
            "idle_s": unload_after_s(prefs),
        }
        run = new_run(launch, options, staging)
        if not run.start():
            shutil.rmtree(staging, ignore_errors=True)
            return None, run.failure.message
        _ACTIVE = Generation(run, staging, scene.name, values, options, notes)
        _ACTIVE.launch = launch
        return _ACTIVE, ""


def new_run(launch: dict, options: dict, staging: Path):
    """The worker run of one job: on the warm worker (Keep Model Loaded, one process),
    else in a worker of its own (several GPUs, or Keep Model Loaded off), the warm one
    stopped first so that its model's memory is free."""
    python, gpus = launch["python"], launch["gpus"]
    how = f", {gpus.processes} processes (torchrun)" if gpus.distributed else ""
    if gpus.visible_devices is not None:
        how += f", CUDA_VISIBLE_DEVICES={gpus.visible_devices}"
    header = f"SphereDiff worker {python} (from {launch['source']}){how}, {time.ctime()}"
    log = None
    with contextlib.suppress(OSError):
        log = user_folder(create=True) / "worker.log"
    common = {
        "env": worker_client.worker_env(offline=options["offline"]),
        "stderr_log": log,
        # Made for this job alone: should Blender die, the worker removes it too.
        "extra_job": {"staging_dir": str(staging)},
        "cwd": str(staging),
        "gpus": gpus,
        "preview_dir": staging,
    }
    if launch["keep"] and not gpus.distributed:
        worker_client.WARM.idle_s = launch["idle_s"]
        # (The warm worker itself runs in a neutral folder: staging folders are per job.)
        return worker_client.ServedRun(python, options, log_header=header, **common)
    worker_client.WARM.stop()
    if log is not None:
        with contextlib.suppress(OSError):
            log.write_text(header + "\n")
    return worker_client.GenerationRun(python, options, **common)


def preview_steps(op, prefs) -> int:
    """Denoising steps between live previews for this run (0: none). The preferences'
    Live Preview decides, except in background mode (no viewport to show them in), where
    a script asks for them with ``preview=True``; ``preview=False`` turns them off."""
    props = getattr(op, "properties", None)
    if (
        props is not None
        and "preview" in props.bl_rna.properties
        and props.is_property_set("preview")
    ):
        wanted = bool(op.preview)
    else:
        wanted = live_preview(prefs) and not bpy.app.background
    return preview_every(prefs) if wanted else 0


def engine_knows(name: str) -> bool:
    """Whether the bundled engine's GenerationOptions has the field ``name`` (so that a
    job never carries a field its engine would refuse)."""
    module = engine_options_module()
    if module is None:
        return False
    return name in {f.name for f in dataclasses.fields(module.GenerationOptions)}


def start_next_job(context, gen: Generation) -> str:
    """Start the job of the next seed in ``gen.seeds`` (after a finished job) with the
    same settings, on the same warm worker; "" or why it could not start."""
    global _ACTIVE
    seed = int(gen.seeds.pop(0))
    staging = Path(tempfile.mkdtemp(prefix="spherediff-"))
    options = dict(gen.options)
    options["seed"] = seed
    options["output"] = str(staging / Path(gen.options["output"]).name)
    scene = bpy.data.scenes.get(gen.scene_name) or context.scene
    if gen.values.get("extend_image"):  # a data-block is saved into the new staging folder
        known, problem = known_image_options(gen.values, scene, staging)
        if problem:
            shutil.rmtree(staging, ignore_errors=True)
            return problem
        options.update(known)
    run = new_run(gen.launch, options, staging)
    if not run.start():
        shutil.rmtree(staging, ignore_errors=True)
        return run.failure.message
    with _LOCK:
        gen.run, gen.staging, gen.options, gen.preview = run, staging, options, None
        _ACTIVE = gen
    return ""


def report_notes(gen: Generation, report) -> None:
    """What the current run says about the worker itself (a warm worker restarted), at
    once: ``report(kind, text)``, and printed in background mode."""
    for note in gen.run.notes:
        report("WARNING", f"SphereDiff: {note}")
        if bpy.app.background:
            print(f"SphereDiff: {note}", flush=True)
    gen.run.notes.clear()


def next_job(context, gen: Generation, report) -> tuple[bool, str] | None:
    """The current job is over: load its result into the World (or put the World back).
    With seeds left after a success, start the next seed's job and return None (still
    running); else the generation's (ok, message)."""
    report_notes(gen, report)  # (a worker replaced during the job)
    ok, message = finish_generation(context, gen)
    if ok:
        gen.results.append(gen.run.result)
    if not (ok and gen.seeds):
        return ok, message
    report("INFO", f"SphereDiff: {message}")
    if bpy.app.background:
        print(f"SphereDiff: {message}", flush=True)
    error = start_next_job(context, gen)
    if error:
        gen.seeds.clear()
        return False, error
    report_notes(gen, report)
    return None


def run_generation(context, gen: Generation, report) -> tuple[bool, str]:
    """Run a started generation to its end in this thread (scripts, background mode):
    its job, then one job per seed left in ``gen.seeds``, progress printed; (ok, message)
    of the last job. Ctrl+C cancels the running job."""
    report_notes(gen, report)

    def progress(run) -> None:
        gen.print_progress(run)
        show_latest_preview(gen)  # (with preview=True: for a script watching the World)

    while True:
        model, seed = gen.options["model"], gen.options["seed"]
        print(f"SphereDiff: generating with {model} (seed {seed})", flush=True)
        worker_client.run_blocking(gen.run, progress)
        outcome = next_job(context, gen, report)
        if outcome is not None:
            return outcome


def show_latest_preview(gen: Generation) -> bool:
    """Show the current job's newest preview (one that came since the last call) as the
    World; True when one was shown."""
    shot = gen.run.take_preview()
    if shot is None or gen.run.finished:
        return False
    scene = bpy.data.scenes.get(gen.scene_name)
    if scene is None:
        return False
    if gen.preview is None:
        gen.preview = world.LivePreview(scene)
    return gen.preview.show(
        scene,
        Path(shot["path"]),
        rotation_z=gen.values["rotation_z"],
        strength=gen.values["strength"],
    )


def end_preview(gen: Generation) -> None:
    """Put the scene's own World back and remove the preview's World and image."""
    preview, gen.preview = gen.preview, None
    if preview is not None:
        preview.end()


# --------------------------------------------------------------------------- known image
KNOWN_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def known_image_options(values: dict, scene, staging: Path) -> tuple[dict, str]:
    """The engine options of Extend Image (``image`` and its placement), or a problem."""
    path, problem = known_image_file(values, staging)
    if problem:
        return {}, problem
    placement, problem = camera_match.placement_for(values, scene)
    if problem:
        return {}, problem
    return {
        "image": path,
        "image_yaw_deg": camera_match.wrap_deg(placement["yaw_deg"]),
        "image_pitch_deg": placement["pitch_deg"],
        "image_roll_deg": camera_match.wrap_deg(placement["roll_deg"]),
        "image_fov_deg": placement["fov_deg"],
        "image_feather_deg": math.degrees(values["image_feather"]),
        "image_strength": float(values["image_strength"]),
    }, ""


def known_image_file(values: dict, staging: Path) -> tuple[str, str]:
    """The file of the image to extend: a data-block's own file, or the data-block saved
    as a PNG into the staging folder (a render result, an edited, packed or generated
    image, as it is displayed), or the chosen file. (path, "") or ("", problem)."""
    name = values["image_name"].strip()
    if name:
        image = bpy.data.images.get(name)
        if image is None:
            return "", f"Extend Image: there is no image named {name!r}; choose another one"
        if image.source == "FILE" and image.packed_file is None and not image.is_dirty:
            path = Path(bpy.path.abspath(image.filepath, library=image.library))
            if path.is_file() and path.suffix.lower() in KNOWN_SUFFIXES:
                return str(path), ""
        return save_as_png(image, staging / "known.png")
    text = values["image_path"].strip()
    if not text:
        return "", (
            "Extend Image is on but no image is chosen: pick an image file or an image "
            "data-block, or turn Extend Image off"
        )
    return bpy.path.abspath(text), ""


def save_as_png(image, path: Path) -> tuple[str, str]:
    """Save ``image`` as an 8-bit RGB PNG the way it is displayed (the scene's view
    transform), the scene's output settings restored afterwards."""
    scene = bpy.context.scene
    settings = scene.render.image_settings
    keep = {k: getattr(settings, k) for k in ("file_format", "color_mode", "color_depth")}
    try:
        settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGB", "8"
        image.save_render(str(path), scene=scene)
    except RuntimeError as exc:
        return "", f"Extend Image: {image.name!r} cannot be saved as a picture ({exc})"
    finally:
        for key, value in keep.items():
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                setattr(settings, key, value)
    if not path.is_file():
        return "", f"Extend Image: {image.name!r} has no pixels to extend (render it first)"
    return str(path), ""


HDR_VIDEO_REFUSED = (
    "HDR Lighting is for stills: animated worlds stay LDR in this version; pass hdr=False "
    "for an animated world"
)
SUN_WITHOUT_HDR_REFUSED = (
    "sun_lamp=True needs hdr=True: the sun is found when the panorama is lifted to HDR; "
    "pass hdr=True, or sun_lamp=False"
)


def hdr_problem(values: dict, op=None) -> str:
    """A script's hdr / sun_lamp that cannot be honoured (empty: fine). The scene's own
    settings never fail here: for an animated world HDR and the lamp are simply not used."""
    props = op.properties if op is not None else None
    if props is None:
        return ""
    if values["video"] and values["hdr"] and props.is_property_set("hdr"):
        return HDR_VIDEO_REFUSED
    if (
        values["sun_lamp"]
        and not values["hdr"]
        and props.is_property_set("sun_lamp")
        and props.is_property_set("hdr")
    ):
        return SUN_WITHOUT_HDR_REFUSED
    return ""


PACK_SEQUENCE_REFUSED = (
    "Pack Image cannot be used for an animated world: Blender cannot pack an image "
    "sequence; the frames are saved in the output folder (turn Pack Image off)"
)
PACK_SEQUENCE_IGNORED = (
    "Pack Image ignored: Blender cannot pack an image sequence; the frames stay in the "
    "output folder"
)


def generate_poll_problem(context) -> str:
    """Why the Generate button (World properties) cannot run with the scene's settings.

    Only for the button: a script's call passes its own values, which ``execute`` checks
    with the same words.
    """
    area = getattr(context, "area", None)
    scene = getattr(context, "scene", None)
    if area is None or area.type != "PROPERTIES" or scene is None:
        return ""
    settings = scene.spherediff
    values = {key: getattr(settings, key) for key in properties.GENERATION_KEYS}
    return properties.generation_problem(values, resolve_model(values, get_preferences(context)))


class VideoResult:
    """The frame sequence of a video ``result`` event (docs/worker-protocol.md)."""

    def __init__(self, result: dict):
        first = result.get("first_frame") or result.get("image")
        if not isinstance(first, str) or not first:
            raise ValueError("the worker's result names no first frame")
        self.first_frame = Path(first)
        folder = result.get("frames_dir")
        self.frames_dir = Path(folder) if isinstance(folder, str) else self.first_frame.parent
        count = result.get("frames")
        self.frames = count if isinstance(count, int) and not isinstance(count, bool) else None
        fps = result.get("fps")
        self.fps = fps if isinstance(fps, int) and not isinstance(fps, bool) else None
        mp4 = result.get("mp4")
        self.mp4 = Path(mp4) if isinstance(mp4, str) and mp4 else None


def finish_generation(context, gen: Generation) -> tuple[bool, str]:
    """Load the result into the World (on success) and clean up. Returns (ok, message).

    The job's live preview ends first: the scene's own World is back, exactly as it was,
    before a result is loaded into it (or, on failure and cancel, for good)."""
    global _ACTIVE
    run = gen.run
    end_preview(gen)
    scene = bpy.data.scenes.get(gen.scene_name) or context.scene
    settings = scene.spherediff
    try:
        if run.failure is not None:
            if run.failure.code == "cancelled":
                message = "cancelled; the World was left as it was"
            else:
                message = run.failure.message
            settings.last_error = message
            if run.failure.detail and run.failure.code in ("internal", "worker_died"):
                print(f"SphereDiff worker details:\n{run.failure.detail}", file=sys.stderr)
            return False, message
        result = run.result
        if gen.values.get("video"):
            ok, message = _finish_video(scene, gen, result)
            if ok:
                history.record(context, gen, result)  # history: every result, World loaded
            return ok, message
        folder = world.output_folder(gen.values["output_dir"])
        seed = int(result.get("seed", gen.options["seed"]))
        exr = result.get("exr") if gen.options.get("hdr") else None
        exr = Path(exr) if isinstance(exr, str) and Path(exr).is_file() else None
        if gen.options.get("hdr") and exr is None:
            gen.notes.append("the worker sent no HDR image (an older engine?): the World is LDR")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            dest = world.unique_image_path(folder, seed)
            dest_exr = dest.with_suffix(".exr") if exr is not None else None
            steps = [(dest, saving.file_from(Path(result["image"])))]
            if exr is not None:
                steps.append((dest_exr, saving.file_from(exr)))
            saving.save_result(
                steps, result.get("sidecar"), dest.with_suffix(".json"), dest, exr=dest_exr
            )
        except (OSError, ValueError) as exc:
            message = f"could not save the panorama in {str(folder)!r}: {exc}"
            settings.last_error = message
            return False, message
        metadata = {
            "seed": seed,
            "model": gen.options["model"],
            "prompt": gen.options["prompt"][:1000],
        }
        sun = result.get("sun") if exr is not None and isinstance(result.get("sun"), dict) else None
        shown = dest_exr if exr is not None else dest
        loaded = world.set_from_file(
            scene,
            shown,
            rotation_z=gen.values["rotation_z"],
            strength=gen.values["strength"],
            pack=gen.values["pack_image"],
            metadata=metadata,
        )
        lamp = world.apply_sun(
            scene,
            sun,
            height_px=int(loaded.size[1]),  # the mask's margin is in this image's pixels
            rotation_z=gen.values["rotation_z"],
            sun_strength=gen.values["sun_strength"],
            lamp=bool(gen.values["sun_lamp"]),
        )
        seconds = float(result.get("seconds") or run.elapsed_s)
        settings.last_image = world.blend_relative(shown)
        settings.last_seed = seed if seed <= properties.MAX_SEED else 0
        settings.last_seconds = seconds
        settings.last_model = gen.options["model"]
        settings.last_frames = 0
        settings.last_fps = 0
        store_sun(settings, exr is not None, sun)
        settings.last_error = ""
        history.record(context, gen, result)  # history: every result, World loaded
        what = sun_summary(sun, lamp) if exr is not None else ""
        return True, (f"{shown.name}{what} (seed {seed}, {worker_client.format_seconds(seconds)})")
    finally:
        shutil.rmtree(gen.staging, ignore_errors=True)
        with _LOCK:
            if _ACTIVE is gen:
                _ACTIVE = None


def store_sun(settings, hdr: bool, sun: dict | None) -> None:
    """What the panel shows of the last World's light."""
    settings.last_hdr = hdr
    visible = bool(sun and sun.get("visible"))
    settings.last_sun = visible
    settings.last_sun_azimuth = float(sun["azimuth_deg"]) if visible else 0.0
    settings.last_sun_elevation = float(sun["elevation_deg"]) if visible else 0.0
    settings.last_sun_energy = float(sun["strength"]) if visible else 0.0


def sun_summary(sun: dict | None, lamp) -> str:
    if not sun or not sun.get("visible"):
        return ", HDR, no sun found"
    where = f"azimuth {sun['azimuth_deg']:.0f}°, elevation {sun['elevation_deg']:.0f}°"
    return f", HDR, sun at {where}" + (f" ({lamp.name})" if lamp is not None else "")


def _finish_video(scene, gen: Generation, result: dict) -> tuple[bool, str]:
    """Move the frame sequence (with its MP4 and sidecar) to the output folder and load it
    into the World. Nothing is left in the output folder when this fails."""
    settings = scene.spherediff
    folder = world.output_folder(gen.values["output_dir"])
    seed = int(result.get("seed", gen.options["seed"]))

    def failed(message: str) -> tuple[bool, str]:
        settings.last_error = message
        return False, message

    try:
        video = VideoResult(result)
    except ValueError as exc:
        return failed(str(exc))
    frames = world.sequence_files(video.first_frame)
    if not frames or (video.frames is not None and len(frames) != video.frames):
        return failed(
            f"the worker reported {video.frames} frames in {str(video.frames_dir)!r} but "
            f"{len(frames)} are there"
        )
    count = len(frames)
    fps = video.fps or gen.options.get("fps") or 24

    dest = world.unique_image_path(folder, seed)
    _, dest_sidecar, dest_frames, dest_mp4, _ = world.sequence_paths(dest)
    has_mp4 = video.mp4 is not None and video.mp4.is_file()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        steps = [(dest_frames, saving.folder_from(frames))]
        if has_mp4:
            steps.append((dest_mp4, saving.file_from(video.mp4)))
        saving.save_result(
            steps,
            result.get("sidecar"),
            dest_sidecar,
            dest,
            frames_dir=dest_frames,
            first_frame=frames[0].name,
            mp4=dest_mp4 if has_mp4 else None,
        )
    except (OSError, ValueError) as exc:
        return failed(f"could not save the frames in {str(folder)!r}: {exc}")

    first = dest_frames / frames[0].name
    metadata = {
        "seed": seed,
        "model": gen.options["model"],
        "prompt": gen.options["prompt"][:1000],
        "frames": count,
        "fps": int(fps),
        "mp4": world.blend_relative(dest_mp4) if has_mp4 else None,
    }
    world.set_from_sequence(
        scene,
        first,
        frame_count=count,
        fps=int(fps),
        loop=gen.values["loop"],
        match_scene_range=gen.values["match_scene"],
        rotation_z=gen.values["rotation_z"],
        strength=gen.values["strength"],
        metadata=metadata,
    )
    # An animated world is LDR: no disc to mask, no lamp of an earlier still left shining.
    world.apply_sun(
        scene, None, height_px=0, rotation_z=gen.values["rotation_z"], sun_strength=1.0, lamp=False
    )
    store_sun(settings, False, None)
    seconds = float(result.get("seconds") or gen.run.elapsed_s)
    settings.last_image = world.blend_relative(first)
    settings.last_seed = seed if seed <= properties.MAX_SEED else 0
    settings.last_seconds = seconds
    settings.last_model = gen.options["model"]
    settings.last_frames = count
    settings.last_fps = int(fps)
    settings.last_error = ""
    return True, (
        f"{dest_frames.name}: {count} frames at {fps} fps "
        f"(seed {seed}, {worker_client.format_seconds(seconds)})"
    )


def abort_active() -> None:
    """Stop the running generation at once and forget it (file load, disabling)."""
    global _ACTIVE
    with _LOCK:
        gen, _ACTIVE = _ACTIVE, None
    if gen is not None:
        gen.run.abort()
        with contextlib.suppress(ReferenceError, RuntimeError):  # (a file being unloaded)
            end_preview(gen)
        shutil.rmtree(gen.staging, ignore_errors=True)


def tag_redraw(context=None, types=("PROPERTIES", "STATUSBAR", "PREFERENCES")) -> None:
    wm = (context or bpy.context).window_manager
    for window in wm.windows:
        screen = window.screen
        if screen is None:
            continue
        for area in screen.areas:
            if area.type in types:
                area.tag_redraw()


def wrap(text: str, width: int = 70) -> list[str]:
    return textwrap.wrap(text, width) or [""]


# --------------------------------------------------------------------------- generate
class SPHEREDIFF_OT_generate(Operator):
    """Generate a seamless 360 degree panorama from the prompt and use it as the World"""

    bl_idname = "spherediff.generate"
    bl_label = "Generate World"
    # UNDO: a finished generation is one undo step. No REGISTER: the "Adjust Last
    # Operation" panel would re-run a whole generation on every tweak.
    bl_options = {"UNDO"}

    __annotations__ = {
        **properties.generation_properties(live_update=False),
        "preview": BoolProperty(
            name="Live Preview",
            description=(
                "Show the panorama forming as the World while it is denoised (unset: the "
                "preferences' Live Preview; in background mode only when set)"
            ),
            default=True,
            options={"SKIP_SAVE"},
        ),
    }

    _timer = None
    _generation = None

    @classmethod
    def poll(cls, context):
        if _ACTIVE is not None:
            cls.poll_message_set("A SphereDiff generation is already running")
            return False
        if installer.STATE.running:
            cls.poll_message_set("Dependencies are being installed; wait until that is done")
            return False
        if context.scene is None:
            cls.poll_message_set("There is no scene")
            return False
        problem = generate_poll_problem(context)
        if problem:
            cls.poll_message_set(problem)
            return False
        return True

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        gen, error = start_generation(context, self)
        if gen is None:
            return self._failed(context, error)
        self._generation = gen
        report_notes(gen, self._report)
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_INTERVAL_S, window=context.window)
        wm.modal_handler_add(self)
        tag_redraw(context)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        gen = self._generation
        if event.type == "ESC" and event.value == "PRESS":
            gen.run.request_cancel()
            gen.run.pump()
            tag_redraw(context)
            return {"RUNNING_MODAL"}
        if event.type == "TIMER":
            done = gen.run.pump()
            # Only the newest preview of this tick is shown (the run keeps no other).
            if not done and show_latest_preview(gen):
                tag_redraw(context, ("VIEW_3D",))
            if done:
                outcome = next_job(context, gen, self._report)
                if outcome is not None:
                    return self._done(context, *outcome)
            tag_redraw(context)
        return {"PASS_THROUGH"}

    def cancel(self, context):
        # Blender ends the modal operator (new file, quit): stop the worker, keep the World.
        self._remove_timer(context)
        abort_active()
        tag_redraw(context)

    def execute(self, context):
        gen, error = start_generation(context, self)
        if gen is None:
            return self._failed(context, error)
        self._generation = gen
        return self._done(context, *run_generation(context, gen, self._report))

    # -- helpers ------------------------------------------------------------------------
    def _report(self, kind: str, text: str) -> None:
        self.report({kind}, text)

    def _done(self, context, ok: bool, message: str):
        self._remove_timer(context)
        gen = self._generation
        self._generation = None
        tag_redraw(context, ("PROPERTIES", "STATUSBAR", "PREFERENCES", "VIEW_3D"))
        for note in gen.notes:
            self.report({"WARNING"}, f"SphereDiff: {note}")
        if ok:
            self.report({"INFO"}, f"SphereDiff: {message}")
            return {"FINISHED"}
        if gen.results:  # earlier seeds finished: the World shows the last of them
            done = len(gen.results)
            self.report({"WARNING"}, f"SphereDiff: {message} (after {done} finished)")
            return {"FINISHED"}
        if gen.run.failure is not None and gen.run.failure.code == "cancelled":
            self.report({"WARNING"}, f"SphereDiff: {message}")
        else:
            self.report({"ERROR"}, f"SphereDiff: {message}")
        return {"CANCELLED"}

    def _failed(self, context, message: str):
        scene = context.scene
        if scene is not None:
            scene.spherediff.last_error = message
        self.report({"ERROR"}, f"SphereDiff: {message}")
        return {"CANCELLED"}

    def _remove_timer(self, context):
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None


class SPHEREDIFF_OT_unload_model(Operator):
    """Stop the worker that keeps the model loaded and free its GPU and main memory"""

    bl_idname = "spherediff.unload_model"
    bl_label = "Unload Model"

    @classmethod
    def poll(cls, context):
        if _ACTIVE is not None:
            cls.poll_message_set("Wait until the running generation is done")
            return False
        if not worker_client.WARM.running():
            cls.poll_message_set("No model is loaded: the worker is not running")
            return False
        return True

    def execute(self, context):
        pid = worker_client.WARM.pid
        if not worker_client.WARM.stop_if_idle():
            self.report({"WARNING"}, "SphereDiff: no idle worker to stop")
            return {"CANCELLED"}
        tag_redraw(context)
        self.report({"INFO"}, f"SphereDiff: model unloaded (worker {pid} stopped)")
        return {"FINISHED"}


class SPHEREDIFF_OT_cancel(Operator):
    """Stop the running generation; the World stays as it was"""

    bl_idname = "spherediff.cancel"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}

    @classmethod
    def poll(cls, context):
        if _ACTIVE is None:
            cls.poll_message_set("No SphereDiff generation is running")
            return False
        if _ACTIVE.run.cancel_requested:
            cls.poll_message_set("Cancelling already")
            return False
        return True

    def execute(self, context):
        request_cancel()
        tag_redraw(context)
        return {"FINISHED"}


# --------------------------------------------------------------------------- lift to HDR
LIFT_TIMEOUT_S = 600.0
LDR_SUFFIXES = (".png", ".jpg", ".jpeg")
HDR_FORMATS = ("OPEN_EXR", "OPEN_EXR_MULTILAYER", "HDR")


def lift_problem(image) -> str:
    """Why Lift to HDR cannot take ``image`` (empty: it can)."""
    if image is None:
        return "The World has no environment image to lift: generate or load a panorama first"
    if image.source != "FILE":
        return f"{image.name!r} is not a single image file ({image.source.lower()})"
    # (Not is_float: Blender holds a 16-bit PNG as floats, and the lift takes one.)
    if image.file_format in HDR_FORMATS or Path(image.filepath).suffix.lower() in (".exr", ".hdr"):
        return f"{image.name!r} is already HDR: it lights the scene as it is"
    return ""


def lift_input(image, staging: Path) -> Path:
    """A file the worker can read: the image's own file, or its packed bytes written out."""
    if image.packed_file is not None:
        suffix = Path(image.filepath).suffix.lower()
        path = staging / f"packed{suffix if suffix in LDR_SUFFIXES else '.png'}"
        path.write_bytes(bytes(image.packed_file.data))
        return path
    path = Path(bpy.path.abspath(image.filepath, library=image.library))
    if not path.is_file():
        raise FileNotFoundError(f"the image file {str(path)!r} is missing")
    return path


def run_lift(python: str, source: Path, out: Path) -> str:
    """``spherediff hdr SOURCE --out OUT`` in the worker's Python; the error ("" if none)."""
    import subprocess

    argv = worker_client.python_argv(
        python, "spherediff_core.cli", "hdr", str(source), "--out", str(out), "--quiet"
    )
    try:
        proc = subprocess.run(
            argv,
            env=worker_client.worker_env(),
            cwd=worker_client.neutral_cwd(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=LIFT_TIMEOUT_S,
            **worker_client.popen_group_kwargs(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the lift could not run ({exc})"
    if proc.returncode == 0:
        return ""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    said = next((ln for ln in reversed(lines) if ln.startswith("spherediff: error: ")), "")
    if said:
        return said.removeprefix("spherediff: error: ")
    return f"the lift failed (exit {proc.returncode}): {lines[-1] if lines else 'no message'}"


class SPHEREDIFF_OT_lift_to_hdr(Operator):
    """Lift the World's panorama to linear HDR (an OpenEXR, its sun restored) to light with"""

    bl_idname = "spherediff.lift_to_hdr"
    bl_label = "Lift to HDR"
    bl_options = {"REGISTER", "UNDO"}

    sun_lamp: BoolProperty(
        name="Sun Lamp",
        description=(
            "Add or update the SphereDiff Sun from the sun found in the panorama (its disc "
            "masked in the World)"
        ),
        default=True,
        options={"SKIP_SAVE"},
    )

    @classmethod
    def poll(cls, context):
        if _ACTIVE is not None:
            cls.poll_message_set("Wait until the running generation is done")
            return False
        if context.scene is None:
            cls.poll_message_set("There is no scene")
            return False
        problem = lift_problem(world.lift_source(context.scene))
        if problem:
            cls.poll_message_set(problem)
            return False
        return True

    def execute(self, context):
        scene = context.scene
        settings = scene.spherediff
        image = world.lift_source(scene)
        problem = lift_problem(image)
        if problem:
            return self._fail(settings, problem)
        python, _source, problem = resolve_worker_python(context)
        if problem:
            return self._fail(settings, problem)
        folder = world.output_folder(settings.output_dir)
        problem = saving.folder_problem(folder)
        if problem:
            return self._fail(settings, problem)
        staging = Path(tempfile.mkdtemp(prefix="spherediff-lift-"))
        try:
            try:
                source = lift_input(image, staging)
            except OSError as exc:
                return self._fail(settings, f"cannot read {image.name!r}: {exc}")
            error = run_lift(python, source, staging / "lifted.exr")
            if error:
                return self._fail(settings, error)
            stem = Path(image.filepath).stem or image.name
            dest = unique_path(folder, f"{stem}_hdr", ".exr")
            try:
                folder.mkdir(parents=True, exist_ok=True)
                saving.save_result(
                    [(dest, saving.file_from(staging / "lifted.exr"))],
                    str(staging / "lifted.json"),
                    dest.with_suffix(".json"),
                    dest,
                    exr=dest,
                )
                doc = json.loads(dest.with_suffix(".json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                return self._fail(
                    settings, f"could not save the HDR image in {str(folder)!r}: {exc}"
                )
            sun = (doc.get("hdr") or {}).get("sun")
            loaded = world.set_from_file(
                scene,
                dest,
                rotation_z=settings.rotation_z,
                strength=settings.strength,
                pack=settings.pack_image,
                metadata={"source": image.name},
            )
            lamp = world.apply_sun(
                scene,
                sun if isinstance(sun, dict) else None,
                height_px=int(loaded.size[1]),
                rotation_z=settings.rotation_z,
                sun_strength=settings.sun_strength,
                lamp=self.sun_lamp,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        settings.last_image = world.blend_relative(dest)
        store_sun(settings, True, sun if isinstance(sun, dict) else None)
        settings.last_error = ""
        tag_redraw(context)
        self.report({"INFO"}, f"SphereDiff: {dest.name}{sun_summary(sun, lamp)}")
        return {"FINISHED"}

    def _fail(self, settings, message: str):
        settings.last_error = message
        self.report({"ERROR"}, f"SphereDiff: {message}")
        return {"CANCELLED"}


def unique_path(folder: Path, stem: str, suffix: str) -> Path:
    """``folder/stem.suffix``, numbered (``stem_2``...) when it or its sidecar exists."""
    path, n = folder / f"{stem}{suffix}", 1
    while path.exists() or path.with_suffix(".json").exists():
        n += 1
        path = folder / f"{stem}_{n}{suffix}"
    return path


# --------------------------------------------------------------------------- check worker
def _store_check(result) -> None:
    target = worker_client.LAST_CHECK
    for name, value in vars(result).items():
        setattr(target, name, value)


class SPHEREDIFF_OT_check_worker(Operator):
    """Ask the worker for its engine, torch, diffusers and transformers versions and device"""

    bl_idname = "spherediff.check_worker"
    bl_label = "Check Worker"

    @classmethod
    def poll(cls, context):
        if worker_client.LAST_CHECK.running:
            cls.poll_message_set("The worker is being checked")
            return False
        return True

    def execute(self, context):
        python, _source, problem = resolve_worker_python(context)
        if problem:
            failed = worker_client.CheckResult(python=python or "", done=True, problems=[problem])
            _store_check(failed)
            self.report({"WARNING"}, f"SphereDiff: {problem}")
            tag_redraw(context)
            return {"CANCELLED"}
        env = worker_client.worker_env()
        version = engine_version()
        if bpy.app.background or context.window is None:
            result = worker_client.check_worker(python, env, addon_engine_version=version)
            _store_check(result)
            return self._report(result)

        _store_check(worker_client.CheckResult(python=python, running=True))

        def work():
            _store_check(worker_client.check_worker(python, env, addon_engine_version=version))

        thread = threading.Thread(target=work, name="spherediff-check", daemon=True)
        thread.start()

        def poll_thread():
            if thread.is_alive():
                return 0.25
            with contextlib.suppress(ReferenceError, AttributeError):
                tag_redraw()
            return None

        bpy.app.timers.register(poll_thread, first_interval=0.25)
        tag_redraw(context)
        return {"FINISHED"}

    def _report(self, result):
        for line in result.lines:
            print(f"SphereDiff: {line}")
        if result.problems:
            self.report({"WARNING"}, "SphereDiff: " + "; ".join(result.problems))
            return {"CANCELLED"}
        self.report({"INFO"}, "SphereDiff: " + " | ".join(result.lines))
        return {"FINISHED"}


# --------------------------------------------------------------------------- installer
class SPHEREDIFF_OT_install_dependencies(Operator):
    """Make the image generator's Python environment (PyTorch, diffusers; several GB)"""

    bl_idname = "spherediff.install_dependencies"
    bl_label = "Install Dependencies"

    wheel_folder: StringProperty(
        name="Local Wheels",
        description=(
            "Install only from this folder of .whl files, without network "
            "(pip --no-index --find-links)"
        ),
        subtype="DIR_PATH",
        default="",
        options={"SKIP_SAVE"},
    )
    with_dependencies: BoolProperty(
        name="With Dependencies",
        description=(
            "Also install torch, diffusers and transformers (off: only the engine wheel, "
            "pip --no-deps)"
        ),
        default=True,
        options={"SKIP_SAVE"},
    )
    clean: BoolProperty(
        name="Start Over",
        description="Delete the existing environment first",
        default=False,
        options={"SKIP_SAVE"},
    )

    _timer = None
    _job = None

    @classmethod
    def poll(cls, context):
        if installer.STATE.running:
            cls.poll_message_set("Dependencies are being installed")
            return False
        if _ACTIVE is not None:
            cls.poll_message_set("Wait until the running generation is done")
            return False
        return True

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        return context.window_manager.invoke_confirm(self, event)

    def execute(self, context):
        wheel = installer.bundled_wheel(ADDON_ROOT)
        if wheel is None:
            return self._fail(
                f"the engine wheel is missing from {ADDON_ROOT / 'wheels'}; rebuild the "
                "extension with scripts/build_extension.py"
            )
        folder = bpy.path.abspath(self.wheel_folder).strip() if self.wheel_folder else ""
        if folder and not Path(folder).is_dir():
            return self._fail(f"the wheel folder {folder!r} does not exist")
        if not folder and offline_forced():
            return self._fail(
                "online access is off (Preferences > System > Network): allow it, or "
                "install from a local wheel folder"
            )
        venv = venv_folder()
        user_folder(create=True)
        worker_client.WARM.stop()  # its Python is about to be replaced
        steps = installer.plan_steps(
            sys.executable, venv, wheel, folder or None, self.with_dependencies
        )
        job = installer.InstallJob(steps, venv, installer.log_path(user_folder()), self.clean)
        job.start()
        if bpy.app.background or context.window is None:
            shown = 0
            while not job.wait(0.2):
                shown = _print_install_progress(shown)
            _print_install_progress(shown)
            return self._done(context)
        self._job = job
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.2, window=context.window)
        wm.modal_handler_add(self)
        tag_redraw(context)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            self._job.cancel()
            return {"RUNNING_MODAL"}
        if event.type == "TIMER":
            tag_redraw(context)
            if not installer.STATE.running:
                context.window_manager.event_timer_remove(self._timer)
                self._timer = None
                return self._done(context)
        return {"PASS_THROUGH"}

    def cancel(self, context):
        if self._job is not None:
            self._job.cancel()
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None

    def _done(self, context):
        state = installer.STATE
        if state.hello is not None:
            _store_check(worker_client.describe_hello(state.hello, engine_version()))
        tag_redraw(context)
        if state.failed:
            return self._fail(state.message)
        self.report({"INFO"}, f"SphereDiff: {state.message}")
        return {"FINISHED"}

    def _fail(self, message: str):
        installer.STATE.message, installer.STATE.failed = message, True
        self.report({"ERROR"}, f"SphereDiff: {message}")
        return {"CANCELLED"}


def _print_install_progress(shown_step: int) -> int:
    state = installer.STATE
    if state.step != shown_step and state.step:
        print(f"SphereDiff: [{state.step}/{state.total}] {state.step_label}", flush=True)
    return state.step


# --------------------------------------------------------------------------- handlers
@bpy.app.handlers.persistent
def _on_load_pre(*_args):
    # A running generation belongs to the file being closed: it is stopped. An idle warm
    # worker stays: its model belongs to no file, and the next file generates at once.
    abort_active()


@bpy.app.handlers.persistent
def _on_save_pre(*_args):
    gen = _ACTIVE
    if gen is not None and gen.preview is not None:
        gen.preview.hide_for_save()


@bpy.app.handlers.persistent
def _on_save_post(*_args):
    gen = _ACTIVE
    if gen is not None and gen.preview is not None:
        gen.preview.show_after_save()


def _at_exit() -> None:
    """Blender quits during a generation: stop its worker and remove its staging folder
    (no bpy here: the file's data may be gone by now)."""
    gen = _ACTIVE
    if gen is not None:
        gen.run.abort()
        shutil.rmtree(gen.staging, ignore_errors=True)


_HANDLERS = (
    (bpy.app.handlers.load_pre, _on_load_pre),
    (bpy.app.handlers.save_pre, _on_save_pre),
    (bpy.app.handlers.save_post, _on_save_post),
)


def register_handlers() -> None:
    for handlers, handler in _HANDLERS:
        if handler not in handlers:
            handlers.append(handler)
    atexit.register(_at_exit)


def unregister_handlers() -> None:
    for handlers, handler in _HANDLERS:
        if handler in handlers:
            handlers.remove(handler)
    atexit.unregister(_at_exit)
    abort_active()
    worker_client.WARM.stop()  # disabling the add-on: no worker left behind


classes = (
    SPHEREDIFF_OT_generate,
    SPHEREDIFF_OT_cancel,
    SPHEREDIFF_OT_unload_model,
    SPHEREDIFF_OT_lift_to_hdr,
    SPHEREDIFF_OT_check_worker,
    SPHEREDIFF_OT_install_dependencies,
)
