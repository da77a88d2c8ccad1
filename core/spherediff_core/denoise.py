"""The model-agnostic SphereDiff denoising loop (method.md section 5).

At every timestep the sphere latents are read into the views' grids, the views go through
the denoiser in batches, the model outputs are fused on the sphere with the plan's weights,
and ONE scheduler step is taken on all N points. Averaging model outputs and stepping once
equals stepping every view and averaging for first-order solvers, keeps multistep solvers
(DPM-Solver++, UniPC) correct, and does not average away stochastic samplers' noise.

The denoiser is any callable taking a :class:`DenoiserInput` and returning the model
output for its grids in the scheduler's prediction type (epsilon, v, sample or flow
velocity). See ``docs/engine.md`` for an example.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import geometry
from .fusion import SphereAccumulator, gather_views
from .known import KnownRegion
from .plan import SamplingPlan

__all__ = [
    "DenoiseProgress",
    "DenoiserInput",
    "GenerationCancelled",
    "Guidance",
    "StepState",
    "init_noise_sigma",
    "pool_noise",
    "prepare_sphere_latents",
    "sphere_denoise",
]


class GenerationCancelled(Exception):
    """Raised between view batches when the caller asked to stop."""


@dataclass(frozen=True)
class Guidance:
    """How the loop combines a view batch's negative and positive predictions.

    The default is classifier-free guidance, ``uncond + scale * (cond - uncond)`` with one
    scale on every step. A family whose pipeline guides otherwise (a per-token norm
    rescale, a scale per expert, no negative pass on late steps) subclasses this in its
    adapter module and returns it from ``ModelAdapter.guidance_rule``; the loop knows no
    family.

    Attributes:
        scale: the guidance scale as the family's pipeline names it (recorded in the
            sidecar; ``scale_at`` may derive the per-step scale from it).
    """

    scale: float

    def scale_at(self, step_index: int, timestep: float) -> float | None:
        """The scale on step ``step_index`` (timestep ``timestep``, the scheduler's own
        units); None: no negative pass on this step, the positive prediction as it is."""
        return self.scale

    def combine(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """The guided prediction of a batch, from (n, C, [F,] h, w) negative and positive
        model outputs (float32, the same views in the same order)."""
        return uncond + scale * (cond - uncond)


@dataclass
class DenoiserInput:
    """One batch of view grids for the denoiser (n items = views x panoramas [x 2 for CFG]).

    Attributes:
        latents: (n, C, h, w) or (n, C, F, h, w) grids, already through the scheduler's
            ``scale_model_input``, in the sphere latents' dtype.
        timestep: 0-d tensor, the scheduler's current timestep.
        conditioning: n per-item conditioning objects, exactly as given to
            :func:`sphere_denoise` (the negative one for unconditional items).
        unconditional: (n,) bool, True for the classifier-free guidance's negative items.
        view_index: (n,) int64, the plan's view of each item.
        view_dirs: (n, 3) float32 forward unit vectors of the views (world frame, Z up).
        rays: (n, h, w, 3) float32 unit ideal pinhole ray of every grid cell.
        step_index: index of the timestep in the schedule (0 = first, noisiest).
    """

    latents: torch.Tensor
    timestep: torch.Tensor
    conditioning: list[Any]
    unconditional: torch.Tensor
    view_index: torch.Tensor
    view_dirs: torch.Tensor
    rays: torch.Tensor
    step_index: int


Denoiser = Callable[[DenoiserInput], torch.Tensor]


@dataclass
class StepState:
    """One finished timestep, for a per-step observer (``sphere_denoise(on_step=...)``,
    e.g. the live preview). Sphere tensors are (B, C, N) or (B, C, F, N); nothing here
    may be changed in place.

    Attributes:
        step_index: the timestep's index (0 = first, noisiest); ``step_index + 1`` steps
            are done.
        total_steps: ``len(scheduler.timesteps)``.
        timestep: 0-d tensor, the scheduler's timestep of this step.
        scheduler_index: this step's index into the scheduler's own tables (``sigmas``):
            the scheduler's ``step_index`` before it stepped (the loop's index when the
            scheduler keeps none).
        sample: the sphere latents the step started from.
        model_input: ``sample`` after the scheduler's ``scale_model_input`` (what the
            views' grids were read from).
        model_output: the fused model output on the sphere (the scheduler's prediction
            type), float32.
        latents: the sphere latents after the step (and the known region's blend).
    """

    step_index: int
    total_steps: int
    timestep: torch.Tensor
    scheduler_index: int
    sample: torch.Tensor
    model_input: torch.Tensor
    model_output: torch.Tensor
    latents: torch.Tensor


@dataclass
class DenoiseProgress:
    """Where the loop is: step (1-based) of total_steps, batch (1-based) of total_batches."""

    step: int
    total_steps: int
    batch: int
    total_batches: int
    elapsed_s: float

    @property
    def fraction(self) -> float:
        done = (self.step - 1) * self.total_batches + self.batch
        return done / max(1, self.total_steps * self.total_batches)

    @property
    def eta_s(self) -> float | None:
        f = self.fraction
        return None if f <= 0 else self.elapsed_s * (1.0 - f) / f


@dataclass
class _BatchTables:
    """One view batch's indices, made once before the loop (on the GPU: no host-to-device
    copy, and so no wait, per batch and step)."""

    ids: torch.Tensor  # (v,) the plan's views
    vidx: torch.Tensor  # (v * B,) the view of every item, on the CPU
    vidx_list: list[int]
    vidx_dev: torch.Tensor  # the same on the device
    index: torch.Tensor  # (v * h * w,) sphere point of every cell, on the device
    weights: torch.Tensor  # (v * h * w,) fusion weights, on the device


def _batch_tables(
    plan: SamplingPlan, ids: torch.Tensor, batch: int, device: torch.device
) -> _BatchTables:
    vidx = ids.repeat_interleave(batch)
    return _BatchTables(
        ids=ids,
        vidx=vidx,
        vidx_list=vidx.tolist(),
        vidx_dev=vidx.to(device),
        index=plan.indices[ids].reshape(-1).to(device),
        weights=plan.weights[ids].reshape(-1).to(device),
    )


def prepare_sphere_latents(
    plan: SamplingPlan,
    channels: int,
    batch_size: int = 1,
    frames: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    n_points: int | None = None,
) -> torch.Tensor:
    """Unit-Gaussian sphere latents, (B, C, N) or (B, C, F, N), drawn on the CPU.

    Drawing on the CPU makes the same seed give the same panorama on every device.
    Multiply by :func:`init_noise_sigma` of the scheduler before denoising.
    ``n_points``: draw for a sphere of that many points instead of the plan's (a draft
    draws its final's noise, then pools it: :func:`pool_noise`).
    """
    n = plan.n_points if n_points is None else n_points
    shape = (batch_size, channels) + ((frames,) if frames else ()) + (n,)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


def pool_noise(
    fine_noise: torch.Tensor,
    fine_points: torch.Tensor,
    points: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Unit noise on ``points`` made of the unit noise of a finer lattice (a draft's noise).

    Each fine point adds its noise to its nearest coarse point; a coarse point's sum of k
    values is divided by sqrt(k), so it is unit Gaussian again and carries the fine
    noise's low frequencies (the "integral noise" of Chang et al., ICLR 2024, on the
    sphere). A coarse point no fine point chose (possible only when the lattices are
    nearly as dense) gets fresh noise from ``generator``.

    Args:
        fine_noise: (B, C, [F,] M) unit Gaussian noise on ``fine_points`` (M, 3).
        points: (N, 3) unit vectors, N <= M.
    Returns (B, C, [F,] N) float32.
    """
    owner = geometry.nearest_points(fine_points, points)  # (M,)
    n = points.shape[0]
    flat = fine_noise.to(torch.float32).reshape(-1, fine_noise.shape[-1])
    sums = torch.zeros(flat.shape[0], n, dtype=torch.float32)
    sums.index_add_(1, owner, flat)
    counts = torch.bincount(owner, minlength=n).to(torch.float32)
    pooled = sums / counts.clamp(min=1.0).sqrt()
    empty = counts == 0
    if bool(empty.any()):
        fresh = torch.randn(flat.shape[0], int(empty.sum()), generator=generator)
        pooled[:, empty] = fresh
    return pooled.reshape(*fine_noise.shape[:-1], n)


def init_noise_sigma(scheduler: Any) -> float:
    """The scheduler's initial noise scale (flow-matching schedulers have none: 1)."""
    return float(getattr(scheduler, "init_noise_sigma", 1.0))


def sphere_denoise(
    denoiser: Denoiser,
    scheduler: Any,
    plan: SamplingPlan,
    latents: torch.Tensor,
    conditioning: Sequence[Any],
    *,
    negative_conditioning: Any = None,
    guidance_scale: float = 1.0,
    guidance: Guidance | None = None,
    view_batch_size: int = 8,
    callback: Callable[[DenoiseProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    step_kwargs: dict[str, Any] | None = None,
    known: KnownRegion | None = None,
    noise: torch.Tensor | None = None,
    dist: Any = None,
    on_step: Callable[[StepState], None] | None = None,
) -> torch.Tensor:
    """Denoise sphere latents over the scheduler's timesteps.

    Args:
        denoiser: callable(DenoiserInput) -> (n, C, [F,] h, w) model output.
        scheduler: a diffusers scheduler whose ``set_timesteps`` was already called.
        plan: the sampling plan.
        latents: (B, C, N) or (B, C, F, N) initial sphere latents (noise times
            :func:`init_noise_sigma`).
        conditioning: one conditioning object per view of the plan (len V); objects are
            passed through to the denoiser untouched.
        negative_conditioning: the unconditional conditioning; classifier-free guidance runs
            when it is given and ``guidance_scale != 1``.
        guidance_scale: CFG scale, pred = uncond + scale * (cond - uncond); used when
            ``guidance`` is None.
        guidance: how negative and positive predictions combine, step by step (a family's
            :class:`Guidance`); it replaces ``guidance_scale``.
        view_batch_size: views per denoiser call (times B, times 2 under CFG).
        callback: called after every view batch with a :class:`DenoiseProgress`.
        should_cancel: polled before every view batch; True raises GenerationCancelled.
        step_kwargs: extra keyword arguments for ``scheduler.step`` (e.g. a generator).
        known: sphere points held to known content after each of its ``enforce_steps``
            steps (:class:`spherediff_core.known.KnownRegion`).
        noise: (B, C, [F,] N) unit noise that noises the known content to each timestep;
            default the initial ``latents`` over :func:`init_noise_sigma`.
        dist: a :class:`spherediff_core.distributed.DistContext` to share the views with
            the other processes of a torchrun job (None: this process denoises them all).
            This rank denoises its shard; the fused sums are added over the ranks, the
            scheduler steps on every rank and rank 0's latents are kept by all. The
            callback then counts this rank's rounds of batches.
        on_step: called after every timestep (after the scheduler step, the known
            region's blend and, in a distributed run, the broadcast) with a
            :class:`StepState`; the live preview (:mod:`spherediff_core.preview`) reads
            its predicted clean latents from it.

    Returns the denoised sphere latents, shaped like ``latents``.
    """
    # 1. Check inputs
    if len(conditioning) != plan.n_views:
        raise ValueError(
            f"need one conditioning per view ({plan.n_views}), got {len(conditioning)}"
        )
    if view_batch_size < 1:
        raise ValueError(f"view_batch_size must be at least 1, got {view_batch_size}")
    if latents.shape[-1] != plan.n_points:
        raise ValueError(f"latents have {latents.shape[-1]} points, the plan {plan.n_points}")
    if guidance is None and guidance_scale != 1.0:
        guidance = Guidance(guidance_scale)
    if negative_conditioning is None:
        guidance = None
    if known is not None and noise is None:
        noise = latents / init_noise_sigma(scheduler)
    step_kwargs = dict(step_kwargs or {})
    batch = latents.shape[0]
    device = latents.device

    # 2. Per-view geometry the denoiser may use, on the latents' device
    view_dirs = plan.view_dirs.to(device=device, dtype=torch.float32)
    rays = plan.rays.to(device=device)
    covered = plan.covered.to(device)
    if known is not None:
        known = known.to(device)

    # 3. Batches of views (this rank's share of them); every rank runs as many rounds
    #    as the busiest, so the cancel check before each round is one collective
    order = torch.arange(plan.n_views) if dist is None else dist.shard(plan.n_views)
    batches = [
        _batch_tables(plan, order[i : i + view_batch_size], batch, device)
        for i in range(0, len(order), view_batch_size)
    ]
    n_rounds = len(batches) if dist is None else dist.rounds(plan.n_views, view_batch_size)
    timesteps = list(scheduler.timesteps)
    start = time.perf_counter()

    # 4. Denoising loop
    # Flow-matching schedulers have no input scaling.
    scale_input = getattr(scheduler, "scale_model_input", None)
    for step_index, t in enumerate(timesteps):
        scaled = latents if scale_input is None else scale_input(latents, t)
        cfg = None if guidance is None else guidance.scale_at(step_index, float(t))
        do_cfg = cfg is not None
        acc = SphereAccumulator(plan, latents)
        for b in range(n_rounds):
            stop = should_cancel is not None and should_cancel()
            if dist is not None:
                stop = dist.any(stop)
            if stop:
                raise GenerationCancelled()
            if b >= len(batches):  # a rank with fewer views waits for the others
                continue
            tables = batches[b]
            ids = tables.ids
            grids = gather_views(scaled, plan, ids, tables.index)  # (v, B, C, [F,] h, w)
            grids = grids.reshape(-1, *grids.shape[2:])  # (v*B, C, [F,] h, w)
            vidx, vidx_dev = tables.vidx, tables.vidx_dev
            conds = [conditioning[i] for i in tables.vidx_list]
            uncond = torch.zeros(vidx.numel(), dtype=torch.bool)
            if do_cfg:
                grids = torch.cat([grids, grids])
                conds = [negative_conditioning] * vidx.numel() + conds
                uncond = torch.cat([~uncond, uncond])
                vidx, vidx_dev = torch.cat([vidx, vidx]), torch.cat([vidx_dev, vidx_dev])
            out = denoiser(
                DenoiserInput(
                    latents=grids,
                    timestep=torch.as_tensor(t),
                    conditioning=conds,
                    unconditional=uncond,
                    view_index=vidx,
                    view_dirs=view_dirs[vidx_dev],
                    rays=rays[vidx_dev],
                    step_index=step_index,
                )
            )
            if do_cfg:
                out_u, out_c = out.chunk(2)
                out = guidance.combine(out_u, out_c, cfg)
            out = out.reshape(ids.numel(), batch, *out.shape[1:])
            acc.add(out, ids, tables.index, tables.weights)
            if callback is not None:
                callback(
                    DenoiseProgress(
                        step=step_index + 1,
                        total_steps=len(timesteps),
                        batch=b + 1,
                        total_batches=n_rounds,
                        elapsed_s=time.perf_counter() - start,
                    )
                )
        # 5. Fuse model outputs on the sphere, then ONE scheduler step on all points
        if dist is not None:
            dist.all_sum_(acc.numerator, acc.weight)
        model_output = acc.result(torch.zeros_like(latents))
        sample = latents
        stepped = scheduler.step(model_output, t, latents, return_dict=False, **step_kwargs)[0]
        # A point no view covers keeps its value.
        latents = torch.where(covered, stepped.to(latents.dtype), latents)
        # 6. Known content held (the latent blend of diffusers' inpainting pipelines)
        if known is not None and step_index < known.enforce_steps:
            latents = known.blend(latents, scheduler, step_index + 1, noise)
        if dist is not None:  # bit-identical ranks, even on mixed hardware
            latents = latents.contiguous()
            dist.broadcast_(latents)
        # 7. An observer of the finished step (the live preview)
        if on_step is not None:
            # Schedulers with tables count their own steps (set on the first step); the
            # step just taken is the one before the count.
            counted = getattr(scheduler, "step_index", None)
            on_step(
                StepState(
                    step_index=step_index,
                    total_steps=len(timesteps),
                    timestep=torch.as_tensor(t),
                    scheduler_index=counted - 1 if isinstance(counted, int) else step_index,
                    sample=sample,
                    model_input=scaled,
                    model_output=model_output,
                    latents=latents,
                )
            )
    return latents
