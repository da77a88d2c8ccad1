"""Gathering sphere latents into view grids and fusing view results back (MultiDiffusion).

Shapes: sphere tensors are (B, C, N) for images and (B, C, F, N) for video; view tensors
are (V', B, C, h, w) and (V', B, C, F, h, w), where V' views are picked from a plan by
``view_ids`` (all of them when it is None). Internally sphere tensors are viewed as
(B*C*F, N) rows, so a gather or a scatter is one ``index_select``/``index_add_`` along the
point axis of contiguous rows (much faster on CPU than moving the point axis first).
"""

from __future__ import annotations

import torch

from .plan import SamplingPlan

__all__ = ["SphereAccumulator", "fuse_views", "gather_views"]


def _view_ids(plan: SamplingPlan, view_ids: torch.Tensor | None) -> torch.Tensor:
    if view_ids is None:
        return torch.arange(plan.n_views)
    return torch.as_tensor(view_ids, dtype=torch.int64).reshape(-1)


def gather_views(
    sphere: torch.Tensor,
    plan: SamplingPlan,
    view_ids: torch.Tensor | None = None,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Read view grids out of sphere latents.

    sphere: (B, C, N) or (B, C, F, N). Returns (V', B, C, h, w) or (V', B, C, F, h, w).
    ``index``: ``plan.indices[view_ids]`` flattened, already on the sphere's device (a loop
    that reuses it saves a host-to-GPU copy, and the wait it brings, per call).
    """
    ids = _view_ids(plan, view_ids)
    h, w = plan.grid_size
    lead = sphere.shape[:-1]
    if sphere.shape[-1] != plan.n_points:
        raise ValueError(f"sphere has {sphere.shape[-1]} points, the plan {plan.n_points}")
    flat = sphere.reshape(-1, plan.n_points)  # (B*C*F, N)
    idx = plan.indices[ids].reshape(-1).to(sphere.device) if index is None else index
    grids = flat.index_select(1, idx).reshape(*lead, ids.numel(), h, w)
    # (B, C[, F], V', h, w) -> (V', B, C[, F], h, w)
    n = len(lead)
    perm = (n, *range(n), n + 1, n + 2)
    return grids.permute(perm).contiguous()


class SphereAccumulator:
    """Running weighted sum of view results on the sphere, filled batch by batch."""

    def __init__(self, plan: SamplingPlan, like: torch.Tensor) -> None:
        """``like``: a sphere tensor (B, C, N) or (B, C, F, N) giving shape, dtype and device."""
        self.plan = plan
        self.shape = like.shape
        self.numerator = torch.zeros(
            like[..., 0].numel(), plan.n_points, dtype=torch.float32, device=like.device
        )
        self.weight = torch.zeros(plan.n_points, dtype=torch.float32, device=like.device)

    def add(
        self,
        views: torch.Tensor,
        view_ids: torch.Tensor | None = None,
        index: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> None:
        """Accumulate views (V', B, C, h, w) or (V', B, C, F, h, w) of the given views.

        ``index``, ``weights``: the views' flattened plan indices and weights already on
        the accumulator's device (see :func:`gather_views`)."""
        ids = _view_ids(self.plan, view_ids)
        n_lead = views.dim() - 3
        # (V', B, C[, F], h, w) -> (B, C[, F], V', h, w) -> (B*C*F, V'*h*w)
        perm = (*range(1, 1 + n_lead), 0, views.dim() - 2, views.dim() - 1)
        rows = views.permute(perm).reshape(self.numerator.shape[0], -1)
        device = self.numerator.device
        idx = self.plan.indices[ids].reshape(-1).to(device) if index is None else index
        wts = self.plan.weights[ids].reshape(-1).to(device) if weights is None else weights
        self.numerator.index_add_(1, idx, rows.to(torch.float32) * wts)
        self.weight.index_add_(0, idx, wts)

    def result(self, base: torch.Tensor) -> torch.Tensor:
        """Weighted average per point; a point no added view covered keeps ``base``'s value."""
        covered = self.weight > 0
        avg = self.numerator / torch.where(covered, self.weight, torch.ones_like(self.weight))
        fused = avg.reshape(self.shape).to(base.dtype)
        return torch.where(covered.to(base.device), fused, base)


def fuse_views(
    views: torch.Tensor,
    plan: SamplingPlan,
    base: torch.Tensor,
    view_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted scatter-average of view tensors onto the sphere in one call.

    views: (V', B, C, h, w) or (V', B, C, F, h, w); base: (B, C, N) or (B, C, F, N), the
    value kept by points none of the views covers. Returns a tensor shaped like ``base``.
    """
    acc = SphereAccumulator(plan, base)
    acc.add(views, view_ids)
    return acc.result(base)
