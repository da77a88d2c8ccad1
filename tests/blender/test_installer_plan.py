"""The installer's commands and the worker client, without Blender (both modules are
bpy-free): which pip calls run where, and how the worker process is started and stopped.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    """Load spherediff_blender.<name> without its package __init__ (that needs bpy)."""
    pkg = "spherediff_blender_nobpy"
    if pkg not in sys.modules:
        spec = importlib.util.spec_from_loader(pkg, loader=None, is_package=True)
        module = importlib.util.module_from_spec(spec)
        module.__path__ = [str(REPO_ROOT / "spherediff_blender")]
        sys.modules[pkg] = module
    full = f"{pkg}.{name}"
    if full not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            full, REPO_ROOT / "spherediff_blender" / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
    return sys.modules[full]


installer = _load("installer")
worker_client = _load("worker_client")


def test_plan_linux_default_pypi():
    steps = installer.plan_steps(
        "/blender/python", Path("/u/venv"), Path("/x/e.whl"), platform="linux"
    )
    argvs = [s.argv for s in steps]
    # Never "-m": the current folder must not be on sys.path (python_argv's bootstrap)
    assert argvs[0] == worker_client.python_argv("/blender/python", "venv", "/u/venv")
    assert argvs[1][:4] == [*worker_client.python_argv("/u/venv/bin/python", "pip"), "install"]
    assert argvs[1][-1] == "torch" and "--index-url" not in argvs[1]
    assert argvs[2][-1] == "/x/e.whl[models]" and "--upgrade" in argvs[2]
    assert argvs[3] == worker_client.worker_argv("/u/venv/bin/python", "--hello")
    assert all("-m" not in argv for argv in argvs)


def test_plan_windows_uses_the_cuda_index():
    steps = installer.plan_steps(
        "C:/B/python.exe", Path("C:/u/venv"), Path("C:/x/e.whl"), platform="win32"
    )
    torch_step = steps[1].argv
    assert torch_step[0].endswith("Scripts/python.exe") or torch_step[0].endswith(
        "Scripts\\python.exe"
    )
    i = torch_step.index("--index-url")
    assert torch_step[i + 1].startswith("https://download.pytorch.org/whl/cu")
    assert "--index-url" not in steps[2].argv  # the rest comes from PyPI


def test_plan_local_wheels_never_touch_the_network():
    for platform in ("linux", "win32", "darwin"):
        steps = installer.plan_steps("py", Path("v"), Path("e.whl"), "/wheels", platform=platform)
        for step in steps[1:-1]:
            assert "--no-index" in step.argv and "--find-links" in step.argv, step
            assert "--index-url" not in step.argv
    steps = installer.plan_steps("py", Path("v"), Path("e.whl"), "/w", with_dependencies=False)
    assert len(steps) == 3 and "--no-deps" in steps[1].argv and "torch" not in steps[1].argv


def test_worker_env_drops_blenders_python_variables():
    env = worker_client.worker_env(
        offline=True, base={"PYTHONPATH": "/blender", "PYTHONHOME": "/b", "PATH": "/bin"}
    )
    assert "PYTHONPATH" not in env and "PYTHONHOME" not in env and env["PATH"] == "/bin"
    assert env["HF_HUB_OFFLINE"] == "1" and env["PYTHONUNBUFFERED"] == "1"


FAKE_WORKER = textwrap.dedent(
    """
    import json, sys, time
    print(json.dumps({"event": "hello", "protocol": 1, "version": "0.1.0"}), flush=True)
    job = json.loads(sys.stdin.readline())
    mode = job["options"]["mode"]
    if mode == "ok":
        print("not json: ignored", flush=True)
        for i in range(3):
            print(json.dumps({"event": "progress", "phase": "denoise", "step": i + 1,
                              "total": 3, "eta_s": 1.0, "message": "x"}), flush=True)
        out = job["options"]["output"]
        open(out, "wb").write(b"png")
        print(json.dumps({"event": "result", "image": out, "sidecar": None, "seconds": 0.1,
                          "seed": 3}), flush=True)
    elif mode == "error":
        print(json.dumps({"event": "error", "code": "bad_input", "message": "steps: no",
                          "traceback": ""}), flush=True)
        sys.exit(2)
    elif mode == "stubborn":  # ignores cancel and SIGTERM: must be killed
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(json.dumps({"event": "progress", "phase": "load", "step": 0, "total": 1}),
              flush=True)
        while True:
            time.sleep(0.05)
    elif mode == "crash":
        sys.stderr.write("Traceback: boom\\n")
        sys.exit(1)
    """
)


@pytest.fixture
def fake_python(tmp_path):
    """A 'python' that runs the fake worker whatever module it is asked for."""
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    launcher = tmp_path / "python"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} {script}\n")
    launcher.chmod(0o755)
    return str(launcher), tmp_path


def _run(python, options):
    run = worker_client.GenerationRun(python, options, env=worker_client.worker_env())
    assert run.start()
    return run


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX shell launcher")
def test_run_success_error_crash(fake_python):
    python, tmp = fake_python
    run = _run(python, {"mode": "ok", "output": str(tmp / "x.png")})
    worker_client.run_blocking(run)
    assert run.failure is None and run.result["seed"] == 3 and run.fraction == 1.0
    assert run.hello["protocol"] == 1

    run = _run(python, {"mode": "error"})
    worker_client.run_blocking(run)
    assert run.failure.code == "bad_input" and run.failure.message == "steps: no"

    run = _run(python, {"mode": "crash"})
    worker_client.run_blocking(run)
    assert run.failure.code == "worker_died" and "code 1" in run.failure.message
    assert "boom" in run.failure.message


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cancel_escalates_to_kill_within_a_second(fake_python):
    python, _ = fake_python
    run = _run(python, {"mode": "stubborn"})
    while run.phase != "load":
        run.pump(0.05)
    t0 = time.monotonic()
    run.request_cancel()
    worker_client.run_blocking(run, interval=0.05)
    assert time.monotonic() - t0 < 1.5
    assert run.failure.code == "cancelled"
    assert run.process.terminated and run.process.killed
    assert run.process.returncode() == -9


def test_missing_python_is_reported():
    run = worker_client.GenerationRun("/no/such/python", {"prompt": "x"})
    assert not run.start()
    assert run.failure.code == "worker_missing" and "/no/such/python" in run.failure.message


def test_describe_hello_names_what_is_missing():
    hello = {
        "event": "hello",
        "protocol": 1,
        "version": "0.1.0",
        "python": "3.11",
        "torch": "2.5.0",
        "diffusers": None,
        "transformers": None,
        "device": "cpu",
        "devices": ["cpu"],
    }
    result = worker_client.describe_hello(hello, "0.1.0")
    assert result.problems == [
        "Missing in the worker Python: diffusers, transformers; click Install Dependencies"
    ]
    hello.update(diffusers="0.3", transformers="4.5", protocol=2, version="0.2.0")
    result = worker_client.describe_hello(hello, "0.1.0")
    assert any("protocol 2" in p for p in result.problems)
    assert any("0.2.0" in p for p in result.problems)
    assert json.dumps(result.lines)


def test_status_text_counts_a_videos_frames_while_writing():
    run = worker_client.GenerationRun("python", {"prompt": "x"})
    run._handle({"event": "progress", "phase": "write", "step": 12, "total": 50})
    assert run.status_text() == "Writing 12/49 frames"
    run._handle({"event": "progress", "phase": "write", "step": 50, "total": 50})
    assert run.status_text() == "Writing 49/49 frames"
    still = worker_client.GenerationRun("python", {"prompt": "x"})
    still._handle({"event": "progress", "phase": "write", "step": 0, "total": 1})
    assert still.status_text() == "Writing"
