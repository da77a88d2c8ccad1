"""Every image family end to end through the real command and the real worker."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from spherediff_core.adapters import adapter_for_class

from tests.support.engine_process import run_cli_and_worker
from tests.support.tiny_pipelines import FAMILIES as TINY_MODELS
from tests.support.tiny_pipelines import pipeline_class_name

# One tiny image model per family (video models: test_every_video_family.py) -> its family
# code; a family's other tiny variants differ in defaults, which parity and
# test_adapters.py cover.
FAMILIES: dict[str, str] = {}
for _key in TINY_MODELS:
    _adapter = adapter_for_class(pipeline_class_name(_key))
    if not _adapter.is_video and _adapter.family not in FAMILIES.values():
        FAMILIES[_key] = _adapter.family


@pytest.mark.parametrize("tiny", list(FAMILIES))
def test_command_and_worker_generate_with_every_family(tiny, tiny_folders, engine_env, tmp_path):
    model = tiny_folders[tiny]
    common = {"prompt": "a quiet harbour at dusk", "width": 64, "steps": 2, "seed": 11}
    # The command and the worker, same options (side by side): the same image, byte for byte
    cli_out = tmp_path / "cli" / "pano.png"
    args = ["generate", "--model", str(model), "--offline", "--out", str(cli_out)]
    for key in ("prompt", "width", "steps", "seed"):
        args += [f"--{key}", str(common[key])]
    worker_out = tmp_path / "worker" / "pano.png"
    job = {
        "protocol": 1,
        "options": {**common, "model": str(model), "offline": True, "output": str(worker_out)},
    }
    done, (code, events, proc) = run_cli_and_worker(args, job, engine_env, tmp_path)
    assert done.returncode == 0, done.stderr
    with Image.open(cli_out) as im:
        assert im.mode == "RGB" and im.size == (64, 32)
    sidecar = json.loads(cli_out.with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["model"]["family"] == FAMILIES[tiny]
    assert code == 0, proc.stderr()
    assert events[0]["event"] == "hello" and events[-1]["event"] == "result"
    assert worker_out.read_bytes() == cli_out.read_bytes()
