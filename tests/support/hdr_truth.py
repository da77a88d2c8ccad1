"""HDR ground truth rendered by Blender, its 8-bit panoramas, and the lift's error measures.

Shared by tests/blender/test_hdr_ground_truth.py and benchmarks/bench_hdr.py. The renders
come from tests/blender/render_hdr_ground_truth.py run in a bpy interpreter and are cached
in a folder (``ensure_ground_truth``): a later call reuses every scene already there.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
RENDER_SCRIPT = REPO_ROOT / "tests" / "blender" / "render_hdr_ground_truth.py"
SCENES = (
    "sun_e02_a030",
    "sun_e06_a-120",
    "sun_e12_a170",
    "sun_e25_a-45",
    "sun_e40_a100",
    "sun_e55_a-170",
    "sun_e70_a060",
    "overcast",
    "interior",
    "night",
)
WIDTH = 512
SAMPLES = 32
N_NORMALS = 200
LUMA = np.array([0.2126, 0.7152, 0.0722])


def bpy_pythons() -> list[str]:
    env = os.environ.get("SPHEREDIFF_BPY_PYTHONS")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    found = []
    for name in (".venv-bpy50", ".venv-bpy42"):
        for root in (REPO_ROOT, Path("/work/main")):
            exe = root / name / "bin" / "python"
            if exe.exists():
                found.append(str(exe))
                break
    return found


def default_cache_dir() -> Path:
    base = os.environ.get("SPHEREDIFF_HDR_TRUTH_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("SPHEREDIFF_CACHE_DIR", Path.home() / ".cache" / "spherediff"))


@dataclass(frozen=True)
class Scene:
    name: str
    kind: str
    hdr: np.ndarray  # (H, W, 3) float32 linear, sun included
    sun: dict | None


def ensure_ground_truth(folder: Path, python: str, timeout_s: float = 1800) -> dict[str, Scene]:
    """Render (only) the scenes missing from ``folder`` with ``python`` (bpy); load all."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    missing = [
        s
        for s in SCENES
        if not (folder / f"{s}.npy").exists()
        or manifest.get(s, {}).get("width") != WIDTH
        or manifest.get(s, {}).get("samples") != SAMPLES
    ]
    if missing:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        cmd = [python, str(RENDER_SCRIPT), "--out-dir", str(folder), "--scenes", *missing]
        cmd += ["--width", str(WIDTH), "--samples", str(SAMPLES)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
        if proc.returncode != 0:
            raise RuntimeError(
                f"ground-truth render failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                f"{proc.stderr[-3000:]}"
            )
        manifest = json.loads(manifest_path.read_text())
    return {
        s: Scene(s, manifest[s]["kind"], np.load(folder / f"{s}.npy"), manifest[s]["sun"])
        for s in SCENES
    }


def to_ldr8(hdr: np.ndarray) -> np.ndarray:
    """The 8-bit panorama a generator would show: log-average luminance to 0.18, clip, sRGB."""
    lum = np.maximum(hdr.astype(np.float64) @ LUMA, 1e-6)
    scale = 0.18 / math.exp(float(np.log(lum).mean()))
    x = np.clip(hdr.astype(np.float64) * scale, 0.0, 1.0)
    srgb = np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)
    return np.round(srgb * 255.0).astype(np.uint8)


def fibonacci_normals(n: int = N_NORMALS) -> np.ndarray:
    from spherediff_core.geometry import fibonacci_sphere

    return fibonacci_sphere(n).numpy()


def irradiance_lum(image: np.ndarray, normals: np.ndarray) -> np.ndarray:
    from spherediff_core.hdr import diffuse_irradiance

    return diffuse_irradiance(image, normals) @ LUMA


@dataclass(frozen=True)
class Errors:
    irradiance_stops: float  # RMS of log2 ratio after the best global scale
    directionality_stops: float  # |log2(max/min) estimate - log2(max/min) truth|


def lighting_errors(estimate: np.ndarray, truth: np.ndarray, normals: np.ndarray) -> Errors:
    e = np.maximum(irradiance_lum(estimate, normals), 1e-12)
    t = np.maximum(irradiance_lum(truth, normals), 1e-12)
    d = np.log2(e) - np.log2(t)
    d -= d.mean()  # one global scale fit (least squares in log)
    rms = float(np.sqrt(np.mean(d * d)))
    dir_e = math.log2(e.max() / e.min())
    dir_t = math.log2(t.max() / t.min())
    return Errors(rms, abs(dir_e - dir_t))


def angle_deg(a, b) -> float:
    a = np.asarray(a, np.float64) / np.linalg.norm(a)
    b = np.asarray(b, np.float64) / np.linalg.norm(b)
    return math.degrees(math.acos(float(np.clip(a @ b, -1.0, 1.0))))


def fidelity_db(ldr: np.ndarray, hdr: np.ndarray, exposure: float) -> float:
    """PSNR (dB) of the HDR re-exposed and re-encoded against the input, unclipped pixels."""
    from spherediff_core.hdr import linear_to_srgb

    keep = ldr.max(axis=-1) < 254
    back = np.clip(linear_to_srgb(hdr[keep] / exposure), 0.0, 1.0) * 255.0
    mse = float(np.mean((back - ldr[keep].astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
