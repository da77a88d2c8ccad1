"""The worker's life cycle over real subprocesses: it never outlives its client, it stops
within seconds of a cancel or SIGTERM even in the middle of long work, and it never runs
code from the folder it was started in (issue 8, items 5 and 11).

Bounds are generous (the target is 2 s; these machines are shared and slow), yet far below
what the old worker took: it built a sampling plan to the end (tens of seconds to minutes
for a big one) and finished a model call before it looked at a cancel, and it never
noticed that its client was gone before its next event.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.support.engine_process import REPO, WorkerProcess

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process tests")

STOP_BOUND_S = 6.0  # the worker's own deadline is 1.2 s after the request
BIG_PLAN_POINTS = 400_000  # a plan build of minutes (and no event meanwhile)
LONG_BATCH_POINTS = 20_000  # all 89 views in one denoiser call: seconds on a CPU


def _load_addon_module(name: str):
    """spherediff_blender.<name> without its package __init__ (that one needs bpy)."""
    pkg = "spherediff_blender_lifecycle"
    if pkg not in sys.modules:
        package = importlib.util.module_from_spec(
            importlib.util.spec_from_loader(pkg, loader=None, is_package=True)
        )
        package.__path__ = [str(REPO / "spherediff_blender")]
        sys.modules[pkg] = package
    full = f"{pkg}.{name}"
    if full not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            full, REPO / "spherediff_blender" / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[full] = module
        spec.loader.exec_module(module)
    return sys.modules[full]


def _job(model, output, **options) -> dict:
    base = {"prompt": "a red sky", "width": 64, "steps": 2, "seed": 3, "offline": True}
    return {"model": str(model), "output": str(output), **base, **options}


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (an orphan may wait to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _wait_gone(pid: int, timeout: float) -> float | None:
    """Seconds until ``pid`` is gone, None if it still runs after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not _alive(pid):
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# --------------------------------------------------------------------------------------
# Item 5: the client goes away
# --------------------------------------------------------------------------------------

# The add-on's side, as Blender runs it: a staging folder of its own, the worker started by
# worker_client.GenerationRun and pumped; prints the worker's pid and each phase it sees.
CLIENT = textwrap.dedent(
    """
    import importlib.util, json, os, sys, tempfile
    spec = importlib.util.spec_from_file_location("wc", sys.argv[1])
    wc = sys.modules["wc"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wc)
    staging = tempfile.mkdtemp(prefix="spherediff-", dir=sys.argv[2])
    options = json.loads(sys.argv[3])
    options["output"] = os.path.join(staging, "panorama.png")
    env = json.loads(sys.argv[4])
    run = wc.GenerationRun(
        sys.executable, options, env=wc.worker_env(offline=True, base=env),
        extra_job={"staging_dir": staging}, cwd=staging,
    )
    assert run.start(), run.failure
    print(json.dumps({"pid": run.pid, "staging": staging}), flush=True)
    seen = None
    while not run.pump(0.05):
        if (run.phase, run.step) != seen:
            seen = (run.phase, run.step)
            print(json.dumps({"phase": run.phase, "step": run.step}), flush=True)
    print(json.dumps({"done": True, "failure": str(run.failure)}), flush=True)
    """
)


def _start_client(tmp_path: Path, env: dict, options: dict) -> tuple[subprocess.Popen, dict]:
    script = tmp_path / "client.py"
    script.write_text(CLIENT, encoding="utf-8")
    parent_dir = tmp_path / "tmpdir"
    parent_dir.mkdir()
    client = subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(REPO / "spherediff_blender" / "worker_client.py"),
            str(parent_dir),
            json.dumps(options),
            json.dumps(env),
        ],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "client-stderr.txt").open("w"),
        text=True,
    )
    assert client.stdout is not None
    line = client.stdout.readline()
    assert line, (tmp_path / "client-stderr.txt").read_text()
    first = json.loads(line)
    return client, first


def _read_until(client: subprocess.Popen, phase: str, step: int, timeout: float = 400) -> None:
    assert client.stdout is not None
    deadline = time.monotonic() + timeout
    for line in client.stdout:
        msg = json.loads(line)
        assert "done" not in msg, f"the run ended before {phase} {step}: {msg}"
        if msg.get("phase") == phase and msg.get("step", 0) >= step:
            return
        assert time.monotonic() < deadline, f"no {phase} {step} in {timeout} s"
    raise AssertionError(f"the client ended before {phase} {step}")


def test_worker_stops_and_cleans_up_when_its_client_is_killed(engine_env, tiny_sd15, tmp_path):
    """Blender killed during a long plan build (no events then): gone in seconds, and the
    staging folder (the client's, handed over with staging_dir) is removed too."""
    env = {**engine_env, "SPHEREDIFF_CACHE_DIR": str(tmp_path / "cache")}
    options = _job(tiny_sd15, "unused", n_points=BIG_PLAN_POINTS)
    client, first = _start_client(tmp_path, env, options)
    pid, staging = first["pid"], Path(first["staging"])
    try:
        _read_until(client, "load", 1)  # the model is loaded: the plan build starts now
        time.sleep(0.5)
        assert _alive(pid)
        client.kill()  # SIGKILL: Blender crashed
        client.wait(10)
        took = _wait_gone(pid, 120)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert took is not None, "the worker outlived its client by two minutes"
    print(f"worker gone {took:.2f} s after its client was killed")
    assert took < STOP_BOUND_S, f"the worker outlived its client by {took:.1f} s"
    assert not staging.exists(), _leftovers(staging)
    assert _leftovers(tmp_path / "tmpdir") == []
    plans = tmp_path / "cache" / "plans"
    assert [p for p in _leftovers(plans) if p.endswith(".tmp")] == []


def test_closed_stdin_with_parent_pid_stops_a_running_job(engine_env, tiny_sd15, tmp_path):
    """--parent-pid: the end of standard input means the client is gone."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    job = {"protocol": 1, "options": _job(tiny_sd15, out_dir / "pano.png", steps=200)}
    proc = WorkerProcess(["--parent-pid", str(os.getpid())], engine_env, tmp_path / "err.txt")
    proc.send(json.dumps(job))
    events = []
    t0 = None
    while (event := proc.next_event(300)) is not None:
        events.append(event)
        if t0 is None and event.get("phase") == "denoise":
            proc.close_stdin()
            t0 = time.monotonic()
    code = proc.wait(60)
    assert t0 is not None, proc.stderr_path.read_text()
    took = time.monotonic() - t0
    assert code == 130, proc.stderr_path.read_text()
    assert events[-1]["event"] == "error" and events[-1]["code"] == "cancelled"
    assert "standard input closed" in events[-1]["message"]
    print(f"stopped {took:.2f} s after its standard input closed")
    assert took < STOP_BOUND_S
    assert os.listdir(out_dir) == []


# --------------------------------------------------------------------------------------
# Item 5: SIGTERM and cancel reach long work
# --------------------------------------------------------------------------------------


def _stop_during(engine_env, tmp_path, job, after, stop) -> tuple[float, list[dict], Path]:
    """Start a worker, call ``stop(proc)`` once ``after(event)``; (seconds to exit, events)."""
    proc = WorkerProcess([], engine_env, tmp_path / "err.txt")
    proc.send(json.dumps(job))
    events: list[dict] = []
    t0 = None
    while (event := proc.next_event(400)) is not None:
        events.append(event)
        if t0 is None and after(event):
            time.sleep(0.5)  # well inside the long part
            stop(proc)
            t0 = time.monotonic()
    code = proc.wait(120)
    stderr = proc.stderr_path.read_text(encoding="utf-8", errors="replace")
    assert t0 is not None, f"never reached the stop point; stderr:\n{stderr}"
    assert code == 130, stderr
    assert events[-1]["event"] == "error" and events[-1]["code"] == "cancelled", events[-1]
    return time.monotonic() - t0, events, proc.stderr_path


def test_sigterm_stops_a_big_plan_build_within_seconds(engine_env, tiny_sd15, tmp_path):
    cache = tmp_path / "plans"  # empty: the plan is built
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    job = {
        "protocol": 1,
        "options": _job(tiny_sd15, out_dir / "pano.png", n_points=BIG_PLAN_POINTS),
        "plan_cache_dir": str(cache),
    }
    took, events, _ = _stop_during(
        engine_env,
        tmp_path,
        job,
        lambda e: e.get("phase") == "load" and e.get("step") == 1,
        lambda p: p.proc.send_signal(signal.SIGTERM),
    )
    print(f"SIGTERM during the plan build: stopped in {took:.2f} s")
    assert took < STOP_BOUND_S, f"SIGTERM took {took:.1f} s to stop the plan build"
    assert "denoise" not in {e.get("phase") for e in events}
    assert os.listdir(out_dir) == []
    assert _leftovers(cache) == []  # neither a plan nor a temporary file


def test_cancel_reaches_a_long_view_batch(engine_env, tiny_sd15, tmp_path):
    """One denoiser call over every view of a big plan at once: many seconds on a CPU."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cache = Path(engine_env["SPHEREDIFF_CACHE_DIR"]) / "plans"  # shared: built once
    job = {
        "protocol": 1,
        "options": _job(
            tiny_sd15, out_dir / "pano.png", n_points=LONG_BATCH_POINTS, view_batch_size=256
        ),
        "plan_cache_dir": str(cache),
    }
    took, events, _ = _stop_during(
        engine_env,
        tmp_path,
        job,
        # The first denoise event: step 0 says batch 1 has begun (a worker without that
        # event reports step 1 after batch 1, so batch 2, the last, is cut instead).
        lambda e: e.get("phase") == "denoise",
        lambda p: p.send("cancel"),
    )
    print(f"cancel during a long view batch: stopped in {took:.2f} s")
    assert took < STOP_BOUND_S, f"cancel took {took:.1f} s to stop a view batch"
    denoise = [e for e in events if e.get("phase") == "denoise"]
    assert denoise[-1]["step"] < denoise[-1]["total"]  # cut short
    assert "decode" not in {e.get("phase") for e in events}
    assert os.listdir(out_dir) == []


# --------------------------------------------------------------------------------------
# Item 11: nothing from the current folder runs
# --------------------------------------------------------------------------------------

PLANTED = textwrap.dedent(
    """
    import os
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "MARKER-{name}"), "w") as f:
        f.write("imported")
    raise SystemExit("planted {name}.py was imported")
    """
)


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A folder with argparse.py, json.py, optparse.py and runpy.py that leave a marker when
    imported; the test process runs in it, like a Blender started from that folder."""
    folder = tmp_path / "downloaded project"
    folder.mkdir()
    for name in ("argparse", "json", "optparse", "runpy"):
        (folder / f"{name}.py").write_text(PLANTED.format(name=name), encoding="utf-8")
    monkeypatch.chdir(folder)
    return folder


def _markers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("MARKER-*"))


def test_a_job_started_like_the_addon_never_imports_the_current_folder(
    engine_env, tiny_sd15, planted, tmp_path
):
    wc = _load_addon_module("worker_client")
    out = tmp_path / "staging" / "panorama.png"
    out.parent.mkdir()
    run = wc.GenerationRun(
        sys.executable, _job(tiny_sd15, out), env=wc.worker_env(offline=True, base=engine_env)
    )
    assert run.start()
    wc.run_blocking(run)
    assert _markers(planted) == []
    assert run.failure is None, (run.failure, list(run.process.stderr_tail))
    assert Path(run.result["image"]) == out and out.is_file()


@pytest.mark.parametrize("safepath", [True, False], ids=["PYTHONSAFEPATH", "bootstrap only"])
def test_worker_argv_drops_the_current_folder_even_as_its_cwd(engine_env, planted, safepath):
    """Started *in* the planted folder, --hello still works and nothing planted runs (also
    without PYTHONSAFEPATH, as for a Python 3.10 worker, which ignores it)."""
    wc = _load_addon_module("worker_client")
    env = wc.worker_env(base=engine_env)
    if not safepath:
        env.pop("PYTHONSAFEPATH")
    process = wc.WorkerProcess(wc.worker_argv(sys.executable, "--hello"), env=env, cwd=planted)
    process.start()
    assert process.wait(300) == 0, list(process.stderr_tail)
    events = process.get_events(timeout=5)
    process.close()
    assert _markers(planted) == []
    assert events and events[0]["event"] == "hello"


def test_check_worker_and_installer_steps_never_import_the_current_folder(
    engine_env, planted, tmp_path
):
    wc = _load_addon_module("worker_client")
    installer = _load_addon_module("installer")
    result = wc.check_worker(sys.executable, wc.worker_env(base=engine_env), timeout=300)
    assert result.hello is not None, result.problems
    # Every step the installer plans goes through the bootstrap; run pip and the check.
    steps = installer.plan_steps(sys.executable, tmp_path / "venv", tmp_path / "e.whl")
    assert all("-m" not in step.argv[:2] for step in steps)
    pip = [sys.executable, *steps[1].argv[1 : steps[1].argv.index("install")]]
    job = installer.InstallJob(
        [
            installer.Step("pip", [*pip, "--version"]),
            installer.Step("check", wc.worker_argv(sys.executable, "--hello")),
        ],
        tmp_path / "user" / "venv",
        tmp_path / "user" / "install.log",
        state=installer.InstallState(),
    )
    job.start()
    assert job.wait(300)
    assert not job.state.failed, (
        job.state.message,
        (tmp_path / "user" / "install.log").read_text(),
    )
    assert job.state.hello is not None
    assert _markers(planted) == []


def test_python_argv_runs_the_module_like_dash_m(tmp_path):
    """The bootstrap passes the arguments through and runs the module as __main__."""
    wc = _load_addon_module("worker_client")
    proc = subprocess.run(
        [*wc.python_argv(sys.executable, "json.tool", "--sort-keys"), "-"],
        input='{"b": 1, "a": 2}',
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"a": 2, "b": 1}
    assert proc.stdout.index('"a"') < proc.stdout.index('"b"')
