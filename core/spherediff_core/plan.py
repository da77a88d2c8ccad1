"""Sampling plans: which sphere point every grid cell of every view reads and writes.

A plan is computed once per configuration (points, view layout, grid size, method,
temperature) and reused at every denoising step: the assignment depends only on the
geometry, never on the timestep. Plans are cached on disk under a key made of every
parameter that affects them, so a changed parameter never reuses a stale plan.

Methods
-------
``dynamic`` (the paper's "dynamic latent sampling")
    Every cell of a view gets a *distinct* sphere point, so the noise a model sees stays
    independent and unit-variance. Cells are filled from the centre outward, one square
    ring at a time. Inside a ring all cells propose their nearest unused candidate at once
    and a point wanted by several cells goes to the nearest of them; the others propose
    again (a greedy nearest-first matching per ring, which is less order-dependent than
    filling cells one by one). The outermost points are the ones left over. Candidates are
    found where the inner ring's points predict (see ``_assign_dynamic``), which keeps the
    build near-linear in the number of points.
``nearest`` (the paper's ablation baseline)
    Every cell takes its nearest point; a point may be repeated within a view.

Weights are ``exp(-r / T)`` with ``r`` the distance of the assigned point from the view
centre in normalised image coordinates (conventions in :mod:`spherediff_core.geometry`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from . import geometry
from .cachedirs import cache_root
from .errors import CancelledError
from .lifecycle import protected

__all__ = [
    "PLAN_FORMAT_VERSION",
    "PlanConfig",
    "SamplingPlan",
    "build_plan",
    "default_cache_dir",
    "load_or_build_plan",
]

logger = logging.getLogger(__name__)

PLAN_FORMAT_VERSION = 2  # 2: candidates predicted from the inner ring (issue 13)
METHODS = ("dynamic", "nearest")
QUERY_NEIGHBOURS_PER_CALL = 400_000
"""KD-tree queries are split into calls of about this many neighbours (a fraction of a
second each), so that a cancel is seen between them even for big plans."""
NEIGHBOURS = 8
"""Neighbours per lattice point in the graph the dynamic assignment hops on."""

ShouldCancel = Callable[[], bool] | None


def _check_cancel(should_cancel: ShouldCancel) -> None:
    if should_cancel is not None and should_cancel():
        raise CancelledError("cancelled while building the sampling plan")


def _query(
    tree: cKDTree, rays: np.ndarray, k: int, should_cancel: ShouldCancel
) -> tuple[np.ndarray, np.ndarray]:
    """tree.query(rays, k) in chunks, polling ``should_cancel`` between them (same result)."""
    chunk = max(1, QUERY_NEIGHBOURS_PER_CALL // k)
    dists, idx = [], []
    for start in range(0, max(1, len(rays)), chunk):
        _check_cancel(should_cancel)
        d, i = tree.query(rays[start : start + chunk], k=k, workers=-1)
        dists.append(d)
        idx.append(i)
    return np.concatenate(dists), np.concatenate(idx)


@dataclass(frozen=True)
class PlanConfig:
    """Every parameter a sampling plan depends on.

    ``grid_height``/``grid_width`` of ``None`` mean the square grid that the view's share
    of the points fills (``geometry.grid_side_for``).
    """

    n_points: int
    fov_deg: float = 80.0
    overlap: float = 0.6
    extra_views_per_ring: int = 3
    ring_step_deg: float | None = None
    grid_height: int | None = None
    grid_width: int | None = None
    method: str = "dynamic"
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.n_points < 16:
            raise ValueError(f"n_points must be at least 16, got {self.n_points}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not self.temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        for name in ("grid_height", "grid_width"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """(h, w) of every view's latent grid."""
        side = geometry.grid_side_for(self.n_points, self.fov_deg)
        h = self.grid_height if self.grid_height is not None else side
        w = self.grid_width if self.grid_width is not None else side
        return h, w

    def layout(self) -> geometry.ViewLayout:
        return geometry.default_view_layout(
            self.fov_deg, self.overlap, self.extra_views_per_ring, self.ring_step_deg
        )

    def cache_key(self) -> str:
        h, w = self.grid_size
        payload = {
            "format": PLAN_FORMAT_VERSION,
            "lattice": "fibonacci-v1",
            "n_points": self.n_points,
            "fov_deg": float(self.fov_deg),
            "overlap": float(self.overlap),
            "extra_views_per_ring": self.extra_views_per_ring,
            "ring_step_deg": None if self.ring_step_deg is None else float(self.ring_step_deg),
            "grid": [h, w],
            "method": self.method,
            "temperature": float(self.temperature),
        }
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class SamplingPlan:
    """The precomputed gather/scatter map between sphere points and view grids.

    Attributes (V views, h x w grid, M = h * w cells, N sphere points):
        config: the parameters it was built from.
        points: (N, 3) float64 unit vectors of the sphere lattice.
        lon_rad, lat_rad: (V,) float64 view directions.
        frames: (V, 3, 3) float64 camera frames (rows right, up, forward).
        indices: (V, M) int64 sphere index of each cell, row-major over (h, w).
        weights: (V, M) float32 fusion weight exp(-r / T) of each cell.
        rays: (V, h, w, 3) float32 ideal pinhole ray of each cell.
        weight_sum: (N,) float32 summed weight of every point over all views (0 = uncovered).
    """

    config: PlanConfig
    points: torch.Tensor
    lon_rad: torch.Tensor
    lat_rad: torch.Tensor
    frames: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor
    rays: torch.Tensor
    weight_sum: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.weight_sum = torch.zeros(self.n_points, dtype=torch.float32).index_add_(
            0, self.indices.reshape(-1), self.weights.reshape(-1)
        )

    @property
    def n_views(self) -> int:
        return int(self.indices.shape[0])

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def grid_size(self) -> tuple[int, int]:
        return int(self.rays.shape[1]), int(self.rays.shape[2])

    @property
    def fov_deg(self) -> float:
        return self.config.fov_deg

    @property
    def view_dirs(self) -> torch.Tensor:
        """Forward unit vectors of the views, (V, 3) float64."""
        return self.frames[:, 2]

    @property
    def covered(self) -> torch.Tensor:
        """(N,) bool: points that at least one view reads."""
        return self.weight_sum > 0

    def angular_error_rad(self) -> torch.Tensor:
        """Angle between every cell's ideal ray and its assigned point, (V, h, w) float64."""
        pts = self.points[self.indices].reshape(self.rays.shape)
        cos = (pts * self.rays.to(torch.float64)).sum(-1).clamp(-1.0, 1.0)
        return torch.arccos(cos)

    def cell_spacing_rad(self) -> torch.Tensor:
        """Local angular size of every cell, sqrt of its solid angle, (h, w) float64.

        A cell at angle theta from the view axis spans pitch^2 * cos^3(theta) steradians,
        with pitch = 2 tan(fov_x / 2) / w the cell size on the image plane at depth 1.
        """
        h, w = self.grid_size
        tx, ty = geometry.tan_half_fovs(self.fov_deg, h, w)
        x, y = geometry.cell_centres(h, w)
        cos_theta = 1.0 / torch.sqrt(1.0 + (x * tx) ** 2 + (y * ty) ** 2)
        pitch = 2.0 * tx / w
        return pitch * cos_theta**1.5

    def to_state(self) -> dict[str, torch.Tensor]:
        return {
            "points": self.points,
            "lon_rad": self.lon_rad,
            "lat_rad": self.lat_rad,
            "frames": self.frames,
            "indices": self.indices,
            "weights": self.weights,
            "rays": self.rays,
        }


def _ring_order(h: int, w: int) -> torch.Tensor:
    """Square-ring index of every cell of an h x w grid, centre ring 0, (h * w,) int64."""
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    i = torch.arange(h, dtype=torch.float64)[:, None]
    j = torch.arange(w, dtype=torch.float64)[None, :]
    # Scale to the longer side so non-square grids still grow ring by ring from the centre.
    s = max(h, w)
    ring = torch.maximum((i - cy).abs() * s / h, (j - cx).abs() * s / w)
    ring = ring - ring.min()
    return torch.floor(ring + 1e-9).to(torch.int64).reshape(-1)


def _inner_cells(h: int, w: int, ring: torch.Tensor) -> torch.Tensor:
    """The cell one ring further in, on the way to the centre, of every cell, (h * w,) int64.

    -1 for the centre ring (nothing further in). ``ring``: (h * w,) from :func:`_ring_order`.
    """
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    s = max(h, w)
    di = (torch.arange(h, dtype=torch.float64)[:, None] - cy).expand(h, w)
    dj = (torch.arange(w, dtype=torch.float64)[None, :] - cx).expand(h, w)
    rho = torch.maximum(di.abs() * s / h, dj.abs() * s / w)
    # Scale the offset from the centre down by one ring (the same Chebyshev radius as rings),
    # rounding halves towards the centre so that the cell found is never further out.
    shrink = ((rho - 1.0) / rho.clamp_min(1e-9)).clamp_min(0.0)

    def towards_centre(offset: torch.Tensor, centre: float, size: int) -> torch.Tensor:
        x = centre + offset * shrink
        index = torch.floor(x + 0.5)
        tie = ((x - torch.floor(x)) - 0.5).abs() < 1e-9
        index = torch.where(tie & (offset > 0), torch.floor(x), index)
        return index.clamp(0, size - 1).to(torch.int64)

    inner = (towards_centre(di, cy, h) * w + towards_centre(dj, cx, w)).reshape(-1)
    return torch.where(ring[inner] < ring, inner, torch.full_like(inner, -1))


def _rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``table[index]`` for an index of any shape (index_select: far faster on the CPU)."""
    return table.index_select(0, index.reshape(-1)).reshape(*index.shape, *table.shape[1:])


_DIST_LEVELS = 1 << 30  # distance resolution of the one-key (pair, distance) sort


def _match_nearest_first(
    pair: torch.Tensor, dist: torch.Tensor, used: torch.Tensor, should_cancel: ShouldCancel = None
) -> torch.Tensor:
    """Give each cell its nearest free candidate, the nearest cell winning a contested point.

    pair: (P, k) candidates as view * N + point, sorted by ``dist`` (P, k), the half squared
    chord (0..2) to the cell's ray; used: (V * N,) bool, updated in place. Returns (P,) the
    chosen view * N + point, -1 where every candidate was taken.
    """
    chosen = torch.full((pair.shape[0],), -1, dtype=torch.int64)
    rows = torch.arange(pair.shape[0])
    while rows.numel():
        _check_cancel(should_cancel)
        free = ~_rows(used, pair)
        alive = free.any(-1)
        if not bool(alive.all()):
            rows, free, pair, dist = rows[alive], free[alive], pair[alive], dist[alive]
            if rows.numel() == 0:
                break
        first = torch.argmax(free.to(torch.int8), dim=-1, keepdim=True)  # first free candidate
        prop = pair.gather(1, first).squeeze(1)
        level = (dist.gather(1, first).squeeze(1) * (_DIST_LEVELS / 2.0)).to(torch.int64)
        # A point wanted by several cells of one view goes to the nearest of them: one
        # stable sort by (pair, distance), then the first of each run of equal pairs.
        order = torch.argsort(prop * _DIST_LEVELS + level.clamp(0, _DIST_LEVELS - 1), stable=True)
        sorted_pairs = prop[order]
        first_of_run = torch.ones_like(sorted_pairs, dtype=torch.bool)
        first_of_run[1:] = sorted_pairs[1:] != sorted_pairs[:-1]
        win = order[first_of_run]
        chosen[rows[win]] = prop[win]
        used[prop[win]] = True
        lost = torch.ones(rows.numel(), dtype=torch.bool)
        lost[win] = False
        rows, pair, dist = rows[lost], pair[lost], dist[lost]
    return chosen


def _assign_dynamic(
    tree: cKDTree,
    rays: np.ndarray,
    n_points: int,
    h: int,
    w: int,
    k: int = 8,
    should_cancel: ShouldCancel = None,
) -> torch.Tensor:
    """Distinct-point assignment, centre ring outward, all views at once.

    rays: (V, h * w, 3) float64. Returns (V, h * w) int64.

    Where a perspective grid is denser than the sphere (towards a view's rim) the points
    near a cell are already taken by inner rings, and every outer ring is pushed a little
    further out. So a cell looks for candidates where the point of the cell just inside it
    lies, moved by one cell: that point's displacement from its own ray, added to this
    cell's ray, predicts where the free points are. One greedy hop on the lattice's
    neighbour graph (each point's NEIGHBOURS nearest) finds the point nearest that
    prediction; it and its neighbours are the candidates, ranked by distance to the cell's
    own ray. A cell whose candidates are all taken asks the KD-tree for 4x more around the
    prediction, again until one is free. (Querying the tree at the cell's own ray instead
    returns mostly taken points near the rim: 662 s at 400,000 points, against ~10 s.)
    """
    n_views, n_cells, _ = rays.shape
    ring = _ring_order(h, w)
    inner = _inner_cells(h, w, ring)
    # Coordinates first, (3, N) and (3, V * M): gathering columns is ~2.5x faster on the
    # CPU than gathering 3-float rows, and these gathers are most of the build.
    points_t = torch.from_numpy(tree.data.T).to(torch.float32).contiguous()
    rays_t = torch.from_numpy(rays.reshape(-1, 3).T).to(torch.float32).contiguous()
    _, nbr_np = _query(tree, tree.data, NEIGHBOURS + 1, should_cancel)
    neighbours = torch.from_numpy(nbr_np[:, 1:]).to(torch.int64)  # (N, NEIGHBOURS), self dropped
    used = torch.zeros(n_views * n_points, dtype=torch.bool)
    out = torch.full((n_views * n_cells,), -1, dtype=torch.int64)

    def cols(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """(3, *index.shape): the columns ``index`` of a (3, n) table."""
        return table.index_select(1, index.reshape(-1)).reshape(3, *index.shape)

    def dots(vectors: torch.Tensor, with_: torch.Tensor) -> torch.Tensor:
        """(P, k) dot products of (3, P, k) vectors with (3, P) ones (3x faster than einsum)."""
        out = vectors[0] * with_[0, :, None]
        out = torch.addcmul(out, vectors[1], with_[1, :, None])
        return torch.addcmul(out, vectors[2], with_[2, :, None])

    for r in range(int(ring.max()) + 1):
        cells = torch.nonzero(ring == r).squeeze(1)
        view = torch.arange(n_views).repeat_interleave(cells.numel())
        slot = view * n_cells + cells.repeat(n_views)  # index into out and rays_t
        ray = cols(rays_t, slot)  # (3, P)
        inner_cells = inner.index_select(0, cells).repeat(n_views)
        if bool((inner_cells < 0).any()):  # the centre ring (no cell further in)
            target, kk = ray, k
            _, c = _query(tree, ray.T.to(torch.float64).numpy(), kk, should_cancel)
            cand = torch.from_numpy(c).to(torch.int64).reshape(-1, kk)
        else:
            inner_slot = view * n_cells + inner_cells
            near = _rows(out, inner_slot)
            target = ray + cols(points_t, near) - cols(rays_t, inner_slot)
            hop = torch.cat([near[:, None], _rows(neighbours, near)], dim=1)
            best = dots(cols(points_t, hop), target).argmax(1, keepdim=True)
            near = hop.gather(1, best).squeeze(1)
            cand = torch.cat([near[:, None], _rows(neighbours, near)], dim=1)
            kk = 2  # the first widening asks the tree for 8
        while True:
            # Half the squared chord, 1 - cos: in float32 its resolution (6e-8) is under
            # 1 % of a neighbour's distance up to 1,000,000 points (what ranks candidates).
            dist = 1.0 - dots(cols(points_t, cand), ray)
            dist, order = dist.sort(dim=1)
            pair = (view * n_points)[:, None] + cand.gather(1, order)
            chosen = _match_nearest_first(pair, dist, used, should_cancel)
            got = chosen >= 0
            out[slot[got]] = chosen[got] - view[got] * n_points
            if bool(got.all()):
                break
            if kk >= n_points:
                raise RuntimeError("more grid cells than sphere points in a view")
            kk = min(4 * kk, n_points)
            stuck = ~got
            view, slot, ray, target = view[stuck], slot[stuck], ray[:, stuck], target[:, stuck]
            aim = torch.nn.functional.normalize(target.T.to(torch.float64), dim=-1)
            _, c = _query(tree, aim.numpy(), kk, should_cancel)
            cand = torch.from_numpy(c).to(torch.int64).reshape(-1, kk)
    return out.reshape(n_views, n_cells)


def build_plan(config: PlanConfig, should_cancel: ShouldCancel = None) -> SamplingPlan:
    """Compute a sampling plan (vectorised over views; no disk access).

    ``should_cancel`` is polled between the rounds of the assignment and the chunks of
    the nearest-point queries (a fraction of a second apart, even for big plans): True
    raises :class:`~spherediff_core.errors.CancelledError`.
    """
    layout = config.layout()
    h, w = config.grid_size
    if h * w > config.n_points:
        raise ValueError(
            f"a {h}x{w} grid needs more cells than the sphere's {config.n_points} points"
        )
    points = geometry.fibonacci_sphere(config.n_points)
    frames = layout.frames()
    rays = geometry.view_rays(frames, config.fov_deg, h, w)  # (V, h, w, 3) float64
    flat_rays = rays.reshape(layout.n_views, h * w, 3)
    _check_cancel(should_cancel)
    tree = cKDTree(points.numpy())
    if config.method == "nearest":
        _, nn = _query(tree, flat_rays.reshape(-1, 3).numpy(), 1, should_cancel)
        indices = torch.from_numpy(nn).to(torch.int64).reshape(layout.n_views, h * w)
    else:
        indices = _assign_dynamic(
            tree, flat_rays.numpy(), config.n_points, h, w, should_cancel=should_cancel
        )
    _check_cancel(should_cancel)

    # Weight from where the assigned point really projects in its view.
    tx, ty = geometry.tan_half_fovs(config.fov_deg, h, w)
    cam = torch.einsum("vij,vmj->vmi", frames, _rows(points, indices))
    depth = cam[..., 2].clamp_min(1e-12)
    r = torch.hypot(cam[..., 0] / depth / tx, cam[..., 1] / depth / ty)
    weights = torch.exp(-r / config.temperature).to(torch.float32)
    return SamplingPlan(
        config=config,
        points=points,
        lon_rad=layout.lon_rad,
        lat_rad=layout.lat_rad,
        frames=frames,
        indices=indices,
        weights=weights,
        rays=rays.to(torch.float32),
    )


def default_cache_dir() -> Path:
    """Where plans are cached: ``plans`` in the engine's cache (cachedirs.cache_root)."""
    return cache_root() / "plans"


def _check_state(state: dict, config: PlanConfig) -> None:
    """Raise ValueError unless a loaded state is a complete plan for ``config``."""
    h, w = config.grid_size
    n_views = config.layout().n_views
    expected = {
        "points": (config.n_points, 3),
        "lon_rad": (n_views,),
        "lat_rad": (n_views,),
        "frames": (n_views, 3, 3),
        "indices": (n_views, h * w),
        "weights": (n_views, h * w),
        "rays": (n_views, h, w, 3),
    }
    for name, shape in expected.items():
        t = state.get(name)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"plan field {name!r} missing or of the wrong shape")
    idx = state["indices"]
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= config.n_points):
        raise ValueError("plan indices out of range")
    if not bool(torch.isfinite(state["weights"]).all()):
        raise ValueError("plan weights are not finite")


def load_or_build_plan(
    config: PlanConfig,
    cache_dir: Path | str | None = None,
    should_cancel: ShouldCancel = None,
) -> SamplingPlan:
    """Load the plan for ``config`` from the disk cache, or build and cache it.

    A cache file that cannot be read or does not match ``config`` is rebuilt, never
    trusted. Writes are atomic (temporary file, then rename), so concurrent processes
    and interrupted runs never leave a half-written plan behind. ``should_cancel``: see
    :func:`build_plan`.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"plan-{config.cache_key()}.pt"
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError("not a plan")
            _check_state(state, config)
            return SamplingPlan(config=config, **state)
        except Exception as exc:  # noqa: BLE001 - an unreadable cache is rebuilt, whatever broke
            # Corrupt, truncated or foreign file (pickle, zip and shape errors alike).
            logger.warning("ignoring unreadable plan cache %s (%s); rebuilding", path, exc)
    plan = build_plan(config, should_cancel)
    try:
        # protected: a worker's hard stop waits for the temporary file to be placed or
        # removed rather than leave it in the cache.
        with protected():
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=folder)
            try:
                with os.fdopen(fd, "wb") as fh:
                    torch.save(plan.to_state(), fh)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    except OSError as exc:
        logger.warning("could not cache plan at %s (%s); continuing without cache", path, exc)
    return plan


def regularity_report(plan: SamplingPlan) -> dict[str, float]:
    """Mean cell-ray-to-point angle in local cell spacings, over the centre half and whole view."""
    h, w = plan.grid_size
    err = plan.angular_error_rad() / plan.cell_spacing_rad()[None]
    x, y = geometry.cell_centres(h, w)
    centre = (x.abs() <= 0.5) & (y.abs() <= 0.5)
    return {
        "centre_half": float(err[:, centre].mean()),
        "whole": float(err.mean()),
        "max": float(err.max()),
        "mean_deg": math.degrees(float(plan.angular_error_rad().mean())),
    }
