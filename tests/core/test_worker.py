"""The worker over a real subprocess: hello, events in order, bad jobs, cancelling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import spherediff_core
from PIL import Image
from spherediff_core import runner, worker
from spherediff_core.errors import EXIT_CANCELLED, BadInputError, UnsupportedModelError
from spherediff_core.options import OptionsError

from tests.support.engine_process import WorkerProcess, run_worker

HELLO_KEYS = {
    "event",
    "protocol",
    "version",
    "python",
    "torch",
    "diffusers",
    "transformers",
    "device",
    "devices",
    "pid",
}
PROMPT = "a red sky over the sea"


def make_job(model, output, **options) -> dict:
    base = {"prompt": PROMPT, "width": 64, "steps": 2, "seed": 3, "offline": True}
    return {
        "protocol": 1,
        "options": {**base, "model": str(model), "output": str(output), **options},
    }


def check_hello(event: dict) -> None:
    assert set(event) == HELLO_KEYS
    assert event["event"] == "hello" and event["protocol"] == worker.PROTOCOL_VERSION == 1
    assert event["version"] == spherediff_core.__version__
    assert event["torch"] and event["diffusers"] and event["transformers"]
    assert event["device"] in ("cpu", "cuda", "mps")
    assert "cpu" in event["devices"]
    assert isinstance(event["pid"], int)


def check_progress(events: list[dict]) -> list[str]:
    """Progress events are well formed, steps increase within a phase; returns the phases."""
    phases: list[str] = []
    last: dict[str, tuple[int, int]] = {}
    for ev in events:
        assert set(ev) == {"event", "phase", "step", "total", "eta_s", "message"}, ev
        assert ev["phase"] in ("load", "denoise", "decode", "hdr", "write")
        assert 0 <= ev["step"] <= ev["total"]
        assert ev["eta_s"] is None or ev["eta_s"] >= 0
        if ev["phase"] in last:
            prev_step, prev_total = last[ev["phase"]]
            assert ev["step"] > prev_step and ev["total"] == prev_total, ev
        if not phases or phases[-1] != ev["phase"]:
            phases.append(ev["phase"])
        last[ev["phase"]] = (ev["step"], ev["total"])
    return phases


def test_hello(engine_env, tmp_path):
    code, events, proc = run_worker(["--hello"], engine_env, tmp_path, timeout=60)
    assert code == 0, proc.stderr()
    assert len(events) == 1
    check_hello(events[0])
    assert events[0]["pid"] == proc.proc.pid


def test_job_reports_events_in_order_and_writes_files(engine_env, tiny_sd15, tmp_path):
    out = tmp_path / "out" / "pano.png"
    code, events, proc = run_worker([], engine_env, tmp_path, job=make_job(tiny_sd15, out))
    assert code == 0, proc.stderr()
    assert len(proc.lines) == len(events)  # every stdout line was one JSON event
    check_hello(events[0])
    assert [e["event"] for e in events[1:-1]] == ["progress"] * (len(events) - 2)
    assert check_progress(events[1:-1]) == ["load", "denoise", "decode", "write"]
    denoise = [e for e in events if e.get("phase") == "denoise"]
    assert denoise[-1]["step"] == denoise[-1]["total"]
    result = events[-1]
    assert result == {
        "event": "result",
        "image": str(out),
        "sidecar": str(out.with_suffix(".json")),
        "width": 64,
        "height": 32,
        "seconds": result["seconds"],
        "seed": 3,
        "warnings": result["warnings"],
        "exr": None,
        "sun": None,
        "loaded": True,  # a one-job worker always loads its model
    }
    assert result["seconds"] > 0
    # 64 px wide: views far below SD 1.5's native 512 px, and the result says so.
    assert len(result["warnings"]) == 1 and "far below" in result["warnings"][0]
    assert sorted(os.listdir(out.parent)) == ["pano.json", "pano.png"]
    sidecar = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["options"]["prompt"] == PROMPT and sidecar["options"]["steps"] == 2
    assert sidecar["model"]["family"] == "sd" and sidecar["seed"] == 3
    assert "load" in sidecar["timings"] and "denoiser" in sidecar["timings"]


def test_hdr_job_writes_the_exr_and_reports_the_sun(engine_env, tiny_sd15, tmp_path):
    """Option hdr: a phase hdr between decode and write, the EXR beside the PNG, and the
    result's exr and sun (the sidecar's hdr block)."""
    from spherediff_core.exr import read_exr
    from spherediff_core.hdr import linear_to_srgb

    out = tmp_path / "out" / "pano.png"
    job = make_job(tiny_sd15, out, hdr=True)
    code, events, proc = run_worker([], engine_env, tmp_path, job=job)
    assert code == 0, proc.stderr()
    assert check_progress(events[1:-1]) == ["load", "denoise", "decode", "hdr", "write"]
    result = events[-1]
    assert result["exr"] == str(out.with_suffix(".exr"))
    assert sorted(os.listdir(out.parent)) == ["pano.exr", "pano.json", "pano.png"]
    sidecar = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["hdr"]["exr"] == "pano.exr" and sidecar["hdr"]["exposure"] == 1.0
    assert result["sun"] == sidecar["hdr"]["sun"] and isinstance(result["sun"]["visible"], bool)
    assert "lift" in sidecar["timings"]
    # The EXR is the PNG's picture in linear light: re-encoded, unclipped pixels come back.
    hdr = read_exr(out.with_suffix(".exr"))
    with Image.open(out) as im:
        png = np.asarray(im, dtype=np.float32) / 255.0
    unclipped = (png < 250 / 255).all(axis=-1)
    assert hdr.shape == png.shape and unclipped.mean() > 0.5
    back = np.clip(linear_to_srgb(hdr), 0, 1)[unclipped]
    assert np.abs(back - png[unclipped]).max() < 1.0 / 255 + 2e-3


def test_hdr_video_job_is_refused(engine_env, tiny_sd15, tmp_path):
    out = tmp_path / "out" / "clip.png"
    job = make_job(tiny_sd15, out, hdr=True, video=True)
    code, events, proc = run_worker([], engine_env, tmp_path, job=job, timeout=60)
    assert code == 2, proc.stderr()
    assert events[-1]["code"] == "bad_input"
    assert events[-1]["message"].startswith("hdr: a video stays LDR"), events[-1]["message"]
    assert not out.parent.exists()


@pytest.mark.parametrize(
    ("job", "needle"),
    [
        ("this is not json", "not valid JSON"),
        ({"protocol": 1, "options": {"prompt": "x", "stepz": 3}}, "stepz"),
        (lambda m, o: make_job(m, o, steps=-1), "steps: -1 is out of range"),
        (lambda m, o: {**make_job(m, o), "protocol": 2}, "protocol: 2"),
    ],
    ids=["not json", "unknown option", "negative steps", "wrong protocol"],
)
def test_bad_job_is_refused_without_files(engine_env, tiny_sd15, tmp_path, job, needle):
    out = tmp_path / "out" / "pano.png"
    if callable(job):
        job = job(tiny_sd15, out)
    code, events, proc = run_worker([], engine_env, tmp_path, job=job, timeout=60)
    assert code == 2, proc.stderr()
    assert [e["event"] for e in events] == ["hello", "error"]
    error = events[-1]
    assert set(error) == {"event", "code", "message", "traceback"}
    assert error["code"] == "bad_input"
    assert needle in error["message"], error["message"]
    assert not out.parent.exists()


def test_job_from_a_missing_file_is_bad_input(engine_env, tmp_path):
    code, events, _ = run_worker(["--job", str(tmp_path / "nope.json")], engine_env, tmp_path)
    assert code == 2
    assert events[-1]["code"] == "bad_input" and "nope.json" in events[-1]["message"]


def test_unknown_model_family_is_unsupported_model(engine_env, tmp_path):
    model = tmp_path / "kandinsky"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    out = tmp_path / "out" / "pano.png"
    code, events, proc = run_worker([], engine_env, tmp_path, job=make_job(model, out))
    assert code == 3, proc.stderr()
    error = events[-1]
    assert error["event"] == "error" and error["code"] == "unsupported_model"
    assert "KandinskyV22Pipeline" in error["message"] and "drives" in error["message"]
    assert not out.parent.exists()


def _cancel_mid_run(engine_env, tiny_sd15, tmp_path, how: str) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()  # exists already, so leftovers (temporaries too) would show
    job = make_job(tiny_sd15, out_dir / "pano.png", steps=30)
    args: list[str] = []
    if how != "stdin":
        job_file = tmp_path / "job.json"
        job_file.write_text(json.dumps(job), encoding="utf-8")
        args = ["--job", str(job_file)]
    proc = WorkerProcess(args, engine_env, tmp_path / "stderr.txt")
    if how == "stdin":
        proc.send(json.dumps(job))
    events = []
    sent = False
    while (event := proc.next_event()) is not None:
        events.append(event)
        if not sent and event.get("phase") == "denoise":
            if how == "stdin":
                proc.send("cancel")
            else:
                proc.proc.send_signal(getattr(signal, how))
            sent = True
    code = proc.wait()
    assert sent, f"no denoise progress before the end; stderr:\n{proc.stderr()}"
    assert code == 130, proc.stderr()
    assert events[0]["event"] == "hello"
    assert "result" not in [e["event"] for e in events]
    error = events[-1]
    assert error["event"] == "error" and error["code"] == "cancelled", error
    denoise = [e for e in events if e.get("phase") == "denoise"]
    assert denoise[-1]["step"] < denoise[-1]["total"]  # it stopped mid-run
    assert os.listdir(out_dir) == []


def test_cancel_line_on_stdin_stops_mid_run(engine_env, tiny_sd15, tmp_path):
    _cancel_mid_run(engine_env, tiny_sd15, tmp_path, "stdin")


def test_signal_stops_mid_run(engine_env, tiny_sd15, tmp_path):
    how = "CTRL_BREAK_EVENT" if os.name == "nt" else "SIGTERM"
    _cancel_mid_run(engine_env, tiny_sd15, tmp_path, how)


# --- in-process checks of the job parser and the error mapping --------------------------


def test_parse_job_accepts_a_good_job(tiny_sd15, tmp_path):
    job = make_job(tiny_sd15, tmp_path / "pano.png")
    options, plan_cache_dir = worker.parse_job({**job, "plan_cache_dir": str(tmp_path)})
    assert options.prompt == PROMPT and options.steps == 2
    assert plan_cache_dir == str(tmp_path)
    options, _ = worker.parse_job({"options": job["options"]})  # protocol defaults to 1
    assert options.seed == 3


@pytest.mark.parametrize(
    ("job", "needle"),
    [
        ([1, 2], "must be a JSON object"),
        ({"protocol": 1}, "options: missing"),
        ({"protocol": True, "options": {}}, "protocol: True"),
        ({"protocol": "1", "options": {}}, "protocol: '1'"),
        ({"protocol": 1, "options": {}, "priority": 3}, "unknown field 'priority'"),
        ({"protocol": 1, "options": {"prompt": "x"}, "plan_cache_dir": 5}, "plan_cache_dir"),
    ],
)
def test_parse_job_refuses_bad_jobs(job, needle):
    with pytest.raises(BadInputError, match=needle):
        worker.parse_job(job)


def test_parse_job_refuses_bad_options(tmp_path):
    with pytest.raises(OptionsError, match="options: expected a JSON object"):
        worker.parse_job({"protocol": 1, "options": "a sea"})
    with pytest.raises(OptionsError, match="width"):
        worker.parse_job({"options": {"prompt": "a sea", "width": 3, "output": "x.png"}})


def test_error_mapping():
    import torch

    assert runner.describe_error(OptionsError("steps", "bad")).code == "bad_input"
    report = runner.describe_error(UnsupportedModelError("no"))
    assert (report.code, report.exit_code) == ("unsupported_model", 3)
    report = runner.describe_error(KeyboardInterrupt(), "SIGTERM")
    assert (report.code, report.exit_code) == ("cancelled", 130)
    assert "SIGTERM" in report.message
    report = runner.describe_error(torch.OutOfMemoryError("CUDA out of memory"))
    assert (report.code, report.exit_code) == ("out_of_memory", 4)
    assert "view batch size" in report.message
    assert runner.describe_error(MemoryError()).code == "out_of_memory"
    report = runner.describe_error(ModuleNotFoundError("no diffusers", name="diffusers"))
    assert (report.code, report.exit_code) == ("internal", 1)
    assert "diffusers" in report.message and "pip install" in report.message
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError as exc:
        report = runner.describe_error(exc)
    assert (report.code, report.exit_code) == ("internal", 1)
    assert "ZeroDivisionError" in report.traceback


def test_event_writer_survives_a_closed_reader():
    import io

    stream = io.StringIO()
    writer = worker.EventWriter(stream)
    writer.emit("progress", phase="load", step=0, total=1, eta_s=None, message="")
    assert json.loads(stream.getvalue())["phase"] == "load"
    stream.close()
    writer.emit("result")  # no exception
    assert writer.broken


def test_stdout_carries_only_events_even_when_something_prints(engine_env, tmp_path):
    code = (
        "import os, sys\n"
        "from spherediff_core import worker\n"
        "events = worker.EventWriter(worker._claim_stdout())\n"
        "print('a stray print')\n"
        "os.write(1, b'a C-level write\\n')\n"
        "events.emit('hello', protocol=1)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=engine_env, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == ['{"event": "hello", "protocol": 1}']
    assert b"a stray print" in proc.stderr and b"a C-level write" in proc.stderr


def test_hello_survives_missing_packages(monkeypatch):
    from importlib import metadata

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(runner.metadata, "version", missing)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    fields = worker.hello_fields()
    assert fields["torch"] is None and fields["diffusers"] is None
    assert fields["transformers"] is None
    assert fields["version"] == spherediff_core.__version__
    assert (fields["device"], fields["devices"]) == (None, [])
    json.dumps(fields, allow_nan=False)


def test_cancel_during_model_loading_stops_at_once(engine_env, tiny_sd15, tmp_path):
    proc = WorkerProcess([], engine_env, tmp_path / "stderr.txt")
    proc.send(json.dumps(make_job(tiny_sd15, tmp_path / "out" / "pano.png", steps=30)))
    events = []
    while (event := proc.next_event()) is not None:
        events.append(event)
        if event.get("phase") == "load" and event["step"] == 0:
            proc.send("cancel")
    assert proc.wait() == 130, proc.stderr()
    assert {e.get("phase") for e in events[1:-1]} == {"load"}  # no view batch ran
    assert events[-1]["code"] == "cancelled"
    assert "standard input" in events[-1]["message"]
    assert not (tmp_path / "out").exists()


def test_worker_cancels_itself_when_its_reader_goes_away(engine_env, tiny_sd15, tmp_path):
    """A crashed add-on closes the event pipe: the worker must not run on as an orphan."""
    out = tmp_path / "out" / "pano.png"
    proc = subprocess.Popen(
        [sys.executable, "-m", "spherediff_core.worker"],
        env=engine_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        proc.stdin.write((json.dumps(make_job(tiny_sd15, out, steps=40)) + "\n").encode())
        proc.stdin.flush()
        for line in proc.stdout:
            if json.loads(line).get("phase") == "denoise":
                break
        proc.stdout.close()  # the reader goes away mid-run
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == EXIT_CANCELLED
    assert not out.parent.exists() or os.listdir(out.parent) == []
