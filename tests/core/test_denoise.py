"""The model-agnostic denoising loop: oracle reconstruction, fusion order, CFG, cancel."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from spherediff_core import geometry as g
from spherediff_core.denoise import (
    DenoiserInput,
    GenerationCancelled,
    Guidance,
    init_noise_sigma,
    prepare_sphere_latents,
    sphere_denoise,
)
from spherediff_core.erp import views_to_erp
from spherediff_core.fusion import fuse_views, gather_views

from tests.core.panoramas import psnr, smooth_colour


def oracle(inp: DenoiserInput) -> torch.Tensor:
    """Predict x0 = the ground-truth perspective view, sampled at the cells' ideal rays."""
    return smooth_colour(inp.rays).permute(0, 3, 1, 2).to(inp.latents.dtype)


def test_oracle_reconstructs_the_panorama(plan_for):
    plan = plan_for(n_points=10_000)
    scheduler = DDIMScheduler(prediction_type="sample", clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(4)
    gen = torch.Generator().manual_seed(0)
    latents = prepare_sphere_latents(plan, 3, generator=gen) * scheduler.init_noise_sigma
    out = sphere_denoise(oracle, scheduler, plan, latents, [None] * plan.n_views)
    # Identity codec: latent = RGB, the decoded view is the grid itself.
    views = gather_views(out, plan)[:, 0]
    h, w = 128, 256
    erp = views_to_erp(views, plan.frames, plan.fov_deg, h, w)
    truth = smooth_colour(g.erp_pixel_directions(h, w)).permute(2, 0, 1).float()
    assert psnr(erp, truth) >= 32
    lat_deg = (0.5 - (torch.arange(h) + 0.5) / h) * 180
    caps = lat_deg.abs() > 75
    assert psnr(erp[:, caps], truth[:, caps]) >= 32
    seam = (erp[:, :, 0] - erp[:, :, -1]).abs().mean()
    truth_seam = (truth[:, :, 0] - truth[:, :, -1]).abs().mean()
    assert float(seam) <= 1.5 * float(truth_seam)


def _disagreeing_outputs(plan, latents, seed=5):
    """Per-view model outputs (V, B, C, h, w) that differ from view to view."""
    h, w = plan.grid_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(plan.n_views, *latents.shape[:-1], h, w, generator=gen)


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda: DDIMScheduler(clip_sample=False, set_alpha_to_one=False),
        lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
    ],
    ids=["ddim", "flow_euler"],
)
def test_fuse_then_step_equals_step_then_fuse(plan_for, make_scheduler):
    plan = plan_for(n_points=2_600)
    scheduler = make_scheduler()
    scheduler.set_timesteps(10)
    latents = prepare_sphere_latents(plan, 4, generator=torch.Generator().manual_seed(4))
    outputs = _disagreeing_outputs(plan, latents)
    for t in scheduler.timesteps[:3]:
        fused_out = fuse_views(outputs, plan, torch.zeros_like(latents))
        a = copy.deepcopy(scheduler).step(fused_out, t, latents, return_dict=False)[0]
        grids = gather_views(latents, plan)
        stepped = torch.stack(
            [
                copy.deepcopy(scheduler).step(outputs[v], t, grids[v], return_dict=False)[0]
                for v in range(plan.n_views)
            ]
        )
        b = fuse_views(stepped, plan, latents)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        scheduler.step(fused_out, t, latents)  # advance the real scheduler's counters
        latents = a


@pytest.mark.parametrize(
    "make_scheduler",
    [
        lambda: DPMSolverMultistepScheduler(solver_order=2),
        lambda: UniPCMultistepScheduler(),
        lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
    ],
    ids=["dpmpp2m", "unipc", "flow_euler"],
)
def test_multistep_solver_matches_plain_loop_when_views_agree(plan_for, make_scheduler):
    """When every view predicts the same per-point output, the sphere loop IS the solver."""
    plan = plan_for(n_points=2_600)
    target = torch.randn(1, 4, plan.n_points, generator=torch.Generator().manual_seed(6))

    def per_point_model(x, t):
        return 0.3 * x + target * (1 + float(t) / 1000)

    def denoiser(inp: DenoiserInput) -> torch.Tensor:
        h, w = plan.grid_size
        pts = plan.indices[inp.view_index].reshape(-1, h, w)  # (n, h, w) point of each cell
        x = inp.latents
        tgt = target[0][:, pts].permute(1, 0, 2, 3)  # (n, C, h, w)
        return 0.3 * x + tgt * (1 + float(inp.timestep) / 1000)

    s1, s2 = make_scheduler(), make_scheduler()
    s1.set_timesteps(8)
    s2.set_timesteps(8)
    x0 = prepare_sphere_latents(plan, 4, generator=torch.Generator().manual_seed(7))
    ours = sphere_denoise(denoiser, s1, plan, x0 * init_noise_sigma(s1), [None] * plan.n_views)
    x = x0 * init_noise_sigma(s2)
    scale = getattr(s2, "scale_model_input", lambda x, t: x)
    for t in s2.timesteps:
        x = s2.step(per_point_model(scale(x, t), t), t, x, return_dict=False)[0]
    torch.testing.assert_close(ours, x, rtol=1e-4, atol=1e-4)


def test_denoiser_gets_geometry_and_guidance_is_applied(plan_for):
    plan = plan_for(n_points=2_600)
    scheduler = DDIMScheduler(prediction_type="sample", clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(1)
    seen: list[DenoiserInput] = []

    def denoiser(inp: DenoiserInput) -> torch.Tensor:
        seen.append(inp)
        value = torch.tensor([0.0 if c == "neg" else 1.0 for c in inp.conditioning])
        return value[:, None, None, None].expand_as(inp.latents).clone()

    conds = [f"view{v}" for v in range(plan.n_views)]
    latents = prepare_sphere_latents(plan, 2, batch_size=2, generator=torch.Generator())
    out = sphere_denoise(
        denoiser,
        scheduler,
        plan,
        latents,
        conds,
        negative_conditioning="neg",
        guidance_scale=3.0,
        view_batch_size=16,
    )
    # x0 = uncond + 3 * (cond - uncond) = 3 everywhere after the single step to t = 0.
    torch.testing.assert_close(out, torch.full_like(out, 3.0))
    first = seen[0]
    n = 16 * 2  # views x panoramas
    assert first.latents.shape[0] == 2 * n and first.unconditional[:n].all()
    assert not first.unconditional[n:].any()
    assert first.conditioning[n:] == [f"view{v}" for v in range(16) for _ in range(2)]
    torch.testing.assert_close(first.view_dirs, plan.view_dirs[first.view_index].float())
    torch.testing.assert_close(first.rays, plan.rays[first.view_index])
    assert sum(inp.latents.shape[0] for inp in seen) == 2 * 2 * plan.n_views


class _EveryOtherStep(Guidance):
    """A family-style rule: no negative pass on odd steps, and another formula."""

    def scale_at(self, step_index: int, timestep: float) -> float | None:
        return self.scale if step_index % 2 == 0 else None

    def combine(self, uncond, cond, scale):
        return cond + scale * (cond - uncond)  # pos + g (pos - neg), as Z-Image


def test_a_guidance_rule_sets_the_scale_step_by_step_and_the_formula(plan_for):
    plan = plan_for(n_points=2_600)
    scheduler = DDIMScheduler(prediction_type="sample", clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(3)
    negatives_per_step: list[int] = []
    outputs: list[torch.Tensor] = []

    def denoiser(inp: DenoiserInput) -> torch.Tensor:
        if inp.step_index == len(negatives_per_step):
            negatives_per_step.append(0)
        negatives_per_step[inp.step_index] += int(inp.unconditional.sum())
        value = torch.tensor([0.0 if c == "neg" else 1.0 for c in inp.conditioning])
        return value[:, None, None, None].expand_as(inp.latents).clone()

    def record(scheduler_step):
        def step(model_output, t, sample, **kwargs):
            outputs.append(model_output.clone())
            return scheduler_step(model_output, t, sample, **kwargs)

        return step

    scheduler.step = record(scheduler.step)
    latents = prepare_sphere_latents(plan, 2, generator=torch.Generator())
    sphere_denoise(
        denoiser,
        scheduler,
        plan,
        latents,
        ["pos"] * plan.n_views,
        negative_conditioning="neg",
        guidance=_EveryOtherStep(2.0),
        view_batch_size=16,
    )
    # Steps 0 and 2 ran a negative pass for every view, step 1 none.
    assert negatives_per_step == [plan.n_views, 0, plan.n_views]
    covered = plan.covered.expand_as(outputs[0])
    # Guided steps: 1 + 2 * (1 - 0) = 3; the unguided one: the positive prediction, 1.
    for step, want in ((0, 3.0), (1, 1.0), (2, 3.0)):
        got = outputs[step][covered]
        torch.testing.assert_close(got, torch.full_like(got, want))
    # Without a negative prompt the rule is ignored: no negative pass at all.
    negatives_per_step.clear()
    scheduler.set_timesteps(3)
    sphere_denoise(
        denoiser, scheduler, plan, latents, ["pos"] * plan.n_views, guidance=Guidance(5.0)
    )
    assert negatives_per_step == [0, 0, 0]


def test_progress_and_cancel_between_batches(plan_for):
    plan = plan_for(n_points=2_600)
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(3)
    events = []

    def zero(inp):
        return torch.zeros_like(inp.latents)

    latents = prepare_sphere_latents(plan, 1, generator=torch.Generator().manual_seed(0))
    sphere_denoise(
        zero, scheduler, plan, latents, [None] * 89, view_batch_size=30, callback=events.append
    )
    assert [(e.step, e.batch) for e in events] == [(s, b) for s in (1, 2, 3) for b in (1, 2, 3)]
    assert events[-1].fraction == 1.0 and events[-1].total_batches == 3

    calls = []
    scheduler.set_timesteps(3)
    with pytest.raises(GenerationCancelled):
        sphere_denoise(
            zero,
            scheduler,
            plan,
            latents,
            [None] * 89,
            view_batch_size=30,
            callback=calls.append,
            should_cancel=lambda: len(calls) >= 4,
        )
    assert len(calls) == 4


def test_video_latents_denoise_per_frame(plan_for):
    plan = plan_for(n_points=2_600)
    scheduler = DDIMScheduler(prediction_type="sample", clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(2)

    def oracle_video(inp: DenoiserInput) -> torch.Tensor:
        img = smooth_colour(inp.rays).permute(0, 3, 1, 2).float()  # (n, 3, h, w)
        frames = inp.latents.shape[2]
        scale = torch.linspace(0.5, 1.0, frames)[None, None, :, None, None]
        return img[:, :, None] * scale

    latents = prepare_sphere_latents(plan, 3, frames=4, generator=torch.Generator().manual_seed(1))
    out = sphere_denoise(oracle_video, scheduler, plan, latents, [None] * plan.n_views)
    assert out.shape == (1, 3, 4, plan.n_points)
    torch.testing.assert_close(out[:, :, 0] * 2, out[:, :, 3], rtol=1e-4, atol=1e-5)


def test_bad_loop_inputs_are_refused(plan_for):
    plan = plan_for(n_points=2_600)
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(2)
    latents = torch.zeros(1, 4, plan.n_points)
    with pytest.raises(ValueError, match="one conditioning per view"):
        sphere_denoise(oracle, scheduler, plan, latents, [None] * 3)
    with pytest.raises(ValueError, match="view_batch_size"):
        sphere_denoise(oracle, scheduler, plan, latents, [None] * 89, view_batch_size=0)
    with pytest.raises(ValueError, match="points"):
        sphere_denoise(oracle, scheduler, plan, latents[..., :10], [None] * 89)
