"""The generation settings: one PropertyGroup on the Scene (``scene.spherediff``).

The generate operator has the same properties (built by :func:`generation_properties`), so
a script can pass any of them; the ones it leaves unset come from the scene's settings.
"""

import bpy
from bpy.props import (
    BoolProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    StringProperty,
)
from bpy.types import PropertyGroup

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
)
MODEL_IDS = {key: hub_id for key, _, _, hub_id in MODEL_PRESETS}

_CUSTOM_ITEM = (
    "CUSTOM",
    "Custom",
    "A Hugging Face Hub id (owner/name) or a local diffusers model folder",
)
MODEL_ITEMS_NO_DEFAULT = (*((k, n, d) for k, n, d, _ in MODEL_PRESETS), _CUSTOM_ITEM)
MODEL_ITEMS = (
    ("DEFAULT", "Preferences Default", "The default model set in the add-on's preferences"),
    *MODEL_ITEMS_NO_DEFAULT,
)

SIZE_WIDTHS = {"1K": 1024, "2K": 2048, "4K": 4096, "8K": 8192}
SIZE_ITEMS = (
    ("1K", "1K", "1024 x 512 pixels: quick previews"),
    ("2K", "2K", "2048 x 1024 pixels"),
    ("4K", "4K", "4096 x 2048 pixels: slow, much VRAM for the larger models"),
    ("8K", "8K", "8192 x 4096 pixels: very slow, needs VAE tiling on most GPUs"),
    ("CUSTOM", "Custom", "Any even width (the height is half of it)"),
)

MAX_SEED = 2**31 - 1  # Blender's IntProperty is 32-bit

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


def _update_world(self, context):
    """Live update of the World's rotation and strength when the settings change."""
    from . import world

    scene = getattr(self, "id_data", None) or context.scene
    if isinstance(scene, bpy.types.Scene):
        world.update_live_settings(scene, self.rotation_z, self.strength)


def generation_properties(live_update: bool) -> dict:
    """The settings as property definitions: for the PropertyGroup and the operator.

    The operator's copies get ``SKIP_SAVE`` (an unset property falls back to the scene's
    settings instead of reusing the last call's value) and no live-update callbacks.
    """
    opts = set() if live_update else {"SKIP_SAVE"}
    update = {"update": _update_world} if live_update else {}
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
            default="2K",
            options=opts,
        ),
        "width": IntProperty(
            name="Width",
            description="Image width in pixels for the Custom size (even; height = width / 2)",
            default=1024,
            min=64,
            max=16384,
            soft_min=256,
            soft_max=8192,
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
            min=1,
            max=1000,
            soft_max=100,
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
            min=0.0,
            max=50.0,
            soft_max=20.0,
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
            min=0,
            max=MAX_SEED,
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
            description="Pack the panorama into the .blend file",
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
            description="Brightness of the environment's light (Background strength)",
            default=1.0,
            min=0.0,
            soft_max=10.0,
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
        "last_error": StringProperty(
            name="Last Error", description="Why the last generation failed (empty: it did not)"
        ),
    }


classes = (SPHEREDIFF_PG_settings,)


def register_properties() -> None:
    bpy.types.Scene.spherediff = bpy.props.PointerProperty(
        type=SPHEREDIFF_PG_settings, name="SphereDiff", description="SphereDiff settings"
    )


def unregister_properties() -> None:
    del bpy.types.Scene.spherediff
