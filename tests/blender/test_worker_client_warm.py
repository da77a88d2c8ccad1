"""The warm worker manager (worker_client.WarmWorker, ServedRun) without Blender.

Against fake_serve_worker.py (the serving protocol, no torch) and a stand-in for an
engine older than ``--serve``: a job per run on one process, a new process for another
environment (the old one closed, exiting 0), a worker dying just as the next job is sent
(the job runs on a new one, the user is told), the idle limit, and the one-shot fallback
for an engine that refuses ``--serve``. Each test has its own WarmWorker.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_installer_plan import _load

worker_client = _load("worker_client")
HERE = Path(__file__).resolve().parent

OLD_ENGINE = textwrap.dedent(
    """
    import json, os, sys
    args = sys.argv[1:]
    def emit(event, **fields):
        print(json.dumps({"event": event, **fields}), flush=True)
    emit("hello", protocol=1, version="old", pid=os.getpid())
    with open(os.environ["OLD_ENGINE_LOG"], "a") as fh:
        fh.write(json.dumps(args) + "\\n")
    if "--serve" in args:
        emit("error", code="bad_input", traceback="",
             message="command line: unrecognized arguments: --serve")
        sys.exit(2)
    job = json.loads(sys.stdin.readline())
    assert "id" not in job, job
    out = job["options"]["output"]
    open(out, "wb").write(b"png")
    emit("result", image=out, sidecar=out + ".json", width=2, height=1, seconds=0.1, seed=1)
    """
)


def _python(tmp_path: Path, script: Path) -> str:
    wrapper = tmp_path / f"{script.stem}-python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n', encoding="utf-8")
    wrapper.chmod(0o755)
    return str(wrapper)


@pytest.fixture
def serve(tmp_path, monkeypatch):
    """(pool, job(seed, mode) -> the finished ServedRun, log() -> the fake's log lines)."""
    python = _python(tmp_path, HERE / "fake_serve_worker.py")
    control, log = tmp_path / "control.json", tmp_path / "serve.jsonl"
    monkeypatch.setenv("FAKE_SERVE_CONTROL", str(control))
    monkeypatch.setenv("FAKE_SERVE_LOG", str(log))
    pool = worker_client.WarmWorker()

    def job(seed: int, mode: str = "ok", env: dict | None = None, py: str = python):
        control.write_text(json.dumps({"mode": mode, "step_s": 0.01}), encoding="utf-8")
        staging = tmp_path / f"job{seed}"
        staging.mkdir()
        options = {"seed": seed, "steps": 2, "output": str(staging / "p.png"), "device": "cpu"}
        run = worker_client.ServedRun(
            py, options, env=env or worker_client.worker_env(), preview_dir=staging, pool=pool
        )
        assert run.start(), run.failure
        deadline = time.monotonic() + 30
        while not run.pump(0.05):
            assert time.monotonic() < deadline, "the run did not end"
        return run

    def read_log() -> list[dict]:
        return [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines()]

    yield pool, job, read_log
    pool.stop()


def test_jobs_share_one_process_until_the_environment_changes(serve):
    pool, job, read_log = serve
    a, b = job(1), job(2)
    assert a.failure is None and b.failure is None
    assert a.pid == b.pid == pool.pid and (a.loaded, b.loaded) == (True, False)
    assert "load" not in b.phases
    c = job(3, env={**worker_client.worker_env(), "HF_HOME": "/elsewhere"})
    assert c.failure is None and c.pid != a.pid and c.loaded is True and not c.notes
    # The first worker was told by the end of its input, and exited 0 between jobs.
    assert {"pid": a.pid, "event": "exit", "code": 0}.items() <= read_log()[-3].items()


def test_a_worker_dying_as_the_job_is_sent_is_replaced(serve):
    _pool, job, _log = serve
    crashed = job(1, "crash_after")
    assert crashed.failure is None
    run = job(2)  # at once: the crashed worker may not even be reaped yet
    assert run.failure is None and run.pid != crashed.pid and run.loaded is True
    assert run.notes == [
        "the SphereDiff worker had stopped (exit code 1); started a new one (the model loads again)"
    ]


def test_the_idle_limit_closes_the_worker(serve):
    pool, job, read_log = serve
    pool.idle_s = 0.3
    run = job(1)
    time.sleep(1.0)
    assert not pool.running() and pool.current is None
    assert read_log()[-1] == {**read_log()[-1], "pid": run.pid, "event": "exit", "code": 0}


def test_an_engine_older_than_serve_runs_one_shot(tmp_path, monkeypatch):
    script = tmp_path / "old_engine.py"
    script.write_text(OLD_ENGINE, encoding="utf-8")
    python = _python(tmp_path, script)
    log = tmp_path / "argv.jsonl"
    monkeypatch.setenv("OLD_ENGINE_LOG", str(log))
    pool = worker_client.WarmWorker()
    runs = []
    for seed in (1, 2):
        staging = tmp_path / f"job{seed}"
        staging.mkdir()
        options = {"seed": seed, "output": str(staging / "p.png"), "device": "cpu"}
        run = worker_client.ServedRun(python, options, env=dict(os.environ), pool=pool)
        assert run.start()
        while not run.pump(0.05):
            pass
        runs.append(run)
    assert [r.failure for r in runs] == [None, None], [str(r.failure) for r in runs]
    assert all(r.one_shot for r in runs) and not runs[0].notes
    argvs = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines()]
    # The first job: refused --serve, then one-shot; the second one-shot at once.
    assert [a[2] for a in argvs] == ["--serve", "--parent-pid", "--parent-pid"], argvs
    assert pool.current is None and not pool.running()
