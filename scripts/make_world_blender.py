"""Inside headless Blender (bpy): install the extension, generate a World, render a preview.

Run by scripts/make_world.sh with Blender's Python (bpy as a module), or by any Blender:
    blender -b --python scripts/make_world_blender.py -- --zip dist/spherediff-0.1.0.zip ...
The worker Python comes from SPHEREDIFF_PYTHON (the add-on's preference order).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import bpy


def parse_args() -> argparse.Namespace:
    argv = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", required=True, help="the extension .zip to install")
    parser.add_argument("--model", required=True, help="Hub id or local diffusers folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--prompt",
        default="a sunlit alpine lake surrounded by pine forest and snowy peaks, clear sky",
    )
    parser.add_argument("--size", default="2K", choices=["1K", "2K", "4K", "8K"])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args(argv)


def install_extension(zip_path: Path) -> None:
    result = bpy.ops.extensions.package_install_files(
        filepath=str(zip_path), repo="user_default", enable_on_install=True
    )
    enabled = {a.module for a in bpy.context.preferences.addons}
    if "FINISHED" not in result or not any(m.endswith("spherediff") for m in enabled):
        sys.exit(f"could not install and enable the extension from {zip_path}")


def build_scene() -> bpy.types.Scene:
    """A chrome ball and a grey ball on a floor, so the preview shows light and reflections."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    bpy.ops.mesh.primitive_plane_add(size=12)
    bpy.ops.mesh.primitive_uv_sphere_add(radius=1.0, location=(0.0, -1.2, 1.0))
    chrome = bpy.data.materials.new("Chrome")
    if bpy.app.version < (5, 0, 0):  # 5.0 gives every material nodes (use_nodes deprecated)
        chrome.use_nodes = True
    bsdf = chrome.node_tree.nodes.get("Principled BSDF")
    bsdf.inputs["Metallic"].default_value = 1.0
    bsdf.inputs["Roughness"].default_value = 0.05
    bpy.context.object.data.materials.append(chrome)
    bpy.ops.object.shade_smooth()
    bpy.ops.mesh.primitive_uv_sphere_add(radius=1.0, location=(0.0, 1.2, 1.0))
    bpy.ops.object.shade_smooth()
    bpy.ops.object.camera_add(
        location=(-7.0, 0.0, 2.2), rotation=(math.radians(82), 0, -math.pi / 2)
    )
    scene.camera = bpy.context.object
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 32
    scene.render.resolution_x, scene.render.resolution_y = 640, 360
    return scene


def main() -> int:
    args = parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    scene = build_scene()  # factory settings first: they would unload an enabled add-on
    install_extension(Path(args.zip).resolve())
    # Saved first, so the panorama goes to //spherediff/ next to the .blend (relative path).
    bpy.ops.wm.save_as_mainfile(filepath=str(out / "world.blend"))

    kwargs = {"prompt": args.prompt, "size": args.size, "seed": args.seed}
    kwargs["custom_model"] = args.model
    if args.steps is not None:
        kwargs["steps"] = args.steps
    t0 = time.monotonic()
    try:
        bpy.ops.spherediff.generate(**kwargs)
    except RuntimeError as exc:  # the operator reports the worker's error this way
        print(f"\nSphereDiff could not generate the World:\n{exc}", file=sys.stderr)
        return 3
    print(f"World generated in {time.monotonic() - t0:.1f} s")

    scene.render.filepath = str(out / "preview.png")
    bpy.ops.render.render(write_still=True)
    bpy.ops.wm.save_mainfile()
    image = scene.world.node_tree.nodes.get("SphereDiff Environment")
    panorama = bpy.path.abspath(image.image.filepath) if image and image.image else "?"
    print(f"panorama: {panorama}\npreview:  {out / 'preview.png'}\nscene:    {out / 'world.blend'}")
    settings = scene.spherediff
    if settings.last_hdr and settings.last_sun:
        print(
            f"sun lamp: SphereDiff Sun, azimuth {settings.last_sun_azimuth:.1f} deg, elevation "
            f"{settings.last_sun_elevation:.1f} deg, {settings.last_sun_energy:.3g} W/m^2"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
