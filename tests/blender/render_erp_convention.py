"""Render an equirectangular (ERP) world texture through perspective cameras with Cycles.

Run INSIDE a Blender Python interpreter (``pip install bpy``), not the project venv; this
script must not import torch or spherediff_core::

    <bpy venv>/bin/python tests/blender/render_erp_convention.py \
        --erp IN.png --out OUT.json [--views VIEWS.json] [--texture-dump TEX.npy]

It builds a fresh scene whose World is

    Environment Texture (EQUIRECTANGULAR, IN.png, colour space Non-Color)
        -> Background (strength 1) -> World Output

and renders it with Cycles on the CPU (tiny resolution, few samples, no denoising, view
transform 'Standard', look None, exposure 0, gamma 1) once per camera, each render saved as
a 32-bit float EXR and loaded back, so the rendered pixels are the texel values unchanged.

VIEWS.json is a list of ``{"name": str, "forward": [x, y, z], "up": [x, y, z]}`` in
Blender's world frame (Z up); the camera looks along ``forward`` with ``up`` pointing to the
top of its image (``up`` must be orthogonal to ``forward``; it is re-orthogonalised). Without
``--views`` the six axis directions are rendered, with the project's camera-frame convention
for ``up`` (see ``spherediff_core.geometry``: right = (sin lon, -cos lon, 0), up = right x
forward, lon = atan2(y, x), which is 0 at the poles).

OUT.json holds, per view: the mean RGB of the central ``--centre`` x ``--centre`` pixels,
and the whole render (RGB, top row first). With ``--texture-dump`` the ERP texture as Blender
loaded it (float32, H x W x 4, top row first) is saved as .npy, to verify the image file
round-trips exactly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile

import bpy
import numpy as np

DEFAULT_AXES = {
    "+X": (1.0, 0.0, 0.0),
    "-X": (-1.0, 0.0, 0.0),
    "+Y": (0.0, 1.0, 0.0),
    "-Y": (0.0, -1.0, 0.0),
    "+Z": (0.0, 0.0, 1.0),
    "-Z": (0.0, 0.0, -1.0),
}


def _script_argv() -> list[str]:
    argv = sys.argv[1:]
    # Also allow `blender -b --python this.py -- args` (Blender passes its own args first).
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    return argv


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--erp", required=True, help="equirectangular image (PNG, EXR, ...)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--views", help="JSON file: list of {name, forward, up}")
    p.add_argument("--resolution", type=int, default=16, help="square render size (px)")
    p.add_argument("--fov-deg", type=float, default=60.0, help="horizontal field of view")
    p.add_argument("--samples", type=int, default=4, help="Cycles samples per pixel")
    p.add_argument(
        "--filter-width",
        type=float,
        default=0.01,
        help="Cycles pixel filter width (px); tiny = rays through pixel centres",
    )
    p.add_argument("--centre", type=int, default=2, help="side of the central pixel block")
    p.add_argument(
        "--interpolation", default="Linear", choices=["Linear", "Closest", "Cubic", "Smart"]
    )
    p.add_argument(
        "--no-persistent-data",
        action="store_true",
        help="re-sync the scene for every view (slower)",
    )
    p.add_argument("--texture-dump", help="save the loaded ERP texels here (.npy)")
    return p.parse_args(_script_argv())


# --------------------------------------------------------------------------- small vectors
def _norm(a):
    n = math.sqrt(sum(c * c for c in a))
    if n < 1e-12:
        raise ValueError(f"zero vector {a}")
    return tuple(c / n for c in a)


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b, strict=False))


def default_up(forward):
    """The project's convention (geometry.camera_frames), restated without torch."""
    f = _norm(forward)
    lon = math.atan2(f[1], f[0])
    right = (math.sin(lon), -math.cos(lon), 0.0)
    return _norm(_cross(right, f))


def load_views(path: str | None) -> list[dict]:
    if path is None:
        return [
            {"name": n, "forward": list(d), "up": list(default_up(d))}
            for n, d in DEFAULT_AXES.items()
        ]
    with open(path, encoding="utf-8") as fh:
        views = json.load(fh)
    for v in views:
        v.setdefault("up", list(default_up(v["forward"])))
    return views


def camera_matrix(forward, up):
    """4x4 world matrix of a Blender camera (looks along local -Z, local +Y is image up)."""
    import mathutils

    f = _norm(forward)
    u = _norm(tuple(uc - _dot(up, f) * fc for uc, fc in zip(up, f, strict=False)))
    r = _cross(f, u)  # right = forward x up, so (r, u, -f) is a proper rotation
    rot = mathutils.Matrix(((r[0], u[0], -f[0]), (r[1], u[1], -f[1]), (r[2], u[2], -f[2])))
    return rot.to_4x4()


# --------------------------------------------------------------------------- scene set-up
def reset_scene() -> bpy.types.Scene:
    # read_factory_settings gives an empty, default-configured file in both 4.2 and 5.0.
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


def build_world(scene, erp_path: str, interpolation: str) -> bpy.types.Image:
    world = bpy.data.worlds.new("ERPWorld")
    scene.world = world
    # 4.2 needs World.use_nodes = True; 5.0 deprecates it (DeprecationWarning, removal
    # planned for 6.0) and new worlds there come with a node tree already.
    if bpy.app.version < (5, 0, 0) or world.node_tree is None:
        world.use_nodes = True
    if world.node_tree is None:
        raise RuntimeError("world has no node tree")
    nodes, links = world.node_tree.nodes, world.node_tree.links
    nodes.clear()

    img = bpy.data.images.load(os.path.abspath(erp_path), check_existing=False)
    img.colorspace_settings.name = "Non-Color"  # texel values pass through unchanged
    img.alpha_mode = "NONE"

    env = nodes.new("ShaderNodeTexEnvironment")
    env.image = img
    env.projection = "EQUIRECTANGULAR"
    env.interpolation = interpolation
    bg = nodes.new("ShaderNodeBackground")
    bg.inputs["Strength"].default_value = 1.0
    out = nodes.new("ShaderNodeOutputWorld")
    out.target = "ALL"
    links.new(env.outputs["Color"], bg.inputs["Color"])
    links.new(bg.outputs["Background"], out.inputs["Surface"])
    return img


def configure_render(scene, args) -> None:
    scene.render.engine = "CYCLES"
    cy = scene.cycles
    cy.device = "CPU"
    cy.samples = args.samples
    cy.use_adaptive_sampling = False
    cy.use_denoising = False
    cy.seed = 0
    cy.filter_width = args.filter_width
    # Camera rays that hit only the world need no bounces, but keep it cheap anyway.
    cy.max_bounces = 0
    scene.render.threads_mode = "FIXED"
    scene.render.threads = 1
    # Keep Cycles' scene and kernels between the per-view renders (~6x faster here; the
    # results are bit-identical to fresh renders).
    scene.render.use_persistent_data = not args.no_persistent_data

    r = scene.render
    r.resolution_x = r.resolution_y = args.resolution
    r.resolution_percentage = 100
    r.pixel_aspect_x = r.pixel_aspect_y = 1.0
    r.film_transparent = False
    r.use_border = False
    r.use_compositing = False
    r.use_sequencer = False

    # Colour management off: identity from scene-linear to the stored pixels.
    scene.display_settings.display_device = "sRGB"
    vs = scene.view_settings
    vs.view_transform = "Standard"
    vs.look = "None"
    vs.exposure = 0.0
    vs.gamma = 1.0
    vs.use_curve_mapping = False
    scene.sequencer_colorspace_settings.name = "Non-Color"

    im = r.image_settings
    if hasattr(im, "media_type"):  # 5.0+: formats are grouped by media type
        im.media_type = "IMAGE"
    im.file_format = "OPEN_EXR"
    im.color_mode = "RGB"
    im.color_depth = "32"
    im.exr_codec = "NONE"


def make_camera(scene, fov_deg: float) -> bpy.types.Object:
    cam_data = bpy.data.cameras.new("Cam")
    cam_data.type = "PERSP"
    cam_data.sensor_fit = "HORIZONTAL"
    cam_data.lens_unit = "FOV"
    cam_data.angle = math.radians(fov_deg)
    cam_data.shift_x = cam_data.shift_y = 0.0
    cam_data.clip_start, cam_data.clip_end = 0.01, 100.0
    cam = bpy.data.objects.new("Cam", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    return cam


def image_pixels(img: bpy.types.Image) -> np.ndarray:
    """Float RGBA pixels of a Blender image, (H, W, 4), top row first."""
    w, h = img.size
    buf = np.empty(w * h * 4, dtype=np.float32)
    img.pixels.foreach_get(buf)
    return buf.reshape(h, w, 4)[::-1].copy()  # Blender stores the bottom row first


def render_view(scene, cam, view: dict, path: str) -> np.ndarray:
    cam.matrix_world = camera_matrix(view["forward"], view["up"])
    scene.render.filepath = path
    bpy.ops.render.render(write_still=True)
    if not os.path.exists(path):
        raise RuntimeError(f"render did not write {path}")
    img = bpy.data.images.load(path, check_existing=False)
    img.colorspace_settings.name = "Non-Color"
    px = image_pixels(img)
    bpy.data.images.remove(img)
    return px[..., :3]


def main() -> int:
    args = parse_args()
    views = load_views(args.views)
    scene = reset_scene()
    tex = build_world(scene, args.erp, args.interpolation)
    configure_render(scene, args)
    cam = make_camera(scene, args.fov_deg)

    if args.texture_dump:
        np.save(args.texture_dump, image_pixels(tex))

    n, c = args.resolution, args.centre
    lo = (n - c) // 2
    results = []
    with tempfile.TemporaryDirectory(prefix="erp_conv_") as tmpdir:
        for i, view in enumerate(views):
            rgb = render_view(scene, cam, view, os.path.join(tmpdir, f"view_{i:03d}.exr"))
            centre = rgb[lo : lo + c, lo : lo + c].reshape(-1, 3).mean(axis=0)
            results.append(
                {
                    "name": view["name"],
                    "forward": list(view["forward"]),
                    "up": list(view["up"]),
                    "centre_rgb": [float(x) for x in centre],
                    "pixels_rgb": rgb.astype(float).round(6).tolist(),
                }
            )

    out = {
        "blender_version": bpy.app.version_string,
        "blender_version_tuple": list(bpy.app.version),
        "texture_size": list(tex.size),
        "resolution": n,
        "fov_deg": args.fov_deg,
        "samples": args.samples,
        "filter_width": args.filter_width,
        "centre": c,
        "interpolation": args.interpolation,
        "views": results,
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
