"""Every image family end to end through the real command and the real worker."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from spherediff_core.adapters import adapter_for_class

from tests.support.engine_process import run_cli, run_worker
from tests.support.tiny_pipelines import FAMILIES as TINY_MODELS
from tests.support.tiny_pipelines import pipeline_class_name

# Every tiny image model (video models: test_every_video_family.py) -> its family code.
FAMILIES = {
    key: adapter.family
    for key in TINY_MODELS
    if not (adapter := adapter_for_class(pipeline_class_name(key))).is_video
}


@pytest.mark.parametrize("tiny", list(FAMILIES))
def test_command_and_worker_generate_with_every_family(tiny, tiny_folders, engine_env, tmp_path):
    model = tiny_folders[tiny]
    common = {"prompt": "a quiet harbour at dusk", "width": 64, "steps": 2, "seed": 11}
    # The command
    cli_out = tmp_path / "cli" / "pano.png"
    args = ["generate", "--model", str(model), "--offline", "--out", str(cli_out)]
    for key in ("prompt", "width", "steps", "seed"):
        args += [f"--{key}", str(common[key])]
    done = run_cli(args, engine_env, timeout=300)
    assert done.returncode == 0, done.stderr
    with Image.open(cli_out) as im:
        assert im.mode == "RGB" and im.size == (64, 32)
    sidecar = json.loads(cli_out.with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["model"]["family"] == FAMILIES[tiny]
    # The worker, same options: the same image, byte for byte
    worker_out = tmp_path / "worker" / "pano.png"
    job = {
        "protocol": 1,
        "options": {**common, "model": str(model), "offline": True, "output": str(worker_out)},
    }
    code, events, proc = run_worker([], engine_env, tmp_path, job=job)
    assert code == 0, proc.stderr()
    assert events[0]["event"] == "hello" and events[-1]["event"] == "result"
    assert worker_out.read_bytes() == cli_out.read_bytes()
