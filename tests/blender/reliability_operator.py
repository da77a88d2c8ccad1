"""Bad script arguments to ``bpy.ops.spherediff.generate``, run INSIDE a bpy interpreter.

    <bpy python> tests/blender/reliability_operator.py --zip EXT.zip --out OUT.json
        --work DIR --model TINY_MODEL_DIR --cases CASES.json

CASES.json maps a case id to the operator's keyword arguments (and optionally
``"env_python"``: the worker Python to use for that call, and ``"readonly_output"``: make the
output folder read-only first). For each case this records the operator's result, the
error it reported, the time it took, whether the World stayed exactly as it was, and
the staging folders and child processes left behind. The pytest side
(tests/test_reliability.py) asserts and tabulates.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
import traceback
from pathlib import Path

import bpy

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import addon_scenarios as sc  # noqa: E402 - needs bpy first and this folder on sys.path


def parse_args() -> argparse.Namespace:
    argv = sys.argv[1:]
    if "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    p = argparse.ArgumentParser()
    for name in ("--zip", "--out", "--work", "--model", "--cases"):
        p.add_argument(name, required=True)
    return p.parse_args(argv)


def _outputs(work: Path) -> list[Path]:
    folder = work / "spherediff"
    return sorted(folder.rglob("*")) if folder.exists() else []


def run_cases(args, out: dict) -> None:
    out["install"] = sc.install_and_enable(args.zip)
    work = Path(args.work)
    scene = bpy.context.scene
    if scene.world is None:
        scene.world = bpy.data.worlds.new("World")
    s = scene.spherediff
    s.prompt = "a misty pine forest at dawn"
    s.model_preset = "CUSTOM"
    s.custom_model = args.model
    s.size = "CUSTOM"
    s.width = 64
    s.auto_steps = False
    s.steps = 2
    s.random_seed = False
    s.seed = 7
    s.output_dir = str(work / "spherediff")
    cases = json.loads(Path(args.cases).read_text(encoding="utf-8"))
    results = {}
    for case_id, spec in cases.items():
        # "$MODEL" stands for the tiny model's folder, known only here.
        spec = {k: args.model if v == "$MODEL" else v for k, v in spec.items()}
        env_python = spec.pop("env_python", None)
        readonly = spec.pop("readonly_output", None)
        saved = os.environ.get("SPHEREDIFF_PYTHON")
        if env_python is not None:
            os.environ["SPHEREDIFF_PYTHON"] = env_python
        if readonly:
            folder = Path(readonly)
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        before = sc.world_snapshot(scene)
        earlier = set(_outputs(work))
        try:
            res = sc.call_generate(**spec)
        except (TypeError, ValueError) as exc:  # Blender refused the argument itself
            res = {"result": None, "error": f"{type(exc).__name__}: {exc}", "seconds": 0.0}
            res["last_error"] = s.last_error
        finally:
            if env_python is not None:
                if saved is None:
                    os.environ.pop("SPHEREDIFF_PYTHON", None)
                else:
                    os.environ["SPHEREDIFF_PYTHON"] = saved
            if readonly:
                Path(readonly).chmod(stat.S_IRWXU)
        res["unchanged"] = sc.world_snapshot(scene) == before
        res["staging"] = sc.staging_leftovers()
        res["children"] = sc.stray_children()  # (the warm worker waits for the next job)
        outputs = [p for p in _outputs(work) if p not in earlier]  # this case's alone
        res["outputs"] = [str(p.relative_to(work)) for p in outputs]
        res["sidecars"] = {
            str(p.relative_to(work)): json.loads(p.read_text(encoding="utf-8"))
            for p in outputs
            if p.suffix == ".json"
        }
        results[case_id] = res
        s.last_error = ""
    out["cases"] = results
    out["heavy_modules"] = sc.heavy_modules()


def main() -> int:
    args = parse_args()
    out: dict = {"blender_version": bpy.app.version_string}
    code = 0
    t0 = time.monotonic()
    try:
        run_cases(args, out)
    except Exception:  # noqa: BLE001 - reported to the test, which fails on it
        out["fatal"] = traceback.format_exc()
        code = 1
    out["seconds"] = time.monotonic() - t0
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=1, default=str)
    return code


if __name__ == "__main__":
    sys.exit(main())
