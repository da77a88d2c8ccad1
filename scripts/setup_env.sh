# Sourced by test.sh and make_world.sh: idempotent set-up of the project's environments.
#   setup_engine_venv   .venv: torch (pinned), the engine with its model and test extras
#   setup_bpy_venv N R  .venv-N: real Blender as a Python module (requirement R)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || { echo "need Python 3.11 (set PYTHON=/path/to/python3.11)" >&2; exit 2; }

quiet_pip() { "$1"/bin/python -m pip install -q --disable-pip-version-check "${@:2}"; }

# Each step says what it does first: the first run downloads several GB in silence (pip -q).
step() { echo "== $*"; }

setup_engine_venv() {
  if [ ! -x .venv/bin/python ]; then step "creating .venv with $PY"; "$PY" -m venv .venv; fi
  # Pin torch first: here that is the CPU wheel on disk; an unpinned torch would pull
  # gigabytes of CUDA packages (on a Linux GPU machine PyPI's 2.13.0 is the CUDA build).
  step ".venv: torch ${SPHEREDIFF_TORCH_VERSION:-2.13.0} (the first time: a large download)"
  quiet_pip .venv "torch==${SPHEREDIFF_TORCH_VERSION:-2.13.0}"
  step ".venv: the engine with diffusers, transformers, pytest and ruff (pip install -e .[test])"
  quiet_pip .venv -e ".[test]"
}

setup_bpy_venv() {
  if [ ! -x ".venv-$1/bin/python" ]; then step "creating .venv-$1 with $PY"; "$PY" -m venv ".venv-$1"; fi
  step ".venv-$1: Blender as a Python module, $2 (the first time: about 1 GB)"
  quiet_pip ".venv-$1" "$2"
}
