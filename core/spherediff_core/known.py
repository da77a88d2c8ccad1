"""Known content on the sphere: an image placed in the world, held while the rest is made.

An artist's photo, painting or render is a perspective view of the world. Placed with
:class:`ImagePlacement` (where its camera looks, how wide, how rolled), its VAE latents are
written onto the sphere points inside its footprint, and during denoising those points are
held to it (:class:`KnownRegion`), so the panorama grows around the image with no seam.

Placement convention (``spherediff_core.geometry``'s world frame, Z up)
======================================================================
``yaw_deg`` is the azimuth of the image's centre (0 towards +X, 90 towards +Y), ``pitch_deg``
its elevation (+90 straight up), ``roll_deg`` the camera's roll about its viewing axis
(:func:`geometry.rolled_camera_frame`: positive turns the camera's right axis towards its
up axis, as a Blender camera rotated by +roll about its local Z). ``fov_deg`` is the
image's horizontal field of view; the vertical one follows from its aspect (square
pixels). In normalised image coordinates (``geometry``: x right, y up, both in [-1, 1]
inside the image) a direction ``d`` lands at ``x = (d.r / d.f) / tan(fov_x / 2)``.

The recipe
==========
1. **Encode in perspective.** The image is resized (never through an ERP) so that one latent
   cell spans about one sphere point (the lattice's spacing, ``sqrt(4 pi / N)``), and encoded
   by the family's VAE into the denoiser's latent space (the adapter's ``encode_images``).
2. **Onto the sphere.** Every sphere point inside the footprint reads the latent grid
   bilinearly at its projection. Its weight is 1 deeper than ``feather_deg`` inside the
   image's border and falls smoothly (smoothstep of the angle to the border) to 0 at it.
3. **Held while denoising** (the latent blend of diffusers' inpainting pipelines): after
   each scheduler step ``i`` (for the first ``enforce_steps`` steps), the known points are
   set to ``w * known_t + (1 - w) * latents`` where ``known_t`` is the known latents noised
   to the next timestep with the generation's own initial noise (``scheduler.add_noise``,
   or ``sigma * noise + (1 - sigma) * x0`` for flow-matching schedulers without it); after
   the last step, the clean known latents. With ``enforce_steps`` below the schedule's
   length the region is free for the last steps, so its border can blend.
4. **Decoded like everything else**: nothing is pasted; the views decode and blend into the
   ERP, and the known region comes out as the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from . import geometry

__all__ = [
    "Footprint",
    "ImagePlacement",
    "KnownRegion",
    "footprint",
    "known_grid_size",
    "renoise",
    "sample_grid",
]


@dataclass(frozen=True)
class ImagePlacement:
    """Where a known image sits in the world (module docstring); angles in degrees."""

    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    fov_deg: float = 60.0
    feather_deg: float = 4.0

    def frame(self) -> torch.Tensor:
        """(3, 3) float64, rows right, up, forward of the image's camera."""
        return geometry.rolled_camera_frame(self.yaw_deg, self.pitch_deg, self.roll_deg)

    def vertical_fov_deg(self, height: int, width: int) -> float:
        tx = math.tan(math.radians(self.fov_deg) / 2.0)
        return math.degrees(2.0 * math.atan(tx * height / width))


@dataclass(frozen=True)
class Footprint:
    """Where directions land in a placed image, each (N,).

    ``x``, ``y``: normalised image coordinates (meaningful where ``margin_deg > 0``);
    ``margin_deg``: the angle from the direction to the image's border, positive inside;
    ``weight``: float32 in [0, 1], the known content's hold (1 deeper than the feather).
    """

    x: torch.Tensor
    y: torch.Tensor
    margin_deg: torch.Tensor
    weight: torch.Tensor

    @property
    def inside(self) -> torch.Tensor:
        return self.margin_deg > 0


def footprint(dirs: torch.Tensor, placement: ImagePlacement, height: int, width: int) -> Footprint:
    """Project directions (N, 3) into an image of ``height`` x ``width`` pixels placed by
    ``placement``. The margin is the smallest angle to the four planes through the camera
    and the image's edges, so the feather is even in angle all round the border."""
    frame = placement.frame().to(torch.float64)
    cam = dirs.to(torch.float64) @ frame.T  # (N, 3): along right, up, forward
    xr, yu, zf = cam.unbind(-1)
    tx, ty = geometry.tan_half_fovs(placement.fov_deg, height, width)
    sx, sy = math.sqrt(tx * tx + 1.0), math.sqrt(ty * ty + 1.0)
    sines = torch.stack(
        [(tx * zf - xr) / sx, (tx * zf + xr) / sx, (ty * zf - yu) / sy, (ty * zf + yu) / sy]
    )
    margin_deg = torch.rad2deg(torch.asin(sines.clamp(-1.0, 1.0)).amin(dim=0))
    depth = torch.where(zf > 1e-9, zf, torch.full_like(zf, 1e-9))
    x, y = xr / depth / tx, yu / depth / ty
    if placement.feather_deg > 0:
        t = (margin_deg / placement.feather_deg).clamp(0.0, 1.0)
        weight = t * t * (3.0 - 2.0 * t)  # smoothstep: no kink where the hold begins
    else:
        weight = (margin_deg > 0).to(torch.float64)
    return Footprint(x=x, y=y, margin_deg=margin_deg, weight=weight.to(torch.float32))


def known_grid_size(
    placement: ImagePlacement, height: int, width: int, n_points: int, multiple: int = 1
) -> tuple[int, int]:
    """The latent grid (rows, cols) to encode a ``height`` x ``width`` image at: one cell per
    sphere point across its width (cells a multiple of ``multiple``, at least one)."""
    spacing_rad = math.sqrt(4.0 * math.pi / n_points)
    tx = math.tan(math.radians(placement.fov_deg) / 2.0)
    cols = max(multiple, math.ceil(2.0 * tx / spacing_rad / multiple - 1e-9) * multiple)
    rows = max(multiple, round(cols * height / width / multiple) * multiple)
    return rows, cols


def sample_grid(grid: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Bilinear reads of a latent grid (C, h, w) at normalised coordinates (N,) -> (C, N).

    Cell centres sit where geometry's grid puts them (align_corners=False); reads beyond
    the border repeat the edge cells."""
    coords = torch.stack([x, -y], dim=-1).to(grid.dtype).reshape(1, 1, -1, 2)  # y down
    out = torch.nn.functional.grid_sample(
        grid[None], coords, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out[0, :, 0]


def renoise(scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, index: int) -> torch.Tensor:
    """Clean latents ``x0`` noised to the scheduler's ``index``-th timestep with ``noise``."""
    add_noise = getattr(scheduler, "add_noise", None)
    if add_noise is not None:
        t = torch.as_tensor(scheduler.timesteps[index]).reshape(1)
        return add_noise(x0, noise, t)
    sigma = scheduler.sigmas[index].to(x0.dtype)  # flow matching: x_t = s n + (1 - s) x0
    return sigma * noise + (1.0 - sigma) * x0


@dataclass
class KnownRegion:
    """Sphere latents to hold: ``latents`` (C, N) clean known content (0 where ``weight`` is
    0), ``weight`` (N,) in [0, 1], held after each of the first ``enforce_steps`` steps."""

    latents: torch.Tensor
    weight: torch.Tensor
    enforce_steps: int

    def to(self, device: torch.device | str) -> KnownRegion:
        """The region with float32 tensors on ``device`` (once, before the loop)."""
        return KnownRegion(
            self.latents.to(device=device, dtype=torch.float32),
            self.weight.to(device=device, dtype=torch.float32),
            self.enforce_steps,
        )

    def blend(
        self, latents: torch.Tensor, scheduler: Any, next_index: int, noise: torch.Tensor
    ) -> torch.Tensor:
        """``latents`` (B, C, N) after the step into timestep ``next_index`` (== the number
        of timesteps after the last step), with the known points held."""
        known = self.latents.to(device=latents.device, dtype=torch.float32)
        known = known.expand(latents.shape[0], *known.shape)
        if next_index < len(scheduler.timesteps):
            known = renoise(scheduler, known, noise.to(known), next_index)
        w = self.weight.to(device=latents.device, dtype=torch.float32)
        held = w * known + (1.0 - w) * latents.to(torch.float32)
        return held.to(latents.dtype)
