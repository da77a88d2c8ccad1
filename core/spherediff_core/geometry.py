"""Sphere, camera and ERP geometry: the one module that owns the project's conventions.

Conventions
===========
World frame
    Blender's: right-handed, Z up. A direction is a unit 3-vector ``(x, y, z)``.
    ``lon = atan2(y, x)`` (radians, in (-pi, pi], 0 towards +X, +pi/2 towards +Y) and
    ``lat = asin(z)`` (radians, in [-pi/2, pi/2], +pi/2 straight up).

ERP (equirectangular) images
    Exactly Blender's Environment Texture mapping::

        u = 0.5 - lon / (2 pi)        v = 0.5 + lat / pi

    ``u`` runs left to right across the image and ``v`` bottom to top (``v = 1`` is the top
    row). The image centre faces +X, the left and right edges meet at -X (the seam), and
    moving right in the image turns from +X towards -Y, as it does in a camera looking at +X.
    Arrays are stored top row first: pixel ``(row, col)`` of an ``H x W`` image has its
    centre at ``u = (col + 0.5) / W``, ``v = 1 - (row + 0.5) / H``.

Cameras (views)
    A view is given by the azimuth ``lon`` and elevation ``lat`` (radians) of its forward
    axis ``f``. Its right axis is ``r = (sin lon, -cos lon, 0)``, the right axis of the level
    camera at the same azimuth, and its up axis is ``u = r x f``. This frame exists at the
    poles too (no NaN): a view looking straight up keeps the "up" of a camera that tilted up
    from azimuth ``lon``, so its image top points towards azimuth ``lon + pi``. A frame built
    from a bare direction vector uses ``lon = atan2(y, x)``, which is 0 at the exact poles.
    A frame is stored as a 3x3 matrix whose rows are ``(r, u, f)``.

Normalised image coordinates
    ``x = (d.r / d.f) / tan(fov_x / 2)``, ``y = (d.u / d.f) / tan(fov_y / 2)``: ``x`` to the
    right, ``y`` up, both in [-1, 1] inside the field of view, and ``r = hypot(x, y)`` is the
    distance from the view centre (1 at the middle of an edge). An ``h x w`` grid of cells
    covers the square [-1, 1]^2; cell ``(i, j)`` (row ``i`` from the top) has its centre at
    ``x = (2 j + 1) / w - 1``, ``y = 1 - (2 i + 1) / h``. Pixels are square:
    ``tan(fov_y / 2) = tan(fov_x / 2) * h / w``.

All functions are pure and vectorised over leading dimensions; angles carry their unit in
their names (``_deg`` or ``_rad``). Geometry is computed in float64 by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ViewLayout",
    "camera_frames",
    "cell_centres",
    "default_view_layout",
    "directions_to_erp_uv",
    "directions_to_lonlat",
    "erp_pixel_directions",
    "erp_uv_to_directions",
    "fibonacci_sphere",
    "grid_side_for",
    "lonlat_to_directions",
    "nearest_points",
    "points_per_view",
    "project_to_views",
    "rolled_camera_frame",
    "tan_half_fovs",
    "view_rays",
    "view_solid_angle",
]

_GOLDEN_ANGLE_RAD = math.pi * (3.0 - math.sqrt(5.0))


def fibonacci_sphere(n_points: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Return ``n_points`` near-uniform unit vectors on a Fibonacci lattice, shape (N, 3).

    Point ``k`` sits at ``z = 1 - (2k + 1) / N`` and ``lon = k * golden_angle``, so points
    run from the north pole to the south pole and every point stands for an equal area.
    """
    if n_points < 1:
        raise ValueError(f"n_points must be at least 1, got {n_points}")
    k = torch.arange(n_points, dtype=torch.float64)
    z = 1.0 - (2.0 * k + 1.0) / n_points
    rho = torch.sqrt(torch.clamp(1.0 - z * z, min=0.0))
    lon = torch.remainder(k * _GOLDEN_ANGLE_RAD, 2.0 * math.pi)
    pts = torch.stack([rho * torch.cos(lon), rho * torch.sin(lon), z], dim=-1)
    return pts.to(dtype)


def nearest_points(queries: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of ``points`` (M, 3) for each of ``queries`` (Q, 3): (Q,) int64.

    Unit vectors: the nearest by chord is the nearest by angle. A KD-tree, so memory
    stays linear in Q + M (a dense Q x M dot-product table of an 8K lattice against a 4K
    one would be gigabytes).
    """
    from scipy.spatial import cKDTree

    tree = cKDTree(points.to(torch.float64).numpy())
    _, index = tree.query(queries.to(torch.float64).numpy(), k=1)
    return torch.from_numpy(index.astype(np.int64))


def directions_to_lonlat(dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Directions (..., 3), not necessarily unit, -> (lon_rad, lat_rad), each (...)."""
    x, y, z = dirs.unbind(-1)
    lon = torch.atan2(y, x)
    lat = torch.atan2(z, torch.hypot(x, y))
    return lon, lat


def lonlat_to_directions(lon_rad: torch.Tensor, lat_rad: torch.Tensor) -> torch.Tensor:
    """(lon_rad, lat_rad), each (...), -> unit directions (..., 3)."""
    c = torch.cos(lat_rad)
    return torch.stack([c * torch.cos(lon_rad), c * torch.sin(lon_rad), torch.sin(lat_rad)], -1)


def directions_to_erp_uv(dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Directions (..., 3) -> Blender ERP texture coordinates (u, v), each (...), u in [0, 1)."""
    lon, lat = directions_to_lonlat(dirs)
    u = torch.remainder(0.5 - lon / (2.0 * math.pi), 1.0)
    v = 0.5 + lat / math.pi
    return u, v


def erp_uv_to_directions(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Blender ERP texture coordinates (u, v), each (...), -> unit directions (..., 3)."""
    lon = (0.5 - u) * (2.0 * math.pi)
    lat = (v - 0.5) * math.pi
    return lonlat_to_directions(lon, lat)


def erp_pixel_directions(
    height: int, width: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Unit directions through the pixel centres of an ERP image, shape (H, W, 3)."""
    u = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    v = 1.0 - (torch.arange(height, dtype=torch.float64) + 0.5) / height
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return erp_uv_to_directions(uu, vv).to(dtype)


def camera_frames(lon_rad: torch.Tensor, lat_rad: torch.Tensor) -> torch.Tensor:
    """Camera frames for views with forward axis at (lon_rad, lat_rad), each (V,).

    Returns (V, 3, 3): rows are right, up and forward unit vectors (module docstring).
    """
    lon = torch.as_tensor(lon_rad, dtype=torch.float64)
    lat = torch.as_tensor(lat_rad, dtype=torch.float64)
    forward = lonlat_to_directions(lon, lat)
    zero = torch.zeros_like(lon)
    right = torch.stack([torch.sin(lon), -torch.cos(lon), zero], dim=-1)
    up = torch.linalg.cross(right, forward, dim=-1)
    return torch.stack([right, up, forward], dim=-2)


def rolled_camera_frame(yaw_deg: float, pitch_deg: float, roll_deg: float) -> torch.Tensor:
    """The frame (3, 3) (rows right, up, forward) of a camera looking at azimuth ``yaw_deg``
    and elevation ``pitch_deg``, rolled by ``roll_deg`` about its forward axis.

    Zero roll is :func:`camera_frames`' level frame. A positive roll turns the right axis
    towards the up axis (``r' = cos a r + sin a u``, ``u' = cos a u - sin a r``): the
    rotation of a Blender camera about its own local Z axis by ``+a``.
    """
    frame = camera_frames(
        torch.tensor([math.radians(yaw_deg)], dtype=torch.float64),
        torch.tensor([math.radians(pitch_deg)], dtype=torch.float64),
    )[0]
    a = math.radians(roll_deg)
    r, u, f = frame[0], frame[1], frame[2]
    return torch.stack([math.cos(a) * r + math.sin(a) * u, math.cos(a) * u - math.sin(a) * r, f])


def tan_half_fovs(fov_deg: float, height: int, width: int) -> tuple[float, float]:
    """(tan(fov_x / 2), tan(fov_y / 2)) for a horizontal FOV and square pixels."""
    tx = math.tan(math.radians(fov_deg) / 2.0)
    return tx, tx * height / width


def project_to_views(
    dirs: torch.Tensor, frames: torch.Tensor, tan_half_x: float, tan_half_y: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pinhole projection of directions (P, 3) into views with frames (V, 3, 3).

    Returns normalised image coordinates x, y and the depth d.f, each (V, P). Only
    points with depth > 0 are in front of a camera; x, y of the others are meaningless.
    """
    cam = torch.einsum("vij,pj->vpi", frames.to(dirs.dtype), dirs)
    depth = cam[..., 2]
    safe = torch.where(depth > 1e-12, depth, torch.full_like(depth, 1e-12))
    x = cam[..., 0] / safe / tan_half_x
    y = cam[..., 1] / safe / tan_half_y
    return x, y, depth


def cell_centres(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image coordinates of the cell centres of an h x w grid, each (h, w)."""
    xs = (2.0 * torch.arange(width, dtype=torch.float64) + 1.0) / width - 1.0
    ys = 1.0 - (2.0 * torch.arange(height, dtype=torch.float64) + 1.0) / height
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return x, y


def view_rays(frames: torch.Tensor, fov_deg: float, height: int, width: int) -> torch.Tensor:
    """Ideal pinhole rays (unit) through the cell centres of every view, (V, h, w, 3)."""
    tx, ty = tan_half_fovs(fov_deg, height, width)
    x, y = cell_centres(height, width)
    frames = frames.to(torch.float64)
    r, u, f = frames[:, 0], frames[:, 1], frames[:, 2]
    rays = (
        f[:, None, None, :]
        + (x * tx)[None, :, :, None] * r[:, None, None, :]
        + (y * ty)[None, :, :, None] * u[:, None, None, :]
    )
    return rays / rays.norm(dim=-1, keepdim=True)


def view_solid_angle(fov_x_deg: float, fov_y_deg: float | None = None) -> float:
    """Solid angle (steradians) of a rectangular a x b field of view: 4 asin(sin(a/2) sin(b/2))."""
    fov_y_deg = fov_x_deg if fov_y_deg is None else fov_y_deg
    a, b = math.radians(fov_x_deg), math.radians(fov_y_deg)
    return 4.0 * math.asin(math.sin(a / 2.0) * math.sin(b / 2.0))


def points_per_view(n_points: int, fov_deg: float) -> float:
    """Expected number of sphere points inside a square view: N * solid angle / (4 pi)."""
    return n_points * view_solid_angle(fov_deg) / (4.0 * math.pi)


def grid_side_for(n_points: int, fov_deg: float) -> int:
    """Side of the square latent grid a view of ``n_points`` holds: floor(sqrt(points per view)).

    2,600 points at 80 degrees give 18 (SANA's 576 px views); 26,500 give 59.
    """
    return max(1, math.floor(math.sqrt(points_per_view(n_points, fov_deg)) + 1e-9))


@dataclass(frozen=True)
class ViewLayout:
    """Where the cameras look: one entry per view, equator ring first.

    ``lon_rad`` and ``lat_rad`` are (V,) float64 tensors; ``fov_deg`` is every view's
    horizontal field of view.
    """

    lon_rad: torch.Tensor
    lat_rad: torch.Tensor
    fov_deg: float

    @property
    def n_views(self) -> int:
        return int(self.lon_rad.numel())

    def frames(self) -> torch.Tensor:
        """Camera frames (V, 3, 3), rows right, up, forward."""
        return camera_frames(self.lon_rad, self.lat_rad)

    def directions(self) -> torch.Tensor:
        """Forward unit vectors (V, 3)."""
        return lonlat_to_directions(self.lon_rad, self.lat_rad)


def default_view_layout(
    fov_deg: float = 80.0,
    overlap: float = 0.6,
    extra_views_per_ring: int = 3,
    ring_step_deg: float | None = None,
) -> ViewLayout:
    """The SphereDiff view layout (method.md section 2): 89 views for the defaults.

    The stride between neighbouring views is ``fov_deg * (1 - overlap)`` (32 degrees).
    Elevation rings sit every ``ring_step_deg`` from the equator to both poles; by default
    ``90 / (ceil(90 / stride) + 1)`` (22.5 degrees), one ring more per hemisphere than the
    stride needs, as the reference does. A ring at elevation ``e`` gets
    ``ceil(cos(e) * 360 / stride) + extra_views_per_ring`` views evenly spaced in azimuth
    (a pole ring gets ``1 + extra_views_per_ring``: the same direction, rotated). Rings are
    ordered equator first, then +e before -e with growing |e|.
    """
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if extra_views_per_ring < 0:
        raise ValueError(f"extra_views_per_ring must be >= 0, got {extra_views_per_ring}")
    stride_deg = fov_deg * (1.0 - overlap)
    if ring_step_deg is None:
        ring_step_deg = 90.0 / (math.ceil(90.0 / stride_deg - 1e-9) + 1)
    if not 0.0 < ring_step_deg <= 90.0:
        raise ValueError(f"ring_step_deg must be in (0, 90], got {ring_step_deg}")
    n_rings = math.floor(90.0 / ring_step_deg + 1e-9)
    elevations = [0.0]
    for k in range(1, n_rings + 1):
        e = min(90.0, k * ring_step_deg)
        elevations += [e, -e]
    lons: list[float] = []
    lats: list[float] = []
    for e in elevations:
        if abs(abs(e) - 90.0) < 1e-9:
            n = 1 + extra_views_per_ring
        else:
            n = math.ceil(math.cos(math.radians(e)) * 360.0 / stride_deg - 1e-9)
            n += extra_views_per_ring
        for j in range(n):
            lons.append(2.0 * math.pi * j / n)
            lats.append(math.radians(e))
    lon = torch.tensor(lons, dtype=torch.float64)
    lon = torch.atan2(torch.sin(lon), torch.cos(lon))  # wrap into (-pi, pi]
    return ViewLayout(lon, torch.tensor(lats, dtype=torch.float64), float(fov_deg))
