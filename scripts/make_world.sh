#!/usr/bin/env bash
# The main job: headless Blender generates a 360° World with SphereDiff and renders a preview.
#
#   bash scripts/make_world.sh [--prompt TEXT] [--model HUB_ID_OR_FOLDER] [--size 1K|2K|4K|8K]
#                              [--steps N] [--seed N] [--out DIR]
#
# Sets up what it needs (idempotent): .venv (the engine's worker Python), .venv-bpy50
# (Blender 5.0 as a Python module), the extension .zip; installs the extension into a
# private Blender user folder under the output folder. Writes DIR/world.blend,
# DIR/preview.png and the panorama (DIR/spherediff/*.png, the HDR .exr the World shows, and
# .json), with the SphereDiff Sun lamp when it has a sun. The default model is
# SANA 1600M; it is fetched into the Hugging Face cache first when the Hub is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers
OUT=out/world
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --prompt|--size|--steps|--seed) ARGS+=("$1" "$2"); shift 2 ;;
    # The comment block at the top of this file, without its "# " (and nothing after it).
    -h|--help) awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

source scripts/setup_env.sh  # after the arguments: --help needs no Python
setup_engine_venv
setup_bpy_venv bpy50 "bpy==5.0.1"
echo "== building the extension"
.venv/bin/python scripts/build_extension.py >/dev/null

if [ ! -d "$MODEL" ]; then
  echo "== fetching $MODEL into the Hugging Face cache (skipped when already there)"
  if ! .venv/bin/python - "$MODEL" <<'PY'
import sys
from huggingface_hub import snapshot_download
try:
    snapshot_download(sys.argv[1], allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.py"])
except Exception as exc:  # noqa: BLE001 - any failure gets the same advice
    sys.exit(f"{type(exc).__name__}: {exc}")
PY
  then
    cat >&2 <<MSG

The model '$MODEL' is not in the Hugging Face cache and the Hub cannot be reached.
Either fetch it on a machine with internet access and copy the cache over:
    hf download $MODEL
    (then copy ~/.cache/huggingface to this machine, or set HF_HOME to where it is)
or pass a local diffusers model folder (one with model_index.json):
    bash scripts/make_world.sh --model /path/to/model-folder
MSG
    exit 3
  fi
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)  # absolute: Blender runs with its own idea of relative paths
echo "== generating the World and rendering a preview in headless Blender"
BLENDER_USER_RESOURCES="$OUT/.blender-user" SPHEREDIFF_PYTHON="$PWD/.venv/bin/python" \
  HF_HUB_OFFLINE=1 .venv-bpy50/bin/python scripts/make_world_blender.py \
  --zip "$(ls -t dist/spherediff-*.zip | head -1)" --model "$MODEL" --out "$OUT" ${ARGS[@]+"${ARGS[@]}"}
