"""Fixtures of the add-on tests: a tiny model, a plan cache (the built extension,
``extension_zip``, is in tests/conftest.py: the reliability table uses it too).

See addon_support.py for how the scenarios run inside the bpy interpreters.
"""

from __future__ import annotations

from pathlib import Path

import pytest


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
