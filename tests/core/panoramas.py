"""Known smooth, seam-free test panoramas, defined on directions (so no seam by construction)."""

from __future__ import annotations

import torch


def smooth_colour(dirs: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] of unit directions (..., 3) -> (..., 3), with detail down to ~20 degrees."""
    x, y, z = dirs.to(torch.float64).unbind(-1)
    r = 0.5 + 0.25 * torch.sin(3 * x + 2 * y) + 0.15 * torch.cos(5 * z + x)
    g = 0.5 + 0.3 * torch.cos(4 * y * z + 2 * x) * torch.sin(2 * z + 1)
    b = 0.5 + 0.2 * torch.sin(6 * x * y) + 0.2 * z**3
    return torch.stack([r, g, b], dim=-1).clamp(0.0, 1.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.to(torch.float64) - b.to(torch.float64)) ** 2).mean())
    return 10.0 * torch.log10(torch.tensor(1.0 / max(mse, 1e-20))).item()


def seam_ratio(image: torch.Tensor) -> float:
    """|first column - last column| over the mean difference of adjacent columns."""
    seam = (image[:, :, 0] - image[:, :, -1]).abs().mean()
    adjacent = (image[:, :, 1:] - image[:, :, :-1]).abs().mean()
    return float(seam / adjacent)


def row_variation(image: torch.Tensor, row: int) -> float:
    """Mean |row[j+1] - row[j]| along one ERP row (wrapping around the seam)."""
    r = image[:, row]
    return float((r.roll(-1, dims=-1) - r).abs().mean())
