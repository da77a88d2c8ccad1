"""Add-on preferences: where the worker's Python is, models, device, GPUs and the installer.

The worker Python is found in this order (:func:`resolve_worker_python`):

1. the "Worker Python" preference,
2. the ``SPHEREDIFF_PYTHON`` environment variable,
3. the virtual environment that **Install Dependencies** made in the extension's user
   folder (``bpy.utils.extension_path_user(<package>)/venv``).
"""

import os
import sys
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from bpy.types import AddonPreferences

from . import installer, worker_client
from .properties import DEFAULT_VIDEO_PRESET, MODEL_ITEMS_NO_DEFAULT, VIDEO_MODEL_ITEMS_NO_DEFAULT

# The extension's own package (bl_ext.<repository>.spherediff): AddonPreferences.bl_idname
# and extension_path_user() need it, and this sub-package sits one level below it.
ADDON_PACKAGE = __package__.rpartition(".")[0] or __package__

PYTHON_ENV_VAR = "SPHEREDIFF_PYTHON"

# The numbers are what userpref.blend stores (Blender saves an enum's number): fixed, like
# the model lists' (properties.PREFS_MODEL_NUMBERS), so a new item cannot renumber old ones.
DEVICE_ITEMS = (
    ("auto", "Automatic", "CUDA if there is an NVIDIA GPU, else Metal (Apple), else the CPU", 0),
    ("cuda", "CUDA", "The first NVIDIA GPU", 1),
    ("mps", "Metal", "Apple silicon GPU", 2),
    ("cpu", "CPU", "The processor (very slow with real models)", 3),
)
PRECISION_ITEMS = (
    (
        "auto",
        "Automatic",
        "Half precision on GPUs (the model's preferred kind), float32 on CPU",
        0,
    ),
    ("fp16", "Float16", "Half precision", 1),
    ("bf16", "BFloat16", "Brain float 16 (recent NVIDIA GPUs)", 2),
    ("fp32", "Float32", "Full precision: twice the memory, rarely needed", 3),
)


def get_preferences(context=None):
    """This add-on's preferences, or None when it is not enabled as an add-on."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    return addon.preferences if addon is not None else None


def user_folder(create: bool = False) -> Path:
    """The extension's user folder (kept across updates): the venv and logs live here."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_PACKAGE, create=create))
    except ValueError:
        # Not installed as an extension (e.g. run from a source checkout as a legacy add-on).
        path = Path(bpy.utils.user_resource("SCRIPTS", path="spherediff"))
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path


def venv_folder() -> Path:
    return user_folder() / "venv"


def resolve_worker_python(context=None) -> tuple[str | None, str, str]:
    """(python, source, problem): the worker interpreter and where it came from.

    ``python`` is None when none is configured; ``problem`` is empty when the file exists
    (whether its packages work is what "Check Worker" finds out).
    """
    prefs = get_preferences(context)
    configured = prefs.worker_python.strip() if prefs is not None else ""
    if configured:
        path = bpy.path.abspath(configured)
        return path, "the Worker Python preference", _missing(path, "the Worker Python preference")
    env = os.environ.get(PYTHON_ENV_VAR, "").strip()
    if env:
        return env, PYTHON_ENV_VAR, _missing(env, f"the {PYTHON_ENV_VAR} environment variable")
    venv_python = installer.venv_python(venv_folder())
    if venv_python.is_file():
        return str(venv_python), "the add-on's environment", ""
    return (
        None,
        "",
        "no worker Python: click Install Dependencies in Preferences > Add-ons > SphereDiff, "
        f"set the Worker Python there, or set the {PYTHON_ENV_VAR} environment variable",
    )


def _missing(path: str, source: str) -> str:
    if not os.path.isfile(path):
        return f"the worker Python {path!r} (from {source}) does not exist"
    if not os.access(path, os.X_OK):
        return f"the worker Python {path!r} (from {source}) is not executable"
    return ""


def gpu_plan(prefs, device: str | None = None) -> worker_client.GpuPlan:
    """The worker processes the GPUs preferences ask for, with the job's ``device``
    (default: the Device preference). Raises :class:`worker_client.LaunchError`."""
    if prefs is None:
        return worker_client.GpuPlan()
    return worker_client.plan_gpus(
        prefs.gpu_count, prefs.gpu_ids, prefs.device if device is None else device
    )


def keep_model_loaded(prefs) -> bool:
    return bool(prefs.keep_model_loaded) if prefs is not None else True


def unload_after_s(prefs) -> float:
    """The warm worker's idle limit in seconds (0: none)."""
    minutes = prefs.unload_after if prefs is not None else worker_client.DEFAULT_IDLE_S / 60
    return max(0.0, float(minutes)) * 60.0


def live_preview(prefs) -> bool:
    return bool(prefs.live_preview) if prefs is not None else True


def preview_every(prefs) -> int:
    return max(1, int(prefs.preview_every)) if prefs is not None else 2


def _warm_changed(self, _context) -> None:
    # Off: the idle warm worker goes now (a running job keeps it until it ends).
    if not self.keep_model_loaded:
        worker_client.WARM.stop_if_idle()


def _unload_after_changed(self, _context) -> None:
    worker_client.WARM.set_idle(unload_after_s(self))


def offline_forced() -> bool:
    """Blender's "Allow Online Access" is off (or Blender runs with --offline-mode)."""
    return not getattr(bpy.app, "online_access", True)


def default_model_id(prefs) -> str:
    from .properties import model_id_for

    if prefs is None:
        return model_id_for("SANA", "")
    return model_id_for(prefs.default_model, prefs.default_custom_model)


def default_video_model_id(prefs) -> str:
    """The model of "Preferences Default" for animated worlds."""
    from .properties import model_id_for

    if prefs is None:
        return model_id_for(DEFAULT_VIDEO_PRESET, "")
    return model_id_for(prefs.default_video_model, prefs.default_video_custom_model)


class SphereDiffPreferences(AddonPreferences):
    bl_idname = ADDON_PACKAGE

    worker_python: StringProperty(
        name="Worker Python",
        description=(
            "Python interpreter that runs the image generator (it needs spherediff, torch, "
            f"diffusers, transformers). Empty: {PYTHON_ENV_VAR}, then the environment "
            "made by Install Dependencies"
        ),
        subtype="FILE_PATH",
        default="",
    )
    cache_dir: StringProperty(
        name="Model Cache",
        description=(
            "Folder for downloaded models (the Hugging Face cache). Empty: the Hugging Face "
            "default (HF_HOME, else ~/.cache/huggingface)"
        ),
        subtype="DIR_PATH",
        default="",
    )
    offline: BoolProperty(
        name="Offline",
        description=(
            "Use only local model folders and models already in the cache; never contact "
            "the Hugging Face Hub (always on when Blender's online access is off)"
        ),
        default=False,
    )
    device: EnumProperty(
        name="Device",
        description="Where the model runs",
        items=DEVICE_ITEMS,
        default="auto",
    )
    precision: EnumProperty(
        name="Precision",
        description="Number format of the model's weights and activations",
        items=PRECISION_ITEMS,
        default="auto",
    )
    cpu_offload: BoolProperty(
        name="Model CPU Offload",
        description="Keep only the running part of the model on the GPU (less VRAM, slower)",
        default=False,
    )
    vae_tiling: BoolProperty(
        name="VAE Tiling",
        description="Decode images in tiles (less VRAM for large sizes)",
        default=False,
    )
    gpu_count: IntProperty(
        name="GPUs",
        description=(
            "How many GPUs share one generation: one worker process per GPU, launched with "
            "PyTorch's torchrun when more than 1 (needs Device Automatic or CUDA)"
        ),
        default=1,
        min=1,
        soft_max=8,
        max=worker_client.MAX_GPUS,
    )
    gpu_ids: StringProperty(
        name="GPU IDs",
        description=(
            "Which GPUs to use, as comma-separated numbers such as 0,1,3 (sets "
            "CUDA_VISIBLE_DEVICES; one process per number, overriding GPUs). Empty: the "
            "first GPUs"
        ),
        default="",
    )
    keep_model_loaded: BoolProperty(
        name="Keep Model Loaded",
        description=(
            "Keep the worker and its loaded model between generations, so the next "
            "generation with the same model starts denoising at once (its GPU and main "
            "memory stay in use until it is unloaded). Off: every generation starts a new "
            "worker and loads the model again"
        ),
        default=True,
        update=_warm_changed,
    )
    unload_after: FloatProperty(
        name="Unload After",
        description=(
            "Minutes without a generation after which the model is unloaded (the worker "
            "stops and frees its memory); 0: keep it until Blender quits or Unload Model"
        ),
        default=worker_client.DEFAULT_IDLE_S / 60.0,
        min=0.0,
        soft_min=0.0,
        soft_max=120.0,
        step=100,
        precision=1,
        update=_unload_after_changed,
    )
    live_preview: BoolProperty(
        name="Live Preview",
        description=(
            "While denoising, show the panorama forming as the World (in the viewport's "
            "Rendered shading, or Material Preview with Scene World on); the World is "
            "restored if the generation is cancelled or fails. Background mode: only for "
            "scripts that pass preview=True"
        ),
        default=True,
    )
    preview_every: IntProperty(
        name="Preview Every",
        description="Denoising steps between live previews (each costs a little time)",
        default=2,
        min=1,
        max=1000,
        soft_min=1,
        soft_max=10,
    )
    default_model: EnumProperty(
        name="Default Model",
        description="The model used when a scene's model is set to Preferences Default",
        items=MODEL_ITEMS_NO_DEFAULT,
        default="SANA",
    )
    default_custom_model: StringProperty(
        name="Custom Model",
        description="Hugging Face Hub id (owner/name) or a local diffusers model folder",
        default="",
    )
    default_video_model: EnumProperty(
        name="Default Video Model",
        description=(
            "The model of animated worlds when a scene's model is set to Preferences Default"
        ),
        items=VIDEO_MODEL_ITEMS_NO_DEFAULT,
        default=DEFAULT_VIDEO_PRESET,
    )
    default_video_custom_model: StringProperty(
        name="Custom Video Model",
        description="Hugging Face Hub id (owner/name) or a local diffusers video model folder",
        default="",
    )
    wheel_folder: StringProperty(
        name="Local Wheels",
        description=(
            "Install from this folder of .whl files only, with no network (pip --no-index "
            "--find-links). Empty: download from PyPI (and PyTorch's index on Windows)"
        ),
        subtype="DIR_PATH",
        default="",
    )

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False

        # Worker
        box = layout.box()
        box.label(text="Image Generator (Worker)", icon="CONSOLE")
        box.prop(self, "worker_python")
        python, source, problem = resolve_worker_python(context)
        col = box.column(align=True)
        if problem:
            col.label(text=problem, icon="ERROR")
        else:
            col.label(text=f"Using {python}", icon="CHECKMARK")
            col.label(text=f"(from {source})")
        row = box.row(align=True)
        row.operator("spherediff.check_worker", icon="VIEWZOOM")
        _draw_check_result(box)
        box.prop(self, "keep_model_loaded")
        row = box.row()
        row.enabled = self.keep_model_loaded
        row.prop(self, "unload_after", text="Unload After (minutes)")
        _draw_warm_worker(box)
        box.prop(self, "live_preview")
        row = box.row()
        row.enabled = self.live_preview
        row.prop(self, "preview_every")

        # Installer
        box = layout.box()
        box.label(text="Dependencies", icon="PACKAGE")
        box.label(text=f"Environment: {venv_folder()}")
        box.prop(self, "wheel_folder")
        state = installer.STATE
        if state.running:
            text = f"{state.step_label} ({state.step}/{state.total})"
            box.progress(factor=state.fraction, type="BAR", text=text)
            if state.last_line:
                box.label(text=state.last_line[:120])
        else:
            op = box.operator("spherediff.install_dependencies", icon="IMPORT")
            op.wheel_folder = self.wheel_folder
            if state.message:
                box.label(text=state.message, icon="ERROR" if state.failed else "CHECKMARK")
        log = installer.log_path(user_folder())
        if log.is_file():
            row = box.row()
            row.label(text=f"Log: {log}")
            row.operator("wm.path_open", text="", icon="TEXT").filepath = str(log)
        if sys.platform == "win32":
            box.label(text="On Windows PyTorch comes from PyTorch's CUDA index", icon="INFO")

        # Models
        box = layout.box()
        box.label(text="Models", icon="FILE_IMAGE")
        box.prop(self, "default_model")
        if self.default_model == "CUSTOM":
            box.prop(self, "default_custom_model")
        box.prop(self, "default_video_model")
        if self.default_video_model == "CUSTOM":
            box.prop(self, "default_video_custom_model")
        box.prop(self, "cache_dir")
        row = box.row()
        row.enabled = not offline_forced()
        row.prop(self, "offline")
        if offline_forced():
            box.label(text="Offline: Blender's online access is turned off", icon="INFO")

        # Device
        box = layout.box()
        box.label(text="Device", icon="MEMORY")
        box.prop(self, "device")
        box.prop(self, "precision")
        box.prop(self, "cpu_offload")
        box.prop(self, "vae_tiling")

        # GPUs
        box = layout.box()
        box.label(text="GPUs", icon="SYSTEM")
        col = box.column(align=True)
        col.label(text="Several GPUs share one generation, one worker process each")
        col.label(text="(torchrun; Device Automatic or CUDA)")
        row = box.row()
        row.enabled = not self.gpu_ids.strip()  # the ids decide how many
        row.prop(self, "gpu_count")
        box.prop(self, "gpu_ids")
        try:
            plan = gpu_plan(self)
        except worker_client.LaunchError as exc:
            box.label(text=str(exc), icon="ERROR")
        else:
            if plan.distributed:
                text = f"{plan.processes} worker processes"
                if plan.visible_devices is not None:
                    text += f" on GPUs {plan.visible_devices}"
                box.label(text=text, icon="CHECKMARK")


def _draw_warm_worker(layout) -> None:
    """The warm worker's state and the Unload Model button."""
    served = worker_client.WARM.current
    row = layout.row()
    if served is not None and served.process.running():
        what = f"Model loaded: {served.model}" if served.model else "Worker running"
        row.label(text=f"{what} (worker {served.pid})", icon="CHECKMARK")
    else:
        row.label(text="No model loaded", icon="INFO")
    row.operator("spherediff.unload_model", icon="UNLINKED")


def _draw_check_result(layout) -> None:
    check = worker_client.LAST_CHECK
    if check.running:
        layout.label(text="Checking the worker...", icon="SORTTIME")
        return
    if not check.done:
        return
    col = layout.column(align=True)
    for line in check.lines:
        col.label(text=line)
    for line in check.problems:
        col.label(text=line, icon="ERROR")


classes = (SphereDiffPreferences,)
