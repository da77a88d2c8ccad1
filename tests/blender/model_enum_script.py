"""Run inside a bpy interpreter by test_addon_model_enums.py: the add-on's model lists as
Blender sees them, and a .blend saved under the old numbering opened by the add-on.

Usage: ``python model_enum_script.py MODE OUT.json [ARGS...]``; the add-on is imported from
the source tree (``spherediff_blender`` next to ``tests``) and registered like Blender does.

Modes:

* ``dump``: every enum's (identifier -> number) pairs from Blender's RNA (what a file
  stores), the model tables and the kind/frame rule of a few local folders.
* ``save_old BLEND IDS_JSON``: register a ``scene.spherediff`` whose model list is numbered
  by position, as the add-on numbered it before the numbers were written down (the
  historical list comes from the test), make one scene per identifier with that choice,
  and save ``BLEND``.
* ``open BLEND``: register the real add-on, open ``BLEND`` and report every scene's model.
* ``open_positional BLEND``: the same with today's presets numbered by position (the old
  formula): what a file would read as had the numbers stayed positional.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import bpy

REPO_ROOT = Path(__file__).resolve().parents[2]


def _addon():
    sys.path.insert(0, str(REPO_ROOT))
    import spherediff_blender

    spherediff_blender.register()
    return spherediff_blender


def _enum_numbers(rna_properties, name: str) -> dict[str, int]:
    return {item.identifier: item.value for item in rna_properties[name].enum_items}


def _rna_properties(cls):
    """A registered class's RNA properties (an operator's live on its bpy.ops type)."""
    if issubclass(cls, bpy.types.Operator):
        module, name = cls.bl_idname.split(".")
        return getattr(getattr(bpy.ops, module), name).get_rna_type().properties
    return cls.bl_rna.properties


def _folder(kind: str, index: dict) -> str:
    folder = Path(tempfile.mkdtemp(prefix=f"sd-{kind}-"))
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return str(folder)


def dump(out: dict) -> None:
    addon = _addon()
    props = addon.properties
    scene_rna = bpy.types.Scene.bl_rna.properties["spherediff"].fixed_type.properties
    prefs_rna = addon.preferences.SphereDiffPreferences.bl_rna.properties
    op_rna = bpy.ops.spherediff.generate.get_rna_type().properties
    out["enums"] = {
        "scene.model_preset": _enum_numbers(scene_rna, "model_preset"),
        "scene.size": _enum_numbers(scene_rna, "size"),
        "operator.model_preset": _enum_numbers(op_rna, "model_preset"),
        "prefs.default_model": _enum_numbers(prefs_rna, "default_model"),
        "prefs.default_video_model": _enum_numbers(prefs_rna, "default_video_model"),
        "prefs.device": _enum_numbers(prefs_rna, "device"),
        "prefs.precision": _enum_numbers(prefs_rna, "precision"),
    }
    # Every enum property of every class the add-on registers, so that a new enum cannot
    # go unchecked: (owner, property) -> its items' numbers.
    every = {}
    for cls in addon.classes:
        for prop in _rna_properties(cls):
            if prop.type == "ENUM" and prop.is_runtime:  # defined by the add-on
                every[f"{cls.__name__}.{prop.identifier}"] = {
                    i.identifier: i.value for i in prop.enum_items
                }
    out["all_enums"] = every
    out["image_pipelines"] = dict(props.IMAGE_PIPELINES)
    out["video_pipelines"] = {k: list(v) for k, v in props.VIDEO_PIPELINES.items()}
    out["video_preset_rules"] = {k: list(v) for k, v in props.VIDEO_PRESET_RULES.items()}
    out["image_presets"] = [k for k, *_ in props.MODEL_PRESETS]
    out["video_presets"] = [k for k, *_ in props.VIDEO_MODEL_PRESETS]
    out["hub_ids"] = dict(props.MODEL_IDS)
    out["descriptions"] = {
        k: d for k, _, d, *_ in (*props.MODEL_PRESETS, *props.VIDEO_MODEL_PRESETS)
    }
    out["preset_sizes"] = sorted(props.PRESET_SIZES)
    info = {}
    for key in (*out["image_presets"], *out["video_presets"]):
        i = props.model_info(key, "")
        info[key] = [i.kind, i.compression, i.fps]
    out["model_info"] = info
    folders = {
        "wan21": {"_class_name": "WanPipeline"},
        "wan22_5b": {"_class_name": "WanPipeline", "expand_timesteps": True},
        "wan22_a14b": {"_class_name": "WanPipeline", "boundary_ratio": 0.875},
        "hv15": {"_class_name": "HunyuanVideo15Pipeline"},
        "flux2": {"_class_name": "Flux2KleinPipeline", "is_distilled": True},
    }
    out["folder_info"] = {}
    for name, index in folders.items():
        i = props.model_info("CUSTOM", _folder(name, index))
        out["folder_info"][name] = [i.kind, i.compression, i.fps]


def _positional_items(images, videos) -> list[tuple]:
    """The add-on's old formula: stills by position from 1, Custom after them, then the
    video models (DEFAULT 0)."""
    items = [("DEFAULT", "Preferences Default", "", "", 0)]
    items += [(k, k, "", "", i) for i, k in enumerate(images, start=1)]
    items += [(k, k, "", "", i) for i, k in enumerate(videos, start=len(images) + 2)]
    items.append(("CUSTOM", "Custom", "", "", len(images) + 1))
    return items


def _register_positional(images, videos) -> None:
    class OldSettings(bpy.types.PropertyGroup):
        pass

    OldSettings.__annotations__ = {
        "model_preset": bpy.props.EnumProperty(
            name="Model",
            description="The model list numbered by position",
            items=_positional_items(images, videos),
            default="DEFAULT",
        )
    }
    bpy.utils.register_class(OldSettings)
    bpy.types.Scene.spherediff = bpy.props.PointerProperty(type=OldSettings)


def save_old(out: dict, blend: str, lists: str) -> None:
    history = json.loads(lists)
    _register_positional(history["images"], history["videos"])
    scenes = {}
    for key in history["choices"]:
        scene = bpy.data.scenes.new(f"old_{key}")
        scene.spherediff.model_preset = key
        scenes[scene.name] = key
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    out["scenes"] = scenes


def _open(out: dict, blend: str) -> None:
    bpy.ops.wm.open_mainfile(filepath=blend)
    out["scenes"] = {
        scene.name: scene.spherediff.model_preset
        for scene in bpy.data.scenes
        if scene.name.startswith("old_")
    }


def open_real(out: dict, blend: str) -> None:
    _addon()
    _open(out, blend)


def open_positional(out: dict, blend: str) -> None:
    sys.path.insert(0, str(REPO_ROOT))
    from spherediff_blender import properties  # today's presets, not registered

    _register_positional(
        [k for k, *_ in properties.MODEL_PRESETS], [k for k, *_ in properties.VIDEO_MODEL_PRESETS]
    )
    _open(out, blend)


def main() -> None:
    mode, out_path, *args = sys.argv[1:]
    out: dict = {}
    {"dump": dump, "save_old": save_old, "open": open_real, "open_positional": open_positional}[
        mode
    ](out, *args)
    Path(out_path).write_text(json.dumps(out, indent=1), encoding="utf-8")
    sys.stdout.flush()
    sys.stderr.flush()
    # bpy 4.2 crashes (SIGSEGV) in its interpreter teardown after classes were registered
    # outside its add-on system, even once unregistered (the released add-on does so too);
    # the result is written, so skip the teardown.
    os._exit(0)


if __name__ == "__main__":
    main()
