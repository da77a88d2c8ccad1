"""Shared test setup: one torch thread (2-core machines thrash with more) and cached plans."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from spherediff_core.plan import PlanConfig, SamplingPlan, build_plan


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


_PLANS: dict[PlanConfig, SamplingPlan] = {}


@pytest.fixture(scope="session")
def plan_for():
    """Build (once per session) the plan of a PlanConfig's keyword arguments."""

    def get(**kwargs) -> SamplingPlan:
        config = PlanConfig(**kwargs)
        if config not in _PLANS:
            _PLANS[config] = build_plan(config)
        return _PLANS[config]

    return get


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory):
    """A tiny random-weight Stable Diffusion 1.5 pipeline folder, built once per session."""
    from tests.support.tiny_pipelines import build_tiny_pipeline

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_tiny_pipeline("sd15", tmp_path_factory.mktemp("models") / "sd15")
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    """family -> folder of its tiny pipeline, every family and FLUX.1-schnell's variant
    ("flux-schnell"), built once per session (the adapter and parity tests share them)."""
    from tests.support.tiny_pipelines import (
        FAMILIES,
        build_tiny_flux_schnell,
        build_tiny_pipeline,
    )

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("tiny_models")
        folders = {fam: build_tiny_pipeline(fam, root / fam) for fam in FAMILIES}
        folders["flux-schnell"] = build_tiny_flux_schnell(folders["flux"], root / "flux-schnell")
        return folders
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def engine_env(tmp_path_factory):
    """Environment for engine subprocesses: PYTHONPATH=<repo>/core, 1 thread, offline."""
    from tests.support.engine_process import engine_env as make_env

    return make_env(tmp_path_factory.mktemp("engine-cache"))


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory) -> Path:
    """dist .zip built by scripts/build_extension.py (wheel + Blender's build + validate)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "build_extension.py"
    out = tmp_path_factory.mktemp("dist")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script), "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    zips = sorted(out.glob("spherediff-*.zip"))
    assert len(zips) == 1, (zips, proc.stdout)
    print(f"\nbuilt {zips[0].name} in {time.monotonic() - t0:.1f} s")
    return zips[0]
