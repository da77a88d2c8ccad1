"""The scene's generations: a history list in the .blend, seeds, variations and finals.

Every finished generation is one entry of ``scene.spherediff.history`` (a PropertyGroup
collection, saved with the file): its prompts, exact seed, model, size, steps, time, its
files (relative to the .blend once it is saved, kept relative when it is saved elsewhere:
:func:`_on_save_pre`), a small thumbnail packed into the .blend (so the list still shows
it after the files moved), and what the World was set to (image, rotation, strength, the
sun and its lamp), so **Restore** makes the World exactly that generation's again.

Seeds: the scene's Seed is a 32-bit Blender property while the engine takes seeds up to
2**63 - 1; an entry keeps its seed as text, and Reuse Seed puts a larger one in the
scene's ``exact_seed`` (used instead of Seed). **Variations** runs the settings with n
seeds (each its own files and entry; the World ends as the last); **Make Final** runs a
draft entry again at its final width and full steps, with the same seed, prompts and
model (the engine made the draft from the final's noise: ``final_width``).

Only bpy and world at import: properties imports this module for its PropertyGroup, and
operators import it when a generation finishes, so the rest is imported where it is used.
"""

import contextlib
import datetime
import json
import math
import random
import shutil
from array import array
from pathlib import Path

import bpy
from bpy.props import (
    BoolProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)
from bpy.types import Operator, PropertyGroup, UIList

from . import world

THUMB_SIZE = (128, 64)  # an ERP's 2:1, small enough to pack for every entry (~10 KB)
THUMB_PREFIX = ".SphereDiff thumbnail "  # a leading "." hides it from image lists
THUMB_TAG = "spherediff_thumbnail"
ENGINE_MAX_SEED = 2**63 - 1  # spherediff_core.options.MAX_SEED
VARIATIONS_MAX = 64  # hard limit of one Variations run (soft: 16)
# Settings that place and light the World rather than make the image: Make Final takes
# them from the scene as it is now (a restored draft, turned to taste), not from the draft.
DISPLAY_KEYS = ("rotation_z", "strength", "sun_strength", "output_dir", "pack_image")
_PATH_KEYS = ("image_path", "exr_path", "sidecar_path")
# The paths may start with "//" (Blender 4.5+ warns unless a property says so; 4.2 does
# not know the option): properties.BLEND_RELATIVE, which cannot be imported here.
_BLEND_RELATIVE = (
    {"PATH_SUPPORTS_BLEND_RELATIVE"}
    if "is_path_supports_blend_relative" in bpy.types.Property.bl_rna.properties
    else set()
)


# --------------------------------------------------------------------------- the entry
class SPHEREDIFF_PG_history_entry(PropertyGroup):
    """One finished generation (``name``: the prompt and seed, for the list's filter)."""

    prompt: StringProperty(name="Prompt", description="The generation's prompt")
    sky_prompt: StringProperty(name="Sky", description="Its sky prompt (empty: the prompt)")
    horizon_prompt: StringProperty(
        name="Horizon", description="Its horizon prompt (empty: the prompt)"
    )
    ground_prompt: StringProperty(
        name="Ground", description="Its ground prompt (empty: the prompt)"
    )
    negative_prompt: StringProperty(name="Negative Prompt", description="Its negative prompt")
    seed: StringProperty(
        name="Seed",
        description=(
            "The seed, exactly (as text: seeds go up to 2^63 - 1, beyond a Blender integer)"
        ),
    )
    model: StringProperty(name="Model", description="The Hub id or folder of its model")
    width: IntProperty(
        name="Width", description="Width of the panorama in pixels", min=0, soft_max=16384
    )
    height: IntProperty(
        name="Height", description="Height of the panorama in pixels", min=0, soft_max=8192
    )
    steps: IntProperty(
        name="Steps",
        description="Denoising steps it was made with (0: the model's default)",
        min=0,
        soft_max=100,
    )
    guidance: FloatProperty(
        name="Guidance",
        description="Guidance scale it was made with (negative: the model's default)",
        soft_min=0.0,
        soft_max=20.0,
    )
    video: BoolProperty(name="Animated", description="An animated world (a frame sequence)")
    frames: IntProperty(
        name="Frames", description="Frames of an animated world", min=0, soft_max=257
    )
    fps: IntProperty(name="FPS", description="Frame rate of an animated world", min=0)
    loop: BoolProperty(name="Loop", description="Whether the animated world loops")
    hdr: BoolProperty(name="HDR", description="The World showed the HDR OpenEXR")
    time: StringProperty(name="Time", description="When it finished (ISO 8601, local time)")
    seconds: FloatProperty(name="Seconds", description="How long it took", min=0.0, soft_max=3600.0)
    image_path: StringProperty(
        name="Image",
        description=(
            "The panorama (the first frame of an animated world); // is the .blend's folder"
        ),
        subtype="FILE_PATH",
        options=_BLEND_RELATIVE,
    )
    exr_path: StringProperty(
        name="OpenEXR",
        description="The HDR OpenEXR (empty: none); // is the .blend's folder",
        subtype="FILE_PATH",
        options=_BLEND_RELATIVE,
    )
    sidecar_path: StringProperty(
        name="Sidecar",
        description="The engine's .json with every option; // is the .blend's folder",
        subtype="FILE_PATH",
        options=_BLEND_RELATIVE,
    )
    thumbnail: PointerProperty(
        type=bpy.types.Image,
        name="Thumbnail",
        description="A small copy of the panorama, packed into the .blend",
    )
    # What the World was set to, for Restore.
    rotation_z: FloatProperty(
        name="Rotation",
        description="The World's rotation about Z",
        subtype="ANGLE",
        unit="ROTATION",
        soft_min=-math.pi,
        soft_max=math.pi,
    )
    strength: FloatProperty(
        name="Strength",
        description="The World's Background strength",
        min=0.0,
        soft_max=10.0,
    )
    sun_json: StringProperty(
        name="Sun",
        description="The sun found in the HDR panorama (the sidecar's hdr.sun), as JSON",
    )
    sun_lamp: BoolProperty(name="Sun Lamp", description="Whether the Sun lamp was wanted")
    sun_strength: FloatProperty(
        name="Sun Strength",
        description="The Sun lamp's scale against the estimate",
        min=0.0,
        soft_max=10.0,
    )
    pack_image: BoolProperty(name="Packed", description="Whether the image was packed")
    draft: BoolProperty(name="Draft", description="A draft: Make Final makes it at full size")
    final_width: IntProperty(
        name="Final Width",
        description="A draft's final width in pixels (0: not a draft)",
        min=0,
        soft_max=16384,
    )
    values_json: StringProperty(
        name="Settings",
        description="The generation settings it was made with, as JSON (for Make Final)",
    )


# --------------------------------------------------------------------------- helpers
def entries(scene):
    settings = getattr(scene, "spherediff", None)
    return settings.history if settings is not None else None


def active_entry(scene):
    """The selected entry, else the newest one; None when the history is empty."""
    settings = getattr(scene, "spherediff", None)
    if settings is None or not len(settings.history):
        return None
    index = settings.history_index
    if 0 <= index < len(settings.history):
        return settings.history[index]
    return settings.history[-1]


def entry_at(scene, index: int):
    """Entry ``index`` (-1: the active one, see :func:`active_entry`), or None."""
    if index < 0:
        return active_entry(scene)
    items = entries(scene)
    return items[index] if items is not None and index < len(items) else None


def draft_entry(scene):
    """The entry Make Final makes: the active one when it is a draft, else the newest draft."""
    entry = active_entry(scene)
    if entry is not None and entry.draft:
        return entry
    items = entries(scene)
    for item in reversed(items or ()):
        if item.draft:
            return item
    return None


def entry_seed(entry) -> int:
    return int(entry.seed)


def size_label(width: int) -> str:
    from . import properties

    for key, value in properties.SIZE_WIDTHS.items():
        if value == width:
            return key
    return f"{width} px" if width else "?"


def model_label(model: str) -> str:
    from . import properties

    for key, hub_id in properties.MODEL_IDS.items():
        if hub_id == model:
            return properties.MODEL_LABELS[key]
    return Path(model.rstrip("/\\")).name or model


def time_label(iso: str) -> str:
    """``2025-03-01 14:05`` (local time) of an ISO time; the text itself when unreadable."""
    try:
        when = datetime.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return when.strftime("%Y-%m-%d %H:%M")


def stored_path(path: Path | None) -> str:
    """How an entry keeps a file: ``//...`` for a saved .blend, else absolute."""
    return world.blend_relative(path) if path is not None else ""


def entry_file(text: str) -> Path | None:
    """An entry's stored path as an absolute path (None when empty)."""
    return Path(bpy.path.abspath(text)) if text else None


def result_files(image) -> tuple[Path, Path | None, Path]:
    """(the PNG or the first frame, the OpenEXR or None, the sidecar) of the World's image
    as the add-on saved it (world.unique_image_path and world.sequence_paths)."""
    shown = Path(bpy.path.abspath(image.filepath, library=image.library))
    if image.source == "SEQUENCE":
        frames_dir = shown.parent
        stem = frames_dir.name.removesuffix("_frames")
        return shown, None, frames_dir.parent / f"{stem}.json"
    if shown.suffix.lower() == ".exr":
        return shown.with_suffix(".png"), shown, shown.with_suffix(".json")
    return shown, None, shown.with_suffix(".json")


def make_thumbnail(source: Path, stem: str):
    """A THUMB_SIZE copy of the 8-bit panorama at ``source``, packed (None if unreadable).

    Blender scales it (the source is loaded apart and removed again): the PNG is sRGB
    bytes, so the thumbnail's bytes are the same colours, whatever the World shows.
    """
    width, height = THUMB_SIZE
    try:
        src = bpy.data.images.load(str(source), check_existing=False)
    except RuntimeError:
        return None
    try:
        if src.size[0] == 0 or src.size[1] == 0:
            return None
        src.scale(width, height)
        pixels = array("f", bytes(4 * width * height * 4))
        src.pixels.foreach_get(pixels)
    except RuntimeError:
        return None
    finally:
        bpy.data.images.remove(src)
    thumb = bpy.data.images.new(THUMB_PREFIX + stem, width, height, alpha=False)
    thumb.pixels.foreach_set(pixels)
    thumb.pack()
    thumb[THUMB_TAG] = True
    return thumb


def remove_thumbnail(entry) -> None:
    thumb = entry.thumbnail
    entry.thumbnail = None
    if thumb is not None and thumb.get(THUMB_TAG) and thumb.users == 0:
        bpy.data.images.remove(thumb)


def _environment_state(scene) -> tuple[float, float]:
    """(rotation about Z, strength) of our World nodes as they are now."""
    tree = scene.world.node_tree if scene.world is not None else None
    mapping = world.find_node(tree, "mapping") if tree is not None else None
    background = world.find_node(tree, "background") if tree is not None else None
    rotation = 0.0
    if mapping is not None and "Rotation" in mapping.inputs:
        rotation = float(mapping.inputs["Rotation"].default_value[2])
    strength = float(background.inputs["Strength"].default_value) if background else 1.0
    return rotation, strength


def _plain(value):
    """A settings value as JSON takes it (Blender's enums are strings already)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


# --------------------------------------------------------------------------- record
def record(context, gen, result: dict):
    """Add the generation ``gen`` just loaded into the World (``result``: its worker
    result event) to its scene's history and select it; returns the entry (None when
    the World shows no image of ours). Called by operators.finish_generation for every
    successful result, after the World is loaded: the files are read from the World's
    image, which is the saved copy (the result's own paths are the staging folder's)."""
    from . import properties

    scene = bpy.data.scenes.get(gen.scene_name) or context.scene
    image = world.environment_image(scene)
    if image is None or image.source not in ("FILE", "SEQUENCE"):
        return None
    png, exr, sidecar = result_files(image)
    options, values = gen.options, gen.values
    seed = int(result.get("seed", options.get("seed", 0)))
    settings = scene.spherediff
    entry = settings.history.add()
    entry.name = f"{options.get('prompt', '')[:60]} ({seed})"
    for key in ("prompt", "sky_prompt", "horizon_prompt", "ground_prompt", "negative_prompt"):
        setattr(entry, key, options.get(key) or "")
    entry.seed = str(seed)
    entry.model = options.get("model") or ""
    width = result.get("width")
    width = width if isinstance(width, int) and width > 0 else int(image.size[0])
    height = result.get("height")
    entry.width = width
    entry.height = height if isinstance(height, int) and height > 0 else width // 2
    entry.steps = int(options.get("steps") or 0)
    guidance = options.get("guidance")
    entry.guidance = float(guidance) if guidance is not None else -1.0
    entry.video = image.source == "SEQUENCE"
    if entry.video:
        user = _environment_user(scene)
        entry.frames = int(image.get(f"{world.TAG}_frames", user.frame_duration if user else 0))
        entry.fps = int(image.get(f"{world.TAG}_fps", 0))
        entry.loop = bool(user.use_cyclic) if user is not None else bool(values.get("loop"))
    entry.hdr = exr is not None
    entry.time = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    entry.seconds = float(result.get("seconds") or 0.0)
    entry.image_path = stored_path(png)
    entry.exr_path = stored_path(exr)
    entry.sidecar_path = stored_path(sidecar)
    entry.rotation_z, entry.strength = _environment_state(scene)
    sun = result.get("sun") if exr is not None else None
    entry.sun_json = json.dumps(sun) if isinstance(sun, dict) else ""
    entry.sun_lamp = bool(values.get("sun_lamp"))
    entry.sun_strength = float(values.get("sun_strength", 1.0))
    entry.pack_image = bool(values.get("pack_image")) and not entry.video
    final_width = options.get("final_width")
    entry.draft = isinstance(final_width, int) and final_width > 0
    entry.final_width = final_width if entry.draft else 0
    entry.values_json = json.dumps(
        {key: _plain(values[key]) for key in properties.GENERATION_KEYS if key in values}
    )
    stem = png.parent.name.removesuffix("_frames") if entry.video else png.stem
    if png.is_file():
        entry.thumbnail = make_thumbnail(png, stem)
    settings.history_index = len(settings.history) - 1
    return entry


def _environment_user(scene):
    tree = scene.world.node_tree if scene.world is not None else None
    node = world.find_node(tree, "environment") if tree is not None else None
    return node.image_user if node is not None else None


# --------------------------------------------------------------------------- restore
def restore_problem(entry) -> str:
    """Why ``entry`` cannot be made the World again (empty: it can): a missing file,
    named with the fix."""
    shown = entry_file(entry.exr_path) if entry.hdr else entry_file(entry.image_path)
    if shown is None:
        return "this history entry names no image file; remove it"
    fix = (
        "put the file back there (paths are relative to the .blend: move the .blend and its "
        "output folder together), or remove the entry"
    )
    if entry.video:
        frames = world.sequence_files(shown) if shown.parent.is_dir() else []
        if not frames or (entry.frames and len(frames) < entry.frames):
            return (
                f"the frames of this animated world are missing from {str(shown.parent)!r} "
                f"({len(frames)} of {entry.frames} there): {fix}"
            )
        return ""
    if not shown.is_file():
        return f"the panorama {str(shown)!r} of this history entry is missing: {fix}"
    return ""


def restore(context, entry, scene=None) -> str:
    """Make the World exactly ``entry``'s again (image, rotation, strength, sun mask and
    lamp) and the panel's settings follow. Returns the error ("" when done); on an error
    the World is untouched."""
    from . import operators

    scene = scene or context.scene
    problem = restore_problem(entry)
    if problem:
        return problem
    settings = scene.spherediff
    metadata = {"seed": entry_seed(entry), "model": entry.model, "prompt": entry.prompt[:1000]}
    if entry.video:
        first = entry_file(entry.image_path)
        count = len(world.sequence_files(first))
        if entry.frames:
            count = min(count, entry.frames)
        metadata.update(frames=count, fps=entry.fps)
        world.set_from_sequence(
            scene,
            first,
            frame_count=count,
            fps=entry.fps or 24,
            loop=entry.loop,
            match_scene_range=False,
            rotation_z=entry.rotation_z,
            strength=entry.strength,
            metadata=metadata,
        )
        world.apply_sun(
            scene, None, height_px=0, rotation_z=entry.rotation_z, sun_strength=1.0, lamp=False
        )
        sun, shown = None, first
    else:
        shown = entry_file(entry.exr_path) if entry.hdr else entry_file(entry.image_path)
        loaded = world.set_from_file(
            scene,
            shown,
            rotation_z=entry.rotation_z,
            strength=entry.strength,
            pack=entry.pack_image,
            metadata=metadata,
        )
        sun = json.loads(entry.sun_json) if entry.sun_json else None
        world.apply_sun(
            scene,
            sun,
            height_px=int(loaded.size[1]),
            rotation_z=entry.rotation_z,
            sun_strength=entry.sun_strength,
            lamp=entry.sun_lamp,
        )
    # The panel's World settings follow (their live updates set the same values again),
    # so turning the restored World goes on from where it is.
    settings.rotation_z = entry.rotation_z
    settings.strength = entry.strength
    settings.sun_strength = entry.sun_strength
    settings.last_image = stored_path(shown)
    seed = entry_seed(entry)
    settings.last_seed = seed if seed <= 2**31 - 1 else 0
    settings.last_seconds = entry.seconds
    settings.last_model = entry.model
    settings.last_frames = entry.frames if entry.video else 0
    settings.last_fps = entry.fps if entry.video else 0
    operators.store_sun(settings, entry.hdr, sun if isinstance(sun, dict) else None)
    settings.last_error = ""
    return ""


def entry_files(entry) -> list[Path]:
    """The files (and frames folder) an entry's generation saved."""
    files = []
    image = entry_file(entry.image_path)
    if image is not None:
        if entry.video:
            stem = image.parent.name.removesuffix("_frames")
            files += [image.parent, image.parent.parent / f"{stem}.mp4"]
        else:
            files.append(image)
    for text in (entry.exr_path, entry.sidecar_path):
        path = entry_file(text)
        if path is not None:
            files.append(path)
    return files


# --------------------------------------------------------------------------- seeds
def set_scene_seed(settings, seed: int) -> None:
    """The scene's seed becomes ``seed`` exactly, and Random turns off: a seed the Seed
    field holds goes there, a larger one into ``exact_seed`` (which wins over Seed)."""
    from . import properties

    settings.random_seed = False
    if seed <= properties.MAX_SEED:
        settings.seed = seed  # (its update clears exact_seed)
        settings.exact_seed = ""
    else:
        settings.exact_seed = str(seed)


def seed_arguments(seed: int) -> dict:
    """The generate operator's arguments for exactly ``seed``."""
    from . import properties

    if seed <= properties.MAX_SEED:
        return {"seed": seed}
    return {"exact_seed": str(seed)}


def variation_seeds(settings, count: int) -> list[int]:
    """``count`` distinct seeds: the scene's seed (a random one with Random on) and the
    ones after it."""
    from . import properties

    exact = settings.exact_seed.strip()
    if settings.random_seed:
        first = random.randint(0, properties.MAX_SEED)
    elif exact.isdigit():
        first = int(exact)
    else:
        first = int(settings.seed)
    first = min(first, ENGINE_MAX_SEED - (count - 1))
    return [first + i for i in range(count)]


def final_arguments(entry) -> dict:
    """The generate operator's arguments that make ``entry`` (a draft) at full size: its
    settings with Draft off, its seed, its model, Size its final width. The World's
    placement (rotation, strength, sun strength) and the output folder are the scene's."""
    from . import operators, properties

    stored = json.loads(entry.values_json) if entry.values_json else {}
    values = {k: v for k, v in stored.items() if k in properties.GENERATION_KEYS}
    for key in (*DISPLAY_KEYS, "draft_size", "draft_steps", "seed", "exact_seed"):
        values.pop(key, None)
    values["draft"] = False
    values["random_seed"] = False
    values.update(seed_arguments(entry_seed(entry)))
    preset = next((k for k, v in properties.MODEL_IDS.items() if v == entry.model), None)
    values["model_preset"] = preset or "CUSTOM"
    values["custom_model"] = "" if preset else entry.model
    final = entry.final_width or entry.width
    size = next((k for k, v in properties.SIZE_WIDTHS.items() if v == final), None)
    values["size"] = size or "CUSTOM"
    values["width"] = final
    # Only the values their switches use: a script's value with its switch set the other
    # way is refused as a contradiction (operators.IMPLIED_SWITCHES).
    for value_key, switch, implied in operators.IMPLIED_SWITCHES:
        if switch in values and values[switch] != implied:
            values.pop(value_key, None)
    if values.get("video"):  # animated worlds take neither HDR nor packing
        for key in ("hdr", "sun_lamp", "pack_image"):
            values.pop(key, None)
    elif not values.get("hdr"):
        values.pop("sun_lamp", None)
    return values


def _run_generate(context, kwargs: dict) -> tuple[set, str]:
    """Run the generate operator (modal in the UI, blocking in the background) with
    ``kwargs``; (its result, its error or "")."""
    how = "INVOKE_DEFAULT" if context.window is not None and not bpy.app.background else None
    try:
        if how:
            result = bpy.ops.spherediff.generate(how, **kwargs)
        else:
            result = bpy.ops.spherediff.generate(**kwargs)
    except RuntimeError as exc:
        return set(), str(exc).strip().removeprefix("Error: ").removeprefix("SphereDiff: ")
    return result, ""


def _busy_problem(cls, context) -> bool:
    """poll: refuse (with the message) while a generation runs or without a scene."""
    from . import operators

    if operators.active_generation() is not None:
        cls.poll_message_set("Wait until the running generation is done")
        return True
    if context.scene is None or not hasattr(context.scene, "spherediff"):
        cls.poll_message_set("There is no scene")
        return True
    return False


def _generation_problem(cls, context) -> bool:
    """poll of an operator that starts a generation: :func:`_busy_problem`, or the
    dependencies being installed."""
    from . import installer

    if _busy_problem(cls, context):
        return True
    if installer.STATE.running:
        cls.poll_message_set("Dependencies are being installed; wait until that is done")
        return True
    return False


class _StartsGeneration:
    """Variations and Make Final: the same run from a button (invoke) or a script."""

    def execute(self, context):
        return self._run(context)

    def invoke(self, context, event):
        return self._run(context)


# --------------------------------------------------------------------------- operators
_INDEX = IntProperty(
    name="Index",
    description="The history entry (-1: the selected one, else the newest)",
    default=-1,
    min=-1,
    options={"SKIP_SAVE", "HIDDEN"},
)


class SPHEREDIFF_OT_history_restore(Operator):
    """Make the World this earlier generation's again: image, rotation, strength and sun"""

    bl_idname = "spherediff.history_restore"
    bl_label = "Restore World"
    bl_options = {"REGISTER", "UNDO"}

    index: _INDEX

    @classmethod
    def poll(cls, context):
        if _busy_problem(cls, context):
            return False
        if active_entry(context.scene) is None:
            cls.poll_message_set("The history is empty: generate a World first")
            return False
        return True

    def execute(self, context):
        entry = entry_at(context.scene, self.index)
        if entry is None:
            self.report({"ERROR"}, f"SphereDiff: there is no history entry {self.index}")
            return {"CANCELLED"}
        problem = restore(context, entry)
        if problem:
            context.scene.spherediff.last_error = problem
            self.report({"ERROR"}, f"SphereDiff: {problem}; the World was left as it was")
            return {"CANCELLED"}
        items = entries(context.scene)
        context.scene.spherediff.history_index = list(items).index(entry)
        self.report({"INFO"}, f"SphereDiff: restored seed {entry.seed} ({entry.prompt[:60]})")
        return {"FINISHED"}


class SPHEREDIFF_OT_history_remove(Operator):
    """Remove this entry from the history (its files stay, unless Delete Files is on)"""

    bl_idname = "spherediff.history_remove"
    bl_label = "Remove Entry"
    bl_options = {"REGISTER", "UNDO"}

    index: _INDEX
    delete_files: BoolProperty(
        name="Delete Files",
        description="Also delete the entry's image, OpenEXR, sidecar (and frames) from disk",
        default=False,
        options={"SKIP_SAVE"},
    )

    @classmethod
    def poll(cls, context):
        if context.scene is None or active_entry(context.scene) is None:
            cls.poll_message_set("The history is empty")
            return False
        return True

    def invoke(self, context, event):
        if self.delete_files:
            return context.window_manager.invoke_confirm(self, event)
        return self.execute(context)

    def execute(self, context):
        scene = context.scene
        settings = scene.spherediff
        entry = entry_at(scene, self.index)
        if entry is None:
            self.report({"ERROR"}, f"SphereDiff: there is no history entry {self.index}")
            return {"CANCELLED"}
        index = list(settings.history).index(entry)
        deleted = []
        if self.delete_files:
            shown = world.environment_image(scene)
            if shown is not None:
                shown_path = Path(bpy.path.abspath(shown.filepath, library=shown.library))
                if shown_path in entry_files(entry) or shown_path.parent in entry_files(entry):
                    self.report(
                        {"ERROR"},
                        "SphereDiff: the World shows this entry's image: restore another "
                        "entry first, or remove the entry without deleting its files",
                    )
                    return {"CANCELLED"}
            for path in entry_files(entry):
                with contextlib.suppress(OSError):
                    if path.is_dir():
                        shutil.rmtree(path)
                    elif path.exists():
                        path.unlink()
                    else:
                        continue
                    deleted.append(path.name)
        remove_thumbnail(entry)
        settings.history.remove(index)
        settings.history_index = min(index, len(settings.history) - 1)
        what = f" and deleted {', '.join(deleted)}" if deleted else " (its files are kept)"
        self.report({"INFO"}, f"SphereDiff: removed the entry{what}")
        return {"FINISHED"}


class _SeedOperator:
    """What Copy Seed and Reuse Seed share: the entry they read, and when they can run."""

    index: _INDEX

    @classmethod
    def poll(cls, context):
        if context.scene is None or active_entry(context.scene) is None:
            cls.poll_message_set("No generation in the history yet: generate a World first")
            return False
        return True

    def execute(self, context):
        entry = entry_at(context.scene, self.index)
        if entry is None:
            self.report({"ERROR"}, f"SphereDiff: there is no history entry {self.index}")
            return {"CANCELLED"}
        self.use_seed(context, entry)
        return {"FINISHED"}


class SPHEREDIFF_OT_copy_seed(_SeedOperator, Operator):
    """Copy the seed of the selected history entry (else the newest) to the clipboard"""

    bl_idname = "spherediff.copy_seed"
    bl_label = "Copy Seed"

    def use_seed(self, context, entry) -> None:
        context.window_manager.clipboard = entry.seed
        self.report({"INFO"}, f"SphereDiff: copied seed {entry.seed}")


class SPHEREDIFF_OT_reuse_seed(_SeedOperator, Operator):
    """Set the scene's seed to the selected history entry's (else the newest) and turn Random off"""

    bl_idname = "spherediff.reuse_seed"
    bl_label = "Reuse Seed"
    bl_options = {"REGISTER", "UNDO"}

    def use_seed(self, context, entry) -> None:
        set_scene_seed(context.scene.spherediff, entry_seed(entry))
        self.report({"INFO"}, f"SphereDiff: seed {entry.seed}, Random off")


class SPHEREDIFF_OT_variations(_StartsGeneration, Operator):
    """Several seeds in one go (each its own files and history entry)"""

    bl_description = (
        "Generate several Worlds from the settings, one seed after another (each its own "
        "files and history entry); the World ends as the last: restore the best one from "
        "the history"
    )

    bl_idname = "spherediff.variations"
    bl_label = "Variations"

    count: IntProperty(
        name="Count",
        description="How many seeds (unset: the scene's Variations count)",
        default=4,
        min=1,
        max=VARIATIONS_MAX,
        soft_max=16,
        options={"SKIP_SAVE"},
    )

    @classmethod
    def poll(cls, context):
        from . import operators

        if _generation_problem(cls, context):
            return False
        if not context.scene.spherediff.prompt.strip():
            cls.poll_message_set("Write a prompt first")
            return False
        problem = operators.generate_poll_problem(context)
        if problem:
            cls.poll_message_set(problem)
            return False
        return True

    def _run(self, context):
        from . import operators

        settings = context.scene.spherediff
        count = self.count if self.properties.is_property_set("count") else None
        count = int(count or settings.variation_count)
        seeds = variation_seeds(settings, count)
        result, error = _run_generate(context, seed_arguments(seeds[0]))
        if error:
            self.report({"ERROR"}, f"SphereDiff: {error}")
            return {"CANCELLED"}
        gen = operators.active_generation()
        if gen is not None:
            # Running in the background of the UI: the run takes the other seeds one
            # after another (operators.Generation.seeds) and records each.
            gen.seeds = list(seeds[1:])
            self.report({"INFO"}, f"SphereDiff: {count} variations, seeds {seeds[0]}...")
            return {"FINISHED"}
        if "FINISHED" not in result:
            return {"CANCELLED"}
        # Blocking (background Blender, scripts): one generation per seed, each recorded.
        for seed in seeds[1:]:
            result, error = _run_generate(context, seed_arguments(seed))
            if error or "FINISHED" not in result:
                self.report({"ERROR"}, f"SphereDiff: variation seed {seed}: {error or result}")
                return {"CANCELLED"}
        self.report({"INFO"}, f"SphereDiff: {count} variations, seeds {seeds[0]}-{seeds[-1]}")
        return {"FINISHED"}


class SPHEREDIFF_OT_make_final(_StartsGeneration, Operator):
    """A draft made again at full size and steps"""

    bl_description = (
        "Make the selected draft (else the newest draft) at full size and steps: the same "
        "seed, prompts and model, so the same world, sharper"
    )

    bl_idname = "spherediff.make_final"
    bl_label = "Make Final"

    index: _INDEX

    @classmethod
    def poll(cls, context):
        if _generation_problem(cls, context):
            return False
        if draft_entry(context.scene) is None:
            cls.poll_message_set("No draft in the history: turn on Draft and generate one")
            return False
        return True

    def _run(self, context):
        scene = context.scene
        entry = entry_at(scene, self.index) if self.index >= 0 else draft_entry(scene)
        if entry is None or not entry.draft:
            self.report({"ERROR"}, "SphereDiff: that history entry is not a draft")
            return {"CANCELLED"}
        result, error = _run_generate(context, final_arguments(entry))
        if error:
            self.report({"ERROR"}, f"SphereDiff: {error}")
            return {"CANCELLED"}
        return {"FINISHED"} if result & {"FINISHED", "RUNNING_MODAL"} else {"CANCELLED"}


# --------------------------------------------------------------------------- the list
class SPHEREDIFF_UL_history(UIList):
    """The scene's generations: thumbnail, prompt, seed, model, size and time."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_prop, index):
        thumb = item.thumbnail
        icon_value = layout.icon(thumb) if thumb is not None else 0
        row = layout.row(align=True)
        if icon_value:
            row.label(text="", icon_value=icon_value)
        else:
            row.label(text="", icon="RENDER_ANIMATION" if item.video else "WORLD")
        split = row.split(factor=0.45, align=True)
        prompt = item.prompt or "(no prompt)"
        split.label(text=("Draft: " if item.draft else "") + prompt)
        sub = split.split(factor=0.4, align=True)
        sub.label(text=item.seed)
        info = sub.row(align=True)
        info.label(text=f"{model_label(item.model)}, {size_label(item.width)}")
        info.label(text=time_label(item.time))


# --------------------------------------------------------------------------- paths on save
def _retarget(text: str, old_base: str, new_base: str) -> str:
    """A stored path, relative to ``new_base`` (the .blend being written), when possible."""
    if not text:
        return text
    absolute = bpy.path.abspath(text, start=old_base) if text.startswith("//") else text
    if not new_base:
        return absolute
    try:
        return bpy.path.relpath(absolute, start=new_base)
    except ValueError:  # another drive on Windows: stays absolute
        return absolute


def _retarget_all(old_base: str, new_base: str) -> None:
    for scene in bpy.data.scenes:
        items = entries(scene)
        for entry in items or ():
            for key in _PATH_KEYS:
                text = getattr(entry, key)
                if text.startswith("//") and not old_base:
                    continue  # cannot be resolved; leave as it is
                new = _retarget(text, old_base, new_base)
                if new != text:
                    setattr(entry, key, new)


def _folder_of(blend: str) -> str:
    return str(Path(blend).parent) if blend else ""


@bpy.app.handlers.persistent
def _on_save_pre(*args):
    """Keep the history's paths relative to the .blend being written (Blender remaps its
    own image paths on Save As, not an add-on's): unsaved entries' absolute paths become
    ``//...``, and ``//`` paths follow the file to its new folder."""
    target = args[0] if args and isinstance(args[0], str) else ""
    if target:
        _retarget_all(_folder_of(bpy.data.filepath), _folder_of(target))


@bpy.app.handlers.persistent
def _on_save_post(*args):
    """After Save Copy the open file stays where it was: its paths go back to its folder
    (after a Save or Save As the file is the one written, and nothing changes)."""
    target = args[0] if args and isinstance(args[0], str) else ""
    if target and bpy.data.filepath and _folder_of(target) != _folder_of(bpy.data.filepath):
        _retarget_all(_folder_of(target), _folder_of(bpy.data.filepath))


_HANDLERS = (("save_pre", _on_save_pre), ("save_post", _on_save_post))


def register_handlers() -> None:
    for kind, handler in _HANDLERS:
        handlers = getattr(bpy.app.handlers, kind)
        if handler not in handlers:
            handlers.append(handler)


def unregister_handlers() -> None:
    for kind, handler in _HANDLERS:
        handlers = getattr(bpy.app.handlers, kind)
        if handler in handlers:
            handlers.remove(handler)


classes = (
    SPHEREDIFF_UL_history,
    SPHEREDIFF_OT_history_restore,
    SPHEREDIFF_OT_history_remove,
    SPHEREDIFF_OT_copy_seed,
    SPHEREDIFF_OT_reuse_seed,
    SPHEREDIFF_OT_variations,
    SPHEREDIFF_OT_make_final,
)
