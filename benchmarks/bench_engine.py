"""Engine benchmark: sampling-plan build and load, fusion per step, regularity, peak memory.

Prints one table row per sphere size. Each size runs in a fresh subprocess so that its
peak memory (max RSS) is its own. Targets on a 2-core machine: plan build <= 2 s at
26,500 points, cached load <= 0.1 s, fusion <= 5 ms per step (89 views, 4 channels).

    python benchmarks/bench_engine.py [--sizes 2600 26500 100000] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(n_points: int, threads: int) -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    from spherediff_core.denoise import prepare_sphere_latents
    from spherediff_core.fusion import fuse_views, gather_views
    from spherediff_core.plan import PlanConfig, load_or_build_plan, regularity_report

    config = PlanConfig(n_points=n_points)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        plan = load_or_build_plan(config, cache)
        build_s = time.perf_counter() - t0
        loads = []
        for _ in range(5):
            t0 = time.perf_counter()
            load_or_build_plan(config, cache)
            loads.append(time.perf_counter() - t0)
    latents = prepare_sphere_latents(plan, 4, generator=torch.Generator().manual_seed(0))
    views = gather_views(latents, plan)
    base = torch.zeros_like(latents)

    def best_of(fn, repeat=20):
        best = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    fuse_s = best_of(lambda: fuse_views(views, plan, base))
    gather_s = best_of(lambda: gather_views(latents, plan))
    reg = regularity_report(plan)
    h, w = plan.grid_size
    return {
        "n_points": n_points,
        "grid": f"{h}x{w}",
        "build_s": build_s,
        "load_s": min(loads),
        "fuse_ms": fuse_s * 1e3,
        "gather_ms": gather_s * 1e3,
        "centre_half": reg["centre_half"],
        "whole": reg["whole"],
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_600, 26_500, 100_000])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.threads)))
        return
    header = (
        f"{'points':>8} {'grid':>8} {'build s':>8} {'load s':>7} {'fuse ms':>8} "
        f"{'gather ms':>9} {'err centre':>10} {'err whole':>9} {'peak MiB':>8}"
    )
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--threads", str(args.threads)],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{r['n_points']:>8} {r['grid']:>8} {r['build_s']:>8.2f} {r['load_s']:>7.3f} "
            f"{r['fuse_ms']:>8.2f} {r['gather_ms']:>9.2f} {r['centre_half']:>10.3f} "
            f"{r['whole']:>9.3f} {r['peak_mib']:>8.0f}"
        )
    print("errors: mean angle from a cell's ideal ray to its point, in local cell spacings")


if __name__ == "__main__":
    main()
