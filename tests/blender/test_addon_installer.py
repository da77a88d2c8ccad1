"""Install Dependencies, offline and fast: inside each bpy, the operator makes a virtual
environment with Blender's Python (sys.executable) in the extension's user folder and
installs the bundled engine wheel from a local wheel folder (``--no-index --find-links``)
without its dependencies (``with_dependencies=False``: ``--no-deps``, so no torch). The
worker's ``--hello`` then runs in that environment, and Check Worker reports exactly what
is missing (torch, diffusers, transformers).

The full installation (torch from PyPI, or PyTorch's CUDA index on Windows) needs the
network and several GB; its commands are checked in test_installer_plan.py.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from addon_support import BPY_PYTHONS, ScenarioPool, bpy_exe_param


@pytest.fixture(scope="module")
def wheelhouse(extension_zip, tmp_path_factory) -> Path:
    """A local wheel folder holding only the engine wheel (from the built extension)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    with zipfile.ZipFile(extension_zip) as z:
        for name in z.namelist():
            if name.startswith("wheels/") and name.endswith(".whl"):
                with z.open(name) as src, open(folder / Path(name).name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    assert list(folder.glob("spherediff-*.whl"))
    return folder


@pytest.fixture(scope="module")
def pool(extension_zip, wheelhouse, tmp_path_factory):
    def make_args(exe):
        kwargs = {"extra": ["--wheelhouse", str(wheelhouse)], "timeout": 240}
        return extension_zip, tmp_path_factory.mktemp("installer"), kwargs

    pool = ScenarioPool("installer", make_args)
    yield pool
    pool.close()


@pytest.fixture(params=BPY_PYTHONS or [None], ids=str)
def installed(request, pool):
    return pool.get(bpy_exe_param(request))


def test_installer_makes_a_working_worker_environment(installed):
    r = installed
    # Before: SPHEREDIFF_PYTHON unset and no environment yet, so no worker Python.
    assert r["before"][0] is None and "Install Dependencies" in r["before"][2], r["before"]
    assert r["result"] == ["FINISHED"], (r["error"], r["state"], r["log_text"])
    assert not r["state"]["failed"], r["state"]
    venv = Path(r["venv"])
    assert venv.parent.name == "spherediff" and ".user" in venv.parts, venv
    python, source, problem = r["after"]
    assert problem == "" and source == "the add-on's environment", r["after"]
    assert Path(python) == venv / "bin" / "python"
    hello = r["state"]["hello"]
    assert hello is not None and hello["protocol"] == 1 and hello["version"] == "0.1.0", hello
    assert hello["torch"] is None and hello["diffusers"] is None  # --no-deps: engine only
    # The log keeps every command and its output; pip ran offline from the wheel folder.
    log = r["log_text"]
    assert "--no-index" in log and "--find-links" in log and "--no-deps" in log, log
    assert "Successfully installed spherediff" in log, log
    assert "Checking the worker" in log


def test_check_worker_says_exactly_what_is_missing(installed):
    check = installed["check"]
    assert not check["ok"]
    assert any("SphereDiff engine 0.1.0 (protocol 1)" in line for line in check["lines"]), check
    assert any(
        "Missing in the worker Python: torch, diffusers, transformers" in p
        for p in check["problems"]
    ), check
    assert installed["heavy_modules"] == []
