"""One generation shared by several processes: torchrun, gloo on the CPU, real files.

The command (``-m spherediff_core generate``) and the worker (``-m spherediff_core.worker``)
run under ``python -m torch.distributed.run --standalone`` with 2 and 3 processes and must
write what one process writes (the sums over ranks are added in another order: within one
level of 255), with the run's layout in the sidecar. A cancel sent to rank 0 and a rank
killed mid-run end every process, and leave no file behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from spherediff_core.distributed import DistContext

from tests.support.engine_process import WorkerProcess, run_worker, torchrun

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="this PyTorch has no gloo backend",
)

# Fields of the sidecar that may differ between two runs of the same generation.
RUN_FIELDS = {"created", "timings", "image", "distributed", "frames_dir", "mp4"}


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def _same_generation(a: dict, b: dict) -> dict:
    """The sidecar less its run fields and output paths."""
    out = {k: v for k, v in a.items() if k not in RUN_FIELDS}
    out["options"] = {k: v for k, v in a["options"].items() if k != "output"}
    other = {k: v for k, v in b.items() if k not in RUN_FIELDS}
    other["options"] = {k: v for k, v in b["options"].items() if k != "output"}
    assert out == other
    return out


def test_views_are_shared_in_balanced_blocks_and_rounds_line_up():
    for world in (1, 2, 3, 8):
        ranks = [DistContext(r, world, r, "gloo", 60.0) for r in range(world)]
        blocks = [ctx.shard(89).tolist() for ctx in ranks]
        assert [v for block in blocks for v in block] == list(range(89))  # once, in order
        sizes = [len(b) for b in blocks]
        assert max(sizes) - min(sizes) <= 1
        assert ranks[0].describe(89)["views_per_rank"] == sizes
        # Every rank runs as many rounds as the busiest needs.
        assert {ctx.rounds(89, 8) for ctx in ranks} == {-(-max(sizes) // 8)}


def _cli(env: dict, args: list[str], n_procs: int) -> subprocess.CompletedProcess:
    launcher = [sys.executable] if n_procs == 1 else torchrun(n_procs)
    return subprocess.run(
        [*launcher, "-m", "spherediff_core", "generate", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_two_and_three_processes_write_the_one_process_panorama(tiny_sd15, engine_env, tmp_path):
    common = ["--model", str(tiny_sd15), "--prompt", "a quiet harbour at dusk", "--steps", "3"]
    common += ["--width", "256", "--seed", "5", "--device", "cpu", "--quiet"]
    common += ["--guidance", "4", "--negative-prompt", "fog"]  # CFG items shard too
    common += ["--plan-cache-dir", str(tmp_path / "plans")]
    images, sidecars = {}, {}
    for n in (1, 2, 3):
        out = tmp_path / f"n{n}" / "pano.png"
        done = _cli(engine_env, [*common, "--out", str(out)], n)
        assert done.returncode == 0, done.stderr[-3000:]
        images[n] = _png(out)
        sidecars[n] = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
        # Rank 0 alone writes and reports: one summary line, one image, one sidecar.
        assert done.stdout.count("wrote ") == 1, done.stdout
        assert sorted(p.name for p in out.parent.iterdir()) == ["pano.json", "pano.png"]
    assert "distributed" not in sidecars[1]
    for n in (2, 3):
        assert int(np.abs(images[n] - images[1]).max()) <= 1
        assert float((images[n] != images[1]).mean()) < 0.01
        _same_generation(sidecars[n], sidecars[1])
        layout = sidecars[n]["distributed"]
        assert layout["world_size"] == n and layout["backend"] == "gloo"
        assert sum(layout["views_per_rank"]) == sidecars[1]["views"]
        assert max(layout["views_per_rank"]) - min(layout["views_per_rank"]) <= 1


def _video_job(folder: Path, model: Path, plans: Path) -> dict:
    return {
        "protocol": 1,
        "plan_cache_dir": str(plans),
        "options": {
            "prompt": "clouds drifting over a ridge",
            "model": str(model),
            "steps": 2,
            "width": 256,
            "seed": 2,
            "device": "cpu",
            "video": True,
            "frames": 17,
            "output": str(folder / "clip.png"),
        },
    }


def test_a_video_through_the_worker_on_two_and_three_processes(tiny_folders, engine_env, tmp_path):
    frames, sidecars = {}, {}
    for n in (1, 2, 3):
        job = _video_job(tmp_path / f"n{n}", tiny_folders["ltx"], tmp_path / "plans")
        launcher = None if n == 1 else torchrun(n)
        rc, events, worker = run_worker([], engine_env, tmp_path, job, 300, launcher)
        assert rc == 0, worker.stderr()[-3000:]
        # The protocol is rank 0's alone: one hello, one result, progress in order.
        kinds = [e["event"] for e in events]
        assert kinds[0] == "hello" and kinds[-1] == "result" and kinds.count("hello") == 1
        result = events[-1]
        frames[n] = [_png(p) for p in sorted(Path(result["frames_dir"]).glob("*.png"))]
        sidecars[n] = json.loads(Path(result["sidecar"]).read_text(encoding="utf-8"))
    assert len(frames[1]) == 17
    for n in (2, 3):
        assert len(frames[n]) == 17
        assert max(int(np.abs(a - b).max()) for a, b in zip(frames[n], frames[1], strict=True)) <= 1
        _same_generation(sidecars[n], sidecars[1])
        assert sidecars[n]["distributed"]["world_size"] == n


def _rank_pids(mark: str) -> dict[int, int]:
    """rank -> pid of the live processes whose environment holds ``mark`` (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SPHEREDIFF_TEST_MARK={mark}".encode() not in environ:
            continue
        ranks = [e for e in environ if e.startswith(b"RANK=")]
        if ranks:
            found[int(ranks[0][5:])] = int(entry.name)
    return found


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds the ranks' processes through /proc"
)


@linux_only
def test_a_cancel_sent_to_rank_0_stops_every_rank_and_leaves_nothing(
    tiny_sd15, engine_env, tmp_path
):
    mark = uuid.uuid4().hex
    env = {**engine_env, "SPHEREDIFF_TEST_MARK": mark}
    out = tmp_path / "out"
    job = {
        "protocol": 1,
        "plan_cache_dir": str(tmp_path / "plans"),
        "options": {
            "prompt": "a salt flat",
            "model": str(tiny_sd15),
            "steps": 40,
            "width": 256,
            "device": "cpu",
            "output": str(out / "pano.png"),
        },
    }
    worker = WorkerProcess([], env, tmp_path / "stderr.txt", torchrun(2))
    worker.send(json.dumps(job))
    seen = []
    while (event := worker.next_event(240)) is not None:
        seen.append(event)
        if event["event"] == "progress" and event["phase"] == "denoise" and event["step"] >= 2:
            assert set(_rank_pids(mark)) == {0, 1}
            worker.send("cancel")
            break
    events = seen + worker.events(120)
    rc = worker.wait(120)
    assert events[-1]["event"] == "error" and events[-1]["code"] == "cancelled", events[-3:]
    assert rc != 0
    assert not out.exists() or not any(out.iterdir())
    time.sleep(0.5)
    assert _rank_pids(mark) == {}, "a rank outlived the cancelled job"


@linux_only
def test_a_rank_that_dies_fails_the_job_cleanly(tiny_sd15, engine_env, tmp_path):
    mark = uuid.uuid4().hex
    # A short collective timeout: whatever the transport notices, nothing waits long.
    env = {**engine_env, "SPHEREDIFF_TEST_MARK": mark, "SPHEREDIFF_DIST_TIMEOUT_S": "60"}
    out = tmp_path / "out" / "pano.png"
    args = ["--model", str(tiny_sd15), "--prompt", "a canyon", "--steps", "40", "--width", "256"]
    args += ["--device", "cpu", "--out", str(out), "--plan-cache-dir", str(tmp_path / "plans")]
    proc = subprocess.Popen(
        [*torchrun(2), "-m", "spherediff_core", "generate", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:  # rank 0's plain progress lines
            lines.append(line)
            step = re.search(r"denoise .*\(step (\d+)/", line)
            if step and int(step.group(1)) >= 2:
                break
        pids = _rank_pids(mark)
        assert set(pids) == {0, 1}, "".join(lines[-20:])
        os.kill(pids[1], signal.SIGKILL)
        start = time.monotonic()
        _, rest = proc.communicate(timeout=120)
        lines.append(rest)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert took < 90, f"the job took {took:.0f} s to fail"
    assert "spherediff" in lines[-1] and ("error" in lines[-1] or "cancel" in lines[-1])
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())
    time.sleep(0.5)
    assert _rank_pids(mark) == {}, "a rank outlived the failed job"
