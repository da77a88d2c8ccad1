"""Bad input and faults, case by case: every case is refused by name or survived, and leaves
nothing on disk and no process behind. The table of docs/reliability.md comes from here.

Run with ``SPHEREDIFF_WRITE_RELIABILITY=1`` to rewrite docs/reliability.md; otherwise the
last test checks that the document lists exactly the cases that ran.

The surfaces: the command line (``python -m spherediff_core.cli generate``), the worker
(``python -m spherediff_core.worker``, a JSON job on standard input), hostile model
folders (through the command), faults (signals, kill -9, a closed standard input, a dead
parent, a full disk, a folder made read-only mid-run, two writers, a corrupt plan cache,
stale temporaries) and the Blender operator (``bpy.ops.spherediff.generate`` with a
script's bad arguments, inside real bpy 5.0).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.reliability import DOC_PATH, Case, Record, Sandbox, render_table

PROMPT = "a quiet harbour at dusk"
CASES: list[Case] = []
RESULTS: dict[str, tuple[Case, Record]] = {}
POSIX = os.name == "posix"


def case(id: str, surface: str, what: str, **kw):
    def register(fn):
        CASES.append(Case(id, surface, what, fn, **kw))
        return fn

    return register


# --------------------------------------------------------------------------------------
# Fixtures: the tiny models, the environment, the sandbox of each case
# --------------------------------------------------------------------------------------

CTX: dict = {}


@pytest.fixture(scope="module", autouse=True)
def context(engine_env, tiny_sd15, tmp_path_factory):
    from tests.support.tiny_pipelines import build_tiny_pipeline

    root = tmp_path_factory.mktemp("reliability")
    CTX.update(
        env=engine_env,
        sd15=Path(tiny_sd15),
        root=root,
        plans=root / "plans",
    )
    CTX["ltx"] = build_tiny_pipeline("ltx", root / "models" / "ltx")
    yield CTX
    CTX.clear()


def model(name: str = "sd15") -> str:
    return str(CTX[name])


def copy_model(sb: Sandbox, name: str = "sd15") -> Path:
    dest = sb.root / "model"
    shutil.copytree(CTX[name], dest)
    return dest


# --------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------

GEN = ("-m", "spherediff_core.cli", "generate")
WORKER = ("-m", "spherediff_core.worker")
REFUSED_CODES = {"bad_input", "model_not_found", "unsupported_model", "output_error"}


def cli_args(sb: Sandbox, drop: tuple[str, ...] = (), **flags) -> list[str]:
    """``generate`` arguments for the tiny model; ``flags`` override (``--x-y`` as x_y)."""
    base: dict[str, object] = {
        "prompt": PROMPT,
        "model": model(),
        "width": "64",
        "steps": "2",
        "seed": "1",
        "out": str(sb.out / "pano.png"),
        "plan_cache_dir": str(CTX["plans"]),
    }
    base.update(flags)
    args = ["--offline"]
    for key, value in base.items():
        if key in drop:
            continue
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def last_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("spherediff: ") or "error" in ln]
    return (lines[-1] if lines else stderr.strip()[-300:]).strip()


def run_cli(sb: Sandbox, args: list[str], timeout: float = 120):
    code, _out, err, seconds = sb.python(*GEN, *args, timeout=timeout)
    outcome = "refused" if code in (2, 3) else ("succeeded" if code == 0 else f"exit {code}")
    sb.seconds = seconds
    return outcome, f"exit {code}", last_error_line(err), ""


def cli_case(id: str, what: str, names: tuple[str, ...], defect: str = "", **kw):
    """A command-line case: ``generate`` with flags overridden (``drop``: flags left out)."""
    drop = kw.pop("drop", ())
    raw = kw.pop("raw", None)

    def run(sb: Sandbox):
        args = raw(sb) if raw is not None else cli_args(sb, drop, **kw)
        return run_cli(sb, args)

    CASES.append(Case(id, "command line", what, run, names=names, defect=defect))


def worker_events(stdout: str) -> list[dict]:
    events = []
    for line in stdout.splitlines():
        if line.strip():
            events.append(json.loads(line))
    return events


def run_worker(sb: Sandbox, job: str | bytes | None, *args: str, timeout: float = 120):
    code, out, _err, seconds = sb.python(*WORKER, *args, stdin=job, timeout=timeout)
    sb.seconds = seconds
    events = worker_events(out)
    assert events and events[0]["event"] == "hello", out
    last = events[-1]
    if last["event"] == "error":
        outcome = "refused" if last["code"] in REFUSED_CODES else f"error {last['code']}"
        return outcome, f"{last['code']} (exit {code})", last["message"], ""
    return "succeeded", f"exit {code}", "", ""


def job_options(sb: Sandbox, **over) -> dict:
    options = {
        "prompt": PROMPT,
        "model": model(),
        "width": 64,
        "steps": 2,
        "seed": 1,
        "offline": True,
        "output": str(sb.out / "pano.png"),
    }
    options.update(over)
    return {k: v for k, v in options.items() if v is not DROP}


DROP = object()


def worker_case(id: str, what: str, names: tuple[str, ...], defect: str = "", job=None, **over):
    """A worker case: a job line built from options (``over``), or ``job(sb)``'s text."""

    def run(sb: Sandbox):
        if job is not None:
            text = job(sb)
        else:
            text = json.dumps({"protocol": 1, "options": job_options(sb, **over)})
        return run_worker(sb, text)

    CASES.append(Case(id, "worker job", what, run, names=names, defect=defect))


# --------------------------------------------------------------------------------------
# The command line: bad options
# --------------------------------------------------------------------------------------

cli_case("cli-steps-zero", "--steps 0", ("steps", "1"), steps="0")
cli_case("cli-steps-negative", "--steps -3", ("steps",), steps="-3")
cli_case("cli-steps-not-a-number", "--steps ten", ("--steps", "int"), steps="ten")
cli_case("cli-steps-too-many", "--steps 100000", ("steps", "1000"), steps="100000")
cli_case("cli-guidance-nan", "--guidance nan", ("guidance", "finite"), guidance="nan")
cli_case("cli-guidance-huge", "--guidance 1e9", ("guidance", "50"), guidance="1e9")
cli_case("cli-seed-negative", "--seed -1", ("seed",), seed="-1")
cli_case("cli-seed-too-big", "--seed 2**64", ("seed",), seed=str(2**64))
cli_case("cli-width-odd", "--width 101", ("width", "even"), width="101")
cli_case("cli-width-tiny", "--width 32", ("width", "64"), width="32")
cli_case("cli-width-huge", "--width 100000", ("width", "16384"), width="100000")
cli_case("cli-size-unknown", "--size 3K", ("--size", "choice"), size="3K")
cli_case("cli-n-points-tiny", "--n-points 5", ("n_points",), n_points="5")
cli_case("cli-fov-narrow", "--fov-deg 10", ("fov_deg",), fov_deg="10")
cli_case("cli-fov-wide", "--fov-deg 179", ("fov_deg",), fov_deg="179")
cli_case("cli-overlap", "--overlap 0.95", ("overlap",), overlap="0.95")
cli_case("cli-temperature-zero", "--temperature 0", ("temperature",), temperature="0")
cli_case("cli-sampling", "--sampling bogus", ("--sampling", "choice"), sampling="bogus")
cli_case("cli-view-batch-zero", "--view-batch-size 0", ("view_batch_size",), view_batch_size="0")
cli_case("cli-device-unknown", "--device tpu", ("device", "cpu"), device="tpu")
cli_case("cli-precision", "--precision fp8", ("--precision", "choice"), precision="fp8")
cli_case("cli-fps-huge", "--fps 1000 (video)", ("fps",), fps="1000")
cli_case("cli-frames-zero", "--frames 0", ("frames",), frames="0")
cli_case("cli-prompt-empty", "--prompt '   '", ("prompt", "empty"), prompt="   ")
cli_case("cli-prompt-long", "a 5,000-character prompt", ("prompt", "4000"), prompt="x" * 5000)
cli_case(
    "cli-negative-long",
    "a 5,000-character negative prompt",
    ("negative_prompt",),
    negative_prompt="y" * 5000,
)
cli_case("cli-model-empty", "--model ''", ("model", "empty"), model="")
cli_case(
    "cli-model-missing-folder",
    "--model ./no-such-model",
    ("model", "folder"),
    model="./no-such-model",
)
cli_case(
    "cli-model-bad-hub-id", "--model 'not a hub id'", ("model", "owner/name"), model="not a hub id"
)
cli_case(
    "cli-output-not-png",
    "--out pano.jpg",
    ("output", ".png"),
    raw=lambda sb: cli_args(sb, out=str(sb.out / "pano.jpg")),
)
cli_case(
    "cli-output-is-folder",
    "--out names an existing folder (a folder called pano.png)",
    ("output", "is a folder"),
    raw=lambda sb: cli_args(sb, out=str(_folder(sb, "pano.png"))),
)
cli_case(
    "cli-cache-dir-is-file",
    "--cache-dir names a file",
    ("cache_dir",),
    raw=lambda sb: cli_args(sb, cache_dir=str(_file(sb, "cache.txt"))),
)
cli_case("cli-unknown-flag", "--stepz 3 (a typo)", ("--stepz",), stepz="3")
cli_case(
    "cli-hdr-video",
    "--hdr --video (videos stay LDR)",
    ("hdr", "video"),
    raw=lambda sb: [*cli_args(sb), "--hdr", "--video"],
)
cli_case(
    "cli-loop-still",
    "--loop without --video (a still has no time)",
    ("loop", "video"),
    raw=lambda sb: [*cli_args(sb), "--loop"],
)
cli_case("cli-no-prompt", "no --prompt", ("--prompt",), drop=("prompt",))
cli_case(
    "cli-video-jpg",
    "--video --out clip.jpg",
    ("output", ".mp4"),
    raw=lambda sb: [*cli_args(sb, model=model("ltx"), out=str(sb.out / "c.jpg")), "--video"],
)


def _folder(sb: Sandbox, name: str) -> Path:
    path = sb.out / name
    path.mkdir()
    sb.keep(path)
    return path


def _file(sb: Sandbox, name: str, text: str = "x") -> Path:
    path = sb.root / name
    path.write_text(text, encoding="utf-8")
    sb.keep(path)
    return path


# --------------------------------------------------------------------------------------
# The command line: the output path and the environment (issue 8: B, E, K, 9, 4, H, F)
# --------------------------------------------------------------------------------------


@case(
    "cli-output-parent-is-file",
    "command line",
    "--out below a file (x.txt/pano.png)",
    names=("output", "file"),
)
def _(sb):
    parent = _file(sb, "x.txt")
    return run_cli(sb, cli_args(sb, out=str(parent / "pano.png")))


@case(
    "cli-output-name-too-long",
    "command line",
    "an output file name of 300 characters",
    names=("output", "long"),
    defect="E",
)
def _(sb):
    return run_cli(sb, cli_args(sb, out=str(sb.out / ("n" * 296 + ".png"))))


@case(
    "cli-output-under-proc",
    "command line",
    "--out /proc/spherediff/pano.png (passes access())",
    names=("output",),
    defect="9",
)
def _(sb):
    if not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    return run_cli(sb, cli_args(sb, out="/proc/spherediff/pano.png"))


@case(
    "cli-output-in-model-folder",
    "command line",
    "--out model_index.png inside the model folder",
    names=("output", "model"),
    defect="B",
)
def _(sb):
    folder = copy_model(sb)
    sb.snapshot_setup()
    before = (folder / "model_index.json").read_bytes()
    outcome = run_cli(sb, cli_args(sb, model=str(folder), out=str(folder / "model_index.png")))
    assert (folder / "model_index.json").read_bytes() == before
    return outcome


@case(
    "cli-foreign-sidecar",
    "command line",
    "pano.json exists and was not written by SphereDiff",
    names=("pano.json",),
    defect="B",
)
def _(sb):
    foreign = sb.out / "pano.json"
    foreign.write_text('{"my": "notes"}\n', encoding="utf-8")
    sb.snapshot_setup()
    outcome = run_cli(sb, cli_args(sb))
    assert foreign.read_text(encoding="utf-8") == '{"my": "notes"}\n'
    return outcome


@case(
    "cli-sidecar-is-folder",
    "command line",
    "pano.json is a folder; an earlier pano.png exists",
    names=("pano.json",),
    defect="A",
)
def _(sb):
    (sb.out / "pano.json").mkdir()
    old = sb.out / "pano.png"
    old.write_bytes(b"earlier panorama")
    sb.snapshot_setup()
    outcome = run_cli(sb, cli_args(sb))
    assert old.read_bytes() == b"earlier panorama"
    return outcome


@case(
    "cli-unnormalised-output",
    "command line",
    "--out sub/../../out/x.png: no stray sub/",
    expect="succeeded",
    defect="K",
    max_refuse_s=120,
)
def _(sb):
    out = f"{sb.out}/sub/../../out/x.png"
    result = run_cli(sb, cli_args(sb, out=out))
    assert not (sb.out / "sub").exists()
    sb.keep(sb.out / "x.png", sb.out / "x.json")
    return result


@case(
    "cli-device-cuda-without-gpu",
    "command line",
    "--device cuda on a machine without CUDA",
    names=("cuda",),
    defect="H",
)
def _(sb):
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        env=CTX["env"],
    )
    if probe.stdout.strip() != "False":
        pytest.skip("this machine has CUDA")
    return run_cli(sb, cli_args(sb, device="cuda"))


@case(
    "cli-prompt-invalid-utf8",
    "command line",
    "a prompt with invalid UTF-8 bytes",
    names=("prompt", "UTF-8"),
    defect="F",
)
def _(sb):
    if not POSIX:
        pytest.skip("argv is not bytes on Windows")
    args = [a.encode() for a in cli_args(sb)]
    args[args.index(b"--prompt") + 1] = b"sunset \xff\xfe over sea"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable.encode(), *[a.encode() for a in GEN], *args],
        capture_output=True,
        env=sb.env,
        cwd=sb.root,
        timeout=120,
    )
    sb.seconds = time.monotonic() - t0
    code = proc.returncode
    err = proc.stderr.decode("utf-8", "replace")
    return ("refused" if code == 2 else f"exit {code}"), f"exit {code}", last_error_line(err), ""


@case(
    "cli-video-from-image-model",
    "command line",
    "--video with an image model",
    names=("video", "image model"),
    defect="4",
)
def _(sb):
    return run_cli(sb, [*cli_args(sb, out=str(sb.out / "clip.mp4")), "--video"])


@case(
    "cli-still-from-video-model",
    "command line",
    "a still from a video model",
    names=("video", "video model"),
    defect="4",
)
def _(sb):
    return run_cli(sb, cli_args(sb, model=model("ltx")))


@case(
    "cli-video-bad-frames",
    "command line",
    "--video --frames 50 with LTX-Video (8k+1)",
    names=("frames", "49", "57"),
    defect="4",
)
def _(sb):
    args = cli_args(sb, model=model("ltx"), out=str(sb.out / "clip.mp4"), frames="50")
    return run_cli(sb, [*args, "--video"])


@case(
    "cli-hub-model-offline",
    "command line",
    "a Hub id that is not cached, offline",
    names=("hf download", "--model"),
    defect="3",
)
def _(sb):
    return run_cli(sb, cli_args(sb, model="someone/not-cached-model"))


@case(
    "cli-hub-unreachable",
    "command line",
    "a Hub id with the Hub unreachable (not offline)",
    names=("--offline",),
    defect="4",
    max_refuse_s=10.0,
)
def _(sb):
    sb.env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")
    args = [a for a in cli_args(sb, model="someone/not-cached-model") if a != "--offline"]
    return run_cli(sb, args)


# --------------------------------------------------------------------------------------
# The worker: bad jobs (issue 8: F, H)
# --------------------------------------------------------------------------------------

worker_case("job-not-json", "a job line that is not JSON", ("JSON",), job=lambda sb: "{nope")
worker_case("job-hdr-not-bool", '"hdr": "yes"', ("hdr", "true or false"), hdr="yes")
worker_case("job-hdr-video", '"hdr": true with "video": true', ("hdr", "LDR"), hdr=True, video=True)
worker_case(
    "job-loop-one-frame",
    '"loop": true with "frames": 1 for LTX-Video (a loop needs a latent frame)',
    ("frames", "loop", "9"),
    job=lambda sb: json.dumps(
        {
            "protocol": 1,
            "options": job_options(sb, model=model("ltx"), video=True, frames=1, loop=True),
        }
    ),
)
worker_case("job-array", "a JSON array instead of an object", ("object",), job=lambda sb: "[1]")
worker_case(
    "job-deeply-nested",
    "100,000 nested arrays",
    ("nested",),
    defect="H",
    job=lambda sb: "[" * 100_000 + "]" * 100_000,
)
worker_case(
    "job-unknown-field",
    "a job with an unknown field",
    ("job", "jobb"),
    job=lambda sb: json.dumps({"protocol": 1, "options": job_options(sb), "jobb": 1}),
)
worker_case(
    "job-protocol-2",
    "protocol 2",
    ("protocol", "2"),
    job=lambda sb: json.dumps({"protocol": 2, "options": job_options(sb)}),
)
worker_case(
    "job-no-options",
    "a job without options",
    ("options",),
    job=lambda sb: json.dumps({"protocol": 1}),
)
worker_case("job-no-prompt", "options without a prompt", ("prompt",), prompt=DROP)
worker_case("job-unknown-option", "an unknown option 'stepz'", ("stepz",), stepz=3)
worker_case("job-steps-string", "steps as a string '10'", ("steps",), steps="10")
worker_case("job-seed-bool", "seed true", ("seed",), seed=True)
worker_case("job-width-float", "width 1000.5", ("width",), width=1000.5)
worker_case(
    "job-guidance-infinite",
    "guidance 1e400 (infinity)",
    ("guidance",),
    job=lambda sb: json.dumps({"protocol": 1, "options": job_options(sb)}).replace(
        '"seed": 1', '"seed": 1, "guidance": 1e400'
    ),
)
worker_case(
    "job-lone-surrogate",
    "a prompt with a lone surrogate (\\ud800)",
    ("prompt",),
    defect="F",
    prompt="sky \ud800 sea",
)
worker_case(
    "job-nul-output",
    "a NUL in the output path",
    ("output", "NUL"),
    job=lambda sb: json.dumps(
        {"protocol": 1, "options": job_options(sb, output=str(sb.out / "a\x00b.png"))}
    ),
)
worker_case(
    "job-nul-prompt", "a NUL in the sky prompt", ("sky_prompt", "NUL"), sky_prompt="blue\x00sky"
)
worker_case(
    "job-plan-cache-empty",
    "plan_cache_dir ''",
    ("plan_cache_dir",),
    job=lambda sb: json.dumps({"protocol": 1, "options": job_options(sb), "plan_cache_dir": ""}),
)
worker_case("job-empty-stdin", "no job at all (empty standard input)", ("job",), job=lambda sb: "")
worker_case(
    "job-model-not-a-folder",
    "model is a file",
    ("model", "folder"),
    job=lambda sb: json.dumps(
        {"protocol": 1, "options": job_options(sb, model=str(_file(sb, "model.txt")))}
    ),
)
worker_case("job-size-preset", "size '3K'", ("size", "1K"), size="3K")
worker_case("job-sampling", "sampling 'random'", ("sampling", "dynamic"), sampling="random")


@case("job-file-missing", "worker job", "--job names a missing file", names=("--job",))
def _(sb):
    return run_worker(sb, None, "--job", str(sb.root / "missing.json"))


@case("job-file-not-utf8", "worker job", "--job file in Latin-1 with accents", names=("UTF-8",))
def _(sb):
    path = sb.root / "job.json"
    path.write_bytes('{"protocol": 1, "options": {"prompt": "caf\xe9"}}'.encode("latin-1"))
    sb.keep(path)
    return run_worker(sb, None, "--job", str(path))


@case(
    "job-bad-argument",
    "worker job",
    "worker --jobb (a typo on its command line)",
    names=("--jobb",),
)
def _(sb):
    return run_worker(sb, "", "--jobb", "x")


# --------------------------------------------------------------------------------------
# Hostile model folders (issue 8: G)
# --------------------------------------------------------------------------------------


def folder_case(id: str, what: str, names: tuple[str, ...], spoil, defect: str = "G"):
    def run(sb: Sandbox):
        folder = copy_model(sb)
        spoil(folder)
        sb.snapshot_setup()
        return run_cli(sb, cli_args(sb, model=str(folder)))

    CASES.append(Case(id, "model folder", what, run, names=names, defect=defect))


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _unet_weights(folder: Path) -> Path:
    return next((folder / "unet").glob("*.safetensors"))


def _pickle_only(folder: Path) -> None:
    weights = _unet_weights(folder)
    weights.rename(weights.with_name("diffusion_pytorch_model.bin"))


def _truncated(folder: Path) -> None:
    weights = _unet_weights(folder)
    weights.write_bytes(weights.read_bytes()[:100])


def _custom_code(folder: Path) -> None:
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    index["unet"] = ["my_unet", "MyUNet"]
    _write(folder / "model_index.json", json.dumps(index))
    marker = folder.parent / "custom-code-ran"
    _write(folder / "unet" / "my_unet.py", f"open({str(marker)!r}, 'w').write('ran')\n")
    _write(folder / "my_unet.py", f"open({str(marker)!r}, 'w').write('ran')\n")


def _missing_component(folder: Path) -> None:
    shutil.rmtree(folder / "unet")


def _missing_config(folder: Path) -> None:
    (folder / "vae" / "config.json").unlink()


def _index_not_json(folder: Path) -> None:
    _write(folder / "model_index.json", "{ this is not json")


def _unknown_family(folder: Path) -> None:
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    index["_class_name"] = "KandinskyPipeline"
    _write(folder / "model_index.json", json.dumps(index))


folder_case(
    "model-pickle-only",
    "weights only as pickle (.bin), no .safetensors",
    ("unet", "safetensors"),
    _pickle_only,
)
folder_case("model-truncated-weights", "a truncated .safetensors file", ("unet",), _truncated)
folder_case(
    "model-custom-code",
    "a component with custom code (my_unet.py)",
    ("unet", "my_unet", "not a diffusers or transformers class"),
    _custom_code,
)
folder_case("model-missing-component", "the unet folder deleted", ("unet",), _missing_component)
folder_case(
    "model-missing-config", "vae/config.json deleted", ("vae", "config.json"), _missing_config
)
folder_case(
    "model-index-not-json",
    "model_index.json is not JSON",
    ("model_index.json",),
    _index_not_json,
    defect="",
)
folder_case(
    "model-unknown-family",
    "a pipeline class SphereDiff cannot drive",
    ("KandinskyPipeline",),
    _unknown_family,
    defect="",
)


# --------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------


class Events:
    """A worker or command started in the sandbox whose output lines are read by a thread."""

    def __init__(self, sb: Sandbox, args: tuple[str, ...], stdin_text: str | None = None):
        self.proc = sb.popen(*args)
        self.t0 = time.monotonic()
        self.lines: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()
        if stdin_text is not None:
            self.proc.stdin.write(stdin_text.encode("utf-8") + b"\n")
            self.proc.stdin.flush()

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for raw in stream:
            into.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def wait_for(self, predicate, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(line) for line in list(self.lines) + list(self.err)):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"ended early: {self.lines[-5:]} {self.err[-10:]}")
            time.sleep(0.02)
        self.proc.kill()
        raise AssertionError(f"timed out waiting; stderr: {self.err[-10:]}")

    def finish(self, timeout: float = 60) -> tuple[int, float]:
        t0 = time.monotonic()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for t in self._threads:
            t.join(5)
        return code, time.monotonic() - t0

    def events(self) -> list[dict]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]


def denoising(line: str) -> bool:
    return '"phase": "denoise"' in line or "spherediff: denoise" in line


def long_job(sb: Sandbox, **over) -> str:
    # Big enough on this CPU to be caught while denoising (many batches, many steps).
    options = job_options(sb, width=256, steps=30, view_batch_size=1, **over)
    return json.dumps({"protocol": 1, "options": options, "plan_cache_dir": str(CTX["plans"])})


def stopped(sb: Sandbox, code: int, seconds: float, message: str, expect_code: int = 130):
    sb.seconds = seconds
    outcome = "stopped cleanly" if code == expect_code else f"exit {code}"
    return outcome, f"exit {code}", message, f"stopped {seconds:.2f} s after the fault"


@case(
    "fault-sigint-cli",
    "fault",
    "Ctrl-C (SIGINT) while the command denoises",
    expect="stopped cleanly",
    max_refuse_s=2.0,
)
def _(sb):
    if not POSIX:
        pytest.skip("POSIX signals")
    run = Events(sb, (*GEN, *cli_args(sb, width="256", steps="30", view_batch_size="1")))
    run.wait_for(denoising)
    run.proc.send_signal(signal.SIGINT)
    code, seconds = run.finish()
    return stopped(sb, code, seconds, last_error_line("\n".join(run.err)))


@case(
    "fault-sigterm-worker",
    "fault",
    "SIGTERM while the worker denoises",
    expect="stopped cleanly",
    max_refuse_s=2.0,
)
def _(sb):
    if not POSIX:
        pytest.skip("POSIX signals")
    run = Events(sb, WORKER, long_job(sb))
    run.wait_for(denoising)
    run.proc.send_signal(signal.SIGTERM)
    code, seconds = run.finish()
    last = run.events()[-1]
    assert last["event"] == "error" and last["code"] == "cancelled", last
    return stopped(sb, code, seconds, last["message"])


@case(
    "fault-cancel-line",
    "fault",
    "a 'cancel' line while the worker denoises",
    expect="stopped cleanly",
    max_refuse_s=2.0,
)
def _(sb):
    run = Events(sb, WORKER, long_job(sb))
    run.wait_for(denoising)
    run.proc.stdin.write(b"cancel\n")
    run.proc.stdin.flush()
    code, seconds = run.finish()
    last = run.events()[-1]
    assert last["event"] == "error" and last["code"] == "cancelled", last
    return stopped(sb, code, seconds, last["message"])


@case(
    "fault-kill9-worker",
    "fault",
    "kill -9 of the worker while it denoises",
    expect="stopped cleanly",
    max_refuse_s=2.0,
)
def _(sb):
    if not POSIX:
        pytest.skip("POSIX signals")
    run = Events(sb, WORKER, long_job(sb))
    run.wait_for(denoising)
    run.proc.kill()
    code, seconds = run.finish()
    return stopped(sb, code, seconds, "killed by SIGKILL", expect_code=-signal.SIGKILL)


@case(
    "fault-stdin-closed",
    "fault",
    "the worker's standard input closes while it denoises (its parent is gone)",
    expect="stopped cleanly",
    defect="5",
    max_refuse_s=2.0,
)
def _(sb):
    # As the add-on starts it: --parent-pid makes a closed standard input mean "the client
    # is gone" (without it, closing standard input after the job line is allowed).
    run = Events(sb, (*WORKER, "--parent-pid", str(os.getpid())), long_job(sb))
    run.wait_for(denoising)
    run.proc.stdin.close()
    code, seconds = run.finish()
    return stopped(sb, code, seconds, (run.events() or [{}])[-1].get("message", ""))


PARENT = """
import os, subprocess, sys, time
job = sys.stdin.readline()
child = subprocess.Popen([sys.executable, "-m", "spherediff_core.worker",
                          "--parent-pid", str(os.getpid())],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
child.stdin.write(job.encode()); child.stdin.flush()
for line in child.stdout:
    if b'"denoise"' in line:
        print(child.pid, flush=True)
        break
time.sleep(600)
"""


@case(
    "fault-parent-killed",
    "fault",
    "the worker's parent is killed (kill -9) mid-run",
    expect="stopped cleanly",
    defect="5",
    max_refuse_s=2.5,
)
def _(sb):
    import psutil

    parent = sb.popen("-c", PARENT)
    parent.stdin.write(long_job(sb).encode() + b"\n")
    parent.stdin.flush()
    pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    t0 = time.monotonic()
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(30)
    seconds = time.monotonic() - t0
    sb.seconds = seconds
    return "stopped cleanly", "worker gone", "", f"worker ended {seconds:.2f} s after its parent"


@case(
    "fault-sigterm-plan-build",
    "fault",
    "SIGTERM while a 400,000-point plan is being built",
    expect="stopped cleanly",
    defect="5",
    max_refuse_s=2.0,
)
def _(sb):
    if not POSIX:
        pytest.skip("POSIX signals")
    job = json.dumps(
        {
            "protocol": 1,
            "options": job_options(sb, n_points=400_000),
            "plan_cache_dir": str(sb.root / "plans"),
        }
    )
    run = Events(sb, WORKER, job)
    run.wait_for(lambda line: '"phase": "load"' in line and '"step": 1' in line)
    time.sleep(0.5)  # into the plan build
    run.proc.send_signal(signal.SIGTERM)
    code, seconds = run.finish()
    return stopped(sb, code, seconds, (run.events() or [{}])[-1].get("message", ""))


@contextlib.contextmanager
def mounted(target: Path, *options: str):
    """A tmpfs or read-only bind mount (Linux, root); skip where the platform forbids it."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("needs Linux and root for a mount")
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here: {proc.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@case(
    "fault-disk-full",
    "fault",
    "the output folder is a 64 KiB file system (disk full)",
    expect="failed cleanly",
    names=("space",),
    defect="E",
    max_refuse_s=120,
)
def _(sb):
    with mounted(sb.out / "full", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as full:
        sb.snapshot_setup()
        outcome, code, message, _ = run_cli(sb, cli_args(sb, width="512", out=str(full / "p.png")))
        left = sorted(p.name for p in full.iterdir())
    assert left == [], left
    return ("failed cleanly" if code == "exit 5" else outcome), code, message, ""


@case(
    "fault-readonly-mid-run",
    "fault",
    "the output folder is made read-only while denoising",
    expect="failed cleanly",
    names=("read-only",),
    defect="E",
    max_refuse_s=120,
)
def _(sb):
    folder = sb.out / "ro"
    folder.mkdir()
    sb.snapshot_setup()
    run = Events(sb, (*GEN, *cli_args(sb, width="256", steps="8", out=str(folder / "p.png"))))
    run.wait_for(denoising)
    with mounted(folder, "--bind", str(folder)):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)
        code, _ = run.finish(120)
        left = sorted(p.name for p in folder.iterdir())
    assert left == [], left
    sb.seconds = time.monotonic() - run.t0
    message = last_error_line("\n".join(run.err))
    return ("failed cleanly" if code == 5 else f"exit {code}"), f"exit {code}", message, ""


@case(
    "fault-two-writers",
    "fault",
    "two runs write the same output path at once (3 rounds)",
    expect="succeeded",
    defect="D",
    max_refuse_s=600,
)
def _(sb):
    from PIL import Image

    out = sb.out / "same.png"
    for _round in range(3):
        runs = [Events(sb, (*GEN, *cli_args(sb, seed=str(s), out=str(out)))) for s in (11, 22)]
        codes = [r.finish(180)[0] for r in runs]
        assert codes == [0, 0], [r.err[-5:] for r in runs]
        with Image.open(out) as im:
            png_seed = json.loads(im.info["spherediff"])["seed"]
        side_seed = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))["seed"]
        assert png_seed == side_seed, (png_seed, side_seed)
    sb.keep(out, out.with_suffix(".json"))
    sb.seconds = 0.0
    return "succeeded", "exit 0, exit 0", "", "the PNG and its sidecar agree after every round"


@case(
    "fault-corrupt-plan-cache",
    "fault",
    "every cached plan file overwritten with garbage",
    expect="recovered",
    max_refuse_s=120,
)
def _(sb):
    plans = sb.root / "plans"
    first = run_cli(sb, cli_args(sb, plan_cache_dir=str(plans)))
    assert first[0] == "succeeded", first
    files = [p for p in plans.rglob("*") if p.is_file()]
    assert files
    for path in files:
        path.write_bytes(b"\x80garbage" * 10)
    again = run_cli(sb, cli_args(sb, plan_cache_dir=str(plans), seed="2"))
    assert again[0] == "succeeded", again
    sb.keep(plans, *plans.rglob("*"), *sb.out.iterdir())
    return "recovered", again[1], "", "the plan was rebuilt"


@case(
    "fault-kill9-video-write",
    "fault",
    "kill -9 while a video's frames are written; then the next run in that folder",
    expect="recovered",
    defect="I",
    max_refuse_s=600,
)
def _(sb):
    job = {
        "protocol": 1,
        "plan_cache_dir": str(CTX["plans"]),
        "options": job_options(
            sb,
            model=model("ltx"),
            video=True,
            frames=33,
            width=512,
            output=str(sb.out / "clip.mp4"),
        ),
    }
    run = Events(sb, WORKER, json.dumps(job))
    # Frames are written as each chunk is blended (during the decode phase): kill once the
    # temporary frames folder holds two of them.
    deadline = time.monotonic() + 300
    while not sb.out.is_dir() or not any(
        p.is_dir() and p.name.startswith(".") and len(list(p.glob("*.png"))) >= 2
        for p in sb.out.iterdir()
    ):
        assert time.monotonic() < deadline and run.proc.poll() is None, "no frames written"
        time.sleep(0.02)
    run.proc.kill()
    run.finish()
    stale = sorted(p.name for p in sb.out.iterdir() if p.name.startswith("."))
    assert stale, "the kill came too late to leave temporaries"
    job["options"].update(frames=9, width=128)
    again = Events(sb, WORKER, json.dumps(job))
    again.proc.stdin.close()
    code, _ = again.finish(300)
    assert code == 0, again.err[-10:]
    sb.keep(*sb.out.rglob("*"))
    left = sorted(p.name for p in sb.out.iterdir() if p.name.startswith("."))
    assert left == [], left
    sb.seconds = 0.0
    return "recovered", "exit 0", "", f"removed {len(stale)} stale temporaries"


# --------------------------------------------------------------------------------------
# What a new user met (issue 8: 1, 7, 10, 11) and the add-on's saving (C)
# --------------------------------------------------------------------------------------


def _addon_module(name: str):
    """An add-on module that needs no bpy, loaded from its file (the package's __init__
    imports bpy)."""
    import importlib.util

    from tests.support.engine_process import REPO

    spec = importlib.util.spec_from_file_location(
        f"addon_{name}", REPO / "spherediff_blender" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


PLANTED = "open({marker!r}, 'w').write('planted module ran')\nraise ImportError('planted')\n"


@case(
    "env-planted-module-in-cwd",
    "environment",
    "argparse.py and json.py in the folder the worker is started from (the add-on's way)",
    names=("prompt",),
    defect="11",
)
def _(sb):
    wc = _addon_module("worker_client")
    neutral_cwd, worker_argv, worker_env = wc.neutral_cwd, wc.worker_argv, wc.worker_env
    marker = sb.root / "planted-ran"
    for name in ("argparse.py", "json.py"):
        _file(sb, name, PLANTED.format(marker=str(marker)))
    env = worker_env(base=sb.env)
    argv = worker_argv(sys.executable)
    assert neutral_cwd() != str(sb.root)
    t0 = time.monotonic()
    job = json.dumps({"protocol": 1, "options": job_options(sb, prompt="  ")})
    proc = subprocess.run(argv, input=job.encode(), capture_output=True, env=env, cwd=sb.root)
    sb.seconds = time.monotonic() - t0
    assert not marker.exists(), "a module from the current folder ran in the worker"
    last = worker_events(proc.stdout.decode())[-1]
    outcome = "refused" if last.get("code") == "bad_input" else f"error {last.get('code')}"
    return outcome, f"{last.get('code')} (exit {proc.returncode})", last.get("message", ""), ""


@case(
    "cli-pndm-steps-shown",
    "command line",
    "--steps 2 with a PNDM model: the progress counts the warm-up step and says so",
    expect="succeeded",
    names=("warm-up",),
    defect="7",
    max_refuse_s=120,
)
def _(sb):
    code, _out, err, seconds = sb.python(*GEN, *cli_args(sb))
    sb.seconds = seconds
    sb.keep(sb.out / "pano.png", sb.out / "pano.json")
    shown = [ln for ln in err.splitlines() if "step 3/3" in ln]
    assert code == 0 and shown, err[-2000:]
    return "succeeded", f"exit {code}", shown[-1].strip(), ""


@case(
    "script-make-world-help",
    "environment",
    "scripts/make_world.sh --help prints its usage, not its own code",
    expect="succeeded",
    names=("--prompt",),
    defect="10",
)
def _(sb):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    from tests.support.engine_process import REPO

    t0 = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "make_world.sh"), "--help"],
        capture_output=True,
        text=True,
        env=sb.env,
        cwd=sb.root,
    )
    sb.seconds = time.monotonic() - t0
    assert proc.returncode == 0 and "set -euo" not in proc.stdout, proc.stdout
    usage = next(ln for ln in proc.stdout.splitlines() if "--prompt" in ln)
    return "succeeded", "exit 0", usage.strip(), ""


@case(
    "addon-package-allow-list",
    "environment",
    "the extension .zip holds only the add-on (no outputs, .blend files or scripts)",
    expect="succeeded",
    names=("spherediff_blender/",),
    defect="1",
)
def _(sb):
    import zipfile

    package = sb.fixtures["extension_zip"]
    names = sorted(n for n in zipfile.ZipFile(package).namelist() if not n.endswith("/"))
    allowed = ("__init__.py", "blender_manifest.toml", "spherediff_blender/", "wheels/")
    stray = [n for n in names if not n.startswith(allowed)]
    assert not stray, stray
    sb.seconds = 0.0
    return "succeeded", f"{len(names)} files", "only " + ", ".join(allowed), ""


SAVE_ON_FULL_DISK = """
import importlib.util, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("saving", sys.argv[3])
saving = importlib.util.module_from_spec(spec)
spec.loader.exec_module(saving)
src, dest = Path(sys.argv[1]), Path(sys.argv[2])
try:
    saving.save_all([(dest / "pano.png", saving.file_from(src)),
                     (dest / "pano.json", saving.text_of("{}"))])
except OSError as exc:
    print(f"could not save: {exc}")
    sys.exit(5)
"""


@case(
    "addon-save-across-file-systems-disk-full",
    "fault",
    "the add-on saves a result onto a full 64 KiB file system (a copy, not a rename)",
    expect="failed cleanly",
    names=("space",),
    defect="C",
)
def _(sb):
    from tests.support.engine_process import REPO

    src = sb.root / "staged.png"
    src.write_bytes(os.urandom(300_000))
    sb.keep(src)
    with mounted(sb.out / "full", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as full:
        sb.snapshot_setup()
        saving = REPO / "spherediff_blender" / "saving.py"
        code, out, err, seconds = sb.python(
            "-c", SAVE_ON_FULL_DISK, str(src), str(full), str(saving)
        )
        left = sorted(p.name for p in full.iterdir())
    sb.seconds = seconds
    assert left == [], left
    assert src.is_file()  # the staged file is kept until the save succeeded
    outcome = "failed cleanly" if code == 5 else f"exit {code}"
    return outcome, f"exit {code}", (out + err).strip()[-300:], ""


# --------------------------------------------------------------------------------------
# The Blender operator (issue 8: J, 6), inside real bpy 5.0
# --------------------------------------------------------------------------------------

OPERATOR_CASES = {
    "op-steps-zero": ({"steps": 0}, "steps=0", ("steps",)),
    "op-steps-huge": ({"steps": 100000}, "steps=100000", ("steps",)),
    "op-seed-negative": ({"seed": -1}, "seed=-1", ("seed",)),
    "op-width-huge": ({"width": 100000}, "width=100000", ("width",)),
    "op-width-odd": ({"width": 101}, "width=101", ("width",)),
    "op-size-and-width": ({"size": "4K", "width": 256}, "size='4K', width=256", ("size", "width")),
    "op-guidance-negative": ({"guidance": -5.0}, "guidance=-5", ("guidance",)),
    "op-frames-zero": ({"video": True, "frames": 0}, "video=True, frames=0", ("frames",)),
    "op-prompt-empty": ({"prompt": "   "}, "prompt='   '", ("prompt",)),
    "op-prompt-nul": ({"prompt": "sky\x00sea"}, "a NUL in the prompt", ("prompt",)),
    "op-output-nul": ({"output_dir": "//out\x00evil"}, "a NUL in output_dir", ("output",)),
    "op-custom-missing": (
        {"model_preset": "CUSTOM", "custom_model": "/no/such/model"},
        "custom_model='/no/such/model'",
        ("model",),
    ),
    "op-video-image-model": (
        {"video": True, "model_preset": "CUSTOM", "custom_model": "$MODEL"},
        "video=True with an image model",
        ("video",),
    ),
    "op-hdr-video": (
        {"video": True, "hdr": True},
        "video=True, hdr=True (animated worlds stay LDR)",
        ("hdr",),
    ),
    "op-sun-without-hdr": (
        {"hdr": False, "sun_lamp": True},
        "hdr=False, sun_lamp=True",
        ("sun_lamp", "hdr"),
    ),
    "op-sun-strength-negative": ({"sun_strength": -1.0}, "sun_strength=-1", ("sun_strength",)),
    "op-generates": (
        {"seed": 9},
        "a good call: the saved sidecar names the saved PNG, not the staging folder",
        (),
    ),
    "op-python-missing": (
        {"env_python": "/no/such/python"},
        "the worker Python is missing",
        ("python",),
    ),
}


@pytest.fixture(scope="module")
def operator_results(tmp_path_factory, tiny_sd15, extension_zip):
    pythons = [p for p in os.environ.get("SPHEREDIFF_BPY_PYTHONS", "").split(os.pathsep) if p]
    exe = pythons[0] if pythons else str(Path(".venv-bpy50/bin/python").absolute())
    if not Path(exe).exists():
        pytest.fail(f"no bpy interpreter ({exe}); set SPHEREDIFF_BPY_PYTHONS")
    from tests.blender.addon_support import scenario_env

    base = tmp_path_factory.mktemp("operator")
    zip_path = extension_zip
    cases = {k: spec for k, (spec, _, _) in OPERATOR_CASES.items()}
    cases_path = base / "cases.json"
    cases_path.write_text(json.dumps(cases), encoding="utf-8")
    work = base / "work"
    work.mkdir()
    out = base / "out.json"
    env = scenario_env(base, CTX["plans"])
    env["SPHEREDIFF_RELIABILITY_CASE"] = "blender-operator"
    proc = subprocess.run(
        [
            exe,
            str(Path(__file__).parent / "blender" / "reliability_operator.py"),
            "--zip",
            str(zip_path),
            "--out",
            str(out),
            "--work",
            str(work),
            "--model",
            str(tiny_sd15),
            "--cases",
            str(cases_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=600,
    )
    assert out.is_file(), proc.stderr[-4000:]
    data = json.loads(out.read_text(encoding="utf-8"))
    assert "fatal" not in data, data["fatal"]
    data["work"] = work
    return data


def _operator_case(case_id: str, what: str, names: tuple[str, ...]):
    succeeds = case_id == OPERATOR_SUCCESS

    def run(sb: Sandbox):
        data = sb.fixtures["operator_results"]
        res = data["cases"][case_id]
        sb.seconds = res["seconds"]
        assert res["staging"] == [] and res["children"] == [], res
        message = res["error"] or res["last_error"] or ""
        if succeeds:
            assert res["result"] == ["FINISHED"], res
            (png,) = [p for p in res["outputs"] if p.endswith(".png")]
            doc = res["sidecars"][png.removesuffix(".png") + ".json"]
            saved = str(Path(data["work"]) / png)
            assert (doc["image"], doc["options"]["output"]) == (Path(png).name, saved), doc
            return "succeeded", str(res["result"]), f"sidecar: image {doc['image']}", ""
        assert res["unchanged"], f"the World changed: {res}"
        assert res["outputs"] == [], res["outputs"]
        refused = res["result"] != ["FINISHED"] and bool(message)
        return ("refused" if refused else "succeeded"), str(res["result"]), message, ""

    defect = {"op-size-and-width": "J, 6", OPERATOR_SUCCESS: "2"}.get(case_id, "J")
    expect = "succeeded" if succeeds else "refused"
    CASES.append(Case(case_id, "Blender operator", what, run, expect, names, defect))


OPERATOR_SUCCESS = "op-generates"
for _id, (_spec, _what, _names) in OPERATOR_CASES.items():
    _operator_case(_id, f"bpy.ops.spherediff.generate({_what})", _names)


# --------------------------------------------------------------------------------------
# The test: run each case, check it, record it
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case: Case, tmp_path, request):
    sb = Sandbox(tmp_path / "case", case.id, CTX["env"])
    if case.surface == "Blender operator":
        sb.fixtures["operator_results"] = request.getfixturevalue("operator_results")
    if case.id == "addon-package-allow-list":
        sb.fixtures["extension_zip"] = request.getfixturevalue("extension_zip")
    try:
        outcome, code, message, notes = case.run(sb)
        # The table shows paths inside the case's own folder as <case>/...
        message = message.replace(str(sb.root), "<case>")
        record = Record(outcome, code, message, sb.seconds, notes=notes)
        record.left = sb.leftovers()
        record.processes = sb.processes()
    finally:
        sb.stop_processes()
    RESULTS[case.id] = (case, record)
    assert record.outcome == case.expect, (record, case)
    for name in case.names:
        assert name.lower() in record.message.lower(), (name, record.message)
    if case.expect == "refused":
        assert "internal error" not in record.message and "Traceback" not in record.message
        assert record.seconds < case.max_refuse_s, record
    if case.expect == "stopped cleanly":
        assert record.seconds < case.max_refuse_s, record
    assert record.left == [], record.left
    assert record.processes == [], record.processes


def test_the_table_lists_every_case():
    """docs/reliability.md is the table of these cases (rewritten with
    SPHEREDIFF_WRITE_RELIABILITY=1 after a full run)."""
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)
    if os.environ.get("SPHEREDIFF_WRITE_RELIABILITY") == "1":
        assert len(RESULTS) == len(CASES), "run the whole module to write the table"
        rows = [RESULTS[c.id] for c in CASES]
        DOC_PATH.write_text(render_table(rows), encoding="utf-8")
    text = DOC_PATH.read_text(encoding="utf-8")
    listed = {
        line.split("`")[1] for line in text.splitlines() if line.startswith("| ") and "`" in line
    }
    assert listed == {c.id for c in CASES}
