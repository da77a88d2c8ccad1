"""Whole-generation benchmark: wall time against the time inside the denoiser and the VAE.

Builds a tiny random-weight Stable Diffusion 1.5 pipeline offline, then generates one
panorama (default: 512 px wide, 10 steps) per view batch size and writes it as PNG +
sidecar. The tiny networks are so cheap that everything the engine does around them
(planning, gathering, fusing, scheduler steps, blending the ERP, writing) shows up clearly:
overhead = wall - (denoiser + VAE), as a share of the wall time. With real models the
denoiser dominates and the same absolute overhead is a far smaller share.

    python benchmarks/bench_generate.py [--width 512] [--steps 10]
        [--batches 1 4 8 16 32] [--repeat 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

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
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
