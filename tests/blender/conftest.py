"""Fixtures of the add-on tests: the built extension, a tiny model, a plan cache.

See addon_support.py for how the scenarios run inside the bpy interpreters.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from addon_support import BUILD_SCRIPT


@pytest.fixture(scope="session")
def extension_zip(tmp_path_factory) -> Path:
    """dist .zip built by scripts/build_extension.py (wheel + Blender's build + validate)."""
    out = tmp_path_factory.mktemp("dist")
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    zips = sorted(out.glob("spherediff-*.zip"))
    assert len(zips) == 1, (zips, proc.stdout)
    print(f"\nbuilt {zips[0].name} in {time.monotonic() - t0:.1f} s")
    return zips[0]


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory) -> Path:
    """A tiny random-weight Stable Diffusion 1.5 pipeline folder (built offline)."""
    try:
        from tests.support.tiny_pipelines import build_tiny_pipeline
    except ImportError:
        from support.tiny_pipelines import build_tiny_pipeline
    folder = tmp_path_factory.mktemp("models") / "tiny-sd15"
    build_tiny_pipeline("sd15", folder)
    return folder


@pytest.fixture(scope="session")
def plan_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("plans")
