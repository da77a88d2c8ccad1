"""``spherediff generate`` end to end over real subprocesses with a tiny model."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import fields
from types import SimpleNamespace

import pytest
from PIL import Image
from spherediff_core import cli
from spherediff_core.options import GenerationOptions

from tests.support.engine_process import run_cli

PROMPT = "zebra lighthouse mango"


def generate_args(model, out, *extra: str) -> list[str]:
    return [
        "generate",
        "--prompt",
        PROMPT,
        "--model",
        str(model),
        "--width",
        "64",
        "--steps",
        "2",
        "--seed",
        "5",
        "--offline",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def two_runs(engine_env, tiny_sd15, tmp_path_factory):
    """The same generation twice (in different folders, under different names), in parallel."""
    root = tmp_path_factory.mktemp("cli")
    outs = [root / "a" / "pano.png", root / "b" / "again.png"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "spherediff_core.cli", *generate_args(tiny_sd15, out)],
            env=engine_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        for out in outs
    ]
    runs = []
    for proc, out in zip(procs, outs, strict=True):
        stdout, stderr = proc.communicate(timeout=180)
        runs.append(SimpleNamespace(code=proc.returncode, stdout=stdout, stderr=stderr, out=out))
    return runs


def test_generate_writes_png_and_sidecar(two_runs):
    run = two_runs[0]
    assert run.code == 0, run.stderr
    summary = run.stdout.strip().splitlines()
    assert len(summary) == 1
    assert re.fullmatch(
        rf"wrote {re.escape(str(run.out))} \(64x32\) in \d+\.\d s, seed 5; parameters in pano.json",
        summary[0],
    ), summary
    assert "spherediff: denoise" in run.stderr  # plain progress lines when not a terminal
    assert sorted(os.listdir(run.out.parent)) == ["pano.json", "pano.png"]
    with Image.open(run.out) as im:
        assert (im.mode, im.size) == ("RGB", (64, 32))
        chunk = json.loads(im.text["spherediff"])
    assert chunk["options"]["prompt"] == PROMPT and chunk["seed"] == 5
    sidecar = json.loads(run.out.with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["options"]["steps"] == 2
    assert sidecar["options"]["guidance"] == 7.5  # the family's default, resolved
    assert sidecar["model"]["family"] == "sd"
    # 64 px wide: far below SD 1.5's native view size; the command and the sidecar say so.
    assert "far below" in run.stderr and "native 512 px" in run.stderr
    assert len(sidecar["warnings"]) == 1 and "far below" in sidecar["warnings"][0]


def test_progress_counts_the_schedulers_real_evaluations(two_runs):
    """SD's PNDM evaluates its first timestep twice: --steps 2 runs 3 denoiser passes, and
    the progress says so instead of a bare "step 1/3"."""
    run = two_runs[0]
    assert run.code == 0, run.stderr
    assert "(step 3/3 (2 steps + 1 warm-up of PNDMScheduler))" in run.stderr, run.stderr
    assert "step 4/" not in run.stderr


def test_same_seed_gives_identical_png(two_runs):
    first, second = two_runs
    assert second.code == 0, second.stderr
    assert first.out.read_bytes() == second.out.read_bytes()


def test_generate_hdr_writes_the_exr_beside_the_png(engine_env, tiny_sd15, tmp_path):
    from spherediff_core.exr import read_exr

    out = tmp_path / "pano.png"
    proc = run_cli(generate_args(tiny_sd15, out, "--hdr"), engine_env)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(
        rf"wrote {re.escape(str(out))} \(64x32\), HDR pano.exr \((no sun|sun at azimuth .*)\) "
        r"in \d+\.\d s, seed 5; parameters in pano.json",
        proc.stdout.strip(),
    ), proc.stdout
    assert "spherediff: hdr 1/1" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["pano.exr", "pano.json", "pano.png"]
    sidecar = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["options"]["hdr"] is True and sidecar["hdr"]["exr"] == "pano.exr"
    assert set(sidecar["hdr"]["sun"]) >= {"visible", "direction", "strength", "color"}
    assert read_exr(out.with_suffix(".exr")).shape == (32, 64, 3)


def test_generate_hdr_refuses_a_video_before_loading(engine_env, tiny_sd15, tmp_path):
    out = tmp_path / "out" / "clip.png"
    proc = run_cli(generate_args(tiny_sd15, out, "--hdr", "--video"), engine_env)
    assert proc.returncode == 2, proc.stderr
    assert "hdr: a video stays LDR" in proc.stderr and proc.stdout == ""
    assert not out.parent.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--width", "63"], "width: 63"),
        (["--steps", "0"], "steps: 0"),
        (["--guidance", "nan"], "guidance: nan"),
        (["--fov-deg", "200"], "fov_deg: 200"),
        (["--device", "tpu"], "device: 'tpu'"),
        (["--size", "3K"], "--size"),
        (["--steps", "many"], "--steps"),
        (["--prompt", "  "], "prompt: '  ' is empty"),
    ],
    ids=["odd width", "zero steps", "nan guidance", "fov", "device", "size", "steps", "prompt"],
)
def test_bad_input_exits_2_without_files(engine_env, tiny_sd15, tmp_path, args, needle):
    out = tmp_path / "out" / "pano.png"
    proc = run_cli(generate_args(tiny_sd15, out, *args), engine_env)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert proc.stdout == ""
    assert not out.parent.exists()


def test_bad_output_and_missing_model_exit_2(engine_env, tmp_path):
    proc = run_cli(generate_args(tmp_path / "no-model", tmp_path / "pano.jpg"), engine_env)
    assert proc.returncode == 2 and "model: " in proc.stderr
    proc = run_cli(["generate", "--prompt", "x", "--out", str(tmp_path / "x.jpg")], engine_env)
    assert proc.returncode == 2 and "output: " in proc.stderr and "must end in .png" in proc.stderr
    assert os.listdir(tmp_path) == []


def test_outputs_over_a_model_or_a_foreign_json_are_refused_before_loading(
    engine_env, tiny_sd15, tmp_path
):
    """Issue 8, B: writing model_index.png into a model folder destroyed model_index.json."""
    import shutil
    import time

    model = tmp_path / "model"
    shutil.copytree(tiny_sd15, model)
    index = (model / "model_index.json").read_bytes()
    t0 = time.monotonic()
    proc = run_cli(generate_args(model, model / "model_index.png"), engine_env)
    assert proc.returncode == 2, proc.stderr
    assert "holds a diffusers model" in proc.stderr and "loading" not in proc.stderr
    assert (model / "model_index.json").read_bytes() == index
    notes = tmp_path / "out" / "notes.json"
    notes.parent.mkdir()
    notes.write_text('{"my": "notes"}', encoding="utf-8")
    proc = run_cli(generate_args(model, notes.with_suffix(".png")), engine_env)
    assert proc.returncode == 2, proc.stderr
    assert "notes.json" in proc.stderr and "not written by SphereDiff" in proc.stderr
    assert notes.read_text(encoding="utf-8") == '{"my": "notes"}'
    assert os.listdir(notes.parent) == ["notes.json"]
    print(f"two refusals in {time.monotonic() - t0:.1f} s")


def test_unknown_family_exits_3(engine_env, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "AudioLDMPipeline"}))
    out = tmp_path / "out" / "pano.png"
    proc = run_cli(generate_args(model, out), engine_env)
    assert proc.returncode == 3, proc.stderr
    assert "AudioLDMPipeline" in proc.stderr and "cannot drive" in proc.stderr
    assert not out.parent.exists()


@pytest.mark.skipif(os.name == "nt", reason="SIGINT to a child process is POSIX only")
def test_ctrl_c_cancels_without_partial_files(engine_env, tiny_sd15, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spherediff_core.cli",
            *generate_args(tiny_sd15, out_dir / "pano.png", "--steps", "30"),
        ],
        env=engine_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if "spherediff: denoise" in line:
            proc.send_signal(signal.SIGINT)
            break
    stdout, rest = proc.communicate(timeout=60)
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr
    assert "cancelled" in stderr and stdout == ""
    assert os.listdir(out_dir) == []


def test_version_and_worker_subcommand(engine_env):
    proc = run_cli(["--version"], engine_env)
    assert proc.returncode == 0
    assert re.match(r"spherediff \d+\.\d+\.\d+ \(python ", proc.stdout)
    proc = run_cli(["worker", "--hello"], engine_env)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert json.loads(line)["event"] == "hello"


def test_help_lists_every_option_and_the_exit_codes():
    parser = cli.build_parser()
    text = parser._subparsers._group_actions[0].choices["generate"].format_help()
    for f in fields(GenerationOptions):
        flag = "--out" if f.name == "output" else "--" + f.name.replace("_", "-")
        assert flag in text, flag
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "130"):
        assert f"\n  {code}" in text
    assert "exit codes:" in parser.format_help()


def test_progress_printer_terminal_and_plain():
    p = SimpleNamespace
    tty = io.StringIO()
    printer = cli.ProgressPrinter(tty, tty=True)
    printer(p(phase="load", step=0, total=1, eta_s=None, message="loading"))
    printer(p(phase="denoise", step=1, total=40, eta_s=75.0, message="step 1/20"))
    printer(p(phase="denoise", step=40, total=40, eta_s=0.0, message="step 20/20"))
    printer.close()
    text = tty.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n")
    assert "denoise [" in text and "1/40" in text and "ETA 1:15" in text and "100%" in text

    plain = io.StringIO()
    printer = cli.ProgressPrinter(plain, tty=False)
    for step in range(1, 101):
        printer(p(phase="denoise", step=step, total=100, eta_s=100.0 - step, message=""))
    lines = plain.getvalue().splitlines()
    assert "\r" not in plain.getvalue()
    assert 5 <= len(lines) <= 12  # occasional, not one per step
    assert lines[-1].startswith("spherediff: denoise 100/100 100%")


def test_package_version_matches_pyproject():
    import spherediff_core

    from tests.support.engine_process import REPO

    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    match = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    assert match and match.group(1) == spherediff_core.__version__
