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

from .fusion import SphereAccumulator, gather_views
from .known import KnownRegion
from .plan import SamplingPlan

__all__ = [
    "DenoiseProgress",
    "DenoiserInput",
    "GenerationCancelled",
    "init_noise_sigma",
    "prepare_sphere_latents",
    "sphere_denoise",
]


class GenerationCancelled(Exception):
    """Raised between view batches when the caller asked to stop."""


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


def prepare_sphere_latents(
    plan: SamplingPlan,
    channels: int,
    batch_size: int = 1,
    frames: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Unit-Gaussian sphere latents, (B, C, N) or (B, C, F, N), drawn on the CPU.

    Drawing on the CPU makes the same seed give the same panorama on every device.
    Multiply by :func:`init_noise_sigma` of the scheduler before denoising.
    """
    shape = (batch_size, channels) + ((frames,) if frames else ()) + (plan.n_points,)
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


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
    view_batch_size: int = 8,
    callback: Callable[[DenoiseProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    step_kwargs: dict[str, Any] | None = None,
    known: KnownRegion | None = None,
    noise: torch.Tensor | None = None,
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
        guidance_scale: CFG scale, pred = uncond + scale * (cond - uncond).
        view_batch_size: views per denoiser call (times B, times 2 under CFG).
        callback: called after every view batch with a :class:`DenoiseProgress`.
        should_cancel: polled before every view batch; True raises GenerationCancelled.
        step_kwargs: extra keyword arguments for ``scheduler.step`` (e.g. a generator).
        known: sphere points held to known content after each of its ``enforce_steps``
            steps (:class:`spherediff_core.known.KnownRegion`).
        noise: (B, C, [F,] N) unit noise that noises the known content to each timestep;
            default the initial ``latents`` over :func:`init_noise_sigma`.

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
    do_cfg = negative_conditioning is not None and guidance_scale != 1.0
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

    # 3. Batches of views
    order = torch.arange(plan.n_views)
    batches = [order[i : i + view_batch_size] for i in range(0, plan.n_views, view_batch_size)]
    timesteps = list(scheduler.timesteps)
    start = time.perf_counter()

    # 4. Denoising loop
    # Flow-matching schedulers have no input scaling.
    scale_input = getattr(scheduler, "scale_model_input", None)
    for step_index, t in enumerate(timesteps):
        scaled = latents if scale_input is None else scale_input(latents, t)
        acc = SphereAccumulator(plan, latents)
        for b, ids in enumerate(batches):
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled()
            grids = gather_views(scaled, plan, ids)  # (v, B, C, [F,] h, w)
            grids = grids.reshape(-1, *grids.shape[2:])  # (v*B, C, [F,] h, w)
            vidx = ids.repeat_interleave(batch)
            conds = [conditioning[i] for i in vidx.tolist()]
            uncond = torch.zeros(vidx.numel(), dtype=torch.bool)
            if do_cfg:
                grids = torch.cat([grids, grids])
                conds = [negative_conditioning] * vidx.numel() + conds
                uncond = torch.cat([~uncond, uncond])
                vidx = torch.cat([vidx, vidx])
            out = denoiser(
                DenoiserInput(
                    latents=grids,
                    timestep=torch.as_tensor(t),
                    conditioning=conds,
                    unconditional=uncond,
                    view_index=vidx,
                    view_dirs=view_dirs[vidx.to(device)],
                    rays=rays[vidx.to(device)],
                    step_index=step_index,
                )
            )
            if do_cfg:
                out_u, out_c = out.chunk(2)
                out = out_u + guidance_scale * (out_c - out_u)
            acc.add(out.reshape(ids.numel(), batch, *out.shape[1:]), ids)
            if callback is not None:
                callback(
                    DenoiseProgress(
                        step=step_index + 1,
                        total_steps=len(timesteps),
                        batch=b + 1,
                        total_batches=len(batches),
                        elapsed_s=time.perf_counter() - start,
                    )
                )
        # 5. Fuse model outputs on the sphere, then ONE scheduler step on all points
        model_output = acc.result(torch.zeros_like(latents))
        stepped = scheduler.step(model_output, t, latents, return_dict=False, **step_kwargs)[0]
        # A point no view covers keeps its value.
        latents = torch.where(covered, stepped.to(latents.dtype), latents)
        # 6. Known content held (the latent blend of diffusers' inpainting pipelines)
        if known is not None and step_index < known.enforce_steps:
            latents = known.blend(latents, scheduler, step_index + 1, noise)
    return latents
