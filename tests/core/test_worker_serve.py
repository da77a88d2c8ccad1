"""A serving worker (``--serve``): many jobs through one process, the model kept loaded."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from spherediff_core.errors import EXIT_CANCELLED

from tests.core.test_worker import check_hello, check_progress, make_job
from tests.support.engine_process import WorkerProcess, run_worker


def read_job_events(proc: WorkerProcess, timeout: float = 120) -> list[dict]:
    """The events of one job: up to and including its result or error."""
    events = []
    while True:
        ev = proc.next_event(timeout)
        assert ev is not None, f"the worker ended mid-job; stderr:\n{proc.stderr()}"
        events.append(ev)
        if ev["event"] in ("result", "error"):
            return events


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def with_id(job: dict, job_id) -> dict:
    return {**job, "id": job_id}


def test_two_jobs_through_one_worker_load_the_model_once(engine_env, tiny_sd15, tmp_path):
    """The second job loads nothing, carries its id on every event, and makes exactly the
    image a fresh one-job worker makes for the same options."""
    out = tmp_path / "warm"
    proc = WorkerProcess(["--serve"], engine_env, tmp_path / "stderr.txt")
    hello = proc.next_event()
    assert hello["serve"] is True
    check_hello({k: v for k, v in hello.items() if k != "serve"})

    first = make_job(tiny_sd15, out / "a.png", prompt="a red sky over the sea")
    second = make_job(tiny_sd15, out / "b.png", prompt="a green valley", seed=11)
    proc.send(json.dumps(with_id(first, "one")))
    proc.send(json.dumps(with_id(second, 2)))
    events_1 = read_job_events(proc)
    events_2 = read_job_events(proc)
    proc.close_stdin()
    assert proc.next_event() is None  # end of input: the worker exits by itself
    assert proc.wait() == 0

    assert {ev["job"] for ev in events_1} == {"one"}
    assert {ev["job"] for ev in events_2} == {2}
    result_1, result_2 = events_1[-1], events_2[-1]
    assert result_1["event"] == result_2["event"] == "result", (events_1[-1], events_2[-1])
    assert result_1["loaded"] is True and result_2["loaded"] is False
    progress_1 = [{k: v for k, v in ev.items() if k != "job"} for ev in events_1[:-1]]
    progress_2 = [{k: v for k, v in ev.items() if k != "job"} for ev in events_2[:-1]]
    assert check_progress(progress_1)[0] == "load"
    assert "load" not in check_progress(progress_2)  # no model load events the second time
    assert json.loads((out / "b.json").read_text())["timings"]["load"] == 0.0

    # A fresh worker for the second job's options: the very same pixels.
    fresh_job = make_job(tiny_sd15, tmp_path / "fresh" / "b.png", prompt="a green valley", seed=11)
    code, fresh_events, _ = run_worker([], engine_env, tmp_path, job=fresh_job)
    assert code == 0, fresh_events[-1]
    assert np.array_equal(pixels(out / "b.png"), pixels(tmp_path / "fresh" / "b.png"))


def test_the_same_job_twice_makes_the_same_image(engine_env, tiny_sd15, tmp_path):
    """Cached prompt embeddings and plans change nothing: a repeat is bit-identical."""
    proc = WorkerProcess(["--serve"], engine_env, tmp_path / "stderr.txt")
    assert proc.next_event()["event"] == "hello"
    for name in ("a", "b"):
        proc.send(json.dumps(make_job(tiny_sd15, tmp_path / f"{name}.png", seed=5)))
    assert read_job_events(proc)[-1]["event"] == "result"
    assert read_job_events(proc)[-1]["loaded"] is False
    proc.close_stdin()
    assert proc.wait() == 0
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))


def test_a_bad_job_is_answered_and_the_worker_goes_on(engine_env, tiny_sd15, tmp_path):
    proc = WorkerProcess(["--serve"], engine_env, tmp_path / "stderr.txt")
    assert proc.next_event()["event"] == "hello"
    proc.send("this is not json")
    proc.send(json.dumps(with_id(make_job(tiny_sd15, tmp_path / "x.png", steps=-1), "bad")))
    proc.send(json.dumps(with_id(make_job(tiny_sd15, tmp_path / "ok.png"), "good")))
    not_json = read_job_events(proc)
    assert not_json[-1]["code"] == "bad_input" and "not valid JSON" in not_json[-1]["message"]
    bad = read_job_events(proc)
    assert bad == [bad[-1]] and bad[-1]["code"] == "bad_input" and bad[-1]["job"] == "bad"
    assert "steps" in bad[-1]["message"]
    good = read_job_events(proc)
    assert good[-1]["event"] == "result" and good[-1]["job"] == "good"
    proc.close_stdin()
    assert proc.wait() == 0
    assert not (tmp_path / "x.png").exists()


def test_cancel_stops_the_job_and_the_worker_serves_the_next(engine_env, tiny_sd15, tmp_path):
    """``cancel`` ends the running job (no files) and the model stays loaded for the next."""
    out = tmp_path / "out"
    proc = WorkerProcess(["--serve"], engine_env, tmp_path / "stderr.txt")
    assert proc.next_event()["event"] == "hello"
    proc.send(json.dumps(with_id(make_job(tiny_sd15, out / "slow.png", steps=200), "slow")))
    while True:  # wait until it denoises
        ev = proc.next_event()
        if ev["event"] == "progress" and ev["phase"] == "denoise":
            break
    t0 = time.monotonic()
    proc.send("cancel")
    events = read_job_events(proc)
    assert time.monotonic() - t0 < 2.0
    assert events[-1]["event"] == "error" and events[-1]["code"] == "cancelled"
    assert events[-1]["job"] == "slow"
    assert not out.exists() or not any(out.iterdir())

    proc.send(json.dumps(with_id(make_job(tiny_sd15, out / "next.png"), "next")))
    after = read_job_events(proc)
    assert after[-1]["event"] == "result" and after[-1]["loaded"] is False
    proc.close_stdin()
    assert proc.wait() == 0


def test_a_cancel_for_a_waiting_job_answers_it_without_running(engine_env, tiny_sd15, tmp_path):
    proc = WorkerProcess(["--serve"], engine_env, tmp_path / "stderr.txt")
    assert proc.next_event()["event"] == "hello"
    proc.send(json.dumps(with_id(make_job(tiny_sd15, tmp_path / "a.png"), "a")))
    proc.send(json.dumps(with_id(make_job(tiny_sd15, tmp_path / "b.png"), "b")))
    proc.send("cancel")  # the latest job sent: b, still waiting behind a
    first, second = read_job_events(proc), read_job_events(proc)
    proc.close_stdin()
    assert proc.wait() == 0
    assert first[-1]["event"] == "result" and first[-1]["job"] == "a"
    assert second == [second[-1]] and second[-1]["code"] == "cancelled"
    assert second[-1]["job"] == "b" and not (tmp_path / "b.png").exists()


def test_end_of_input_mid_job_with_parent_pid_stops_the_worker(engine_env, tiny_sd15, tmp_path):
    """With --parent-pid the client keeps standard input open: its end means the client
    is gone, so the running job is cancelled, its files removed, and the worker exits."""
    out = tmp_path / "out"
    proc = WorkerProcess(
        ["--serve", "--parent-pid", str(os.getpid())], engine_env, tmp_path / "stderr.txt"
    )
    assert proc.next_event()["event"] == "hello"
    proc.send(json.dumps(make_job(tiny_sd15, out / "a.png", steps=200)))
    while (ev := proc.next_event())["event"] != "progress" or ev["phase"] != "denoise":
        pass
    proc.close_stdin()
    events = proc.events(30)
    assert proc.wait(10) == EXIT_CANCELLED
    assert events[-1]["code"] == "cancelled"
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.skipif(os.name == "nt", reason="SIGTERM; Windows is covered by CTRL_BREAK tests")
def test_a_signal_between_jobs_ends_the_worker(engine_env, tiny_sd15, tmp_path):
    proc = WorkerProcess(["--serve"], engine_env, tmp_path / "stderr.txt")
    assert proc.next_event()["event"] == "hello"
    proc.send(json.dumps(make_job(tiny_sd15, tmp_path / "a.png")))
    assert read_job_events(proc)[-1]["event"] == "result"
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.events(10) == []  # no job was running: nothing to report
    assert proc.wait(10) == EXIT_CANCELLED


def test_serve_refuses_a_job_file(engine_env, tmp_path):
    job = tmp_path / "job.json"
    job.write_text("{}")
    code, events, _ = run_worker(["--serve", "--job", str(job)], engine_env, tmp_path)
    assert code == 2 and events[-1]["code"] == "bad_input" and "--job" in events[-1]["message"]


def test_preview_events_belong_to_their_job_and_leave_no_files(engine_env, tiny_sd15, tmp_path):
    """Live previews through a serving worker: announced while denoising (between the
    first denoise progress and the decode), tagged with the job, all removed by the end."""
    out = tmp_path / "out"
    proc = WorkerProcess(["--serve"], engine_env, tmp_path / "stderr.txt")
    assert proc.next_event()["event"] == "hello"
    for name in ("a", "b"):
        job = make_job(tiny_sd15, out / f"{name}.png", steps=3, preview_every=1, preview_width=64)
        proc.send(json.dumps(with_id(job, name)))
    jobs = [read_job_events(proc), read_job_events(proc)]
    proc.close_stdin()
    assert proc.wait() == 0
    for name, events in zip("ab", jobs, strict=True):
        kinds = [(ev["event"], ev.get("phase")) for ev in events]
        previews = [ev for ev in events if ev["event"] == "preview"]
        total = previews[0]["total"]  # the scheduler's steps: PNDM adds a warm-up step
        assert total >= 3 and [ev["step"] for ev in previews] == list(range(1, total + 1))
        assert {ev["job"] for ev in previews} == {name}
        first = kinds.index(("progress", "denoise"))
        decode = kinds.index(("progress", "decode"))
        assert first < kinds.index(("preview", None)) < decode
        assert events[-1]["event"] == "result"
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.png", "b.json", "b.png"]


def test_another_model_or_device_reloads_and_the_same_comes_back(engine_env, tiny_sd15, tmp_path):
    """The worker keeps one model: another model (here a copy of the folder) or another
    device setting unloads it and loads anew; the loaded one is reused only as it is."""
    other = tmp_path / "sd15-copy"
    shutil.copytree(tiny_sd15, other)
    proc = WorkerProcess(["--serve"], engine_env, tmp_path / "stderr.txt")
    assert proc.next_event()["event"] == "hello"
    runs = [
        (tiny_sd15, "auto"),  # loads
        (tiny_sd15, "auto"),  # reused
        (other, "auto"),  # another model: loads
        (tiny_sd15, "auto"),  # the first again: loads (one model kept at a time)
        (tiny_sd15, "cpu"),  # another device setting: loads
        (tiny_sd15, "cpu"),  # reused
    ]
    for i, (model, device) in enumerate(runs):
        proc.send(json.dumps(make_job(model, tmp_path / f"{i}.png", device=device)))
    loaded = [read_job_events(proc)[-1]["loaded"] for _ in runs]
    proc.close_stdin()
    assert proc.wait() == 0
    assert loaded == [True, False, True, True, True, False]


def test_a_late_cancel_does_not_end_the_worker(engine_env, tiny_sd15, tmp_path):
    """A cancel that arrives after its job's result (the client pressed Esc as it ended)
    cancels nothing: the stop deadline is not left armed, the worker serves on."""
    proc = WorkerProcess(["--serve"], engine_env, tmp_path / "stderr.txt")
    assert proc.next_event()["event"] == "hello"
    proc.send(json.dumps(make_job(tiny_sd15, tmp_path / "a.png")))
    assert read_job_events(proc)[-1]["event"] == "result"
    proc.send("cancel")
    time.sleep(2.0)  # past the 1.2 s stop deadline
    assert proc.proc.poll() is None, proc.stderr()
    proc.send(json.dumps(make_job(tiny_sd15, tmp_path / "b.png")))
    assert read_job_events(proc)[-1]["loaded"] is False
    proc.close_stdin()
    assert proc.wait() == 0


def test_an_idle_worker_stops_when_its_parent_dies(engine_env, tiny_sd15, tmp_path):
    """--parent-pid while idle between jobs: the client's process ending ends the worker
    (no orphan holding the model), within the 2 s the protocol promises."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        proc = WorkerProcess(
            ["--serve", "--parent-pid", str(parent.pid)], engine_env, tmp_path / "stderr.txt"
        )
        assert proc.next_event()["event"] == "hello"
        proc.send(json.dumps(make_job(tiny_sd15, tmp_path / "a.png")))
        assert read_job_events(proc)[-1]["event"] == "result"
        parent.kill()
        parent.wait()
        t0 = time.monotonic()
        code = proc.wait(10)
        assert time.monotonic() - t0 < 3.0
        assert code == EXIT_CANCELLED and proc.events(5) == []
    finally:
        if parent.poll() is None:
            parent.kill()


def test_a_refused_model_leaves_the_loaded_one_loaded(engine_env, tiny_sd15, tmp_path):
    """A job whose model is refused before loading (here a pipeline class SphereDiff
    cannot drive) does not cost the model already loaded."""
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "model_index.json").write_text('{"_class_name": "AudioLDMPipeline"}')
    proc = WorkerProcess(["--serve"], engine_env, tmp_path / "stderr.txt")
    assert proc.next_event()["event"] == "hello"
    for i, model in enumerate((tiny_sd15, not_a_model, tiny_sd15)):
        proc.send(json.dumps(make_job(model, tmp_path / f"{i}.png")))
    first, refused, third = (read_job_events(proc)[-1] for _ in range(3))
    proc.close_stdin()
    assert proc.wait() == 0
    assert first["loaded"] is True
    assert refused["event"] == "error" and refused["code"] == "unsupported_model", refused
    assert third["loaded"] is False
