"""Conventions, sphere lattice, view layout and camera frames."""

from __future__ import annotations

import math

import pytest
import torch
from spherediff_core import geometry as g


def test_fibonacci_sphere_is_unit_and_uniform():
    n = 10_000
    pts = g.fibonacci_sphere(n)
    assert pts.shape == (n, 3)
    torch.testing.assert_close(pts.norm(dim=-1), torch.ones(n, dtype=torch.float64))
    # Equal-area lattice: each octant holds an eighth of the points, a polar cap its area.
    octant = ((pts[:, 0] > 0) & (pts[:, 1] > 0) & (pts[:, 2] > 0)).sum().item()
    assert abs(octant - n / 8) < 0.01 * n
    cap = (pts[:, 2] > math.cos(math.radians(20))).sum().item()
    assert abs(cap - n * (1 - math.cos(math.radians(20))) / 2) < 5


def test_default_layout_matches_method():
    lay = g.default_view_layout()
    assert lay.n_views == 89
    lat_deg = torch.round(torch.rad2deg(lay.lat_rad) * 1000) / 1000
    counts = {e: int((lat_deg == e).sum()) for e in (0.0, 22.5, 45.0, 67.5, 90.0)}
    assert counts == {0.0: 15, 22.5: 14, 45.0: 11, 67.5: 8, 90.0: 4}
    assert int((lat_deg == -67.5).sum()) == 8 and int((lat_deg == -90.0).sum()) == 4
    assert torch.all(lat_deg[:15] == 0)  # equator first
    assert torch.all(lat_deg[1:].abs() >= lat_deg[:-1].abs())
    # Parameters are exposed and change the layout.
    assert g.default_view_layout(fov_deg=90, overlap=0.5).n_views != 89
    with pytest.raises(ValueError, match="overlap"):
        g.default_view_layout(overlap=1.0)


def test_erp_uv_of_axes_follows_blender():
    axes = torch.tensor(
        [[1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0], [-1.0, 0, 0], [0, 0, 1.0], [0, 0, -1.0]],
        dtype=torch.float64,
    )
    u, v = g.directions_to_erp_uv(axes)
    # +X is the image centre, +Y a quarter to the left, -Y a quarter to the right, -X the seam.
    torch.testing.assert_close(u[:3], torch.tensor([0.5, 0.25, 0.75], dtype=torch.float64))
    assert min(float(u[3]), 1 - float(u[3])) < 1e-12
    torch.testing.assert_close(v, torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0, 0.0], dtype=torch.float64))


def test_direction_uv_round_trip():
    gen = torch.Generator().manual_seed(0)
    d = torch.randn(5000, 3, generator=gen, dtype=torch.float64)
    d = torch.cat([d, torch.tensor([[1e-9, 2e-9, 1.0], [0.0, 0.0, -1.0]], dtype=torch.float64)])
    d = d / d.norm(dim=-1, keepdim=True)
    u, v = g.directions_to_erp_uv(d)
    assert float(u.min()) >= 0 and float(u.max()) < 1
    back = g.erp_uv_to_directions(u, v)
    assert float((back - d).norm(dim=-1).max()) < 1e-9


def test_erp_pixel_directions_centre_and_rows():
    h, w = 64, 128
    dirs = g.erp_pixel_directions(h, w)
    assert dirs.shape == (h, w, 3)
    # The two pixels either side of the centre straddle +X; the top row is near +Z.
    mid = (dirs[h // 2 - 1, w // 2 - 1] + dirs[h // 2, w // 2]) / 2
    assert float(mid[0]) > 0.99
    assert float(dirs[0, :, 2].min()) > 0.99 and float(dirs[-1, :, 2].max()) < -0.99
    # Moving right in the image turns from +X towards -Y.
    assert float(dirs[h // 2, w // 2 + 10, 1]) < 0 < float(dirs[h // 2, w // 2 - 10, 1])


def test_camera_frames_orthonormal_everywhere_including_poles():
    lon = torch.linspace(-math.pi, math.pi, 37, dtype=torch.float64).repeat(5)
    lat = torch.tensor([-90.0, -45.0, 0.0, 45.0, 90.0], dtype=torch.float64).repeat_interleave(37)
    frames = g.camera_frames(lon, torch.deg2rad(lat))
    assert torch.isfinite(frames).all()
    eye = torch.eye(3, dtype=torch.float64).expand_as(frames)
    torch.testing.assert_close(frames @ frames.transpose(1, 2), eye)
    # Rows (right, up, forward) form a right-handed camera: right x up = -forward.
    torch.testing.assert_close(
        torch.linalg.cross(frames[:, 0], frames[:, 1]), -frames[:, 2], atol=1e-12, rtol=0
    )


def test_camera_frame_documented_up():
    level = g.camera_frames(torch.tensor([0.0]), torch.tensor([0.0]))[0]
    torch.testing.assert_close(level[0], torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(level[1], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    up = g.camera_frames(torch.tensor([0.0]), torch.tensor([math.pi / 2]))[0]
    torch.testing.assert_close(up[2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    # Tilted up from facing +X, the image top points back towards -X.
    torch.testing.assert_close(up[1], torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float64))


def test_projection_and_rays_agree():
    lay = g.default_view_layout()
    frames = lay.frames()
    h = w = 12
    rays = g.view_rays(frames, lay.fov_deg, h, w)
    tx, ty = g.tan_half_fovs(lay.fov_deg, h, w)
    x, y, depth = g.project_to_views(rays[5].reshape(-1, 3), frames[5:6], tx, ty)
    cx, cy = g.cell_centres(h, w)
    torch.testing.assert_close(x[0], cx.reshape(-1))
    torch.testing.assert_close(y[0], cy.reshape(-1))
    assert bool((depth > 0).all())
    # The view's own forward axis projects to the image centre.
    x0, y0, _ = g.project_to_views(frames[:, 2], frames, tx, ty)
    torch.testing.assert_close(torch.diagonal(x0), torch.zeros(lay.n_views, dtype=torch.float64))
    torch.testing.assert_close(torch.diagonal(y0), torch.zeros(lay.n_views, dtype=torch.float64))


def test_grid_sizes_follow_points_per_view():
    assert g.grid_side_for(2_600, 80.0) == 18
    assert g.grid_side_for(26_500, 80.0) == 59
    assert math.isclose(g.view_solid_angle(180.0), 2 * math.pi)
