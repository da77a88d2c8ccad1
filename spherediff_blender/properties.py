"""The generation settings: one PropertyGroup on the Scene (``scene.spherediff``).

The generate operator has the same properties (built by :func:`generation_properties`), so
a script can pass any of them; the ones it leaves unset come from the scene's settings.

Image models make stills, video models (``VIDEO_MODEL_PRESETS``) make animated worlds
(``video``, "Animated"): :func:`model_info` tells which kind a model is (without torch:
from the preset, or a local folder's ``model_index.json``) and :func:`generation_problem`
says in words why a combination cannot work, before a worker starts.
"""

import json
import math
from pathlib import Path

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    StringProperty,
)
from bpy.types import PropertyGroup

from . import history

# (identifier, label, description, Hub id). SphereDiff drives these families; any other
# diffusers folder of the same families works as "Custom".
MODEL_PRESETS = (
    (
        "SANA",
        "SANA 1600M",
        "SANA 1600M 1024px (default): fast and sharp, needs about 12 GB of VRAM",
        "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers",
    ),
    (
        "SD15",
        "Stable Diffusion 1.5",
        "Stable Diffusion 1.5: small and quick, softer detail (about 4 GB of VRAM)",
        "stable-diffusion-v1-5/stable-diffusion-v1-5",
    ),
    (
        "SDXL",
        "Stable Diffusion XL",
        "Stable Diffusion XL base 1.0 (about 10 GB of VRAM)",
        "stabilityai/stable-diffusion-xl-base-1.0",
    ),
    (
        "FLUX_SCHNELL",
        "FLUX.1 schnell",
        "FLUX.1 schnell: 4 steps, Apache-2.0 (about 24 GB of VRAM, less with CPU offload)",
        "black-forest-labs/FLUX.1-schnell",
    ),
    (
        "FLUX_DEV",
        "FLUX.1 dev",
        "FLUX.1 dev: best quality, gated non-commercial licence (about 24 GB of VRAM)",
        "black-forest-labs/FLUX.1-dev",
    ),
    (
        "SD35_MEDIUM",
        "SD 3.5 Medium",
        "Stable Diffusion 3.5 Medium (gated on the Hub; about 10 GB of VRAM)",
        "stabilityai/stable-diffusion-3.5-medium",
    ),
    (
        "SD35_LARGE",
        "SD 3.5 Large",
        "Stable Diffusion 3.5 Large (gated on the Hub; about 20 GB of VRAM)",
        "stabilityai/stable-diffusion-3.5-large",
    ),
    (
        "FLUX2_DEV",
        "FLUX.2 [dev]",
        "FLUX.2 [dev]: 32B, top quality, gated non-commercial licence; slow, needs an "
        "80 GB GPU in half precision (its Mistral Small 24B text encoder alone is about "
        "48 GB; Model CPU Offload and much RAM otherwise)",
        "black-forest-labs/FLUX.2-dev",
    ),
    (
        "FLUX2_KLEIN_4B",
        "FLUX.2 [klein] 4B",
        "FLUX.2 [klein] 4B: 4 steps, fast, Apache-2.0 (about 13 GB of VRAM, with its "
        "Qwen3 4B text encoder)",
        "black-forest-labs/FLUX.2-klein-4B",
    ),
    (
        "QWEN_IMAGE",
        "Qwen-Image",
        "Qwen-Image: 20B, good at text in images, Apache-2.0; slow, about 60 GB of VRAM in "
        "half precision with its Qwen2.5-VL 7B text encoder (Model CPU Offload helps)",
        "Qwen/Qwen-Image",
    ),
    (
        "ZIMAGE_TURBO",
        "Z-Image Turbo",
        "Z-Image Turbo: 6B, 8 steps, fast, Apache-2.0 (about 20 GB of VRAM with its Qwen3 "
        "4B text encoder; Model CPU Offload helps on 16 GB GPUs)",
        "Tongyi-MAI/Z-Image-Turbo",
    ),
    (
        "ZIMAGE",
        "Z-Image",
        "Z-Image base: the undistilled 6B model, 50 steps with guidance and negative "
        "prompts, Apache-2.0 (about 20 GB of VRAM; Model CPU Offload helps on 16 GB GPUs)",
        "Tongyi-MAI/Z-Image",
    ),
)
# Video models, for animated worlds (``video``): (identifier, label, description, Hub id).
VIDEO_MODEL_PRESETS = (
    (
        "LTX",
        "LTX-Video",
        "LTX-Video (Lightricks), the SphereDiff paper's video model: 8k+1 frames, 24 fps "
        "(its T5 text encoder alone is about 10 GB in half precision; Model CPU Offload "
        "helps on smaller GPUs)",
        "Lightricks/LTX-Video",
    ),
    (
        "WAN",
        "Wan 2.1 T2V 1.3B",
        "Wan 2.1 text-to-video 1.3B: 4k+1 frames, 16 fps (its UMT5 text encoder is about "
        "11 GB in half precision; Model CPU Offload helps on smaller GPUs)",
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    ),
    (
        "WAN22_TI2V_5B",
        "Wan 2.2 TI2V 5B",
        "Wan 2.2 TI2V 5B, text-to-video: 4k+1 frames, 24 fps, Apache-2.0 (runs on a 24 GB "
        "GPU; its UMT5 text encoder is about 11 GB in half precision, Model CPU Offload "
        "helps on smaller GPUs)",
        "Wan-AI/Wan2.2-TI2V-5B-Diffusers",
    ),
    (
        "WAN22_T2V_A14B",
        "Wan 2.2 T2V A14B",
        "Wan 2.2 T2V A14B: two 14B experts (high and low noise), Wan's best quality, 4k+1 "
        "frames, 16 fps, Apache-2.0; slow, needs an 80 GB GPU in half precision (Model CPU "
        "Offload and much RAM otherwise)",
        "Wan-AI/Wan2.2-T2V-A14B-Diffusers",
    ),
    (
        "HUNYUANVIDEO15",
        "HunyuanVideo 1.5 480p",
        "HunyuanVideo 1.5 text-to-video, 480p: 8.3B, 4k+1 frames, 24 fps, Tencent Hunyuan "
        "community licence (not for the EU, UK or South Korea); about 14 GB of VRAM with "
        "Model CPU Offload (its Qwen2.5-VL 7B text encoder is about 15 GB in half precision)",
        "hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-480p_t2v",
    ),
)
MODEL_IDS = {key: hub_id for key, _, _, hub_id in (*MODEL_PRESETS, *VIDEO_MODEL_PRESETS)}
MODEL_LABELS = {key: label for key, label, _, _ in (*MODEL_PRESETS, *VIDEO_MODEL_PRESETS)}
VIDEO_PRESET_KEYS = tuple(key for key, *_ in VIDEO_MODEL_PRESETS)
DEFAULT_VIDEO_PRESET = "LTX"

# What the engine's adapters take (spherediff_core.adapters, which need torch; its torch-free
# registry spherediff_core.families.FAMILIES says the same, and tests/blender checks the two
# agree): diffusers pipeline class -> (name, temporal compression: frames = k * compression
# + 1, the family's own frame rate) for video, -> name for stills.
VIDEO_PIPELINES = {
    "LTXPipeline": ("LTX-Video", 8, 24),
    "WanPipeline": ("Wan", 4, 16),
    "HunyuanVideo15Pipeline": ("HunyuanVideo 1.5", 4, 24),
}
IMAGE_PIPELINES = {
    "SanaPipeline": "SANA",
    "StableDiffusionPipeline": "Stable Diffusion",
    "StableDiffusionXLPipeline": "Stable Diffusion XL",
    "FluxPipeline": "FLUX.1",
    "StableDiffusion3Pipeline": "Stable Diffusion 3",
    "Flux2Pipeline": "FLUX.2",
    "Flux2KleinPipeline": "FLUX.2 [klein]",
    "QwenImagePipeline": "Qwen-Image",
    "ZImagePipeline": "Z-Image",
}
# The video presets' rules: (name, temporal compression, frame rate). Its family's, except
# where the model's own card says otherwise: Wan 2.2 TI2V 5B runs at 24 fps, while the
# engine's "wan" family holds Wan 2.1's 16 (the 5B's folders say so by "expand_timesteps",
# see _read_folder_info).
VIDEO_PRESET_RULES = {
    "LTX": ("LTX-Video", 8, 24),
    "WAN": ("Wan 2.1", 4, 16),
    "WAN22_TI2V_5B": ("Wan 2.2 TI2V 5B", 4, 24),
    "WAN22_T2V_A14B": ("Wan 2.2 T2V A14B", 4, 16),
    "HUNYUANVIDEO15": ("HunyuanVideo 1.5", 4, 24),
}
WAN22_TI2V_FPS = 24  # a WanPipeline folder with "expand_timesteps": Wan 2.2 TI2V 5B
MAX_FRAMES = 1025  # spherediff_core.options.MAX_FRAMES
MAX_FPS = 240  # spherediff_core.options.MAX_FPS
MAX_WIDTH = 16384  # spherediff_core.options.MAX_WIDTH
MAX_STEPS = 1000  # spherediff_core.options.MAX_STEPS
MAX_GUIDANCE = 50.0  # spherediff_core.options: guidance 0 to 50
MAX_STRENGTH = 1_000_000.0  # the Background node's own limit

_CUSTOM_ITEM = (
    "CUSTOM",
    "Custom",
    "A Hugging Face Hub id (owner/name) or a local diffusers model folder",
)
# Blender saves an enum property as its item's number, not its identifier (in .blend files
# and, for the preferences, in userpref.blend), so each list below writes every item's
# number next to its identifier, and a number never changes once released: a new preset
# takes the next unused number of each list it is in, and a removed preset's numbers stay
# unused. Numbering by position would make a preset inserted in the middle silently turn
# every saved choice after it into its neighbour. tests/blender/test_addon_model_enums.py
# keeps the released pairs.
SCENE_MODEL_NUMBERS = {  # the scene's Model (MODEL_ITEMS)
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
    "FLUX2_DEV": 11,
    "FLUX2_KLEIN_4B": 12,
    "QWEN_IMAGE": 13,
    "ZIMAGE_TURBO": 14,
    "ZIMAGE": 15,
    "WAN22_TI2V_5B": 16,
    "WAN22_T2V_A14B": 17,
    "HUNYUANVIDEO15": 18,
}
PREFS_MODEL_NUMBERS = {  # Preferences > Default Model (MODEL_ITEMS_NO_DEFAULT)
    "SANA": 0,
    "SD15": 1,
    "SDXL": 2,
    "FLUX_SCHNELL": 3,
    "FLUX_DEV": 4,
    "SD35_MEDIUM": 5,
    "SD35_LARGE": 6,
    "CUSTOM": 7,
    "FLUX2_DEV": 8,
    "FLUX2_KLEIN_4B": 9,
    "QWEN_IMAGE": 10,
    "ZIMAGE_TURBO": 11,
    "ZIMAGE": 12,
}
PREFS_VIDEO_MODEL_NUMBERS = {  # Preferences > Default Video Model
    "LTX": 0,
    "WAN": 1,
    "CUSTOM": 2,
    "WAN22_TI2V_5B": 3,
    "WAN22_T2V_A14B": 4,
    "HUNYUANVIDEO15": 5,
}

_CUSTOM_ITEM = (
    "CUSTOM",
    "Custom",
    "A Hugging Face Hub id (owner/name) or a local diffusers model folder",
)


def _numbered(items, numbers: dict, icon: str = "") -> tuple:
    """EnumProperty items (identifier, name, description, icon, number) with the fixed
    numbers of ``numbers`` (a KeyError at import for an item without one)."""
    return tuple((k, n, d, icon, numbers[k]) for k, n, d, *_ in items)


MODEL_ITEMS_NO_DEFAULT = _numbered((*MODEL_PRESETS, _CUSTOM_ITEM), PREFS_MODEL_NUMBERS)
VIDEO_MODEL_ITEMS_NO_DEFAULT = _numbered(
    (*VIDEO_MODEL_PRESETS, _CUSTOM_ITEM), PREFS_VIDEO_MODEL_NUMBERS
)
# The scene's model list: stills, then video models, then Custom (the numbers are not in
# this order: Custom and the video models came before the later stills).
MODEL_ITEMS = (
    *_numbered(
        (
            (
                "DEFAULT",
                "Preferences Default",
                "The default model set in the add-on's preferences (its video model when Animated)",
            ),
            *MODEL_PRESETS,
        ),
        SCENE_MODEL_NUMBERS,
    ),
    *_numbered(VIDEO_MODEL_PRESETS, SCENE_MODEL_NUMBERS, "FILE_MOVIE"),
    *_numbered((_CUSTOM_ITEM,), SCENE_MODEL_NUMBERS),
)

SIZE_WIDTHS = {"1K": 1024, "2K": 2048, "4K": 4096, "8K": 8192}
# The numbers keep the values files saved before "Auto" came stored.
SIZE_ITEMS = (
    (
        "AUTO",
        "Auto",
        "The model's own size: 2K for SANA, SD 1.5 and the video models, 4K for SDXL, "
        "FLUX.1, FLUX.2, SD 3.5, Qwen-Image and Z-Image, so that its views come out near "
        "the size it was trained at",
        5,
    ),
    ("1K", "1K", "1024 x 512 pixels: quick previews (far below every model's native size)", 0),
    ("2K", "2K", "2048 x 1024 pixels", 1),
    ("4K", "4K", "4096 x 2048 pixels: slow, much VRAM for the larger models", 2),
    ("8K", "8K", "8192 x 4096 pixels: very slow, needs VAE tiling on most GPUs", 3),
    ("CUSTOM", "Custom", "Any even width (the height is half of it)", 4),
)
# What each preset's family does well, as the engine's adapters declare it (native_view_px,
# min_view_px, default_size) with its released models' VAE factor and grid multiple; the
# add-on cannot import the engine's torch side, and tests/blender checks the two agree.
PRESET_SIZES = {
    "SANA": (1024, 512, "2K", 32, 1),
    "SD15": (512, 384, "2K", 8, 1),
    "SDXL": (1024, 768, "4K", 8, 1),
    "FLUX_SCHNELL": (1024, 768, "4K", 8, 2),
    "FLUX_DEV": (1024, 768, "4K", 8, 2),
    "SD35_MEDIUM": (1024, 768, "4K", 8, 2),
    "SD35_LARGE": (1024, 768, "4K", 8, 2),
    "LTX": (512, 384, "2K", 32, 1),
    "WAN": (480, 360, "2K", 8, 2),
    # FLUX.2 and HunyuanVideo 1.5 put one sphere point on 16 px (a 2x2 patch token, a 16x
    # VAE). Wan 2.2 TI2V 5B has a 16x VAE, and the engine's Wan adapter takes its 704 px
    # native size once it sees that VAE (the class values are Wan 2.1's).
    "FLUX2_DEV": (1024, 768, "4K", 16, 1),
    "FLUX2_KLEIN_4B": (1024, 768, "4K", 16, 1),
    "QWEN_IMAGE": (1328, 996, "4K", 8, 2),
    "ZIMAGE_TURBO": (1024, 768, "4K", 8, 2),
    "ZIMAGE": (1024, 768, "4K", 8, 2),
    "WAN22_TI2V_5B": (704, 528, "2K", 16, 2),
    "WAN22_T2V_A14B": (480, 360, "2K", 8, 2),
    "HUNYUANVIDEO15": (480, 360, "2K", 16, 1),
}
VIEW_FOV_DEG = 80.0  # spherediff_core.options.GenerationOptions.fov_deg


def view_px_for(width: int, vae_factor: int, multiple: int, fov_deg: float = VIEW_FOV_DEG) -> int:
    """A view's decoded side at an ERP width (spherediff_core.pipeline.plan_config_for)."""
    pixels = width * math.tan(math.radians(fov_deg) / 2) / math.pi
    latents = max(pixels / vae_factor, 2.0)
    return int(math.ceil(latents / multiple - 1e-9) * multiple) * vae_factor


def size_note(model_preset: str, model_id: str, size: str, width: int) -> str:
    """A note for the size field when the views would come out far below the model's
    native size ("" when fine or unknown: a Custom model)."""
    key = model_preset
    if key not in PRESET_SIZES:
        key = next((k for k, v in MODEL_IDS.items() if v == model_id), "")
    if key not in PRESET_SIZES:
        return ""
    native, smallest, default, vae, multiple = PRESET_SIZES[key]
    if size == "AUTO":
        size = default
    px = view_px_for(SIZE_WIDTHS.get(size, int(width)), vae, multiple)
    if px >= smallest:
        return ""
    fits = [k for k, w in SIZE_WIDTHS.items() if view_px_for(w, vae, multiple) >= smallest]
    hint = f"choose {fits[0]} or Auto" if fits else "choose a larger size"
    return f"Views of {px} px, far below {MODEL_LABELS[key]}'s native {native} px: {hint}"


MAX_SEED = 2**31 - 1  # Blender's IntProperty is 32-bit

# The allowed range of each number setting, (min, max); None: unbounded (but finite).
# The scene's settings (the panel) clamp to it like any Blender property. The operator's
# copies do not: Blender clamps a value outside a property's hard range without a word
# (steps=0 would run 1 step, width=100000 a 16384-pixel job), so the operator takes any
# number and refuses one outside this range by name (value_problem), as the command line
# does.
VALUE_RANGES = {
    "width": (64, MAX_WIDTH),
    "steps": (1, MAX_STEPS),
    "guidance": (0.0, MAX_GUIDANCE),
    "seed": (0, MAX_SEED),
    "frames": (1, MAX_FRAMES),
    "fps": (1, MAX_FPS),
    "rotation_z": (None, None),
    "strength": (0.0, MAX_STRENGTH),
    "sun_strength": (0.0, MAX_STRENGTH),
    # A known image (Extend Image): radians, as Blender's angle properties hold them.
    "image_yaw": (None, None),
    "image_pitch": (-math.pi / 2, math.pi / 2),
    "image_roll": (-math.pi, math.pi),
    "image_fov": (math.radians(1.0), math.radians(170.0)),
    "image_feather": (0.0, math.radians(45.0)),
    "image_strength": (0.05, 1.0),
    "draft_steps": (1, MAX_STEPS),
}
ENGINE_MAX_SEED = 2**63 - 1  # spherediff_core.options.MAX_SEED (Exact Seed's range)

# Draft sizes: (identifier, label, description, number); the numbers never change once
# released (see SCENE_MODEL_NUMBERS).
DRAFT_SIZE_ITEMS = (
    ("1K", "1K", "Drafts of 1024 x 512 pixels: quick, coarse", 0),
    ("2K", "2K", "Drafts of 2048 x 1024 pixels (for 4K and 8K finals)", 1),
    ("4K", "4K", "Drafts of 4096 x 2048 pixels (for 8K finals)", 2),
)
DRAFT_WIDTHS = {"1K": 1024, "2K": 2048, "4K": 4096}


def final_width_for(values, model_id: str) -> int | None:
    """The width a non-draft run of these settings makes (Size, or with Auto the model's
    own size, as the engine picks it); None when Auto and the model's size is unknown
    (a Custom model: the engine knows its family only once it has read it)."""
    get = values.get if isinstance(values, dict) else lambda key: getattr(values, key)
    size = get("size")
    if size == "CUSTOM":
        return int(get("width"))
    if size in SIZE_WIDTHS:
        return SIZE_WIDTHS[size]
    key = get("model_preset")
    if key not in PRESET_SIZES:
        key = next((k for k, v in MODEL_IDS.items() if v == model_id), "")
    return SIZE_WIDTHS[PRESET_SIZES[key][2]] if key in PRESET_SIZES else None


def draft_options(values, model_id: str) -> dict:
    """A draft's job options: its width and steps, and ``final_width``, the width of the
    final it is a draft of (the engine draws the final's noise and pools it onto the
    draft's sphere, so Make Final at that width makes the same world)."""
    get = values.get if isinstance(values, dict) else lambda key: getattr(values, key)
    options = {"width": DRAFT_WIDTHS[get("draft_size")], "steps": int(get("draft_steps"))}
    final = final_width_for(values, model_id)
    if final is not None:
        options["final_width"] = final  # (draft_problem refuses a smaller one)
    return options


def seed_problem(values) -> str:
    """Why the Exact Seed text cannot be a seed (empty: it can, or it is empty)."""
    get = values.get if isinstance(values, dict) else lambda key: getattr(values, key)
    text = (get("exact_seed") or "").strip()
    if not text or (text.isascii() and text.isdigit() and int(text) <= ENGINE_MAX_SEED):
        return ""
    return (
        f"exact_seed: {text!r} is not a seed; type a whole number from 0 to "
        f"{ENGINE_MAX_SEED}, or clear it to use Seed"
    )


def draft_problem(values, model_id: str) -> str:
    """Why a draft of these settings cannot be made (empty: it can, or Draft is off)."""
    get = values.get if isinstance(values, dict) else lambda key: getattr(values, key)
    if not get("draft"):
        return ""
    final = final_width_for(values, model_id)
    if final is None:
        return (
            "Draft needs the final's size, and Size Auto is not known for a Custom model "
            "before it loads: choose a Size (1K, 2K, 4K, 8K or Custom) for the final"
        )
    width = DRAFT_WIDTHS[get("draft_size")]
    if width > final:
        return (
            f"Draft Size {get('draft_size')} ({width} px) is larger than the final's "
            f"{final} px: choose a smaller Draft Size or a larger Size"
        )
    return ""


def value_problem(key: str, value) -> str:
    """Why ``value`` is refused for the number setting ``key`` (empty: it is allowed).

    Worded like the engine's own validation (spherediff_core.options): the name, the
    value and the range to use.
    """
    if key not in VALUE_RANGES or isinstance(value, bool) or not isinstance(value, (int, float)):
        return ""
    lo, hi = VALUE_RANGES[key]

    def show(number) -> str:
        return f"{number:g}" if isinstance(number, float) else str(number)

    if lo is None and hi is None:
        wanted = "a finite number"
    elif hi is None:
        wanted = f"{show(lo)} or more"
    else:
        wanted = f"{show(lo)} to {show(hi)}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key}: {value!r} is not a finite number; use {wanted}"
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        return f"{key}: {show(value)} is out of range; use {wanted}"
    return ""


def _number_range(key: str, live_update: bool, soft_min=None, soft_max=None) -> dict:
    """min/max/soft_min/soft_max of a number setting (see VALUE_RANGES).

    The scene's copy gets the range as its hard limits. The operator's copy keeps only the
    soft limits (what a slider offers) so that Blender passes a script's value unchanged,
    up to the property type's own range (32-bit int, float32).
    """
    lo, hi = VALUE_RANGES[key]
    limits = {}
    if lo is not None:
        limits["soft_min"] = lo if soft_min is None else soft_min
        if live_update:
            limits["min"] = lo
    if hi is not None:
        limits["soft_max"] = hi if soft_max is None else soft_max
        if live_update:
            limits["max"] = hi
    elif soft_max is not None:
        limits["soft_max"] = soft_max
    return limits


# Path properties that may start with "//" say so (Blender 4.5+ warns otherwise; 4.2 does
# not know the option).
BLEND_RELATIVE = (
    {"PATH_SUPPORTS_BLEND_RELATIVE"}
    if "is_path_supports_blend_relative" in bpy.types.Property.bl_rna.properties
    else set()
)


def model_id_for(preset: str, custom: str) -> str:
    """The Hub id or folder of a preset (``custom`` for CUSTOM; "" when it is empty)."""
    if preset == "CUSTOM":
        text = custom.strip()
        # A folder picked in Blender may be blend-relative ("//models/x").
        return bpy.path.abspath(text) if text.startswith("//") else text
    return MODEL_IDS.get(preset, MODEL_IDS["SANA"])


class ModelInfo:
    """What the add-on knows about a model without loading it."""

    def __init__(self, name: str, kind: str | None, compression: int = 1, fps: int = 0):
        self.name = name  # for messages
        self.kind = kind  # "image", "video", or None: unknown (a Hub id of a Custom model)
        self.compression = compression  # video: frames = k * compression + 1
        self.fps = fps  # video: the model's own frame rate (Auto FPS)


_FOLDER_INFO: dict[str, tuple[float, ModelInfo]] = {}  # folder -> (index mtime, info)


def _folder_info(model: str) -> ModelInfo:
    """A local diffusers folder's kind, from its model_index.json (None when unknown).

    Cached by the file's modification time: the panel and the button's poll ask on every
    redraw.
    """
    index_path = Path(model).expanduser() / "model_index.json"
    try:
        mtime = index_path.stat().st_mtime
    except OSError:
        return ModelInfo(model, None)
    cached = _FOLDER_INFO.get(model)
    if cached is not None and cached[0] == mtime:
        return cached[1]
    info = _read_folder_info(model, index_path)
    _FOLDER_INFO[model] = (mtime, info)
    return info


def _read_folder_info(model: str, index_path: Path) -> ModelInfo:
    name = model
    path = index_path.parent
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ModelInfo(name, None)
    class_name = index.get("_class_name") if isinstance(index, dict) else None
    if not isinstance(class_name, str) or not class_name:
        return ModelInfo(name, None)
    if class_name in VIDEO_PIPELINES:
        family, compression, fps = VIDEO_PIPELINES[class_name]
        if class_name == "WanPipeline" and index.get("expand_timesteps") is True:
            fps = WAN22_TI2V_FPS  # Wan 2.2 TI2V 5B: the family's 16 fps is Wan 2.1's
        return ModelInfo(f"{path.name} ({family})", "video", compression, fps)
    if class_name in IMAGE_PIPELINES:
        return ModelInfo(f"{path.name} ({IMAGE_PIPELINES[class_name]})", "image")
    return ModelInfo(name, None)  # a family the engine refuses with its own message


def model_info(model_preset: str, model_id: str) -> ModelInfo:
    """Kind and frame rule of a preset (or of ``model_id`` for Custom / defaults)."""
    if model_preset in VIDEO_PRESET_RULES:
        name, compression, fps = VIDEO_PRESET_RULES[model_preset]
        return ModelInfo(name, "video", compression, fps)
    if model_preset in MODEL_LABELS:
        return ModelInfo(MODEL_LABELS[model_preset], "image")
    if model_id in MODEL_IDS.values():
        key = next(k for k, v in MODEL_IDS.items() if v == model_id)
        return model_info(key, model_id)
    if model_id and Path(model_id).expanduser().is_dir():
        return _folder_info(model_id)
    return ModelInfo(model_id or "the model", None)


def nearest_valid_frames(frames: int, compression: int) -> list[int]:
    """The valid counts (k * compression + 1) just below and above ``frames``."""
    c = max(1, compression)
    below = (frames - 1) // c * c + 1
    candidates = [below, below + c] if below != frames else [frames]
    return [n for n in candidates if 1 <= n <= MAX_FRAMES]


def frames_problem(frames: int, info: ModelInfo) -> str:
    """Why a video model cannot make ``frames`` frames (empty: it can)."""
    if info.kind != "video" or (frames - 1) % max(1, info.compression) == 0:
        return ""
    near = " or ".join(str(n) for n in nearest_valid_frames(frames, info.compression))
    return (
        f"{frames} frames is not valid for {info.name}: it makes {info.compression}k+1 "
        f"frames; use {near}"
    )


def kind_problem(video: bool, info: ModelInfo) -> str:
    """Why the model does not fit the Animated switch (empty: it does, or it is unknown)."""
    if video and info.kind == "image":
        return (
            f"{info.name} makes still images: for an animated world choose a video model "
            "(LTX-Video, Wan or HunyuanVideo 1.5), or turn Animated off"
        )
    if not video and info.kind == "video":
        return (
            f"{info.name} is a video model: turn on Animated for an animated world, or "
            "choose an image model for a still"
        )
    return ""


def generation_problem(values, model_id: str) -> str:
    """What is wrong with the model, Animated and frames of these settings (empty: fine).

    ``values`` is the scene's settings or the dict the operator resolved.
    """
    get = values.get if isinstance(values, dict) else lambda key: getattr(values, key)
    problem = seed_problem(values) or draft_problem(values, model_id)
    if problem:
        return problem
    video = bool(get("video"))
    info = model_info(get("model_preset"), model_id)
    problem = kind_problem(video, info)
    if problem or not video:
        return problem
    frames = int(get("frames"))
    problem = frames_problem(frames, info)
    if problem or not get("loop") or frames > info.compression:
        return problem
    return (
        f"{frames} frames is too few for a loop with {info.name}: a loop needs at least "
        f"{info.compression + 1}; use {2 * info.compression + 1}"
    )


def _update_world(self, context):
    """Live update of the World's rotation, strength and loop when the settings change."""
    from . import world

    scene = getattr(self, "id_data", None) or context.scene
    if isinstance(scene, bpy.types.Scene):
        world.update_live_settings(scene, self.rotation_z, self.strength, self.loop)
        world.update_sun_lamp(scene, self.rotation_z, self.sun_strength)


def _update_seed(self, context):
    """A seed typed into Seed is meant: an Exact Seed left from Reuse Seed would win."""
    if self.exact_seed:
        self.exact_seed = ""


def _update_video(self, context):
    """Turning Animated on or off swaps an image preset for a video preset and back."""
    wanted = "video" if self.video else "image"
    current = self.model_preset
    if current in ("DEFAULT", "CUSTOM"):
        return  # "Preferences Default" follows Animated; a Custom model is the user's
    kind = "video" if current in VIDEO_PRESET_KEYS else "image"
    if kind == wanted:
        return
    remembered = self.other_model_preset
    remembered_kind = "video" if remembered in VIDEO_PRESET_KEYS else "image"
    if remembered in ("", "DEFAULT", "CUSTOM") or remembered_kind != wanted:
        remembered = DEFAULT_VIDEO_PRESET if self.video else "DEFAULT"
    self.other_model_preset = current
    self.model_preset = remembered


def generation_properties(live_update: bool) -> dict:
    """The settings as property definitions: for the PropertyGroup and the operator.

    The operator's copies get ``SKIP_SAVE`` (an unset property falls back to the scene's
    settings instead of reusing the last call's value) and no live-update callbacks.
    """
    opts = set() if live_update else {"SKIP_SAVE"}
    update = {"update": _update_world} if live_update else {}
    update_video = {"update": _update_video} if live_update else {}
    return {
        "prompt": StringProperty(
            name="Prompt",
            description="What the 360 degree environment shows",
            default="",
            options=opts,
        ),
        "sky_prompt": StringProperty(
            name="Sky",
            description="Prompt for the views above the horizon (empty: the main prompt)",
            default="",
            options=opts,
        ),
        "horizon_prompt": StringProperty(
            name="Horizon",
            description="Prompt for the views on the horizon (empty: the main prompt)",
            default="",
            options=opts,
        ),
        "ground_prompt": StringProperty(
            name="Ground",
            description="Prompt for the views below the horizon (empty: the main prompt)",
            default="",
            options=opts,
        ),
        "negative_prompt": StringProperty(
            name="Negative Prompt",
            description="What the image should not show (ignored by models without guidance)",
            default="",
            options=opts,
        ),
        "model_preset": EnumProperty(
            name="Model",
            description="The diffusion model that paints the panorama",
            items=MODEL_ITEMS,
            default="DEFAULT",
            options=opts,
        ),
        "custom_model": StringProperty(
            name="Custom Model",
            description="Hugging Face Hub id (owner/name) or a local diffusers model folder",
            default="",
            subtype="DIR_PATH",
            options=opts | BLEND_RELATIVE,
        ),
        "size": EnumProperty(
            name="Size",
            description="Width of the equirectangular image (its height is half of it)",
            items=SIZE_ITEMS,
            default="AUTO",
            options=opts,
        ),
        "width": IntProperty(
            name="Width",
            description="Image width in pixels for the Custom size (even; height = width / 2)",
            default=1024,
            **_number_range("width", live_update, soft_min=256, soft_max=8192),
            step=64,
            options=opts,
        ),
        "auto_steps": BoolProperty(
            name="Auto Steps",
            description="Use the model's recommended number of denoising steps",
            default=True,
            options=opts,
        ),
        "steps": IntProperty(
            name="Steps",
            description="Denoising steps: more is slower and usually cleaner",
            default=20,
            **_number_range("steps", live_update, soft_max=100),
            options=opts,
        ),
        "auto_guidance": BoolProperty(
            name="Auto Guidance",
            description="Use the model's recommended guidance scale",
            default=True,
            options=opts,
        ),
        "guidance": FloatProperty(
            name="Guidance",
            description="How strictly the image follows the prompt (classifier-free guidance)",
            default=4.5,
            **_number_range("guidance", live_update, soft_max=20.0),
            step=10,
            precision=1,
            options=opts,
        ),
        "random_seed": BoolProperty(
            name="Random Seed",
            description="Pick a new random seed for every generation",
            default=True,
            options=opts,
        ),
        "seed": IntProperty(
            name="Seed",
            description="Starting noise: the same seed and settings give the same image",
            default=0,
            **_number_range("seed", live_update),
            options=opts,
            **({"update": _update_seed} if live_update else {}),
        ),
        "exact_seed": StringProperty(
            name="Exact Seed",
            description=(
                f"A seed beyond Seed's range, up to {ENGINE_MAX_SEED}, as digits (Reuse "
                "Seed fills it for such a seed): used instead of Seed while Random is off; "
                "empty: Seed"
            ),
            default="",
            options=opts,
        ),
        "draft": BoolProperty(
            name="Draft",
            description=(
                "Make a quick draft: Draft Size and Draft Steps instead of Size and Steps, "
                "from the noise of the full-size final, so Make Final (the same seed, "
                "prompts and model at full size and steps) makes the same world, sharper"
            ),
            default=False,
            options=opts,
        ),
        "draft_size": EnumProperty(
            name="Draft Size",
            description="Width of a draft (its height is half of it)",
            items=DRAFT_SIZE_ITEMS,
            default="1K",
            options=opts,
        ),
        "draft_steps": IntProperty(
            name="Draft Steps",
            description="Denoising steps of a draft",
            default=8,
            **_number_range("draft_steps", live_update, soft_min=2, soft_max=30),
            options=opts,
        ),
        "output_dir": StringProperty(
            name="Output Folder",
            description=(
                "Where finished panoramas are saved (// is the .blend file's folder; an "
                "unsaved file uses Blender's temporary folder)"
            ),
            default="//spherediff/",
            subtype="DIR_PATH",
            options=opts | BLEND_RELATIVE,
        ),
        "pack_image": BoolProperty(
            name="Pack Image",
            description=(
                "Pack the panorama into the .blend file (not for animated worlds: Blender "
                "cannot pack an image sequence)"
            ),
            default=False,
            options=opts,
        ),
        "video": BoolProperty(
            name="Animated",
            description=(
                "Make an animated 360 degree world with a video model (LTX-Video, Wan, "
                "HunyuanVideo 1.5): "
                "a sequence of panorama frames played by the Environment Texture"
            ),
            default=False,
            options=opts,
            **update_video,
        ),
        "frames": IntProperty(
            name="Frames",
            description=(
                "Number of frames of the animated world (LTX-Video takes 8k+1: 9, 17, ... "
                "121; Wan and HunyuanVideo 1.5 take 4k+1: 5, 9, ... 81, ... 121)"
            ),
            default=49,
            **_number_range("frames", live_update, soft_max=257),
            options=opts,
        ),
        "auto_fps": BoolProperty(
            name="Auto FPS",
            description=(
                "Use the model's own frame rate (LTX-Video, Wan 2.2 TI2V 5B and "
                "HunyuanVideo 1.5 24; Wan 2.1 and Wan 2.2 A14B 16)"
            ),
            default=True,
            options=opts,
        ),
        "fps": IntProperty(
            name="FPS",
            description="Frames per second of the animated world",
            default=24,
            **_number_range("fps", live_update),
            options=opts,
        ),
        "loop": BoolProperty(
            name="Loop",
            description=(
                "Make the animated world a seamless loop and play it over and over: the last "
                "frame leads into the first (Frames counts the closing frame, so one fewer "
                "is made). Off: a plain clip whose last frame holds after the end"
            ),
            default=True,
            options=opts,
            **update,
        ),
        "match_scene": BoolProperty(
            name="Match Scene",
            description=(
                "Set the scene's frame range (from its start frame, as many frames as the "
                "sequence) and frame rate to the animated world's"
            ),
            default=False,
            options=opts,
        ),
        "rotation_z": FloatProperty(
            name="Rotation",
            description="Turn the environment around the vertical (Z) axis",
            default=0.0,
            soft_min=-3.14159265,
            soft_max=3.14159265,
            subtype="ANGLE",
            unit="ROTATION",
            options=opts,
            **update,
        ),
        "strength": FloatProperty(
            name="Strength",
            description=(
                "Brightness of the environment's light (Background strength); with a Sun "
                "Lamp, the sky's alone"
            ),
            default=1.0,
            **_number_range("strength", live_update, soft_max=10.0),
            options=opts,
            **update,
        ),
        "extend_image": BoolProperty(
            name="Extend Image",
            description=(
                "Generate the world around a known image (a backplate photo, a painting, a "
                "render): it is kept as it is where it sits, and the rest of the sphere is "
                "made to match. Image models only"
            ),
            default=False,
            options=opts,
        ),
        "image_path": StringProperty(
            name="Image File",
            description="The image to extend (PNG, JPEG, WebP), if no image data-block is chosen",
            default="",
            subtype="FILE_PATH",
            options=opts | BLEND_RELATIVE,
        ),
        "image_name": StringProperty(
            name="Image",
            description=(
                "An image data-block to extend (a loaded image, a render result, a camera's "
                "background image); it wins over the file"
            ),
            default="",
            options=opts,
        ),
        "match_camera": BoolProperty(
            name="Match Camera",
            description=(
                "Place the image where the scene camera sees it (its rotation and field of "
                "view), so the generated World lines up behind the plate in the camera view"
            ),
            default=True,
            options=opts,
        ),
        "image_yaw": FloatProperty(
            name="Azimuth",
            description="Where the image's centre looks, around Z (0: +X, 90°: +Y)",
            default=0.0,
            soft_min=-math.pi,
            soft_max=math.pi,
            subtype="ANGLE",
            unit="ROTATION",
            options=opts,
        ),
        "image_pitch": FloatProperty(
            name="Elevation",
            description="How far above the horizon the image's centre looks",
            default=0.0,
            **_number_range("image_pitch", live_update),
            subtype="ANGLE",
            unit="ROTATION",
            options=opts,
        ),
        "image_roll": FloatProperty(
            name="Roll",
            description="The image's camera roll about its viewing direction",
            default=0.0,
            **_number_range("image_roll", live_update),
            subtype="ANGLE",
            unit="ROTATION",
            options=opts,
        ),
        "image_fov": FloatProperty(
            name="Field of View",
            description="The image's horizontal field of view",
            default=math.radians(60.0),
            **_number_range("image_fov", live_update),
            subtype="ANGLE",
            unit="ROTATION",
            options=opts,
        ),
        "image_feather": FloatProperty(
            name="Feather",
            description="Width of the blend inside the image's border",
            default=math.radians(4.0),
            **_number_range("image_feather", live_update, soft_max=math.radians(15.0)),
            subtype="ANGLE",
            unit="ROTATION",
            options=opts,
        ),
        "image_strength": FloatProperty(
            name="Hold",
            description=(
                "Fraction of the denoising steps the image is held (1: to the end, so it comes "
                "out as it is; lower lets its border blend more)"
            ),
            default=1.0,
            **_number_range("image_strength", live_update),
            subtype="FACTOR",
            options=opts,
        ),
        "hdr": BoolProperty(
            name="HDR Lighting",
            description=(
                "Lift the panorama to linear HDR (an OpenEXR beside the PNG, its sun "
                "restored) and light the scene with it like a captured HDRI. Stills only: "
                "animated worlds stay LDR"
            ),
            default=True,
            options=opts,
        ),
        "sun_lamp": BoolProperty(
            name="Sun Lamp",
            description=(
                "Add or update one Sun light (SphereDiff Sun) from the sun found in the "
                "panorama, for crisp shadows; the sun's disc is masked in the World so its "
                "light is not counted twice. Needs HDR Lighting"
            ),
            default=True,
            options=opts,
        ),
        "sun_strength": FloatProperty(
            name="Sun Strength",
            description=(
                "Scale of the Sun lamp's strength against the estimate (1: as measured in "
                "the panorama); the World's Strength scales the sky"
            ),
            default=1.0,
            **_number_range("sun_strength", live_update, soft_max=10.0),
            options=opts,
            **update,
        ),
    }


GENERATION_KEYS = tuple(generation_properties(False))


class SPHEREDIFF_PG_settings(PropertyGroup):
    __annotations__ = {
        **generation_properties(live_update=True),
        # The last result and error, shown by the panel (saved with the file).
        "last_image": StringProperty(
            name="Last Image",
            description="The panorama the last generation made",
            subtype="FILE_PATH",
            options=BLEND_RELATIVE,
        ),
        "last_seed": IntProperty(name="Last Seed", description="Seed of the last generation"),
        "last_seconds": FloatProperty(
            name="Last Time", description="Seconds the last generation took"
        ),
        "last_model": StringProperty(name="Last Model", description="Model of the last generation"),
        "last_frames": IntProperty(
            name="Last Frames",
            description="Frames of the last generation (0: a still)",
        ),
        "last_fps": IntProperty(name="Last FPS", description="Frame rate of the last generation"),
        "last_hdr": BoolProperty(
            name="Last HDR", description="Whether the last World is an HDR image (OpenEXR)"
        ),
        "last_sun": BoolProperty(
            name="Last Sun", description="Whether a sun was found in the last HDR panorama"
        ),
        "last_sun_azimuth": FloatProperty(
            name="Sun Azimuth",
            description="The sun's direction around Z in the panorama (0: +X, 90: +Y), degrees",
        ),
        "last_sun_elevation": FloatProperty(
            name="Sun Elevation", description="The sun's height above the horizon, degrees"
        ),
        "last_sun_energy": FloatProperty(
            name="Sun Estimate",
            description="The sun's estimated strength, W/m^2 (a Sun lamp's unit)",
        ),
        # The preset of the other kind (image / video), restored when Animated is toggled.
        "other_model_preset": StringProperty(options={"HIDDEN"}),
        # The scene's generations (history.py), the selected one, and how many seeds
        # Variations runs.
        "history": CollectionProperty(
            type=history.SPHEREDIFF_PG_history_entry,
            name="History",
            description="The scene's generations, newest last",
        ),
        "history_index": IntProperty(
            name="Selected Generation",
            description="The history entry that Restore, Copy Seed and Reuse Seed act on",
            default=-1,
            min=-1,
        ),
        "variation_count": IntProperty(
            name="Variations",
            description="How many seeds Variations runs (each its own files and history entry)",
            default=4,
            min=1,
            max=history.VARIATIONS_MAX,
            soft_max=16,
        ),
        "last_error": StringProperty(
            name="Last Error", description="Why the last generation failed (empty: it did not)"
        ),
    }


# (A history entry's PropertyGroup first: the settings hold a collection of them.)
classes = (history.SPHEREDIFF_PG_history_entry, SPHEREDIFF_PG_settings)


def register_properties() -> None:
    bpy.types.Scene.spherediff = bpy.props.PointerProperty(
        type=SPHEREDIFF_PG_settings, name="SphereDiff", description="SphereDiff settings"
    )
    history.register_handlers()  # the history's paths follow the .blend on save


def unregister_properties() -> None:
    history.unregister_handlers()
    del bpy.types.Scene.spherediff
