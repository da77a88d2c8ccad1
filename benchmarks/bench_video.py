"""360° video benchmark: cost per frame and per view against a still, and peak memory.

Builds tiny random-weight LTX-Video (and, for the still, SANA: the same 32x VAE factor)
pipelines offline, then runs one generation per case, each in its own subprocess so its
peak memory (max RSS) is its own: a SANA still, an LTX-Video single frame (the video path
with one latent frame) and LTX-Video clips of 25, 49 and 121 frames (4, 7 and 16 latent
frames), all at the same ERP size and steps, written to disk (PNG frames + MP4 + sidecar).
The tiny networks are cheap, so the table shows what the engine costs around them: the
sphere bookkeeping, the VAE's decoding of every view's frames, the ERP blend and the
writing.

    python benchmarks/bench_video.py [--width 512] [--steps 4] [--frames 25 49 121]
        [--threads 1]
    python benchmarks/bench_video.py --memory [--memory-widths 2048 4096] [--steps 2]
        [--overlap 0.6]

``--memory`` prints the streaming table: peak RSS of 49- and 121-frame clips at 2K and 4K
ERP, each written to disk a chunk of frames at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "core", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def run_case(
    model: str,
    video: bool,
    frames: int,
    width: int,
    steps: int,
    out: str,
    overlap: float = 0.6,
    warm_up: bool = True,
    max_chunks: int = 0,
) -> dict:
    """One generation and its files, in this process; returns timings and max RSS.

    A video streams to disk as the runner writes it (each chunk of frames handed to a
    VideoWriter as it is blended), so the peak is what a real run holds. ``max_chunks``
    > 0 stops a video after that many chunks (the files are then discarded)."""
    import resource

    from spherediff_core.runner import prepare_environment

    prepare_environment(offline=True)
    from spherediff_core.options import GenerationOptions
    from spherediff_core.outputs import VideoWriter, write_outputs
    from spherediff_core.pipeline import SphereDiffPipeline

    pipe = SphereDiffPipeline.from_pretrained(model, offline=True, plan_cache_dir=out + "/plans")
    extra = {"video": True, "frames": frames, "fps": 24} if video else {}
    options = GenerationOptions(
        prompt="waves rolling onto a rocky beach",
        model=model,
        width=width,
        steps=steps,
        overlap=overlap,
        output=os.path.join(out, "clip.png"),
        **extra,
    )
    if warm_up:  # caches the plan; skipped for the memory table (its peak would count)
        pipe(GenerationOptions(**{**options.to_dict(), "steps": 2}))
    t0 = time.perf_counter()
    made = {"chunks": 0, "frames": 0, "of": 0}
    if video:

        class Enough(Exception):
            pass

        with VideoWriter(options.output) as writer:

            def sink(chunk) -> None:
                writer(chunk)
                made.update(chunks=made["chunks"] + 1, frames=chunk.start + len(chunk.frames))
                made["of"] = chunk.total
                if made["chunks"] == max_chunks:
                    raise Enough()

            try:
                result = pipe(options, frame_sink=sink)
                t1 = time.perf_counter()  # the frames were written while decoding
                writer.finish(result)
            except Enough:
                result = None
                t1 = time.perf_counter()
    else:
        result = pipe(options)
        t1 = time.perf_counter()
        write_outputs(result, options.output)
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if sys.platform == "darwin":
        rss //= 1024
    if result is None:  # stopped after max_chunks
        return {
            "wall": t1 - t0,
            "frames_made": made["frames"],
            "of": made["of"],
            "chunks": made["chunks"],
            "rss_mib": rss / 1024,
            "views": pipe_views(pipe, options),
        }
    return {
        "frames_made": result.n_frames,
        "of": result.n_frames,
        "chunks": made["chunks"],
        "wall": t2 - t0,
        "generate": t1 - t0,
        "write": t2 - t1,
        **result.timings,
        "views": result.n_views,
        "grid": result.grid[0],
        "frames": result.n_frames,
        "latent_frames": (result.n_frames - 1) // pipe.adapter.temporal_compression + 1,
        "rss_mib": rss / 1024,
    }


def child_env(threads: int) -> dict:
    """The environment of a case's process: this checkout, offline, ``threads`` threads."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT / "core"), str(ROOT)]),
        OMP_NUM_THREADS=str(threads),
        SPHEREDIFF_TORCH_THREADS=str(threads),
        HF_HUB_OFFLINE="1",
    )
    return env


def pipe_views(pipe, options) -> int:
    from spherediff_core.pipeline import plan_config_for
    from spherediff_core.plan import load_or_build_plan

    adapter = pipe.adapter
    config = plan_config_for(options, adapter.vae_scale_factor, adapter.grid_multiple)
    return load_or_build_plan(config, pipe.plan_cache_dir).n_views


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--frames", type=int, nargs="+", default=[25, 49, 121])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--memory",
        action="store_true",
        help="the streaming table instead: peak RSS of LTX-Video clips of 49 and 121 frames "
        "at 2K and 4K ERP (--memory-widths), 2 steps",
    )
    parser.add_argument("--memory-widths", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument(
        "--max-chunks",
        type=int,
        default=0,
        help="memory table: stop each clip after this many chunks of frames (0: the whole "
        "clip); the peak is reached once a chunk has its full decoding context",
    )
    parser.add_argument(
        "--overlap",
        type=float,
        default=0.6,
        help="view overlap (the memory table may use less: fewer views, the same canvas)",
    )
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child: model,video,frames,out
    args = parser.parse_args()

    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        model, video, frames, out = args.case.split(",", 3)
        result = run_case(
            model,
            video == "1",
            int(frames),
            args.width,
            args.steps,
            out,
            overlap=args.overlap,
            warm_up=not args.memory,
            max_chunks=args.max_chunks,
        )
        print("RESULT " + json.dumps(result))
        return
    if args.memory:
        memory_table(args)
        return

    import torch

    from tests.support.tiny_pipelines import build_tiny_pipeline

    torch.set_num_threads(args.threads)
    env = child_env(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        models = {fam: str(build_tiny_pipeline(fam, tmp_path / fam)) for fam in ("sana", "ltx")}
        cases = [("SANA still", "sana", False, 1), ("LTX 1 frame", "ltx", True, 1)]
        cases += [(f"LTX {n} frames", "ltx", True, n) for n in args.frames]
        rows = []
        for label, fam, video, frames in cases:
            out = tmp_path / f"out-{fam}-{frames}"
            out.mkdir()
            case = f"{models[fam]},{int(video)},{frames},{out}"
            cmd = [sys.executable, __file__, "--case", case, "--width", str(args.width)]
            cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode != 0 or not line:
                raise SystemExit(f"{label} failed:\n{done.stderr[-3000:]}")
            rows.append((label, json.loads(line[0][7:])))

    base = rows[0][1]
    print(
        f"tiny models, ERP {args.width} x {args.width // 2}, {args.steps} steps, "
        f"{int(base['views'])} views, CFG on, {args.threads} thread(s), torch {torch.__version__}"
    )
    header = (
        f"{'case':<15} {'lat F':>5} {'grid':>4} {'wall s':>7} {'denoiser':>8} {'vae':>6} "
        f"{'erp':>5} {'write':>6} {'s/frame':>7} {'ms/view':>7} {'ms/view/fr':>10} "
        f"{'x still':>7} {'peak RSS':>9}"
    )
    print(header)
    print("-" * len(header))
    for label, r in rows:
        per_view_ms = 1000 * r["wall"] / r["views"]
        print(
            f"{label:<15} {int(r['latent_frames']):>5} {int(r['grid']):>4} {r['wall']:>7.2f} "
            f"{r['denoiser']:>8.2f} {r['vae']:>6.2f} {r['erp']:>5.2f} {r['write']:>6.2f} "
            f"{r['wall'] / r['frames']:>7.3f} {per_view_ms:>7.1f} "
            f"{per_view_ms / r['frames']:>10.2f} {r['wall'] / base['wall']:>7.1f} "
            f"{r['rss_mib']:>6.0f} MiB"
        )
    print("wall = generation + writing (PNG frames, MP4, sidecar); denoiser / vae = time inside")
    print("the networks; erp = blending decoded views into the ERP frames; write = a still's")
    print("PNG, a video's MP4 closing and placing (its frames are written while it decodes);")
    print("peak RSS per process")


def run_child(args, model: str, frames: int, width: int, out: Path, env: dict, memory: bool):
    case = f"{model},1,{frames},{out}"
    cmd = [sys.executable, __file__, "--case", case, "--width", str(width)]
    cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
    cmd += ["--overlap", str(args.overlap), "--max-chunks", str(args.max_chunks)]
    cmd += ["--memory"] if memory else []
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode != 0 or not line:
        raise SystemExit(f"{frames} frames at {width} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[0][7:])


def memory_table(args) -> None:
    """Peak RSS of streamed LTX-Video clips: 49 and 121 frames at each width."""
    import torch
    from spherediff_core import pipeline

    from tests.support.tiny_pipelines import build_tiny_pipeline

    env = child_env(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = str(build_tiny_pipeline("ltx", tmp_path / "ltx"))
        for width in args.memory_widths:
            for frames in (49, 121):
                out = tmp_path / f"out-{width}-{frames}"
                out.mkdir()
                r = run_child(args, model, frames, width, out, env, memory=True)
                rows.append((width, frames, r))
                print(
                    f"  {width} x {width // 2}, {frames} frames: {r['rss_mib']:.0f} MiB", flush=True
                )
                shutil.rmtree(out)
    print(
        f"tiny LTX-Video, {args.steps} steps, overlap {args.overlap}, {args.threads} thread(s), "
        f"torch {torch.__version__}; canvas chunk budget "
        f"{pipeline.CANVAS_BUDGET_VALUES * 4 / 2**30:.2f} GiB, at least "
        f"{pipeline.MIN_CHUNK_LATENTS} latent frames"
    )
    header = (
        f"{'ERP':<11} {'frames':>6} {'made':>5} {'chunks':>6} {'views':>5} {'wall s':>7} "
        f"{'whole canvas':>12} {'peak RSS':>9} {'vs 49':>6}"
    )
    print(header)
    print("-" * len(header))
    first: dict[int, float] = {}
    for width, frames, r in rows:
        first.setdefault(width, r["rss_mib"])
        canvas_gib = 3 * frames * width * (width // 2) * 4 / 2**30
        print(
            f"{width} x {width // 2:<4} {frames:>6} {int(r['frames_made']):>5} "
            f"{int(r['chunks']):>6} {int(r['views']):>5} {r['wall']:>7.1f} "
            f"{canvas_gib:>8.2f} GiB {r['rss_mib']:>5.0f} MiB "
            f"{100 * (r['rss_mib'] / first[width] - 1):>+5.0f}%"
        )
    print("made = frames blended and written (fewer than frames: stopped after --max-chunks);")
    print("whole canvas = what holding the clip's float32 ERP frames at once would take")


if __name__ == "__main__":
    main()
