#!/usr/bin/env bash
# Sets up everything the tests need (idempotent), then runs them:
#   .venv        the engine: CPU torch 2.13.0, diffusers, transformers, pytest, ruff
#   .venv-bpy50  real Blender 5.0 as a Python module (bpy==5.0.1)
#   .venv-bpy42  real Blender 4.2 LTS as a Python module (bpy==4.2.*)
# Extra arguments go to pytest, e.g.  bash scripts/test.sh tests/core -k plan
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || { echo "need Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 2; }

quiet_pip() { "$1"/bin/python -m pip install -q --disable-pip-version-check "${@:2}"; }

if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
# Pin the CPU build first: an unpinned torch would pull gigabytes of CUDA packages.
quiet_pip .venv "torch==${SPHEREDIFF_TORCH_VERSION:-2.13.0}"
quiet_pip .venv -e ".[test]"

for spec in "bpy50:bpy==5.0.1" "bpy42:bpy==4.2.*"; do
  name=${spec%%:*}; req=${spec#*:}
  if [ ! -x ".venv-$name/bin/python" ]; then "$PY" -m venv ".venv-$name"; fi
  quiet_pip ".venv-$name" "$req"
done
export SPHEREDIFF_BPY_PYTHONS="$PWD/.venv-bpy50/bin/python:$PWD/.venv-bpy42/bin/python"
export SPHEREDIFF_TORCH_THREADS=1 OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1

.venv/bin/python -m ruff check .
exec .venv/bin/python -m pytest "$@"
