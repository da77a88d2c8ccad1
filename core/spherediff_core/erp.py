"""Between perspective view images and equirectangular (ERP) panoramas.

``views_to_erp`` blends decoded view images into an ERP canvas (method.md section 7): each
ERP pixel in front of a view is projected into it, sampled bilinearly and accumulated with
the weight exp(-r / T); the canvas is divided by the summed weights. ``erp_to_views`` is
the reverse: it samples perspective views out of an ERP image, wrapping across the seam.
Conventions (ERP orientation, camera frames, image coordinates) are those of
:mod:`spherediff_core.geometry`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import geometry

__all__ = ["erp_to_views", "views_to_erp"]


def views_to_erp(
    images: torch.Tensor,
    frames: torch.Tensor,
    fov_deg: float,
    height: int,
    width: int,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Blend perspective view images into an ERP image.

    images: (V, C, Hi, Wi) view images (float), each covering its view's field of view
    (horizontal ``fov_deg``, square pixels). frames: (V, 3, 3) camera frames.
    Returns (C, height, width) float32. Pixels that no view sees are 0.
    """
    if images.dim() != 4 or images.shape[0] != frames.shape[0]:
        raise ValueError("images must be (V, C, Hi, Wi) with one image per frame")
    n_views, channels, hi, wi = images.shape
    device = images.device
    tx, ty = geometry.tan_half_fovs(fov_deg, hi, wi)
    half_diag = math.atan(math.hypot(tx, ty))  # angular radius of a view's corners
    dirs = geometry.erp_pixel_directions(height, width, dtype=torch.float32).to(device)
    row_lat = (0.5 - (torch.arange(height, dtype=torch.float64) + 0.5) / height) * math.pi
    numerator = torch.zeros(channels, height * width, dtype=torch.float32, device=device)
    weight = torch.zeros(height * width, dtype=torch.float32, device=device)
    frames32 = frames.to(device=device, dtype=torch.float32)
    lat_views = torch.asin(frames[:, 2, 2].clamp(-1.0, 1.0))
    lon_views = torch.atan2(frames[:, 2, 1], frames[:, 2, 0])
    col_lon = (0.5 - (torch.arange(width, dtype=torch.float64) + 0.5) / width) * 2.0 * math.pi
    for v in range(n_views):
        # Only pixels whose direction can be inside the view's cone (a spherical cap of
        # radius half_diag) are projected: a band of rows and, when the cap holds no pole,
        # the columns within its longitude half-width asin(sin(radius) / cos(lat)).
        lat_v = float(lat_views[v])
        rows = torch.nonzero((row_lat - lat_v).abs() <= half_diag + 1e-6).squeeze(1)
        if rows.numel() == 0:
            continue
        r0, r1 = int(rows.min()), int(rows.max()) + 1
        if abs(lat_v) + half_diag < math.pi / 2 - 1e-6:
            half_lon = math.asin(min(1.0, math.sin(half_diag) / math.cos(lat_v)))
            dlon = torch.remainder(col_lon - float(lon_views[v]) + math.pi, 2 * math.pi) - math.pi
            cols = torch.nonzero(dlon.abs() <= half_lon + 2 * math.pi / width).squeeze(1)
        else:
            cols = torch.arange(width)
        band_dirs = dirs[r0:r1][:, cols.to(device)]  # (rows, cols, 3)
        band = band_dirs.reshape(-1, 3)
        cam = band @ frames32[v].t()  # (P, 3): right, up, forward components
        depth = cam[:, 2]
        front = depth > 1e-6
        x = cam[:, 0] / depth.clamp_min(1e-6) / tx
        y = cam[:, 1] / depth.clamp_min(1e-6) / ty
        inside = front & (x.abs() <= 1.0) & (y.abs() <= 1.0)
        sel = torch.nonzero(inside).squeeze(1)
        if sel.numel() == 0:
            continue
        xs, ys = x[sel], y[sel]
        grid = torch.stack([xs, -ys], dim=-1).reshape(1, 1, -1, 2)
        samples = F.grid_sample(
            images[v : v + 1].to(torch.float32),
            grid,
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        ).reshape(channels, -1)
        wts = torch.exp(-torch.hypot(xs, ys) / temperature)
        n_cols = cols.numel()
        pix = (sel // n_cols + r0) * width + cols.to(device)[sel % n_cols]
        numerator.index_add_(1, pix, samples * wts)
        weight.index_add_(0, pix, wts)
    seen = weight > 0
    out = numerator / torch.where(seen, weight, torch.ones_like(weight))
    return out.reshape(channels, height, width)


def erp_to_views(
    erp: torch.Tensor, frames: torch.Tensor, fov_deg: float, height: int, width: int
) -> torch.Tensor:
    """Sample perspective views out of an ERP image.

    erp: (C, H, W). frames: (V, 3, 3). Returns (V, C, height, width) float32, bilinear,
    wrapping horizontally across the seam and clamping at the poles.
    """
    _channels, erp_h, erp_w = erp.shape
    device = erp.device
    rays = geometry.view_rays(frames, fov_deg, height, width).to(device)  # (V, h, w, 3)
    u, v = geometry.directions_to_erp_uv(rays)
    # One wrapped column on each side makes bilinear sampling seamless across u = 0 / 1.
    padded = torch.cat([erp[:, :, -1:], erp, erp[:, :, :1]], dim=2).to(torch.float32)
    col = u * erp_w + 1.0  # continuous column in the padded image (pixel edges at integers)
    row = (1.0 - v) * erp_h
    gx = col / (erp_w + 2) * 2.0 - 1.0
    gy = row / erp_h * 2.0 - 1.0
    grid = torch.stack([gx, gy], dim=-1).to(torch.float32)  # (V, h, w, 2)
    n_views = frames.shape[0]
    out = F.grid_sample(
        padded[None].expand(n_views, -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )
    return out
