"""Helpers of the add-on tests: bpy interpreters, running scenarios in them.

The add-on tests run ``addon_scenarios.py`` inside every bpy interpreter (like the ERP
convention test): from ``SPHEREDIFF_BPY_PYTHONS`` (``os.pathsep``-separated), else
``.venv-bpy50`` and ``.venv-bpy42`` at the repository root. They fail, never skip, when
there is none.

Each scenario gets its own Blender user folder (``BLENDER_USER_RESOURCES``: the extension
is installed into a throw-away ``user_default`` repository) and its own ``TMPDIR``, so the
tests can check that nothing is left behind. The worker is this venv's Python
(``SPHEREDIFF_PYTHON``), with one torch thread.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SCENARIOS = HERE / "addon_scenarios.py"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_extension.py"


def bpy_pythons() -> list[str]:
    env = os.environ.get("SPHEREDIFF_BPY_PYTHONS")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    candidates = [
        REPO_ROOT / ".venv-bpy50" / "bin" / "python",
        REPO_ROOT / ".venv-bpy42" / "bin" / "python",
    ]
    return [str(p) for p in candidates if p.exists()]


BPY_PYTHONS = bpy_pythons()


def bpy_exe_param(request) -> str:
    """The bpy interpreter of a parametrised fixture; fails (not skips) without one."""
    exe = request.param
    if exe is None:
        pytest.fail(
            "no bpy interpreter: set SPHEREDIFF_BPY_PYTHONS or create .venv-bpy50 / .venv-bpy42 "
            "(see tests/blender/test_erp_convention.py)"
        )
    if not Path(exe).exists():
        pytest.fail(f"bpy interpreter {exe!r} (SPHEREDIFF_BPY_PYTHONS) not found")
    return exe


def blender_ext_tools() -> list[Path]:
    """Blender's extension tool (blender_ext.py) of each bpy installation here."""
    tools = []
    for exe in BPY_PYTHONS:
        lib = Path(exe).absolute().parent.parent / "lib"  # the venv, not the symlink target
        tools += sorted(
            lib.glob("python*/site-packages/bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py")
        )
    return tools


def scenario_env(base: Path, plan_cache: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    user, tmp = base / "blender-user", base / "tmp"
    user.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    env.update(
        BLENDER_USER_RESOURCES=str(user),
        TMPDIR=str(tmp),
        TEMP=str(tmp),
        TMP=str(tmp),
        SPHEREDIFF_PYTHON=sys.executable,
        SPHEREDIFF_TORCH_THREADS="1",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(base / "hf-home"),
    )
    if plan_cache is not None:
        env["SPHEREDIFF_CACHE_DIR"] = str(plan_cache)
    return env


class Scenario:
    """One scenario running in a bpy interpreter (a subprocess started at once)."""

    def __init__(
        self,
        exe: str,
        scenario: str,
        zip_path: Path,
        base: Path,
        *,
        extra: Sequence[str] = (),
        plan_cache: Path | None = None,
        timeout: float = 240,
        env: dict[str, str] | None = None,
    ) -> None:
        self.exe, self.scenario, self.base, self.timeout = exe, scenario, base, timeout
        self.work = base / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.out_json = base / "out.json"
        cmd = [
            exe,
            str(SCENARIOS),
            "--scenario",
            scenario,
            "--zip",
            str(zip_path),
            "--out",
            str(self.out_json),
            "--work",
            str(self.work),
            *extra,
        ]
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**scenario_env(base, plan_cache), **(env or {})},
            cwd=self.work,
        )
        self._result: dict | None = None

    def result(self) -> dict:
        """Wait for the scenario; its JSON (with timing and logs), or fail the test."""
        if self._result is not None:
            return self._result
        try:
            stdout, stderr = self.proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            stdout, stderr = self.proc.communicate()
            pytest.fail(
                f"{self.exe} {self.scenario}: timed out after {self.timeout} s\n"
                f"{stdout[-4000:]}\n{stderr[-4000:]}"
            )
        elapsed = time.monotonic() - self.t0
        code = self.proc.returncode
        logs = f"STDOUT:\n{stdout[-6000:]}\nSTDERR:\n{stderr[-6000:]}"
        name = f"{self.exe} {self.scenario}"
        assert self.out_json.is_file(), f"{name}: no output ({code})\n{logs}"
        out = json.loads(self.out_json.read_text(encoding="utf-8"))
        assert "fatal" not in out, f"{name} failed:\n{out['fatal']}\n{logs}"
        assert code == 0, f"{name} exited {code}\n{logs}"
        out.update(_elapsed_s=elapsed, _stdout=stdout, _stderr=stderr)
        out.update(_tmp=str(self.base / "tmp"), _work=str(self.work))
        print(f"\n{self.scenario} in Blender {out['blender_version']}: {elapsed:.1f} s")
        self._result = out
        return out


class ScenarioPool:
    """Starts a scenario in every bpy interpreter at once (on first use), so the Blenders
    run side by side; ``get(exe)`` waits for one of them."""

    def __init__(self, scenario: str, make_args) -> None:
        self.scenario = scenario
        self.make_args = make_args  # exe -> (zip_path, base, kwargs)
        self.running: dict[str, Scenario] = {}

    def get(self, exe: str) -> dict:
        if not self.running:
            for other in [exe, *[e for e in BPY_PYTHONS if e != exe]]:
                if Path(other).exists():
                    zip_path, base, kwargs = self.make_args(other)
                    self.running[other] = Scenario(other, self.scenario, zip_path, base, **kwargs)
        if exe not in self.running:
            zip_path, base, kwargs = self.make_args(exe)
            self.running[exe] = Scenario(exe, self.scenario, zip_path, base, **kwargs)
        return self.running[exe].result()

    def close(self) -> None:
        for sc in self.running.values():
            if sc.proc.poll() is None:
                sc.proc.kill()
                sc.proc.communicate()


def run_scenario(exe: str, scenario: str, zip_path: Path, base: Path, **kwargs) -> dict:
    """Run one scenario in one bpy interpreter and wait for it."""
    return Scenario(exe, scenario, zip_path, base, **kwargs).result()
