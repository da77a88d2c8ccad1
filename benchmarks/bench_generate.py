"""Whole-generation benchmark: wall time against the time inside the denoiser and the VAE.

Builds a tiny random-weight Stable Diffusion 1.5 pipeline offline, then generates one
panorama (default: 512 px wide, 10 steps) per view batch size and writes it as PNG +
sidecar. The tiny networks are so cheap that everything the engine does around them
(planning, gathering, fusing, scheduler steps, blending the ERP, writing) shows up clearly:
overhead = wall - (denoiser + VAE), as a share of the wall time. With real models the
denoiser dominates and the same absolute overhead is a far smaller share.

    python benchmarks/bench_generate.py [--width 512] [--steps 10]
        [--batches 1 4 8 16 32] [--repeat 1] [--threads 1]

``--first-step`` measures instead the time from a request to the first denoising step
through the real worker process, cold (a one-job worker: start Python, import, load the
model) against warm (a serving worker, ``--serve``, that has the model loaded: a new
prompt and seed, then the same prompt again), for the tiny model and, with
``--full-size``, a full-size random-weight Stable Diffusion 1.5 (1.07 B parameters, float32
on the CPU: about 4.3 GB written to a temporary folder first).

    python benchmarks/bench_generate.py --first-step [--full-size] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "core", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--repeat", type=int, default=1, help="runs per batch size (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--first-step", action="store_true", help="cold vs warm: request to first step"
    )
    parser.add_argument(
        "--full-size", action="store_true", help="with --first-step: also full-size SD 1.5"
    )
    args = parser.parse_args()
    if args.first_step:
        first_step_table(args)
        return

    import torch

    torch.set_num_threads(args.threads)
    from spherediff_core.outputs import write_outputs
    from spherediff_core.runner import prepare_environment

    prepare_environment(offline=True)
    from spherediff_core.options import GenerationOptions
    from spherediff_core.pipeline import SphereDiffPipeline

    from tests.support.tiny_pipelines import build_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = build_tiny_pipeline("sd15", tmp_path / "sd15")
        pipe = SphereDiffPipeline.from_pretrained(
            str(model), offline=True, plan_cache_dir=tmp_path / "plans"
        )

        def run(batch: int) -> dict[str, float]:
            options = GenerationOptions(
                prompt="a misty pine forest at dawn",
                model=str(model),
                width=args.width,
                steps=args.steps,
                view_batch_size=batch,
                output=str(tmp_path / "out" / "pano.png"),
            )
            t0 = time.perf_counter()
            result = pipe(options)
            t1 = time.perf_counter()
            write_outputs(result, options.output)
            t2 = time.perf_counter()
            return {"wall": t2 - t0, "write": t2 - t1, **result.timings} | {
                "views": result.n_views,
                "grid": result.grid[0],
                "points": result.n_points,
            }

        run(args.batches[0])  # warm-up: builds and caches the plan, first-call costs
        header = (
            f"{'batch':>5} {'wall s':>7} {'denoiser s':>10} {'vae s':>6} {'plan s':>6} "
            f"{'erp s':>6} {'write s':>7} {'overhead s':>10} {'overhead':>8}"
        )
        info = None
        rows = []
        for batch in args.batches:
            runs = [run(batch) for _ in range(max(1, args.repeat))]
            r = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
            info = r
            overhead = r["wall"] - r["denoiser"] - r["vae"]
            rows.append(
                f"{batch:>5} {r['wall']:>7.2f} {r['denoiser']:>10.2f} {r['vae']:>6.2f} "
                f"{r['plan']:>6.3f} {r['erp']:>6.3f} {r['write']:>7.3f} {overhead:>10.2f} "
                f"{100 * overhead / r['wall']:>7.1f}%"
            )
        assert info is not None
        print(
            f"tiny sd15, {args.width} x {args.width // 2} px, {args.steps} steps, "
            f"{int(info['views'])} views of {int(info['grid'])}x{int(info['grid'])} latents, "
            f"{int(info['points'])} points, CFG on, {args.threads} thread(s), torch "
            f"{torch.__version__}"
        )
        print(header)
        print("-" * len(header))
        for row in rows:
            print(row)
        print("overhead = wall - (denoiser + VAE): plan load, prompts, gather/fuse, scheduler,")
        print("ERP blend and PNG + sidecar writing")


# --------------------------------------------------------------------------------------
# --first-step: request to first denoising step, cold vs warm worker
# --------------------------------------------------------------------------------------


def build_full_size_sd15(folder: Path) -> Path:
    """Stable Diffusion 1.5's published architecture (UNet 860 M, CLIP ViT-L/14 text
    encoder 123 M, VAE 84 M) with random weights, saved as a diffusers folder (float32)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.support.tiny_pipelines import _make_clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, attention_head_dim=8, layers_per_block=2
    )  # the defaults are SD 1.x's blocks (320, 640, 1280, 1280)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    tokenizer = _make_clip_tokenizer()
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            vocab_size=max(49408, len(tokenizer)),
            projection_dim=768,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )  # SD 1.5's published scheduler config
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def _until_first_step(
    proc: Any, t0: float, cancel: bool = True, timeout: float = 900
) -> tuple[float, float]:
    """Seconds from t0 to the job's first denoise event, and the load phase's seconds
    (between its first and last event; 0 when nothing was loaded). Then the job is
    cancelled (a one-job worker) or run to its end (a serving worker: a cancel that
    lands inside one long model call on a CPU ends the worker, model and all)."""
    load_start = load_s = 0.0
    while True:
        ev = proc.next_event(timeout)
        if ev is None:
            raise SystemExit(f"the worker ended early; stderr:\n{proc.stderr()}")
        if ev["event"] == "error":
            raise SystemExit(f"job failed: {ev['message']}")
        if ev["event"] == "progress" and ev["phase"] == "load":
            now = time.perf_counter()
            if ev["step"] == 0:
                load_start = now
            else:
                load_s = now - load_start
        if ev["event"] == "progress" and ev["phase"] == "denoise":
            first = time.perf_counter() - t0
            break
    if cancel:
        proc.send("cancel")
    while (ev := proc.next_event(timeout)) is not None and ev["event"] not in ("result", "error"):
        pass
    if not cancel and (ev is None or ev["event"] != "result"):
        raise SystemExit(f"the job did not finish: {ev}; stderr:\n{proc.stderr()}")
    return first, load_s


def first_step_table(args: argparse.Namespace) -> None:
    import json

    from tests.support.engine_process import WorkerProcess, engine_env
    from tests.support.tiny_pipelines import build_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env = engine_env(tmp_path / "cache")
        env["SPHEREDIFF_TORCH_THREADS"] = str(args.threads)
        models = [("tiny sd15", build_tiny_pipeline("sd15", tmp_path / "sd15"), 64)]
        if args.full_size:
            t0 = time.perf_counter()
            folder = build_full_size_sd15(tmp_path / "sd15-full")
            print(f"built full-size SD 1.5 in {time.perf_counter() - t0:.0f} s", flush=True)
            models.append(("full-size sd15 (1.07 B, fp32)", folder, 256))

        def job(model: Path, width: int, name: str, prompt: str, seed: int) -> str:
            options = {
                "prompt": prompt,
                "model": str(model),
                "output": str(tmp_path / "out" / f"{name}.png"),
                "width": width,
                "steps": 1,
                "guidance": 1.0,  # one model call per view: the warm jobs run to the end
                "overlap": 0.0,
                "seed": seed,
                "offline": True,
            }
            return json.dumps({"protocol": 1, "options": options})

        rows = []
        for label, model, width in models:
            cold, load, warm_new, warm_same = [], [], [], []
            for r in range(max(1, args.repeat)):
                t0 = time.perf_counter()
                proc = WorkerProcess([], env, tmp_path / f"cold-{r}.txt")
                proc.send(job(model, width, f"cold{r}", "a misty pine forest", r))
                first, load_s = _until_first_step(proc, t0)
                proc.close_stdin()
                proc.wait()
                cold.append(first)
                load.append(load_s)

                proc = WorkerProcess(["--serve"], env, tmp_path / f"warm-{r}.txt")
                proc.send(job(model, width, f"w{r}a", "a misty pine forest", r))
                _until_first_step(proc, time.perf_counter(), cancel=False)
                t0 = time.perf_counter()
                proc.send(job(model, width, f"w{r}b", "a desert at noon", r + 100))
                first, load_s = _until_first_step(proc, t0, cancel=False)
                assert load_s == 0.0, "the serving worker loaded the model again"
                warm_new.append(first)
                t0 = time.perf_counter()
                proc.send(job(model, width, f"w{r}c", "a desert at noon", r + 200))
                warm_same.append(_until_first_step(proc, t0, cancel=False)[0])
                proc.close_stdin()
                proc.wait()
            med = statistics.median
            rows.append(
                f"{label:<30} {med(cold):>7.2f} {med(load):>7.2f} {med(warm_new):>10.2f} "
                f"{med(warm_same):>11.2f} {med(cold) - med(warm_new):>8.2f}"
            )
        header = (
            f"{'model':<30} {'cold s':>7} {'load s':>7} {'warm new s':>10} "
            f"{'warm same s':>11} {'saved s':>8}"
        )
        print(
            f"request to first denoising step through the worker process, median of "
            f"{max(1, args.repeat)}, {args.threads} torch thread(s)"
        )
        print(header)
        print("-" * len(header))
        for row in rows:
            print(row)
        print("cold: start a one-job worker (Python, imports, model load, plan, prompts);")
        print("load: its load phase alone (imports of diffusers included); warm: a --serve")
        print("worker holding the model, a new prompt and seed (new) or the same prompt")
        print("(same); saved = cold - warm new. 1 step, no CFG, overlap 0; a cold job is")
        print("cancelled at its first step, a warm one runs to its end.")


if __name__ == "__main__":
    main()
