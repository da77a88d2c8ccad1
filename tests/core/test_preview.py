"""The live preview: x0 from the scheduler's own tables, the fitted latent -> RGB map, the
sphere -> ERP render, the files, and the runner's ``on_preview`` events."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image
from spherediff_core import geometry as g
from spherediff_core import preview as pv
from spherediff_core.denoise import DenoiserInput, StepState, sphere_denoise
from spherediff_core.fusion import gather_views
from spherediff_core.options import GenerationOptions, OptionsError

from tests.core.panoramas import psnr, smooth_colour
from tests.support.engine_process import run_cli

# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("preview_every", -1, "-1 is out of range; use 0 to 1000"),
        ("preview_every", 1001, "1001 is out of range"),
        ("preview_every", 2.5, "2.5 must be a whole number"),
        ("preview_every", True, "True must be a whole number"),
        ("preview_width", 32, "32 is out of range; use 64 to 2048"),
        ("preview_width", 4096, "4096 is out of range"),
        ("preview_width", 513, "513 is odd"),
    ],
)
def test_preview_options_are_checked(tmp_path, field, value, needle):
    options = GenerationOptions(prompt="x", output=str(tmp_path / "p.png"), **{field: value})
    with pytest.raises(OptionsError) as info:
        options.validate()
    assert info.value.field == field and needle in str(info.value), str(info.value)


def test_preview_option_defaults_and_limits(tmp_path):
    out = str(tmp_path / "p.png")
    options = GenerationOptions(prompt="x", output=out).validate()
    assert (options.preview_every, options.preview_width) == (0, 512)
    for every, width in ((1, 64), (1000, 2048), (4, 500)):
        GenerationOptions(prompt="x", output=out, preview_every=every, preview_width=width)
    doc = GenerationOptions(prompt="x", output=out, preview_every=3).to_dict()
    assert GenerationOptions.from_dict(doc).preview_every == 3


# --------------------------------------------------------------------------- x0


def _recording(cls):
    """The scheduler class, keeping its own prediction of x0 at every step: the step's
    ``pred_original_sample``, or what ``convert_model_output`` made of the output (the
    multistep solvers' data prediction)."""

    class Recording(cls):
        def step(self, model_output, timestep, sample, *args, return_dict=True, **kw):
            out = super().step(model_output, timestep, sample, *args, return_dict=True, **kw)
            own = getattr(out, "pred_original_sample", None)
            if own is not None:
                self.recorded.append(own)
            return out if return_dict else (out.prev_sample,)

        def convert_model_output(self, *args, **kw):
            x0 = super().convert_model_output(*args, **kw)
            self.recorded.append(x0)
            return x0

    Recording.__name__ = cls.__name__
    return Recording


SD_BETAS = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SANA = {
    "prediction_type": "flow_prediction",
    "use_flow_sigmas": True,
    "flow_shift": 3.0,
    "final_sigmas_type": "zero",
    "solver_order": 2,
}
RECORDED = {
    "ddim-eps": (DDIMScheduler, {"clip_sample": False, **SD_BETAS}),
    "ddim-v": (DDIMScheduler, {"clip_sample": False, "prediction_type": "v_prediction"}),
    "ddim-sample": (DDIMScheduler, {"clip_sample": False, "prediction_type": "sample"}),
    "euler-eps": (EulerDiscreteScheduler, SD_BETAS),
    "euler-v": (EulerDiscreteScheduler, {**SD_BETAS, "prediction_type": "v_prediction"}),
    "euler-ancestral": (EulerAncestralDiscreteScheduler, SD_BETAS),
    "edm-euler": (EDMEulerScheduler, {}),
    "dpmsolver-eps": (DPMSolverMultistepScheduler, SD_BETAS),
    "dpmsolver-flow (SANA)": (DPMSolverMultistepScheduler, SANA),
    "unipc-flow (Wan)": (
        UniPCMultistepScheduler,
        {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0},
    ),
}


def _observer(scheduler, seen: list[torch.Tensor]):
    def on_step(state: StepState) -> None:
        seen.append(pv.predict_x0(scheduler, state))

    return on_step


@pytest.mark.parametrize("case", list(RECORDED))
def test_x0_is_the_schedulers_own_prediction(plan_for, case):
    """At every step of the real loop, predict_x0 equals what the scheduler itself takes
    for x0 (the loop's bookkeeping of the scheduler's step index included)."""
    cls, config = RECORDED[case]
    plan = plan_for(n_points=2_000)
    scheduler = _recording(cls)(**config)
    scheduler.recorded = []
    scheduler.set_timesteps(6)
    gen = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, plan.n_points, generator=gen) * scheduler.init_noise_sigma

    def denoiser(inp: DenoiserInput) -> torch.Tensor:  # any output will do
        return 0.4 * inp.latents + torch.sin(3 * inp.rays).mean(-1)[:, None]

    seen: list[torch.Tensor] = []
    sphere_denoise(denoiser, scheduler, plan, latents, [None] * plan.n_views,
                   on_step=_observer(scheduler, seen))  # fmt: skip
    assert len(seen) == len(scheduler.recorded) == len(scheduler.timesteps)
    for i, (mine, own) in enumerate(zip(seen, scheduler.recorded, strict=True)):
        torch.testing.assert_close(mine, own.float(), rtol=1e-4, atol=1e-4, msg=f"step {i}")


ORACLE = {
    "ddim-eps": lambda: DDIMScheduler(clip_sample=False, **SD_BETAS),
    "ddim-v": lambda: DDIMScheduler(clip_sample=False, prediction_type="v_prediction"),
    "pndm (SD 1.5)": lambda: PNDMScheduler(skip_prk_steps=True, **SD_BETAS),
    "euler (SDXL)": lambda: EulerDiscreteScheduler(**SD_BETAS),
    "dpmsolver-eps": lambda: DPMSolverMultistepScheduler(**SD_BETAS),
    "dpmsolver-flow (SANA)": lambda: DPMSolverMultistepScheduler(**SANA),
    "unipc-flow (Wan)": lambda: UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    ),
    "flow-euler (FLUX, SD3)": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
}


@pytest.mark.parametrize("case", list(ORACLE))
def test_x0_of_an_oracle_is_exact_at_every_step(plan_for, case):
    """The definition: a model that knows x0 and the noise (its output is the noise, the
    velocity or the flow, as the scheduler's prediction type asks) keeps the sampler on
    the exact noising path of x0, built with the scheduler's own add_noise / scale_noise;
    its predicted x0 is then x0 at every step."""
    plan = plan_for(n_points=2_000)
    scheduler = ORACLE[case]()
    scheduler.set_timesteps(7)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.randn(1, 4, plan.n_points, generator=gen)
    noise = torch.randn(1, 4, plan.n_points, generator=gen)
    t0 = scheduler.timesteps[:1]
    if hasattr(scheduler, "add_noise"):
        latents = scheduler.add_noise(x0, noise, t0)
    else:  # flow matching
        latents = scheduler.scale_noise(x0, t0, noise)
    kind = pv.prediction_type(scheduler)

    def denoiser(inp: DenoiserInput) -> torch.Tensor:
        x0_v = gather_views(x0, plan, inp.view_index)[:, 0]
        n_v = gather_views(noise, plan, inp.view_index)[:, 0]
        if kind == "epsilon":
            return n_v
        if kind == "v_prediction":
            return scheduler.get_velocity(x0_v, n_v, inp.timestep.reshape(1))
        return n_v - x0_v  # flow: d x / d sigma

    seen: list[torch.Tensor] = []
    sphere_denoise(denoiser, scheduler, plan, latents, [None] * plan.n_views,
                   on_step=_observer(scheduler, seen))  # fmt: skip
    assert len(seen) == len(scheduler.timesteps)
    covered = plan.covered
    for i, mine in enumerate(seen):
        err = (mine - x0)[..., covered].abs().max()
        assert err < 1e-4, (i, float(err))


def test_flow_x0_definition_and_epsilon_definition():
    """One StepState by hand: flow matching x = (1 - s) x0 + s n, v = n - x0; DDPM
    x = sqrt(a) x0 + sqrt(1 - a) eps. Both give x0 back."""
    gen = torch.Generator().manual_seed(3)
    x0, n = torch.randn(2, 1, 4, 50, generator=gen)
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    flow.set_timesteps(5)
    s = float(flow.sigmas[2])
    x = (1 - s) * x0 + s * n
    state = StepState(2, 5, flow.timesteps[2], 2, x, x, n - x0, x)
    torch.testing.assert_close(pv.predict_x0(flow, state), x0, rtol=1e-5, atol=1e-5)
    ddpm = PNDMScheduler(skip_prk_steps=True)
    ddpm.set_timesteps(5)
    t = ddpm.timesteps[1]
    a = float(ddpm.alphas_cumprod[t])
    x = a**0.5 * x0 + (1 - a) ** 0.5 * n
    state = StepState(1, 5, t, 1, x, x, n, x)
    torch.testing.assert_close(pv.predict_x0(ddpm, state), x0, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- ERP render

IDENTITY = pv.LatentProjection(torch.eye(3), torch.zeros(3))


def test_identity_preview_matches_the_panorama(plan_for):
    """A known panorama sampled at the sphere points as 3-channel latents, projected with
    the identity: the preview is that panorama at the preview's size, in the project's ERP
    convention (centre +X, top row up; the truth is computed from the ERP pixels'
    directions), with nothing at the seam."""
    plan = plan_for(n_points=10_000)
    sphere = smooth_colour(plan.points).T.float()  # (3, N)
    width = 256
    index = pv.plan_erp_index(plan, width)
    assert pv.plan_erp_index(plan, width) is index  # kept on the plan
    image = pv.render_erp(sphere, IDENTITY, index, width)
    assert image.shape == (128, 256, 3) and image.dtype == np.uint8
    got = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    truth = smooth_colour(g.erp_pixel_directions(128, 256)).permute(2, 0, 1).float()
    # Nearest of 10,000 points (2 degrees apart) on a 256 px ERP (1.4 degrees a pixel)
    # against detail down to ~20 degrees: measured 33.6 dB.
    assert psnr(got, truth) >= 30
    # The convention, directly: the colour of +X at the centre, of +Z on the top row.
    probe = smooth_colour(torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]))
    assert (got[:, 64, 128] - probe[0].float()).abs().max() < 0.05
    assert (got[:, 0, :].mean(-1) - probe[1].float()).abs().max() < 0.05
    # An uncovered point is never shown (it keeps its noise): the index is of covered ones.
    assert bool(plan.covered[index].all())


def test_oracle_generation_previews_converge_to_the_panorama(plan_for, tmp_path):
    """The oracle/identity case end to end: a denoiser that predicts the panorama, the
    identity codec, the real loop, the sink's PNG files. Every preview is announced with
    its step; the last one matches the panorama; the files are gone after close()."""
    plan = plan_for(n_points=10_000)
    scheduler = DDIMScheduler(prediction_type="sample", clip_sample=False, set_alpha_to_one=True)
    scheduler.set_timesteps(6)
    truth = smooth_colour(g.erp_pixel_directions(64, 128)).permute(2, 0, 1).float()
    seen: list[tuple[int, int, torch.Tensor]] = []

    def announce(path: str, step: int, total: int) -> None:
        assert Path(path).name.startswith(".pano.preview.")
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (128, 64)
            pixels = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
        seen.append((step, total, pixels))

    def oracle(inp: DenoiserInput) -> torch.Tensor:
        return smooth_colour(inp.rays).permute(0, 3, 1, 2).float()

    latents = torch.randn(1, 3, plan.n_points, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "new" / "pano.png"
    with pv.PreviewSink(2, 128, out, announce) as sink:
        on_step = sink.attach(None, plan, scheduler, projection=IDENTITY)
        sphere_denoise(oracle, scheduler, plan, latents, [None] * plan.n_views, on_step=on_step)
        assert len(list(out.parent.iterdir())) == 2  # the latest two
    assert [(s, n) for s, n, _ in seen] == [(2, 6), (4, 6), (6, 6)]
    assert psnr(seen[-1][2], truth) >= 30
    assert not out.parent.exists()  # the folder the previews made is gone with them


def test_a_video_previews_its_middle_latent_frame(plan_for, tmp_path):
    plan = plan_for(n_points=2_000)
    scheduler = DDIMScheduler(prediction_type="sample", clip_sample=False)
    scheduler.set_timesteps(3)
    frames = torch.arange(5, dtype=torch.float32)[None, None, :, None] / 8  # frame f: f / 8
    out = frames.expand(1, 3, 5, plan.n_points).contiguous()
    state = StepState(0, 3, scheduler.timesteps[0], 0, out * 0, out * 0, out, out)
    seen: list[str] = []
    with pv.PreviewSink(1, 64, tmp_path / "clip.mp4", lambda p, s, n: seen.append(p)) as sink:
        on_step = sink.attach(None, plan, scheduler, projection=IDENTITY)
        on_step(state)
        with Image.open(seen[0]) as im:
            pixels = np.asarray(im)
    assert Path(seen[0]).name.startswith(".clip.preview.")
    assert (pixels == round(255 * 2 / 8)).all()  # frame 2 of 0..4


class _TablelessScheduler:
    """A scheduler with no noise tables (neither sigmas nor alphas_cumprod)."""

    config = {"prediction_type": "epsilon"}  # noqa: RUF012 - read only

    def __init__(self) -> None:
        self.timesteps = torch.tensor([900, 500, 100])

    def step(self, model_output, t, sample, return_dict=False, **kw):
        return (sample - 0.1 * model_output,)


def test_a_scheduler_the_preview_cannot_read_turns_it_off_and_the_job_goes_on(
    plan_for, tmp_path, caplog
):
    plan = plan_for(n_points=2_000)
    scheduler = _TablelessScheduler()
    latents = torch.randn(1, 3, plan.n_points, generator=torch.Generator().manual_seed(8))
    announced: list[str] = []
    with pv.PreviewSink(1, 64, tmp_path / "pano.png", lambda p, s, n: announced.append(p)) as sink:
        on_step = sink.attach(None, plan, scheduler, projection=IDENTITY)
        with caplog.at_level(logging.WARNING):
            out = sphere_denoise(lambda inp: inp.latents, scheduler, plan, latents,
                                 [None] * plan.n_views, on_step=on_step)  # fmt: skip
    assert out.shape == latents.shape and not announced and sink.disabled
    assert "neither sigmas nor alphas_cumprod" in caplog.text


def test_png_is_read_back_exactly_as_srgb():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(pv.encode_png(image))) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (40, 24))
        assert np.array_equal(np.asarray(im), image)
        assert im.info.get("srgb") == 0  # the sRGB chunk, perceptual intent


# --------------------------------------------------------------------------- the fit


def _linear_encoder(matrix: torch.Tensor, offset: torch.Tensor, scale: int):
    """An encoder that IS linear in the mean colour of each latent cell (a real tensor
    map, not a stand-in for the fit under test): latent = matrix @ rgb + offset."""

    def encode(images: torch.Tensor) -> torch.Tensor:
        rgb = torch.nn.functional.avg_pool2d(images, scale)  # (n, 3, h, w)
        return torch.einsum("cd,ndhw->nchw", matrix, rgb) + offset[None, :, None, None]

    return encode


def test_fit_recovers_a_linear_encoder():
    gen = torch.Generator().manual_seed(4)
    # Three channels: invertible, plain least squares gives its inverse exactly.
    a = torch.randn(3, 3, generator=gen) + 2 * torch.eye(3)
    c = torch.randn(3, generator=gen)
    fit = pv.fit_projection_from_encoder(_linear_encoder(a, c, 8), 8, 3, ridge=0.0)
    torch.testing.assert_close(fit.matrix @ a, torch.eye(3), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fit.matrix @ c + fit.bias, torch.zeros(3), rtol=1e-5, atol=1e-5)
    assert fit.rms < 1e-5 and fit.fit_s > 0
    # Sixteen channels of rank three (a packed-token family's wide point): the default
    # ridge still maps the latents back to their colours, on images it never saw.
    wide = torch.randn(16, 3, generator=gen)
    encode = _linear_encoder(wide, torch.randn(16, generator=gen), 16)
    fit = pv.fit_projection_from_encoder(encode, 16, 16)
    images = pv.fit_images(64, fields=6, seed=99)
    back = fit(encode(images).permute(1, 0, 2, 3))  # (3, n, h, w)
    pooled = torch.nn.functional.avg_pool2d(images, 16).permute(1, 0, 2, 3)
    assert (back - pooled).abs().max() < 2e-3


def test_a_cancel_gives_up_the_fit_between_images():
    """A big VAE on a CPU takes seconds an image: the fit polls the job's cancel between
    images, so a cancel is not left waiting for the whole fit (a serving worker would
    otherwise be ended by its stop deadline, model and all)."""
    calls: list[int] = []
    inner = _linear_encoder(torch.eye(3), torch.zeros(3), 8)

    def encode(image):
        calls.append(1)
        return inner(image)

    with pytest.raises(pv.PreviewUnavailable, match="cancelled"):
        pv.fit_projection_from_encoder(encode, 8, 3, should_cancel=lambda: len(calls) >= 2)
    assert len(calls) == 2


def test_fit_images_are_fixed_and_cover_the_colours():
    a, b = pv.fit_images(32), pv.fit_images(32)
    assert torch.equal(a, b) and a.shape == (len(pv.FIT_SOLIDS) + pv.FIT_FIELDS, 3, 32, 32)
    assert float(a.min()) == 0.0 and float(a.max()) == 1.0
    fields = a[len(pv.FIT_SOLIDS) :]
    assert float(fields.std(dim=(2, 3)).mean()) > 0.05  # not flat


# One tiny model per distinct latent space: 4 ch (SD), SANA's DC-AE (32 ch, 32x), FLUX.2's
# packed 128-channel tokens (16x), Qwen-Image's 5-D VAE, and the video VAEs (LTX 128 ch
# at 32x, Wan's causal 3-D VAE).
FIT_MODELS = ("sd15", "sana", "flux2-klein", "qwenimage", "ltx", "wan")


@pytest.mark.parametrize("tiny", FIT_MODELS)
def test_every_latent_space_gets_a_cached_fit(tiny, tiny_folders, tmp_path, caplog):
    """The fit through each family's own encoder (sphere-point channels, packed tokens
    and one-frame clips included): shaped for the model, no worse than the mean colour
    on images it never saw, cached on disk and read back instead of fitted again.

    The tiny VAEs have random weights, so their latents carry colour only weakly (a fit
    RMS of 0.14 to 0.31 on its own images): only the fit's mechanics are checked here,
    not a preview's likeness (test_fit_recovers_a_linear_encoder checks the fit itself)."""
    from spherediff_core.pipeline import SphereDiffPipeline

    pipe = SphereDiffPipeline.from_pretrained(str(tiny_folders[tiny]), offline=True)
    adapter = pipe.adapter
    with caplog.at_level(logging.INFO, logger="spherediff_core.preview"):
        fit = pv.projection_for(adapter, tmp_path)
    assert "fitted the live preview" in caplog.text
    assert fit.matrix.shape == (3, adapter.latent_channels) and fit.samples > 0
    assert torch.isfinite(fit.matrix).all() and fit.fit_s > 0
    s = adapter.vae_scale_factor
    held_out = pv.fit_images(8 * s, fields=8, seed=7)
    lat = torch.cat([adapter.preview_fit_latents(im[None]).float().cpu() for im in held_out])
    pooled = torch.nn.functional.avg_pool2d(held_out, s)[:, :, 1:-1, 1:-1]
    got = fit(lat.permute(1, 0, 2, 3))[:, :, 1:-1, 1:-1].permute(1, 0, 2, 3)
    rms = float(((got - pooled) ** 2).mean().sqrt())
    flat = float(((pooled - pooled.mean(dim=(0, 2, 3), keepdim=True)) ** 2).mean().sqrt())
    print(f"{tiny}: fit RMS {fit.rms:.3f}, held-out {rms:.3f}, mean colour {flat:.3f}")
    # Measured: held-out 0.16 (SANA) to 0.37 (SD 1.5) against 0.37 for the mean colour.
    assert rms <= 1.02 * flat, (rms, flat)
    # Cached: one file, read back by a fresh load of the same model, not fitted again.
    (cached,) = tmp_path.glob("preview-*.json")
    assert cached.name == f"preview-{pv.vae_key(adapter)}.json"
    again = SphereDiffPipeline.from_pretrained(str(tiny_folders[tiny]), offline=True).adapter
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spherediff_core.preview"):
        reread = pv.projection_for(again, tmp_path)
    assert "fitted" not in caplog.text
    torch.testing.assert_close(reread.matrix, fit.matrix)


def test_a_damaged_cached_fit_is_fitted_again(tiny_sd15, tmp_path, caplog):
    from spherediff_core.pipeline import SphereDiffPipeline

    adapter = SphereDiffPipeline.from_pretrained(str(tiny_sd15), offline=True).adapter
    (tmp_path / f"preview-{pv.vae_key(adapter)}.json").write_text("{not json")
    with caplog.at_level(logging.INFO, logger="spherediff_core.preview"):
        fit = pv.projection_for(adapter, tmp_path)
    assert "ignoring unreadable preview fit" in caplog.text and "fitted" in caplog.text
    assert fit.matrix.shape == (3, 4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries


# --------------------------------------------------------------------------- the files


def test_sink_keeps_the_latest_two_and_tidies_up(tmp_path):
    image = np.zeros((32, 64, 3), np.uint8)
    announced: list[tuple[str, int, int]] = []
    # A preview left by a dead process (a killed worker) goes; a live one's stays.
    dead = tmp_path / ".pano.preview.999999999-0003.png"
    alive = tmp_path / f".pano.preview.{os.getppid()}-0003.png"
    other = tmp_path / ".other.preview.999999999-0003.png"
    for p in (dead, alive, other):
        p.write_bytes(b"x")
    sink = pv.PreviewSink(5, 64, tmp_path / "pano.png", lambda *a: announced.append(a))
    for step in (5, 10, 15, 17):
        sink.publish(image, step, 17)
    assert [Path(p).name for p, _, _ in announced] == [
        f".pano.preview.{os.getpid()}-{k:04d}.png" for k in (5, 10, 15, 17)
    ]
    assert [p.name for p in sink.written] == [Path(p).name for p, _, _ in announced[-2:]]
    assert not dead.exists() and alive.exists() and other.exists()
    assert sink.due(15, 17) and sink.due(17, 17) and not sink.due(16, 17)
    sink.close()
    sink.close()  # again: nothing to do
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])


def test_a_preview_that_cannot_be_written_turns_previews_off(tmp_path, caplog):
    (tmp_path / "afile").write_text("a file where the folder should be")
    sink = pv.PreviewSink(1, 64, tmp_path / "afile" / "pano.png")
    with caplog.at_level(logging.WARNING):
        assert sink.publish(np.zeros((32, 64, 3), np.uint8), 1, 2) is None
    assert sink.disabled and "live preview turned off" in caplog.text
    assert sink.publish(np.zeros((32, 64, 3), np.uint8), 2, 2) is None
    sink.close()


# --------------------------------------------------------------------------- end to end


class _Recording(pv.PreviewSink):
    """A real sink that also keeps each finished step's sphere latents (for the test)."""

    def attach(self, adapter, plan, scheduler, cache_dir=None, projection=None, **kwargs):
        on_step = super().attach(adapter, plan, scheduler, cache_dir, projection, **kwargs)
        self.states: list[StepState] = []
        self.adapter, self.plan = adapter, plan

        def recording(state: StepState) -> None:
            self.states.append(state)
            on_step(state)

        return recording


def test_last_preview_is_the_projected_final_latents(tiny_folders, tmp_path):
    """A real tiny model (FLUX.1: flow matching, whose last step lands on its x0): the
    last preview is exactly the fitted projection of the final sphere latents rendered to
    the ERP, so the preview shows what the VAE will decode as far as a linear map can.
    (How alike it looks to the decoded panorama depends on the VAE: with the tiny
    random-weight VAEs it is meaningless, 6-10 dB against 18-21 dB for a flat image of
    the panorama's mean colour, correlation ~0; see docs/engine.md, Live preview.)"""
    from spherediff_core.pipeline import SphereDiffPipeline

    pipe = SphereDiffPipeline.from_pretrained(
        str(tiny_folders["flux"]), offline=True, plan_cache_dir=tmp_path
    )
    options = GenerationOptions(prompt="a harbour at dusk", width=256, steps=3,
                                output=str(tmp_path / "o" / "pano.png"))  # fmt: skip
    last: dict[str, np.ndarray] = {}

    def announce(path: str, step: int, total: int) -> None:
        with Image.open(path) as im:
            last[step] = np.asarray(im).copy()

    with _Recording(1, 128, options.output, announce) as sink:
        result = pipe(options, preview=sink)
    assert sorted(last) == [1, 2, 3] and result.timings["preview"] > 0
    final = sink.states[-1].latents[0]
    fit = pv.projection_for(sink.adapter, tmp_path)
    expected = pv.render_erp(final.float(), fit, pv.plan_erp_index(sink.plan, 128), 128)
    assert np.abs(last[3].astype(int) - expected.astype(int)).max() <= 1


def test_generate_announces_previews_while_denoising_and_removes_them(tiny_sd15, tmp_path):
    from spherediff_core.runner import generate

    events: list[tuple] = []
    names: list[str] = []

    def on_preview(path: str, step: int, total: int) -> None:
        assert os.path.isfile(path) and os.path.isabs(path)
        names.append(path)
        events.append(("preview", step, total))

    out = tmp_path / "out" / "pano.png"
    options = GenerationOptions(prompt="a harbour", model=str(tiny_sd15), width=128, steps=4,
                                output=str(out), offline=True, preview_every=2,
                                preview_width=64)  # fmt: skip
    outcome = generate(options, on_progress=lambda p: events.append((p.phase, p.step, p.total)),
                       on_preview=on_preview, plan_cache_dir=tmp_path / "plans")  # fmt: skip
    previews = [e for e in events if e[0] == "preview"]
    # PNDM (SD 1.5) makes 5 evaluations for 4 steps: previews at 2, 4 and the last, 5.
    assert [(s, n) for _, s, n in previews] == [(2, 5), (4, 5), (5, 5)]
    first = events.index(previews[0])
    phases = [e[0] for e in events]
    assert "denoise" in phases[:first] and "decode" not in phases[:first]
    assert phases.index("decode") > events.index(previews[-1])
    assert outcome.image == out and not any(os.path.exists(n) for n in names)
    assert sorted(p.name for p in out.parent.iterdir()) == ["pano.json", "pano.png"]


def test_cancel_removes_every_preview(tiny_sd15, tmp_path):
    from spherediff_core.errors import CancelledError
    from spherediff_core.runner import CancelToken, generate

    token = CancelToken()
    names: list[str] = []

    def on_preview(path: str, step: int, total: int) -> None:
        names.append(path)
        token.cancel("the test cancels")

    out = tmp_path / "not yet" / "pano.png"
    options = GenerationOptions(prompt="a harbour", model=str(tiny_sd15), width=128, steps=4,
                                output=str(out), offline=True, preview_every=1,
                                preview_width=64)  # fmt: skip
    with pytest.raises(CancelledError):
        generate(options, should_cancel=token, on_preview=on_preview,
                 plan_cache_dir=tmp_path / "plans")  # fmt: skip
    assert names and not any(os.path.exists(n) for n in names)
    assert not out.parent.exists()  # the previews made the folder; it went with them


def test_no_listener_no_previews(tiny_sd15, tmp_path):
    """preview_every without an on_preview listener writes nothing (the command line
    passes its own listener)."""
    from spherediff_core.runner import generate

    out = tmp_path / "pano.png"
    options = GenerationOptions(prompt="a harbour", model=str(tiny_sd15), width=128, steps=2,
                                output=str(out), offline=True, preview_every=1)  # fmt: skip
    outcome = generate(options, plan_cache_dir=tmp_path / "plans")
    assert "preview" not in outcome.timings


def test_command_line_preview_file_is_replaced_and_removed(engine_env, tiny_sd15, tmp_path):
    out = tmp_path / "pano.png"
    proc = run_cli(
        ["generate", "--prompt", "a harbour", "--model", str(tiny_sd15), "--offline",
         "--width", "128", "--steps", "2", "--preview-every", "1", "--preview-width", "64",
         "--out", str(out)],
        engine_env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pano.json", "pano.png"]
    assert "could not update" not in proc.stderr


def test_command_line_preview_copies_each_announced_file(tmp_path):
    from spherediff_core.cli import CliPreview

    cli = CliPreview(str(tmp_path / "pano.png"))
    src = tmp_path / ".pano.preview.1-0001.png"
    Image.new("RGB", (64, 32), (10, 20, 30)).save(src)
    cli(str(src), 1, 4)
    assert cli.path == tmp_path / "pano.preview.png"
    with Image.open(cli.path) as im:
        assert im.getpixel((0, 0)) == (10, 20, 30)
    Image.new("RGB", (64, 32), (40, 50, 60)).save(src)
    cli(str(src), 2, 4)
    with Image.open(cli.path) as im:
        assert im.getpixel((0, 0)) == (40, 50, 60)
    cli(str(tmp_path / "gone.png"), 3, 4)  # a file already removed: skipped
    cli.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]
