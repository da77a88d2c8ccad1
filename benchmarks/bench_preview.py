"""Live preview cost: ms per preview against ms per denoising step, and the one-time costs.

A preview (spherediff_core.preview) is the predicted clean latents (x0, elementwise on
the sphere), a C -> 3 projection of the points the ERP shows, a nearest-point gather into
the ERP and an 8-bit PNG. Its cost follows the sphere's size N, the channels C and the
preview's width, never the denoiser, so a tiny model (cheap steps) is the worst case for
the ratio; real models' steps are seconds.

    python benchmarks/bench_preview.py [--width 512] [--threads 1]
        [--tiny sd15 sana flux ltx] [--tiny-width 1024] [--steps 4] [--full-size]

Tables:

1. By size (synthetic latents on the Fibonacci sphere of each preset's plan, a
   FlowMatchEuler step): the one-time ERP index (KD-tree) and the median ms per preview,
   split into x0, projection + ERP gather, PNG.
2. Tiny random-weight models end to end (SphereDiffPipeline, preview every step): ms per
   denoising step (the loop without the previews) against ms per preview, and the
   one-time fit (encoding the fit's images with the model's VAE) and index.
3. ``--full-size``: Stable Diffusion 1.5's published UNet and VAE with random weights
   (float32, CPU): one view's UNet pass at the 2K grid, the step it implies (89 views,
   CFG), the preview at 2K against it, and the fit with the full-size VAE.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "core", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

# (name, latent channels, VAE factor (pixels per sphere point), ERP width, latent frames)
PRESETS = [
    ("SD 1.5 2K", 4, 8, 2048, 1),
    ("SDXL 4K", 4, 8, 4096, 1),
    ("SDXL 8K", 4, 8, 8192, 1),
    ("FLUX.1 4K", 16, 8, 4096, 1),
    ("SANA 2K", 32, 32, 2048, 1),
    ("SANA 4K", 32, 32, 4096, 1),
    ("FLUX.2 4K (128 ch tokens)", 128, 16, 4096, 1),
    ("LTX-Video 2K, 16 latent frames", 128, 32, 2048, 16),
    ("Wan 2.1 2K, 21 latent frames", 16, 8, 2048, 21),
]


def _points_for(width: int, factor: int, fov: float = 80.0) -> int:
    """The plan's number of sphere points for an ERP width (pipeline.plan_config_for)."""
    from spherediff_core import geometry

    side = math.ceil(max(width * math.tan(math.radians(fov) / 2) / math.pi / factor, 2.0))
    return math.ceil(side * side * 4.0 * math.pi / geometry.view_solid_angle(fov)) + 1


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def size_table(width: int, repeat: int) -> None:
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from spherediff_core import geometry
    from spherediff_core import preview as pv
    from spherediff_core.denoise import StepState

    print(f"\n1. Preview cost by size (ERP preview {width} x {width // 2}, median of {repeat})\n")
    print("| preset | C | N points | index once ms | x0 ms | project + ERP ms | PNG ms | "
          "preview ms |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(20)
    gen = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, channels, factor, erp_width, frames in PRESETS:
            n = _points_for(erp_width, factor)
            points = geometry.fibonacci_sphere(n)
            t0 = time.perf_counter()
            index = pv.erp_index(points, width)
            index_ms = (time.perf_counter() - t0) * 1000
            shape = (1, channels) + ((frames,) if frames > 1 else ()) + (n,)
            sample = torch.randn(shape, generator=gen)
            out = torch.randn(shape, generator=gen)
            state = StepState(5, 20, scheduler.timesteps[5], 5, sample, sample, out, sample)
            projection = pv.LatentProjection(torch.randn(3, channels) * 0.1, torch.full((3,), 0.5))
            holder: dict = {}

            def x0_part(state=state, holder=holder, index=index):
                part, holder["index"] = pv.narrow_state(state, index)
                holder["x0"] = pv.predict_x0(scheduler, part)[0]

            def render_part(holder=holder, projection=projection):
                holder["image"] = pv.render_erp(holder["x0"], projection, holder["index"], width)

            path = Path(tmp) / ".bench.preview.png"

            def png_part(holder=holder, path=path):
                pv.write_png(holder["image"], path)

            x0_ms = _median_ms(x0_part, repeat)
            render_ms = _median_ms(render_part, repeat)
            png_ms = _median_ms(png_part, repeat)
            total = x0_ms + render_ms + png_ms
            print(f"| {name} | {channels} | {n:,} | {index_ms:.0f} | {x0_ms:.1f} | "
                  f"{render_ms:.1f} | {png_ms:.1f} | {total:.1f} |", flush=True)  # fmt: skip


def tiny_table(families: list[str], width: int, tiny_width: int, steps: int) -> None:
    from spherediff_core.options import GenerationOptions
    from spherediff_core.pipeline import SphereDiffPipeline
    from spherediff_core.preview import PreviewSink

    from tests.support.tiny_pipelines import build_tiny_pipeline

    print(f"\n2. Tiny random-weight models, ERP {tiny_width} px, {steps} steps, a preview "
          f"({width} px) after every step\n")  # fmt: skip
    print("| model | views x grid | step ms | preview ms | preview / step | fit once s | "
          "index once ms |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for family in families:
            folder = build_tiny_pipeline(family, Path(tmp) / "models" / family)
            plans = Path(tmp) / "plans" / family  # a fresh cache: the fit is measured
            pipe = SphereDiffPipeline.from_pretrained(
                str(folder), offline=True, plan_cache_dir=plans
            )
            video = pipe.adapter.is_video
            options = GenerationOptions(
                prompt="a harbour at dusk",
                model=str(folder),
                width=tiny_width,
                steps=steps,
                output=str(Path(tmp) / "out" / f"{family}.png"),
                video=video,
                frames=17 if video else None,
            )
            pipe(options)  # warm: the plan built and cached, the code paths hot
            # First with previews: it fits the projection (timed) and builds the index.
            with PreviewSink(1, width, options.output) as sink:
                t0 = time.perf_counter()
                on_step = sink.attach(pipe.adapter, _plan(pipe, options), _sched(pipe, options),
                                      plans)  # fmt: skip
                setup_s = time.perf_counter() - t0
                assert on_step is not None
            from spherediff_core import preview as pv

            fit_s = pv.projection_for(pipe.adapter, plans).fit_s
            index_ms = (setup_s - fit_s) * 1000
            with PreviewSink(1, width, options.output) as sink:
                result = pipe(options, preview=sink)
            n_steps = len(sink.steps)
            preview_ms = sink.seconds / max(1, n_steps) * 1000
            step_ms = (result.timings["denoise"] - sink.seconds - sink.setup_s) / n_steps * 1000
            h, w = _plan(pipe, options).grid_size
            views = _plan(pipe, options).n_views
            print(f"| {family} | {views} x {h}x{w} | {step_ms:.0f} | {preview_ms:.1f} | "
                  f"{preview_ms / step_ms:.1%} | {fit_s:.2f} | {index_ms:.0f} |",
                  flush=True)  # fmt: skip


def _plan(pipe, options):
    from spherediff_core.pipeline import plan_config_for, resolve_size

    options = resolve_size(options, pipe.adapter)
    config = plan_config_for(options, pipe.adapter.vae_scale_factor, pipe.adapter.grid_multiple)
    return pipe._plan(config, None)


def _sched(pipe, options):
    from spherediff_core.pipeline import resolve_request, resolve_size

    options = resolve_size(options, pipe.adapter)
    request = resolve_request(options, pipe.adapter)
    plan = _plan(pipe, options)
    return pipe.adapter.make_scheduler(request.steps, plan.grid_size, request.latent_frames)


def full_size_table(width: int, repeat: int) -> None:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from spherediff_core import geometry
    from spherediff_core import preview as pv
    from spherediff_core.denoise import StepState

    print("\n3. Full-size Stable Diffusion 1.5 architecture, random weights, float32, CPU\n")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2
    ).eval()  # the defaults are SD 1.x's blocks (320, 640, 1280, 1280): 860 M
    side = math.ceil(2048 * math.tan(math.radians(40)) / math.pi / 8)  # the 2K grid, 69
    n_points = _points_for(2048, 8)
    x = torch.randn(1, 4, side, side)
    text = torch.randn(1, 77, 768)
    with torch.no_grad():
        unet(x, 500, encoder_hidden_states=text)  # warm-up
        t0 = time.perf_counter()
        unet(x, 500, encoder_hidden_states=text)
        view_s = time.perf_counter() - t0
    step_s = view_s * 89 * 2  # 89 views, CFG's two passes (SD's default guidance 7.5)
    del unet
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    scheduler.set_timesteps(30)
    points = geometry.fibonacci_sphere(n_points)
    index = pv.erp_index(points, width)
    sample = torch.randn(1, 4, n_points)
    state = StepState(3, 30, scheduler.timesteps[3], 3, sample, sample, sample, sample)
    projection = pv.LatentProjection(torch.randn(3, 4) * 0.1, torch.full((3,), 0.5))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ".bench.preview.png"

        def one_preview():
            part, idx = pv.narrow_state(state, index)
            x0 = pv.predict_x0(scheduler, part)[0]
            pv.write_png(pv.render_erp(x0, projection, idx, width), path)

        preview_ms = _median_ms(one_preview, repeat)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    ).eval()  # SD 1.5's VAE: 84 M

    @torch.no_grad()
    def encode(images):
        return vae.encode(images * 2 - 1).latent_dist.mode() * 0.18215

    fit = pv.fit_projection_from_encoder(encode, 8, 4)
    print("| what | value |")
    print("|---|---:|")
    print(f"| UNet, one view of {side} x {side} latents (no CFG) | {view_s:.2f} s |")
    print(f"| one denoising step at 2K (89 views x 2 for CFG) | {step_s:.0f} s |")
    print(f"| one preview at 2K ({n_points:,} points, {width} px) | {preview_ms:.1f} ms |")
    print(f"| preview / step | {preview_ms / 1000 / step_s:.4%} |")
    print(f"| the fit, once per model (VAE 84 M, {fit.samples} cells) | {fit.fit_s:.1f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512, help="the preview's ERP width")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--tiny", nargs="*", default=["sd15", "sana", "flux", "ltx"])
    parser.add_argument("--tiny-width", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--skip-sizes", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if not args.skip_sizes:
        size_table(args.width, args.repeat)
    if args.tiny:
        tiny_table(args.tiny, args.width, args.tiny_width, args.steps)
    if args.full_size:
        full_size_table(args.width, args.repeat)


if __name__ == "__main__":
    main()
