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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "core", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def run_case(model: str, video: bool, frames: int, width: int, steps: int, out: str) -> dict:
    """One generation and its files, in this process; returns timings and max RSS."""
    import resource

    from spherediff_core.runner import prepare_environment

    prepare_environment(offline=True)
    from spherediff_core.options import GenerationOptions
    from spherediff_core.outputs import write_outputs, write_video_outputs
    from spherediff_core.pipeline import SphereDiffPipeline

    pipe = SphereDiffPipeline.from_pretrained(model, offline=True, plan_cache_dir=out + "/plans")
    extra = {"video": True, "frames": frames, "fps": 24} if video else {}
    options = GenerationOptions(
        prompt="waves rolling onto a rocky beach",
        model=model,
        width=width,
        steps=steps,
        output=os.path.join(out, "clip.png"),
        **extra,
    )
    pipe(GenerationOptions(**{**options.to_dict(), "steps": 2}))  # warm-up, caches the plan
    t0 = time.perf_counter()
    result = pipe(options)
    t1 = time.perf_counter()
    if video:
        write_video_outputs(result, options.output)
    else:
        write_outputs(result, options.output)
    t2 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    if sys.platform == "darwin":
        rss //= 1024
    return {
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--frames", type=int, nargs="+", default=[25, 49, 121])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child: model,video,frames,out
    args = parser.parse_args()

    if args.case:
        import torch

        torch.set_num_threads(args.threads)
        model, video, frames, out = args.case.split(",", 3)
        result = run_case(model, video == "1", int(frames), args.width, args.steps, out)
        print("RESULT " + json.dumps(result))
        return

    import torch

    from tests.support.tiny_pipelines import build_tiny_pipeline

    torch.set_num_threads(args.threads)
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT / "core"), str(ROOT)]),
        OMP_NUM_THREADS=str(args.threads),
        SPHEREDIFF_TORCH_THREADS=str(args.threads),
        HF_HUB_OFFLINE="1",
    )
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
    print("the networks; erp = blending decoded views into the ERP frames; peak RSS per process")


if __name__ == "__main__":
    main()
