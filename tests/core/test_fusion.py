"""Weighted scatter-average of view tensors onto the sphere."""

from __future__ import annotations

import numpy as np
import torch
from spherediff_core.fusion import SphereAccumulator, fuse_views, gather_views


def test_gather_then_fuse_is_identity(plan_for):
    plan = plan_for(n_points=2_600)
    gen = torch.Generator().manual_seed(1)
    for shape in [(2, 4, plan.n_points), (1, 3, 5, plan.n_points)]:
        sphere = torch.randn(shape, generator=gen)
        views = gather_views(sphere, plan)
        h, w = plan.grid_size
        assert views.shape == (plan.n_views, *shape[:-1], h, w)
        torch.testing.assert_close(fuse_views(views, plan, torch.zeros_like(sphere)), sphere)


def test_fusion_is_the_weighted_average(plan_for):
    plan = plan_for(n_points=2_600)
    h, w = plan.grid_size
    views = torch.randn(plan.n_views, 1, 2, h, w, generator=torch.Generator().manual_seed(2))
    base = torch.zeros(1, 2, plan.n_points)
    fused = fuse_views(views, plan, base)
    # Reference: plain numpy accumulation, view by view.
    num = np.zeros((plan.n_points, 2))
    den = np.zeros(plan.n_points)
    idx = plan.indices.numpy()
    wts = plan.weights.numpy().astype(np.float64)
    vals = views[:, 0].reshape(plan.n_views, 2, -1).numpy()
    for v in range(plan.n_views):
        np.add.at(num, idx[v], vals[v].T * wts[v][:, None])
        np.add.at(den, idx[v], wts[v])
    expected = torch.from_numpy((num / den[:, None]).T[None]).to(torch.float32)
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-5)


def test_uncovered_points_keep_their_value(plan_for):
    plan = plan_for(n_points=2_600)
    h, w = plan.grid_size
    base = torch.full((1, 1, plan.n_points), 7.0)
    views = torch.zeros(1, 1, 1, h, w)
    fused = fuse_views(views, plan, base, view_ids=torch.tensor([3]))
    in_view = torch.zeros(plan.n_points, dtype=torch.bool)
    in_view[plan.indices[3]] = True
    assert bool((fused[0, 0, in_view] == 0).all())
    assert bool((fused[0, 0, ~in_view] == 7).all())


def test_batched_accumulation_equals_one_call(plan_for):
    plan = plan_for(n_points=2_600)
    h, w = plan.grid_size
    views = torch.randn(plan.n_views, 1, 4, 3, h, w, generator=torch.Generator().manual_seed(3))
    base = torch.zeros(1, 4, 3, plan.n_points)
    acc = SphereAccumulator(plan, base)
    for start in range(0, plan.n_views, 10):
        ids = torch.arange(start, min(start + 10, plan.n_views))
        acc.add(views[ids], ids)
    torch.testing.assert_close(acc.result(base), fuse_views(views, plan, base))
