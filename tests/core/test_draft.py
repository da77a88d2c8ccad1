"""Drafts and finals: a draft's noise is its final's noise pooled onto fewer points."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from spherediff_core import geometry
from spherediff_core.denoise import pool_noise
from spherediff_core.options import GenerationOptions, OptionsError


def test_pooled_noise_is_unit_gaussian_and_made_of_the_fine_noise():
    fine_points, points = geometry.fibonacci_sphere(40_000), geometry.fibonacci_sphere(2_500)
    g = torch.Generator().manual_seed(0)
    fine = torch.randn(1, 4, 40_000, generator=g)
    pooled = pool_noise(fine, fine_points, points, g)
    assert pooled.shape == (1, 4, 2_500)
    assert abs(float(pooled.mean())) < 0.05 and abs(float(pooled.std()) - 1.0) < 0.05
    # Each coarse value is the scaled sum of the fine values nearest to it.
    owner = geometry.nearest_points(fine_points, points)
    members = (owner == 123).nonzero().flatten()
    expected = fine[..., members].sum(-1) / math.sqrt(len(members))
    assert torch.allclose(pooled[..., 123], expected, atol=1e-5)
    # The same lattice: the noise itself.
    assert torch.equal(pool_noise(fine, fine_points, fine_points, g), fine)


def test_video_noise_pools_every_frame_alike():
    fine_points, points = geometry.fibonacci_sphere(3_000), geometry.fibonacci_sphere(500)
    fine = torch.randn(1, 2, 3, 3_000, generator=torch.Generator().manual_seed(1))
    pooled = pool_noise(fine, fine_points, points)
    assert pooled.shape == (1, 2, 3, 500)
    assert torch.allclose(pooled[:, :, 1], pool_noise(fine[:, :, 1], fine_points, points))


def test_final_width_is_checked():
    with pytest.raises(OptionsError, match="final_width: 1024 is smaller"):
        GenerationOptions(prompt="x", width=2048, final_width=1024).validate()
    with pytest.raises(OptionsError, match="final_width: 2049 is odd"):
        GenerationOptions(prompt="x", width=1024, final_width=2049).validate()
    GenerationOptions(prompt="x", width=1024, final_width=4096).validate()


def _low(image: torch.Tensor, width: int = 32) -> torch.Tensor:
    """(3, H, W) -> the (3, width/2, width) area mean, centred."""
    low = F.interpolate(image[None], size=(width // 2, width), mode="area")[0].flatten()
    return low - low.mean()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = _low(a), _low(b)
    return float(a @ b / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def sd15_pipe(tiny_sd15, tmp_path_factory):
    from spherediff_core.pipeline import SphereDiffPipeline
    from spherediff_core.runner import prepare_environment

    prepare_environment(offline=True)
    plans = tmp_path_factory.mktemp("plans")
    return SphereDiffPipeline.from_pretrained(str(tiny_sd15), offline=True, plan_cache_dir=plans)


def test_a_draft_starts_from_its_finals_noise(sd15_pipe, tiny_sd15):
    """The draft's initial noise, read back at the final's points, correlates with the
    final's noise as pooling k values predicts (1/sqrt(k) per value); without
    final_width the two are independent draws."""
    from spherediff_core.pipeline import plan_config_for, resolve_request

    pipe = sd15_pipe
    adapter = pipe.adapter

    def noise_and_points(**kw):
        options = GenerationOptions(prompt="x", model=str(tiny_sd15), seed=4, steps=2, **kw)
        config = plan_config_for(options, adapter.vae_scale_factor, adapter.grid_multiple)
        plan = pipe._plan(config, None)
        request = resolve_request(options, adapter)
        generator = torch.Generator("cpu").manual_seed(options.seed)
        return pipe._noise(plan, request, generator, pipe._final_n_points(options)), plan.points

    final, final_points = noise_and_points(width=512)
    draft, draft_points = noise_and_points(width=128, final_width=512)
    plain, _ = noise_and_points(width=128)
    owner = geometry.nearest_points(final_points, draft_points)
    k = final_points.shape[0] / draft_points.shape[0]

    def corr(coarse):
        up = coarse[..., owner].flatten()
        return float(torch.corrcoef(torch.stack([up, final.flatten()]))[0, 1])

    assert corr(draft) == pytest.approx(1 / math.sqrt(k), rel=0.15)
    assert abs(corr(plain)) < 0.05


def test_a_draft_looks_more_like_its_final_than_an_uncoupled_draft(sd15_pipe, tiny_sd15):
    """End to end with the tiny model (whose random weights make any two panoramas look
    alike only through their noise): over three seeds the coupled draft's large-scale
    layout is clearly closer to the final's than a same-seed draft without final_width.
    Measured: mean correlation of the 32 x 16 px means 0.30 (coupled), 0.07 (uncoupled),
    0.13 (another seed)."""

    def make(width, seed, final_width=None):
        options = GenerationOptions(
            prompt="a forest",
            model=str(tiny_sd15),
            width=width,
            steps=4,
            seed=seed,
            final_width=final_width,
        )
        return sd15_pipe(options).image

    coupled, uncoupled = [], []
    for seed in range(3):
        final = make(256, seed)
        coupled.append(_corr(make(128, seed, final_width=256), final))
        uncoupled.append(_corr(make(128, seed), final))
    assert sum(coupled) / 3 > sum(uncoupled) / 3 + 0.1, (coupled, uncoupled)
