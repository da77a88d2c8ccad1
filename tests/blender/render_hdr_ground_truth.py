"""Render HDR equirectangular (ERP) ground-truth panoramas with known lighting in Cycles.

Run INSIDE a Blender Python interpreter (``pip install bpy``), not the project venv; this
script must not import torch or spherediff_core::

    <bpy venv>/bin/python tests/blender/render_hdr_ground_truth.py --out-dir DIR \
        [--scenes NAME ...] [--width 512] [--samples 32]

Every scene is rendered from (0, 0, 1.6) by an equirectangular camera whose image centre
faces +X with Z up, so the render is an ERP in the project's convention (the one of
Blender's Environment Texture, ``spherediff_core.geometry``): pixel (row, col) looks along
lon = (0.5 - u) 2 pi, lat = (v - 0.5) pi, u = (col + 0.5) / W, v = 1 - (row + 0.5) / H.

Outdoor scenes ("sun_*"): diffuse ground and boxes/spheres under Blender's physical sky
(MULTIPLE_SCATTERING in 5.0, NISHITA in 4.2) at a given sun elevation and azimuth. The sun
is lit twice, consistently: camera rays see the sky texture *with* its sun disc (the
physically right radiance of the sun in the panorama), every other ray sees the sky
*without* the disc plus a Sun lamp whose colour and strength are the disc's own irradiance,
measured first by rendering the disc through a narrow camera with the disc on and off (so
shadows are sharp and noise-free). No-sun scenes: "overcast" (CIE overcast sky,
L ~ (1 + 2 sin(elevation)) / 3, grey), "interior" (a closed room lit by two emissive
ceiling panels), "night" (a dark blue sky and warm emissive street-lamp bulbs). Every light
of a no-sun scene is an emissive surface the camera sees (Cycles shows no lamp object to
the camera), so the panorama holds all the light of its scene.

Never uses Blender's bundled studio-light HDRIs.

Writes, per scene, ``<name>.npy`` (float32, H x W x 3, linear Rec.709 radiance, top row
first) and one ``manifest.json``: per scene its kind, the sun's world direction (unit
vector towards the sun), elevation, azimuth (= lon, degrees), disc angle, lamp strength
(W/m², = max channel of the disc irradiance) and colour (max channel 1), or ``sun: null``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time

import bpy
import numpy as np

SUN_SIZE_RAD = math.radians(0.545)  # Blender's default sky sun size

# name -> (kind, sun elevation deg, sun azimuth deg (= lon: 0 towards +X, 90 towards +Y), seed)
SCENES = {
    "sun_e02_a030": ("sun", 2.0, 30.0, 1),
    "sun_e06_a-120": ("sun", 6.0, -120.0, 2),
    "sun_e12_a170": ("sun", 12.0, 170.0, 3),
    "sun_e25_a-45": ("sun", 25.0, -45.0, 4),
    "sun_e40_a100": ("sun", 40.0, 100.0, 5),
    "sun_e55_a-170": ("sun", 55.0, -170.0, 6),
    "sun_e70_a060": ("sun", 70.0, 60.0, 7),
    "overcast": ("overcast", None, None, 8),
    "interior": ("interior", None, None, 9),
    "night": ("night", None, None, 10),
    # Held out: not in the test or benchmark set, for checking the lift on unseen suns.
    "holdout_e03_a-75": ("sun", 3.0, -75.0, 11),
    "holdout_e18_a-150": ("sun", 18.0, -150.0, 12),
    "holdout_e33_a135": ("sun", 33.0, 135.0, 13),
    "holdout_e09_a080": ("sun", 9.0, 80.0, 14),
    "holdout_e45_a-20": ("sun", 45.0, -20.0, 15),
}


def _script_argv() -> list[str]:
    argv = sys.argv[1:]
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    return argv


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--scenes", nargs="*", default=list(SCENES), choices=list(SCENES))
    p.add_argument("--width", type=int, default=512, help="ERP width (height = width / 2)")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--elevations",
        type=float,
        nargs="*",
        default=[1.0, 2.0, 4.0, 7.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 75.0, 90.0],
        help="sun elevations (deg) of --calibrate",
    )
    p.add_argument(
        "--calibrate",
        metavar="JSON",
        help="instead of scenes: measure the sky's sun/sky ratio by elevation into JSON",
    )
    return p.parse_args(_script_argv())


# --------------------------------------------------------------------------- helpers
def sun_vector(elev_deg: float, azim_deg: float) -> tuple[float, float, float]:
    e, a = math.radians(elev_deg), math.radians(azim_deg)
    return (math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e))


def reset_scene(args) -> bpy.types.Scene:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    cy = scene.cycles
    cy.device = "CPU"
    cy.samples = args.samples
    cy.use_adaptive_sampling = False
    cy.use_denoising = False
    cy.seed = 0
    cy.max_bounces = 4
    cy.diffuse_bounces = 3
    cy.glossy_bounces = 0
    cy.transmission_bounces = 0
    cy.volume_bounces = 0
    cy.transparent_max_bounces = 0
    cy.sample_clamp_direct = 0.0
    cy.sample_clamp_indirect = 0.0
    scene.render.threads_mode = "FIXED"
    scene.render.threads = args.threads
    r = scene.render
    r.resolution_percentage = 100
    r.film_transparent = False
    r.use_compositing = False
    r.use_sequencer = False
    scene.display_settings.display_device = "sRGB"
    vs = scene.view_settings
    vs.view_transform = "Standard"
    vs.look = "None"
    vs.exposure = 0.0
    vs.gamma = 1.0
    im = r.image_settings
    if hasattr(im, "media_type"):  # 5.0+
        im.media_type = "IMAGE"
    im.file_format = "OPEN_EXR"
    im.color_mode = "RGB"
    im.color_depth = "32"
    im.exr_codec = "ZIP"
    return scene


def new_world(scene) -> bpy.types.NodeTree:
    world = bpy.data.worlds.new("GT")
    scene.world = world
    if bpy.app.version < (5, 0, 0) or world.node_tree is None:
        world.use_nodes = True
    nt = world.node_tree
    nt.nodes.clear()
    return nt


def sky_node(nt, elev_deg: float, azim_deg: float, disc: bool):
    sky = nt.nodes.new("ShaderNodeTexSky")
    sky.sky_type = "MULTIPLE_SCATTERING" if bpy.app.version >= (5, 0, 0) else "NISHITA"
    sky.sun_disc = disc
    sky.sun_size = SUN_SIZE_RAD
    sky.sun_elevation = math.radians(elev_deg)
    # Blender's sky puts the sun at lon = 90 deg - sun_rotation (rotation 0 = towards +Y).
    sky.sun_rotation = math.radians(90.0 - azim_deg) % (2.0 * math.pi)
    return sky


def image_pixels(path: str) -> np.ndarray:
    img = bpy.data.images.load(path, check_existing=False)
    img.colorspace_settings.name = "Non-Color"
    w, h = img.size
    buf = np.empty(w * h * 4, dtype=np.float32)
    img.pixels.foreach_get(buf)
    bpy.data.images.remove(img)
    return buf.reshape(h, w, 4)[::-1, :, :3].copy()


def render_to_array(scene, path: str) -> np.ndarray:
    scene.render.filepath = path
    bpy.ops.render.render(write_still=True)
    return image_pixels(path)


def look_at_matrix(forward):
    import mathutils

    return mathutils.Vector(forward).to_track_quat("-Z", "Z").to_matrix().to_4x4()


def measure_sun(args, elev_deg: float, azim_deg: float, tmp: str) -> list[float]:
    """Irradiance (RGB, W/m^2 at normal incidence) of the sky texture's sun disc.

    A narrow perspective camera looks at the disc; the disc-off render is subtracted and the
    difference integrated over the pixels' solid angles.
    """
    res, fov = 96, math.radians(4.0 * math.degrees(SUN_SIZE_RAD))
    stack = []
    for disc in (True, False):
        scene = reset_scene(args)
        scene.cycles.samples = 16
        scene.render.resolution_x = scene.render.resolution_y = res
        nt = new_world(scene)
        bg = nt.nodes.new("ShaderNodeBackground")
        out = nt.nodes.new("ShaderNodeOutputWorld")
        nt.links.new(sky_node(nt, elev_deg, azim_deg, disc).outputs[0], bg.inputs[0])
        nt.links.new(bg.outputs[0], out.inputs[0])
        cd = bpy.data.cameras.new("C")
        cd.sensor_fit = "HORIZONTAL"
        cd.lens_unit = "FOV"
        cd.angle = fov
        cam = bpy.data.objects.new("C", cd)
        scene.collection.objects.link(cam)
        scene.camera = cam
        cam.matrix_world = look_at_matrix(sun_vector(elev_deg, azim_deg))
        stack.append(render_to_array(scene, os.path.join(tmp, f"disc_{int(disc)}.exr")))
    diff = np.clip(stack[0] - stack[1], 0.0, None).astype(np.float64)
    t = math.tan(fov / 2.0)
    c = (np.arange(res) + 0.5) / res * 2.0 - 1.0
    x, y = np.meshgrid(c * t, c * t)
    d_omega = (2.0 * t / res) ** 2 / (1.0 + x * x + y * y) ** 1.5
    return [float(v) for v in (diff * d_omega[..., None]).sum(axis=(0, 1))]


def measure_sky(args, elev_deg: float, azim_deg: float, tmp: str) -> list[float]:
    """Horizontal irradiance (RGB) of the sky without its disc, upper hemisphere only."""
    scene = reset_scene(args)
    scene.cycles.samples = 8
    nt = new_world(scene)
    bg = nt.nodes.new("ShaderNodeBackground")
    out = nt.nodes.new("ShaderNodeOutputWorld")
    nt.links.new(sky_node(nt, elev_deg, azim_deg, False).outputs[0], bg.inputs[0])
    nt.links.new(bg.outputs[0], out.inputs[0])
    add_pano_camera(scene, 256, 0.0)
    rgb = render_to_array(scene, os.path.join(tmp, "sky.exr")).astype(np.float64)
    h, w = rgb.shape[:2]
    edges = np.pi / 2.0 - np.arange(h + 1) * np.pi / h
    omega = (np.sin(edges[:-1]) - np.sin(edges[1:])) * (2.0 * np.pi / w)
    lat = (0.5 - (np.arange(h) + 0.5) / h) * np.pi
    weight = (np.maximum(np.sin(lat), 0.0) * omega)[:, None, None]
    return [float(v) for v in (rgb * weight).sum(axis=(0, 1))]


def calibrate(args) -> int:
    """Sun disc irradiance and sky horizontal irradiance by elevation (hdr.SKY_RATIO_TABLE)."""
    luma = (0.2126, 0.7152, 0.0722)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hdr_cal_") as tmp:
        for elev in args.elevations:
            sun = measure_sun(args, elev, 0.0, tmp)
            sky = measure_sky(args, elev, 0.0, tmp)
            ratio = sum(a * b for a, b in zip(luma, sun, strict=True)) / sum(
                a * b for a, b in zip(luma, sky, strict=True)
            )
            top = max(sun)
            rows.append(
                {
                    "elevation_deg": elev,
                    "sun_rgb": sun,
                    "sky_horizontal_rgb": sky,
                    "ratio": ratio,
                    "sun_color": [c / top for c in sun],
                }
            )
            print(f"elevation {elev:5.1f}: ratio {ratio:8.3f}", flush=True)
    with open(args.calibrate, "w", encoding="utf-8") as fh:
        json.dump({"blender": bpy.app.version_string, "rows": rows}, fh, indent=1)
    return 0


def diffuse_material(name: str, rgb) -> bpy.types.Material:
    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0) or mat.node_tree is None:
        mat.use_nodes = True
    nt = mat.node_tree
    nt.nodes.clear()
    bsdf = nt.nodes.new("ShaderNodeBsdfDiffuse")
    bsdf.inputs["Color"].default_value = (*rgb, 1.0)
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    nt.links.new(bsdf.outputs[0], out.inputs["Surface"])
    return mat


def emission_material(name: str, rgb, strength: float) -> bpy.types.Material:
    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0) or mat.node_tree is None:
        mat.use_nodes = True
    nt = mat.node_tree
    nt.nodes.clear()
    em = nt.nodes.new("ShaderNodeEmission")
    em.inputs["Color"].default_value = (*rgb, 1.0)
    em.inputs["Strength"].default_value = strength
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    nt.links.new(em.outputs[0], out.inputs["Surface"])
    return mat


def add_mesh(scene, name, verts, faces, mat):
    me = bpy.data.meshes.new(name)
    me.from_pydata(verts, [], faces)
    me.update()
    me.materials.append(mat)
    ob = bpy.data.objects.new(name, me)
    scene.collection.objects.link(ob)
    return ob


def add_box(scene, name, centre, size, mat, yaw=0.0):
    cx, cy, cz = centre
    sx, sy, sz = (s / 2.0 for s in size)
    c, s = math.cos(yaw), math.sin(yaw)
    verts = []
    for dz in (-sz, sz):
        for dx, dy in ((-sx, -sy), (sx, -sy), (sx, sy), (-sx, sy)):
            verts.append((cx + c * dx - s * dy, cy + s * dx + c * dy, cz + dz))
    faces = [(0, 3, 2, 1), (4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7)]
    return add_mesh(scene, name, verts, faces, mat)


def add_sphere(scene, name, centre, radius, mat, n_lon=24, n_lat=12):
    verts, faces = [], []
    for i in range(n_lat + 1):
        th = math.pi * i / n_lat
        for j in range(n_lon):
            ph = 2.0 * math.pi * j / n_lon
            verts.append(
                (
                    centre[0] + radius * math.sin(th) * math.cos(ph),
                    centre[1] + radius * math.sin(th) * math.sin(ph),
                    centre[2] + radius * math.cos(th),
                )
            )
    for i in range(n_lat):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            faces.append((a, b, b + n_lon, a + n_lon))
    ob = add_mesh(scene, name, verts, faces, mat)
    for poly in ob.data.polygons:
        poly.use_smooth = True
    return ob


def add_ground(scene, rgb, half=2000.0):
    mat = diffuse_material("Ground", rgb)
    return add_mesh(
        scene, "Ground", [(-half, -half, 0), (half, -half, 0), (half, half, 0), (-half, half, 0)],
        [(0, 1, 2, 3)], mat,
    )  # fmt: skip


def add_outdoor_props(scene, rng: random.Random, avoid_azim_deg: float | None):
    """Boxes (buildings, walls) and spheres around the camera, clear of the sun's azimuth."""
    albedos = [(0.55, 0.52, 0.48), (0.3, 0.32, 0.35), (0.62, 0.4, 0.3), (0.2, 0.35, 0.18)]
    for i in range(7):
        for _ in range(50):
            az = rng.uniform(-180.0, 180.0)
            if avoid_azim_deg is None:
                break
            delta = (az - avoid_azim_deg + 180.0) % 360.0 - 180.0
            if abs(delta) > 35.0:
                break
        dist = rng.uniform(7.0, 22.0)
        x, y = dist * math.cos(math.radians(az)), dist * math.sin(math.radians(az))
        mat = diffuse_material(f"M{i}", albedos[i % len(albedos)])
        if i % 3 == 2:
            r = rng.uniform(0.6, 1.4)
            add_sphere(scene, f"S{i}", (x, y, r), r, mat)
        else:
            w, d, h = rng.uniform(2.0, 6.0), rng.uniform(2.0, 6.0), rng.uniform(2.0, 7.0)
            add_box(scene, f"B{i}", (x, y, h / 2.0), (w, d, h), mat, yaw=rng.uniform(0, 3.1))


def add_pano_camera(scene, width: int, height_m: float = 1.6):
    cd = bpy.data.cameras.new("Pano")
    cd.type = "PANO"
    if hasattr(cd, "panorama_type"):
        cd.panorama_type = "EQUIRECTANGULAR"
    else:  # 4.2: Cycles' own camera settings
        cd.cycles.panorama_type = "EQUIRECTANGULAR"
    cd.clip_start, cd.clip_end = 0.01, 10000.0
    cam = bpy.data.objects.new("Pano", cd)
    scene.collection.objects.link(cam)
    scene.camera = cam
    # Looks along +X with +Z up: the ERP centre faces +X, right turns towards -Y.
    cam.rotation_euler = (math.pi / 2.0, 0.0, -math.pi / 2.0)
    cam.location = (0.0, 0.0, height_m)
    scene.render.resolution_x, scene.render.resolution_y = width, width // 2
    return cam


# --------------------------------------------------------------------------- scenes
def build_sun_scene(args, scene, elev, azim, seed, sun_rgb):
    nt = new_world(scene)
    lp = nt.nodes.new("ShaderNodeLightPath")
    mix = nt.nodes.new("ShaderNodeMixShader")
    bg_disc = nt.nodes.new("ShaderNodeBackground")
    bg_sky = nt.nodes.new("ShaderNodeBackground")
    out = nt.nodes.new("ShaderNodeOutputWorld")
    nt.links.new(sky_node(nt, elev, azim, True).outputs[0], bg_disc.inputs[0])
    nt.links.new(sky_node(nt, elev, azim, False).outputs[0], bg_sky.inputs[0])
    nt.links.new(lp.outputs["Is Camera Ray"], mix.inputs[0])
    nt.links.new(bg_sky.outputs[0], mix.inputs[1])
    nt.links.new(bg_disc.outputs[0], mix.inputs[2])
    nt.links.new(mix.outputs[0], out.inputs[0])
    strength = max(sun_rgb)
    ld = bpy.data.lights.new("Sun", "SUN")
    ld.energy = strength
    ld.color = tuple(c / strength for c in sun_rgb)
    ld.angle = SUN_SIZE_RAD
    ob = bpy.data.objects.new("Sun", ld)
    scene.collection.objects.link(ob)
    # A Sun lamp shines along its local -Z: point -Z away from the sun.
    ob.matrix_world = look_at_matrix(tuple(-c for c in sun_vector(elev, azim)))
    rng = random.Random(seed)
    add_ground(scene, (0.22, 0.24, 0.17))
    add_outdoor_props(scene, rng, azim)
    return {"strength": strength, "color": [c / strength for c in sun_rgb]}


def build_overcast_scene(scene, seed):
    nt = new_world(scene)
    tc = nt.nodes.new("ShaderNodeTexCoord")
    sep = nt.nodes.new("ShaderNodeSeparateXYZ")
    clamp = nt.nodes.new("ShaderNodeMath")
    clamp.operation = "MAXIMUM"
    clamp.inputs[1].default_value = 0.0
    lin = nt.nodes.new("ShaderNodeMath")
    lin.operation = "MULTIPLY_ADD"  # (1 + 2 z) / 3 = z * 2/3 + 1/3
    lin.inputs[1].default_value = 2.0 / 3.0
    lin.inputs[2].default_value = 1.0 / 3.0
    bg = nt.nodes.new("ShaderNodeBackground")
    bg.inputs["Color"].default_value = (0.92, 0.95, 1.0, 1.0)
    out = nt.nodes.new("ShaderNodeOutputWorld")
    nt.links.new(tc.outputs["Generated"], sep.inputs[0])
    nt.links.new(sep.outputs["Z"], clamp.inputs[0])
    nt.links.new(clamp.outputs[0], lin.inputs[0])
    nt.links.new(lin.outputs[0], bg.inputs["Strength"])
    nt.links.new(bg.outputs[0], out.inputs[0])
    add_ground(scene, (0.2, 0.22, 0.16))
    add_outdoor_props(scene, random.Random(seed), None)


def build_interior_scene(scene, seed):
    nt = new_world(scene)
    bg = nt.nodes.new("ShaderNodeBackground")
    bg.inputs["Strength"].default_value = 0.0
    out = nt.nodes.new("ShaderNodeOutputWorld")
    nt.links.new(bg.outputs[0], out.inputs[0])
    wall = diffuse_material("Wall", (0.7, 0.66, 0.6))
    floor = diffuse_material("Floor", (0.35, 0.25, 0.18))
    hx, hy, hz = 4.0, 3.0, 3.0
    add_mesh(scene, "Floor", [(-hx, -hy, 0), (hx, -hy, 0), (hx, hy, 0), (-hx, hy, 0)],
             [(0, 1, 2, 3)], floor)  # fmt: skip
    add_mesh(scene, "Ceiling", [(-hx, -hy, hz), (hx, -hy, hz), (hx, hy, hz), (-hx, hy, hz)],
             [(0, 1, 2, 3)], wall)  # fmt: skip
    for name, verts in {
        "WallX+": [(hx, -hy, 0), (hx, hy, 0), (hx, hy, hz), (hx, -hy, hz)],
        "WallX-": [(-hx, -hy, 0), (-hx, hy, 0), (-hx, hy, hz), (-hx, -hy, hz)],
        "WallY+": [(-hx, hy, 0), (hx, hy, 0), (hx, hy, hz), (-hx, hy, hz)],
        "WallY-": [(-hx, -hy, 0), (hx, -hy, 0), (hx, -hy, hz), (-hx, -hy, hz)],
    }.items():
        add_mesh(scene, name, verts, [(0, 1, 2, 3)], wall)
    add_box(
        scene, "Table", (1.5, 0.8, 0.4), (1.6, 0.9, 0.8), diffuse_material("T", (0.4, 0.3, 0.2))
    )
    # The lights are emissive ceiling panels (no lamp objects: Cycles does not show lamps
    # to the camera, and the panorama must see every source of the room's light).
    glow = emission_material("Glow", (1.0, 0.93, 0.82), 150.0)
    z = hz - 0.01
    for i, (x, y) in enumerate(((-1.8, 0.0), (2.0, -0.5))):
        add_mesh(scene, f"Panel{i}", [(x - 0.6, y - 0.3, z), (x + 0.6, y - 0.3, z),
                 (x + 0.6, y + 0.3, z), (x - 0.6, y + 0.3, z)], [(0, 1, 2, 3)], glow)  # fmt: skip


def build_night_scene(scene, seed):
    nt = new_world(scene)
    tc = nt.nodes.new("ShaderNodeTexCoord")
    sep = nt.nodes.new("ShaderNodeSeparateXYZ")
    ramp = nt.nodes.new("ShaderNodeMath")
    ramp.operation = "MULTIPLY_ADD"
    ramp.inputs[1].default_value = -0.6
    ramp.inputs[2].default_value = 1.0
    bg = nt.nodes.new("ShaderNodeBackground")
    bg.inputs["Color"].default_value = (0.004, 0.006, 0.016, 1.0)
    out = nt.nodes.new("ShaderNodeOutputWorld")
    nt.links.new(tc.outputs["Generated"], sep.inputs[0])
    nt.links.new(sep.outputs["Z"], ramp.inputs[0])
    nt.links.new(ramp.outputs[0], bg.inputs["Strength"])
    nt.links.new(bg.outputs[0], out.inputs[0])
    rng = random.Random(seed)
    add_ground(scene, (0.2, 0.2, 0.2))
    add_outdoor_props(scene, rng, None)
    pole = diffuse_material("Pole", (0.15, 0.15, 0.15))
    # Emissive bulbs are the only lamps, so the panorama sees every source of light:
    # radiance P / (pi A) of a 150 W lamp of radius 0.18 m.
    bulb = emission_material("Bulb", (1.0, 0.7, 0.35), 150.0 / (math.pi * 4 * math.pi * 0.18**2))
    for i, az in enumerate((20.0, 140.0, -100.0)):
        d = rng.uniform(6.0, 12.0)
        x, y = d * math.cos(math.radians(az)), d * math.sin(math.radians(az))
        add_box(scene, f"Pole{i}", (x, y, 2.0), (0.12, 0.12, 4.0), pole)
        add_sphere(scene, f"Bulb{i}", (x, y, 4.15), 0.18, bulb, 12, 6)


def main() -> int:
    args = parse_args()
    if args.calibrate:
        return calibrate(args)
    os.makedirs(args.out_dir, exist_ok=True)
    manifest_path = os.path.join(args.out_dir, "manifest.json")
    manifest = {}
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    with tempfile.TemporaryDirectory(prefix="hdr_gt_") as tmp:
        for name in args.scenes:
            kind, elev, azim, seed = SCENES[name]
            t0 = time.monotonic()
            entry = {"kind": kind, "sun": None}
            if kind == "sun":
                sun_rgb = measure_sun(args, elev, azim, tmp)
            scene = reset_scene(args)
            if kind == "sun":
                lamp = build_sun_scene(args, scene, elev, azim, seed, sun_rgb)
                entry["sun"] = {
                    "direction": list(sun_vector(elev, azim)),
                    "elevation_deg": elev,
                    "azimuth_deg": azim,
                    "angle_deg": math.degrees(SUN_SIZE_RAD),
                    "irradiance_rgb": sun_rgb,
                    **lamp,
                }
            elif kind == "overcast":
                build_overcast_scene(scene, seed)
            elif kind == "interior":
                build_interior_scene(scene, seed)
            else:
                build_night_scene(scene, seed)
            add_pano_camera(scene, args.width)
            rgb = render_to_array(scene, os.path.join(tmp, f"{name}.exr"))
            np.save(os.path.join(args.out_dir, f"{name}.npy"), rgb.astype(np.float32))
            entry.update(
                width=args.width,
                samples=args.samples,
                blender=bpy.app.version_string,
                seconds=round(time.monotonic() - t0, 1),
            )
            manifest[name] = entry
            with open(manifest_path, "w", encoding="utf-8") as fh:
                json.dump(manifest, fh, indent=1)
            print(f"{name}: {entry['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
