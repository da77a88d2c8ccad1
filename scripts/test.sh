#!/usr/bin/env bash
# Sets up everything the tests need (idempotent), then runs them:
#   .venv        the engine: torch 2.13.0 (CPU here), diffusers, transformers, pytest, ruff
#   .venv-bpy50  real Blender 5.0 as a Python module (bpy==5.0.1)
#   .venv-bpy42  real Blender 4.2 LTS as a Python module (bpy==4.2.*)
# Extra arguments go to pytest, e.g.  bash scripts/test.sh tests/core -k plan
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
setup_engine_venv
setup_bpy_venv bpy50 "bpy==5.0.1"
setup_bpy_venv bpy42 "bpy==4.2.*"
export SPHEREDIFF_BPY_PYTHONS="$PWD/.venv-bpy50/bin/python:$PWD/.venv-bpy42/bin/python"
export SPHEREDIFF_TORCH_THREADS=1 OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1

step "ruff check ."
.venv/bin/python -m ruff check .
step "pytest $*"
exec .venv/bin/python -m pytest "$@"
