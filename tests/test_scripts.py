"""The shell scripts a new user runs first: ``make_world.sh --help`` and ``test.sh``.

``test.sh`` runs in a copy of scripts/ whose interpreters are stand-ins (shell scripts that
print how they were called), so the test sees what the script says and does without
installing anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

# Prints its call; "-m venv DIR" makes DIR/bin/python (a copy of itself), as venv would.
FAKE_PYTHON = """#!/bin/sh
echo "CALL $(basename "$(dirname "$(dirname "$0")")") $*"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
fi
"""


def test_make_world_help_is_the_usage_only():
    """--help prints the comment block (no `set -euo pipefail`), and needs no Python."""
    env = {**os.environ, "PYTHON": "/nonexistent/python3.11"}
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "make_world.sh"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("The main job: headless Blender generates"), lines[:2]
    assert any("--prompt TEXT" in line for line in lines), proc.stdout
    assert "set -euo" not in proc.stdout and "pipefail" not in proc.stdout, proc.stdout
    assert not [line for line in lines if line.startswith("#")], proc.stdout
    assert proc.stderr == ""


def _fake_checkout(root: Path) -> Path:
    (root / "scripts").mkdir(parents=True)
    for name in ("test.sh", "setup_env.sh"):
        shutil.copy2(SCRIPTS / name, root / "scripts" / name)
    base = root / "base-python" / "bin" / "python"
    base.parent.mkdir(parents=True)
    base.write_text(FAKE_PYTHON)
    base.chmod(0o755)
    return base


def test_test_sh_says_each_step_before_doing_it(tmp_path):
    """A fresh checkout: every environment is created and filled, and each step (venv,
    pip install, ruff, pytest) is announced on its own line before it runs."""
    base = _fake_checkout(tmp_path)
    env = {**os.environ, "PYTHON": str(base)}
    proc = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "test.sh"), "-q", "tests/core"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    calls = [line for line in lines if line.startswith("CALL ")]
    # What ran: three venvs made by the base Python, their installs, ruff, pytest.
    assert sum("-m venv" in c for c in calls) == 3, calls
    assert calls[-1] == "CALL .venv -m pytest -q tests/core", calls
    assert any("-m ruff check ." in c for c in calls), calls
    # Every call comes right after a line that says what it is.
    for i, line in enumerate(lines):
        if line.startswith("CALL "):
            assert i > 0 and lines[i - 1].startswith("== "), (i, lines[: i + 1])
    said = "\n".join(line for line in lines if line.startswith("== "))
    for words in ("creating .venv", ".venv: torch", "bpy==5.0.1", "bpy==4.2", "ruff", "pytest"):
        assert words in said, (words, said)
