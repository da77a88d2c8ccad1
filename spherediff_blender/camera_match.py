"""Match Camera: where a plate seen through the scene camera sits on the sphere.

The engine places a known image by the yaw, pitch, roll and horizontal FOV of its camera
(``spherediff_core.known``, in ``spherediff_core.geometry``'s frame: Blender's world, Z
up). A Blender camera looks along its local -Z with its local +Y up and +X right, so from
its world matrix: forward ``f = -Z``, yaw ``= atan2(f.y, f.x)``, pitch ``= asin(f.z)``; the
level camera at that yaw has right ``r0 = (sin yaw, -cos yaw, 0)`` and up ``u0 = r0 x f``,
and the roll is the angle from ``r0`` to the camera's own right, towards ``u0`` (a rotation
about the local Z by +roll). The FOV is the render's horizontal one: the sensor fit (Auto
fits the larger side of the frame to the sensor width), the focal length and the frame's
aspect with its pixel aspect. No bpy.ops, no torch: mathutils only.
"""

import math


def camera_fov_deg(cam_data, scene) -> tuple[float, float]:
    """(horizontal, vertical) field of view of a perspective camera in this scene's frame."""
    r = scene.render
    width = r.resolution_x * r.pixel_aspect_x
    height = r.resolution_y * r.pixel_aspect_y
    aspect = width / height  # > 1: landscape
    lens = cam_data.lens
    fit = cam_data.sensor_fit
    if fit == "VERTICAL":
        tan_v = cam_data.sensor_height / (2.0 * lens)
        tan_h = tan_v * aspect
    elif fit == "HORIZONTAL" or aspect >= 1.0:
        tan_h = cam_data.sensor_width / (2.0 * lens)
        tan_v = tan_h / aspect
    else:  # AUTO, portrait: the sensor width spans the frame's height
        tan_v = cam_data.sensor_width / (2.0 * lens)
        tan_h = tan_v * aspect
    return math.degrees(2.0 * math.atan(tan_h)), math.degrees(2.0 * math.atan(tan_v))


def camera_problem(camera) -> str:
    """Why Match Camera cannot use ``camera`` (empty: it can)."""
    if camera is None:
        return "Match Camera: the scene has no camera; add one, or place the image by hand"
    data = camera.data
    if data.type != "PERSP":
        return (
            f"Match Camera: the camera {camera.name!r} is {data.type.lower()}; a photo is "
            "a perspective view, so use a perspective camera or place the image by hand"
        )
    if abs(data.shift_x) > 1e-6 or abs(data.shift_y) > 1e-6:
        return (
            f"Match Camera: the camera {camera.name!r} has a lens shift (shift_x "
            f"{data.shift_x:g}, shift_y {data.shift_y:g}); the image's centre must be the "
            "view's centre: set Shift X and Y to 0, or place the image by hand"
        )
    return ""


def camera_placement(scene, camera=None) -> tuple[dict | None, str]:
    """The engine's placement of an image seen through ``camera`` (the scene's by
    default): ``({"yaw_deg", "pitch_deg", "roll_deg", "fov_deg", "vfov_deg"}, "")`` or
    ``(None, problem)``."""
    camera = camera if camera is not None else scene.camera
    problem = camera_problem(camera)
    if problem:
        return None, problem
    m = camera.matrix_world.to_3x3().normalized()
    right, forward = m.col[0], -m.col[2]
    yaw = math.atan2(forward.y, forward.x)
    pitch = math.asin(max(-1.0, min(1.0, forward.z)))
    r0 = (math.sin(yaw), -math.cos(yaw), 0.0)
    u0 = (  # r0 x f
        r0[1] * forward.z - r0[2] * forward.y,
        r0[2] * forward.x - r0[0] * forward.z,
        r0[0] * forward.y - r0[1] * forward.x,
    )
    along_r0 = sum(a * b for a, b in zip(right, r0, strict=True))
    along_u0 = sum(a * b for a, b in zip(right, u0, strict=True))
    roll = math.atan2(along_u0, along_r0)
    hfov, vfov = camera_fov_deg(camera.data, scene)
    return {
        "yaw_deg": math.degrees(yaw),
        "pitch_deg": math.degrees(pitch),
        "roll_deg": math.degrees(roll),
        "fov_deg": hfov,
        "vfov_deg": vfov,
    }, ""


def placement_for(values: dict, scene) -> tuple[dict | None, str]:
    """The placement of these settings: the scene camera's (Match Camera) or the manual
    yaw, pitch, roll and FOV (the settings hold radians)."""
    if values.get("match_camera"):
        return camera_placement(scene)
    return {
        "yaw_deg": math.degrees(values["image_yaw"]),
        "pitch_deg": math.degrees(values["image_pitch"]),
        "roll_deg": math.degrees(values["image_roll"]),
        "fov_deg": math.degrees(values["image_fov"]),
        "vfov_deg": None,
    }, ""


def wrap_deg(angle: float) -> float:
    """An angle in degrees, wrapped into (-180, 180]."""
    a = math.fmod(angle + 180.0, 360.0)
    if a <= 0.0:
        a += 360.0
    return a - 180.0


def current_camera_text(scene) -> str:
    """The panel's readout of where the plate lands (or why it cannot)."""
    placement, problem = camera_placement(scene)
    if placement is None:
        return problem
    return (
        f"Lands at azimuth {placement['yaw_deg']:.1f}°, elevation "
        f"{placement['pitch_deg']:.1f}°, roll {placement['roll_deg']:.1f}°, FOV "
        f"{placement['fov_deg']:.1f}° × {placement['vfov_deg']:.1f}°"
    )


__all__ = [
    "camera_fov_deg",
    "camera_placement",
    "camera_problem",
    "current_camera_text",
    "placement_for",
    "wrap_deg",
]
