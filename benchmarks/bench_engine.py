"""Engine benchmark: sampling plans (build, load, fusion, regularity, memory) and the
views -> ERP blend.

The first table has one row per sphere size, each in a fresh subprocess so that its peak
memory (max RSS) is its own. Targets on a 2-core machine: plan build <= 2 s at 26,500
points, <= 10 s at 400,000 (an 8K FLUX-class panorama) and <= 60 s at 1,000,000; cached
load <= 0.1 s; fusion <= 5 ms per step (89 views, 4 channels) at 26,500.

The second table blends 89 decoded views (random pixels; the 80-degree layout, views of
1.2 x the ERP's pixels per degree, as the families' native sizes give) into a 2K, 4K and
8K ERP, on the CPU and, where there is one, on the GPU (timed with a synchronisation at
the end only, as the pipeline does).

    python benchmarks/bench_engine.py [--sizes 2600 26500 100000 400000 1000000]
        [--threads 1] [--erp-widths 2048 4096 8192] [--no-erp]
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


def measure_erp(width: int, device: str, threads: int) -> dict:
    """Seconds to blend 89 views into a width x width/2 ERP on ``device`` (best of 2)."""
    import math

    import torch

    torch.set_num_threads(threads)
    from spherediff_core import geometry
    from spherediff_core.erp import ErpCanvas

    layout = geometry.default_view_layout()
    frames = layout.frames()
    view_px = 8 * math.ceil(1.2 * width * layout.fov_deg / 360.0 / 8)
    gen = torch.Generator().manual_seed(0)
    views = torch.rand(layout.n_views, 3, view_px, view_px, generator=gen).to(device)
    best = float("inf")
    for _ in range(2):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        canvas = ErpCanvas(frames, layout.fov_deg, width // 2, width, 3, device=device)
        for v in range(layout.n_views):  # one view at a time, as the pipeline blends
            canvas.add(views[v : v + 1], torch.tensor([v]))
        erp = canvas.result().cpu()  # the one copy to the host
        best = min(best, time.perf_counter() - t0)
    assert erp.shape == (3, width // 2, width)
    return {"width": width, "device": device, "view_px": view_px, "blend_s": best}


def print_erp_table(widths: list[int], threads: int) -> None:
    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print()
    print(f"{'ERP':>11} {'device':>6} {'view px':>7} {'blend s':>8}")
    print("-" * 35)
    for width in widths:
        for device in devices:
            cmd = [sys.executable, __file__, "--one-erp", str(width), "--device", device]
            out = subprocess.run(
                [*cmd, "--threads", str(threads)],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            size = f"{width}x{width // 2}"
            print(f"{size:>11} {device:>6} {r['view_px']:>7} {r['blend_s']:>8.2f}")
    if len(devices) == 1:
        print("(no GPU here: CPU only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[2_600, 26_500, 100_000, 400_000, 1_000_000]
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--erp-widths", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--no-erp", action="store_true", help="skip the ERP blend table")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--one-erp", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.threads)))
        return
    if args.one_erp is not None:
        print(json.dumps(measure_erp(args.one_erp, args.device, args.threads)))
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
    if not args.no_erp:
        print_erp_table(args.erp_widths, args.threads)


if __name__ == "__main__":
    main()
