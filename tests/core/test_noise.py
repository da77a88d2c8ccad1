"""Noise fidelity: what the model sees through a view is independent unit-Gaussian noise."""

from __future__ import annotations

import pytest
import torch
from spherediff_core.fusion import gather_views


def lag1_autocorrelation(grids: torch.Tensor) -> float:
    """Pooled lag-1 correlation of zero-mean grids (V, h, w), horizontal and vertical."""
    g = grids - grids.mean(dim=(1, 2), keepdim=True)
    num = (g[:, :, 1:] * g[:, :, :-1]).sum() + (g[:, 1:, :] * g[:, :-1, :]).sum()
    den = (g[:, :, 1:] ** 2).sum() + (g[:, 1:, :] ** 2).sum()
    return float(num / den)


def gathered_noise(plan, seed=0):
    noise = torch.randn(1, 1, plan.n_points, generator=torch.Generator().manual_seed(seed))
    return gather_views(noise, plan)[:, 0, 0]  # (V, h, w)


@pytest.mark.parametrize("n_points", [2_600, 10_000, 26_500])
def test_views_see_independent_noise(plan_for, n_points):
    grids = gathered_noise(plan_for(n_points=n_points))
    assert abs(lag1_autocorrelation(grids)) < 0.03
    if n_points == 26_500:
        std = grids.flatten(1).std(dim=1)
        assert float(std.min()) >= 0.9 and float(std.max()) <= 1.1, (std.min(), std.max())


def test_nearest_sampling_repeats_latents(plan_for):
    dynamic = gathered_noise(plan_for(n_points=26_500))
    nearest = gathered_noise(plan_for(n_points=26_500, method="nearest"))
    # Repeated points make neighbouring cells equal: correlated noise the model never saw.
    equal_neighbours = (nearest[:, :, 1:] == nearest[:, :, :-1]).float().mean()
    assert float(equal_neighbours) > 0.02
    assert not bool((dynamic[:, :, 1:] == dynamic[:, :, :-1]).any())
    assert lag1_autocorrelation(nearest) > 0.03 > abs(lag1_autocorrelation(dynamic))
