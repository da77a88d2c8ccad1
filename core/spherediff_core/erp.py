"""Between perspective view images and equirectangular (ERP) panoramas.

``views_to_erp`` blends decoded view images into an ERP canvas (method.md section 7): each
ERP pixel in front of a view is projected into it, sampled bilinearly and accumulated with
the weight exp(-r / T); the canvas is divided by the summed weights. ``erp_to_views`` is
the reverse: it samples perspective views out of an ERP image, wrapping across the seam.
:class:`ErpCanvas` is the blend filled batch by batch (what the pipeline uses: decoded
views are blended as they come; a video's frames share one projection per view).
Conventions (ERP orientation, camera frames, image coordinates) are those of
:mod:`spherediff_core.geometry`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import geometry

__all__ = ["ErpCanvas", "erp_to_views", "views_to_erp"]


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
    canvas = ErpCanvas(
        frames, fov_deg, height, width, images.shape[1], temperature, device=images.device
    )
    canvas.add(images, torch.arange(images.shape[0]))
    return canvas.result()


class ErpCanvas:
    """A weighted ERP blend filled view batch by view batch (see :func:`views_to_erp`).

    For video the channels are frames x RGB: every view's projection (which ERP pixels it
    covers, where they fall in the view, their weights) is computed once and applied to all
    frames at once, and decoded views never need to be kept. Memory: the canvas,
    channels x height x width float32, plus one view's samples for ``chunk_channels``
    channels at a time.

    ``frames``: (V, 3, 3) camera frames of all the plan's views; ``add`` takes view ids.
    """

    def __init__(
        self,
        frames: torch.Tensor,
        fov_deg: float,
        height: int,
        width: int,
        channels: int,
        temperature: float = 0.1,
        device: torch.device | str = "cpu",
        chunk_channels: int = 48,
    ) -> None:
        self.fov_deg = fov_deg
        self.height, self.width, self.channels = height, width, channels
        self.temperature = temperature
        self.device = torch.device(device)
        self.chunk_channels = max(1, chunk_channels)
        self.numerator = torch.zeros(
            channels, height * width, dtype=torch.float32, device=self.device
        )
        self.weight = torch.zeros(height * width, dtype=torch.float32, device=self.device)
        # Keep only the pixels inside each view (CPU), or the whole band with weight 0
        # outside it (GPU: no host-device synchronisation per view); same result.
        self.compact = self.device.type == "cpu"
        self._dirs = geometry.erp_pixel_directions(height, width, dtype=torch.float32).to(
            self.device
        )
        self._row_lat = (0.5 - (torch.arange(height, dtype=torch.float64) + 0.5) / height) * math.pi
        self._col_lon = (
            (0.5 - (torch.arange(width, dtype=torch.float64) + 0.5) / width) * 2.0 * math.pi
        )
        self._frames32 = frames.to(device=self.device, dtype=torch.float32)
        self._lat_views = torch.asin(frames[:, 2, 2].clamp(-1.0, 1.0))
        self._lon_views = torch.atan2(frames[:, 2, 1], frames[:, 2, 0])

    def _footprint(
        self, v: int, tx: float, ty: float, half_diag: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The ERP pixels view ``v`` covers: (pixel indices, sample grid, weights).

        On the CPU only the pixels inside the view are kept. On a GPU the whole band is
        kept with weight 0 outside the view: selecting the inside pixels would make the
        host wait for the GPU at every view (the band is computed on the host from the
        geometry alone, so nothing else waits either).
        """
        width = self.width
        # Only pixels whose direction can be inside the view's cone (a spherical cap of
        # radius half_diag) are projected: a band of rows and, when the cap holds no pole,
        # the columns within its longitude half-width asin(sin(radius) / cos(lat)) -- one
        # cyclic run of columns.
        lat_v = float(self._lat_views[v])
        rows = torch.nonzero((self._row_lat - lat_v).abs() <= half_diag + 1e-6).squeeze(1)
        if rows.numel() == 0:
            return None
        r0, r1 = int(rows.min()), int(rows.max()) + 1
        if abs(lat_v) + half_diag < math.pi / 2 - 1e-6:
            half_lon = math.asin(min(1.0, math.sin(half_diag) / math.cos(lat_v)))
            half_lon += 2 * math.pi / width  # a column's margin
            lon = float(self._lon_views[v])
            # Column j is centred on longitude (0.5 - (j + 0.5) / W) * 2 pi.
            first = math.floor((0.5 - (lon + half_lon) / (2 * math.pi)) * width - 0.5)
            last = math.ceil((0.5 - (lon - half_lon) / (2 * math.pi)) * width - 0.5)
            count = min(width, last - first + 1)
        else:
            first, count = 0, width
        cols = torch.remainder(first + torch.arange(count, device=self.device), width)
        band = self._dirs[r0:r1].index_select(1, cols).reshape(-1, 3)  # (rows * cols, 3)
        cam = band @ self._frames32[v].t()  # (P, 3): right, up, forward components
        depth = cam[:, 2]
        x = cam[:, 0] / depth.clamp_min(1e-6) / tx
        y = cam[:, 1] / depth.clamp_min(1e-6) / ty
        inside = (depth > 1e-6) & (x.abs() <= 1.0) & (y.abs() <= 1.0)
        rows_band = torch.arange(r0, r1, device=self.device)
        pix = (rows_band[:, None] * width + cols[None, :]).reshape(-1)
        if self.compact:
            sel = torch.nonzero(inside).squeeze(1)
            if sel.numel() == 0:
                return None
            pix, x, y = pix[sel], x[sel], y[sel]
            wts = torch.exp(-torch.hypot(x, y) / self.temperature)
        else:
            x, y = x.clamp(-2.0, 2.0), y.clamp(-2.0, 2.0)  # outside: weight 0, any sample
            wts = torch.where(inside, torch.exp(-torch.hypot(x, y) / self.temperature), 0.0)
        grid = torch.stack([x, -y], dim=-1).reshape(1, 1, -1, 2)
        return pix, grid, wts

    def add(self, images: torch.Tensor, view_ids: torch.Tensor) -> None:
        """Blend in images (n, C, Hi, Wi) of the plan's views ``view_ids`` (n,)."""
        if images.dim() != 4 or images.shape[1] != self.channels:
            raise ValueError(
                f"images must be (n, {self.channels}, Hi, Wi), got {tuple(images.shape)}"
            )
        ids = torch.as_tensor(view_ids).reshape(-1).tolist()
        if len(ids) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images for {len(ids)} view ids")
        _n, channels, hi, wi = images.shape
        tx, ty = geometry.tan_half_fovs(self.fov_deg, hi, wi)
        half_diag = math.atan(math.hypot(tx, ty))  # angular radius of a view's corners
        for i, v in enumerate(ids):
            footprint = self._footprint(int(v), tx, ty, half_diag)
            if footprint is None:
                continue
            pix, grid, wts = footprint
            image = images[i : i + 1].to(device=self.device, dtype=torch.float32)
            for c0 in range(0, channels, self.chunk_channels):
                c1 = min(channels, c0 + self.chunk_channels)
                samples = F.grid_sample(
                    image[:, c0:c1],
                    grid,
                    mode="bilinear",
                    padding_mode="border",
                    align_corners=False,
                ).reshape(c1 - c0, -1)
                self.numerator[c0:c1].index_add_(1, pix, samples * wts)
            self.weight.index_add_(0, pix, wts)

    def result(self) -> torch.Tensor:
        """(C, height, width) float32: the weighted average (0 where no view was added).

        Divides the canvas in place (no copy): call it once, after the last ``add``.
        """
        seen = self.weight > 0
        self.numerator /= torch.where(seen, self.weight, torch.ones_like(self.weight))
        return self.numerator.reshape(self.channels, self.height, self.width)


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
