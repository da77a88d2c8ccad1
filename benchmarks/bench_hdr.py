"""HDR lift benchmark: lighting accuracy on Blender-rendered ground truth, and speed.

Renders (or reuses) the ground truth of tests/support/hdr_truth.py (10 small HDR
panoramas made by Cycles in the tests' bpy: clear skies with a sun at 2-70 deg, overcast,
interior, night), turns each into the 8-bit panorama a generator shows (log-average
luminance 0.18, clip, sRGB, 8-bit), lifts it, and prints per scene and on average, beside
the LDR-as-is baseline (the PNG decoded to linear, what the World gets today):

* irradiance error: diffuse irradiance (luminance) at 200 Fibonacci normals, log2 ratio to
  the truth after one global scale fit, RMS, in stops;
* directionality error: |log2(max/min irradiance) - the truth's|, in stops;
* sun direction error (degrees; scenes with a sun) and false suns (scenes without one);
* fidelity: PSNR of the EXR (half float) re-encoded against the input on unclipped pixels;

then the lift's time for 2K, 4K and 8K panoramas (the ground-truth sky upsampled; the
8-bit array in memory, decoding of the file not included).

    python benchmarks/bench_hdr.py [--truth-dir DIR] [--bpy PYTHON]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "core", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
from spherediff_core.hdr import lift_to_hdr, srgb_to_linear  # noqa: E402

from tests.support.hdr_truth import (  # noqa: E402
    angle_deg,
    bpy_pythons,
    default_cache_dir,
    ensure_ground_truth,
    fibonacci_normals,
    fidelity_db,
    lighting_errors,
    to_ldr8,
)

TARGETS = (
    "targets: irradiance <= 0.30 stops mean, directionality <= 0.40 stops mean, sun <= 3 deg "
    "median, no false sun, fidelity >= 40 dB, no scene worse than its LDR baseline, "
    "lift <= 1 s at 4096x2048"
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--truth-dir", type=Path, default=default_cache_dir() / "hdr-truth")
    p.add_argument("--bpy", default=(bpy_pythons() or [None])[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.bpy is None:
        p.error("no bpy interpreter: pass --bpy or set SPHEREDIFF_BPY_PYTHONS")
    scenes = ensure_ground_truth(args.truth_dir, args.bpy)
    normals = fibonacci_normals()
    print(
        "| scene | irradiance (stops) lift / LDR | directionality (stops) lift / LDR "
        "| sun error | sun | fidelity |"
    )
    print("|---|---:|---:|---:|---|---:|")
    irr, irr_b, dirs, dirs_b, sun_errs, false_suns, fids, worse = [], [], [], [], [], 0, [], []
    for name, s in scenes.items():
        ldr = to_ldr8(s.hdr)
        result = lift_to_hdr(ldr)
        exr = result.image.astype(np.float16).astype(np.float32)
        e = lighting_errors(exr, s.hdr, normals)
        b = lighting_errors(srgb_to_linear(ldr / 255.0), s.hdr, normals)
        irr += [e.irradiance_stops]
        irr_b += [b.irradiance_stops]
        dirs += [e.directionality_stops]
        dirs_b += [b.directionality_stops]
        # 0.01 stops of slack: an unclipped panorama's EXR is its LDR up to half floats.
        if (
            e.irradiance_stops > b.irradiance_stops + 0.01
            or e.directionality_stops > b.directionality_stops + 0.01
        ):
            worse.append(name)
        fid = fidelity_db(ldr, exr, result.exposure)
        fids.append(fid)
        if s.sun is not None:
            err = (
                angle_deg(result.sun.direction, s.sun["direction"]) if result.sun.visible else None
            )
            sun_errs.append(err if err is not None else 180.0)
            sun_txt = "missed" if err is None else f"{err:.2f}°"
            found = (
                f"found ({result.sun.elevation_deg:.1f}° up)" if result.sun.visible else "missed"
            )
        else:
            sun_txt = "–"
            found = "FALSE SUN" if result.sun.visible else "none (right)"
            false_suns += bool(result.sun.visible)
        print(
            f"| {name} | {e.irradiance_stops:.2f} / {b.irradiance_stops:.2f} "
            f"| {e.directionality_stops:.2f} / {b.directionality_stops:.2f} | {sun_txt} "
            f"| {found} | {fid:.1f} dB |"
        )
    print(
        f"| **mean** | **{np.mean(irr):.2f}** / {np.mean(irr_b):.2f} | **{np.mean(dirs):.2f}** / "
        f"{np.mean(dirs_b):.2f} | median **{np.median(sun_errs):.2f}°** | false suns: "
        f"{false_suns} | min {min(fids):.1f} dB |"
    )
    print(f"scenes worse than their LDR baseline: {', '.join(worse) if worse else 'none'}")
    print()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"| size | lift wall time | lift CPU time (median of {args.repeats}; "
        f"load average {load:.1f} on {os.cpu_count()} cores) |"
    )
    print("|---|---:|---:|")
    base = scenes["sun_e25_a-45"].hdr
    for width in (2048, 4096, 8192):
        f = width // base.shape[1]
        big = np.repeat(np.repeat(base, f, axis=0), f, axis=1)
        ldr = to_ldr8(big)
        del big
        walls, cpus = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            lift_to_hdr(ldr)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
        print(f"| {width}x{width // 2} | {np.median(walls):.2f} s | {np.median(cpus):.2f} s |")
        del ldr
    print()
    print(TARGETS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
