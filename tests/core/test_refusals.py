"""Bad input is refused quickly and by name; environment failures are not "internal".

Real ``spherediff generate`` and worker subprocesses. A refusal must come before torch or
diffusers is imported (checked from Python's own import log, PYTHONPROFILEIMPORTTIME),
using little CPU time, within a generous wall-clock bound. Hostile model folders are built
from the tiny SD 1.5 pipeline by deleting or replacing files.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from spherediff_core import modelcheck, runner
from spherediff_core.errors import (
    BrokenModelError,
    ModelNotFoundError,
    OutputError,
    UnsupportedModelError,
)
from spherediff_core.options import GenerationOptions

from tests.support.engine_process import REPO, run_worker

WALL_BOUND_S = 5.0
"""Generous: a refusal takes well under a second of CPU; the test machine is shared."""
CPU_BOUND_S = 2.0
HEAVY = ("torch", "diffusers", "transformers")


@dataclass
class Refusal:
    code: int
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float | None
    imported: set[str]

    @property
    def error(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if ln.startswith("spherediff: error")]
        return lines[-1] if lines else ""


def _children_cpu() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _split_import_log(stderr: str) -> tuple[str, set[str]]:
    """(stderr without Python's import log, top-level names of the modules imported)."""
    kept, modules = [], set()
    for line in stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            modules.add(name.split(".")[0])
        else:
            kept.append(line)
    return "\n".join(kept), modules


def run_refused(args: list[str], env: dict[str, str], **env_extra: str) -> Refusal:
    """``python -m spherediff_core.cli ARGS`` with the import log; timed."""
    env = {**env, "PYTHONPROFILEIMPORTTIME": "1", **env_extra}
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "spherediff_core.cli", *args],
        env=env,
        capture_output=True,
        timeout=120,
    )
    wall = time.perf_counter() - t0
    cpu1 = _children_cpu()
    stderr, modules = _split_import_log(proc.stderr.decode("utf-8", "replace"))
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return Refusal(proc.returncode, proc.stdout.decode("utf-8"), stderr, wall, cpu, modules)


def assert_quick(r: Refusal) -> None:
    heavy = sorted(set(HEAVY) & r.imported)
    assert not heavy, f"imported {heavy} before refusing:\n{r.stderr}"
    assert r.wall_s < WALL_BOUND_S, f"refused after {r.wall_s:.1f} s"
    if r.cpu_s is not None:
        assert r.cpu_s < CPU_BOUND_S, f"refusing took {r.cpu_s:.1f} s of CPU"
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr


def args_for(model, out, *extra: str) -> list[str]:
    return [
        "generate",
        "--prompt",
        "a quiet harbour",
        "--model",
        str(model),
        "--width",
        "64",
        "--steps",
        "2",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def tiny_ltx(tmp_path_factory):
    import torch

    from tests.support.tiny_pipelines import build_tiny_pipeline

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_tiny_pipeline("ltx", tmp_path_factory.mktemp("models") / "ltx")
    finally:
        torch.set_num_threads(before)


# --- item 4 and H: refusals before any heavy import -----------------------------------------


@pytest.mark.parametrize(
    ("model", "extra", "needle"),
    [
        ("sd15", ["--video"], "video: true, but sd is an image model"),
        ("ltx", ["--video", "--frames", "50"], "frames: 50 is not valid for LTX-Video"),
        ("ltx", ["--frames", "9"], "video: false, but LTX-Video is a video model"),
        ("ltx", ["--video", "--frames", "9", "--steps", "1"], "steps: 1 is too few for LTX"),
    ],
    ids=["video from an image model", "bad frame count", "still from a video model", "steps"],
)
def test_family_mismatch_is_refused_before_heavy_imports(
    engine_env, tiny_sd15, tiny_ltx, tmp_path, model, extra, needle
):
    folder = {"sd15": tiny_sd15, "ltx": tiny_ltx}[model]
    out = tmp_path / "out" / "pano.png"
    args = args_for(folder, out, *extra)
    if "--steps" in extra:
        args.remove("2")
        args.remove("--steps")
    r = run_refused(args, engine_env)
    assert r.code == 2, r.stderr
    assert needle in r.error, r.stderr
    assert_quick(r)
    assert not out.parent.exists()


def test_cuda_on_a_cpu_only_torch_is_refused_at_once(engine_env, tiny_sd15, tmp_path):
    if modelcheck.torch_build_has_gpu() is not False:
        pytest.skip("this torch is a CUDA/ROCm build")
    out = tmp_path / "out" / "pano.png"
    for device in ("cuda", "cuda:1"):
        r = run_refused(args_for(tiny_sd15, out, "--device", device), engine_env)
        assert r.code == 2, r.stderr
        assert f"device: '{device}'" in r.error and "CPU-only build" in r.error
        assert "model" not in r.error.split("device:")[0]  # not a model_not_found
        assert_quick(r)
    assert not out.parent.exists()


@pytest.mark.skipif(sys.platform == "darwin", reason="Metal may exist here")
def test_mps_off_macos_is_refused_at_once(engine_env, tiny_sd15, tmp_path):
    r = run_refused(args_for(tiny_sd15, tmp_path / "pano.png", "--device", "mps"), engine_env)
    assert r.code == 2 and "device: 'mps'" in r.error and "macOS" in r.error
    assert_quick(r)


def test_torch_version_file_agrees_with_torch():
    import torch

    has_gpu = torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None
    assert modelcheck.torch_build_has_gpu() is has_gpu


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_hub_fails_at_the_first_refusal(engine_env, tmp_path):
    """Not offline, Hub unreachable, model not cached: one try, then a clear error
    (huggingface_hub alone retries five times over ~30 s, each warning printed twice)."""
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    out = tmp_path / "out" / "pano.png"
    r = run_refused(
        ["generate", "--prompt", "a quiet harbour", "--out", str(out)],
        engine_env,
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT=endpoint,
    )
    assert r.code == 3, r.stderr
    assert "Hugging Face Hub cannot be reached" in r.error
    assert "--offline" in r.error and "hf download Efficient-Large-Model/" in r.error
    assert "huggingface-cli" not in r.error and "--model /path/to/folder" in r.error
    assert "Retry" not in r.stderr, r.stderr
    assert_quick(r)
    assert not out.parent.exists()


def test_unreachable_hub_with_the_model_cached_goes_on_offline(engine_env, tiny_sd15, tmp_path):
    """The model in the Hugging Face cache, the Hub not switched off but unreachable: one
    failed request, one warning, then the cached model is used without further tries."""
    env = {**engine_env, "HF_HOME": str(tmp_path / "hf")}
    repo = Path(env["HF_HOME"]) / "hub" / "models--someone--tiny-sd15"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_sd15, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = tmp_path / "out" / "pano.png"
    env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{_closed_port()}")
    proc = subprocess.run(
        [sys.executable, "-m", "spherediff_core.cli", *args_for("someone/tiny-sd15", out)],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [ln for ln in proc.stderr.splitlines() if "cannot be reached" in ln]
    assert len(warnings) == 1 and "using the cached copy" in warnings[0], proc.stderr
    assert "Retry" not in proc.stderr and "thrown while requesting" not in proc.stderr
    assert out.is_file()


def test_missing_model_offline_says_hf_download(engine_env, tmp_path):
    r = run_refused(
        ["generate", "--prompt", "a quiet harbour", "--offline", "--out", str(tmp_path / "p.png")],
        engine_env,
    )
    assert r.code == 3, r.stderr
    assert "offline mode is on" in r.error and "`hf download Efficient-Large-Model/" in r.error
    assert "huggingface-cli" not in r.error
    assert_quick(r)


# --- item F: invalid Unicode ----------------------------------------------------------------


@pytest.mark.skipif(os.name == "nt", reason="Windows passes arguments as UTF-16")
def test_invalid_utf8_argument_is_refused_by_name(engine_env, tiny_sd15, tmp_path):
    out = tmp_path / "out" / "pano.png"
    args = [a.encode() for a in args_for(tiny_sd15, out)]
    args[args.index(b"a quiet harbour")] = b"a quiet \xff harbour"
    env = {**engine_env, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run(
        [sys.executable.encode(), b"-m", b"spherediff_core.cli", *args],
        env=env,
        capture_output=True,
        timeout=120,
    )
    stderr, modules = _split_import_log(proc.stderr.decode("utf-8", "replace"))
    assert proc.returncode == 2, stderr
    assert "prompt: is not valid text: byte 0xff at position 8 is not UTF-8" in stderr
    assert not set(HEAVY) & modules
    assert not out.parent.exists()


def test_lone_surrogate_in_a_job_is_bad_input(engine_env, tiny_sd15, tmp_path):
    out = tmp_path / "out" / "pano.png"
    job = (
        '{"protocol": 1, "options": {"prompt": "a sea \\ud83d", "model": '
        + json.dumps(str(tiny_sd15))
        + ', "output": '
        + json.dumps(str(out))
        + "}}"
    )
    code, events, proc = run_worker([], engine_env, tmp_path, job=job, timeout=60)
    assert code == 2, proc.stderr()
    assert events[-1]["code"] == "bad_input"
    assert (
        "prompt: is not valid text: U+D83D at position 6 is a lone surrogate"
        in (events[-1]["message"])
    )
    assert not out.parent.exists()


# --- item H: deeply nested JSON -------------------------------------------------------------


def test_deeply_nested_job_is_bad_input(engine_env, tmp_path):
    depth = 100_000
    job = '{"protocol": 1, "options": ' + "[" * depth + "]" * depth + "}"
    code, events, proc = run_worker([], engine_env, tmp_path, job=job, timeout=60)
    assert code == 2, proc.stderr()
    assert events[-1]["code"] == "bad_input"
    assert "nested too deeply" in events[-1]["message"]
    assert "RecursionError" not in proc.stderr_path.read_text(encoding="utf-8")


# --- item 3: the hint in the words of the client -------------------------------------------


@pytest.mark.parametrize(
    ("client", "hint"),
    [
        ("blender", "choose Custom in the Model menu and pick the folder (custom_model="),
        (None, 'set the job\'s "model" option to a local diffusers model folder'),
    ],
    ids=["blender", "plain worker"],
)
def test_model_not_found_hint_fits_the_client(engine_env, tmp_path, client, hint):
    options = {"prompt": "a quiet harbour", "output": str(tmp_path / "p.png"), "offline": True}
    env = {**engine_env, "SPHEREDIFF_CLIENT": client} if client else engine_env
    code, events, proc = run_worker([], env, tmp_path, job={"options": options}, timeout=60)
    assert code == 3, proc.stderr_path.read_text(encoding="utf-8")
    error = events[-1]
    assert error["code"] == "model_not_found"
    assert hint in error["message"], error["message"]
    assert "--model" not in error["message"] and "huggingface-cli" not in error["message"]
    assert "hf download" in error["message"]


def test_the_addon_tells_the_worker_it_is_blender():
    """spherediff_blender.worker_client imports no bpy: loaded from its file."""
    import importlib.util

    path = REPO / "spherediff_blender" / "worker_client.py"
    spec = importlib.util.spec_from_file_location("_worker_client_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        assert module.worker_env(base={})["SPHEREDIFF_CLIENT"] == "blender"
    finally:
        del sys.modules[spec.name]


def test_no_project_text_advises_huggingface_cli():
    """`huggingface-cli` is gone from the huggingface_hub the project installs: `hf`."""
    texts = [REPO / "README.md", REPO / "scripts" / "make_world.sh"]
    texts += sorted((REPO / "core" / "spherediff_core").rglob("*.py"))
    texts += sorted((REPO / "docs").glob("*.md"))
    offenders = [str(p) for p in texts if "huggingface-cli" in p.read_text(encoding="utf-8")]
    assert not offenders


# --- item G: hostile model folders ----------------------------------------------------------


def _copy(tiny_sd15: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd15, folder)
    return folder


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data), encoding="utf-8")


def _no_unet(m: Path) -> None:
    shutil.rmtree(m / "unet")


def _no_vae_config(m: Path) -> None:
    (m / "vae" / "config.json").unlink()


def _pickle_only(m: Path) -> None:
    w = m / "unet" / "diffusion_pytorch_model.safetensors"
    w.rename(w.with_suffix(".bin"))


def _truncated(m: Path) -> None:
    w = m / "unet" / "diffusion_pytorch_model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])


def _garbage_weights(m: Path) -> None:
    (m / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 4096)


def _custom_module(m: Path) -> None:
    _edit_json(m / "model_index.json", unet=["my_unet", "MyUNet"])
    (m / "unet" / "my_unet.py").write_text("raise SystemExit('code from the folder ran')\n")


def _auto_map(m: Path) -> None:
    _edit_json(m / "text_encoder" / "config.json", auto_map={"AutoModel": "modeling.Evil"})


def _custom_pipeline(m: Path) -> None:
    _edit_json(m / "model_index.json", _class_name=["pipeline", "EvilPipeline"])
    (m / "pipeline.py").write_text("raise SystemExit('code from the folder ran')\n")


def _broken_index(m: Path) -> None:
    (m / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": ')


HOSTILE = {
    "missing component": (_no_unet, "broken_model", ["component 'unet'", "unet/ is missing"]),
    "missing config": (_no_vae_config, "broken_model", ["component 'vae'", "vae/config.json"]),
    "pickle-only weights": (
        _pickle_only,
        "unsupported_model",
        ["unet/diffusion_pytorch_model.bin", "safetensors only"],
    ),
    "truncated weights": (
        _truncated,
        "broken_model",
        ["unet/diffusion_pytorch_model.safetensors", "truncated"],
    ),
    "garbage weights": (
        _garbage_weights,
        "broken_model",
        ["vae/diffusion_pytorch_model.safetensors", "damaged"],
    ),
    "custom code module": (
        _custom_module,
        "unsupported_model",
        ["component 'unet'", "my_unet.py", "never runs code"],
    ),
    "auto_map": (_auto_map, "unsupported_model", ["text_encoder/config.json", "never runs code"]),
    "custom pipeline": (_custom_pipeline, "unsupported_model", ["custom pipeline", "never runs"]),
    "broken model_index": (_broken_index, "broken_model", ["model_index.json", "damaged"]),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_model_folder_is_refused_by_name(engine_env, tiny_sd15, tmp_path, case):
    damage, code, needles = HOSTILE[case]
    model = _copy(tiny_sd15, tmp_path)
    damage(model)
    out = tmp_path / "out" / "pano.png"
    r = run_refused(args_for(model, out, "--offline"), engine_env)
    assert r.code == 3, r.stderr
    for needle in needles:
        assert needle in r.error, r.error
    for wrong in ("Hub", "trust_remote_code", "internal", "model_not_found"):
        assert wrong not in r.error, r.error
    assert "code from the folder ran" not in r.stderr
    assert_quick(r)
    assert not out.parent.exists()
    # The worker reports the same stable code.
    job = {"options": {"prompt": "a quiet harbour", "model": str(model), "output": str(out)}}
    exit_code, events, proc = run_worker([], engine_env, tmp_path, job=job, timeout=60)
    assert exit_code == 3 and events[-1]["code"] == code, proc.stderr()


def test_component_class_unknown_to_diffusers_is_unsupported(tiny_sd15, tmp_path):
    """Caught once diffusers is imported (in this process it already is), before diffusers
    would ask for trust_remote_code."""
    from spherediff_core.pipeline import SphereDiffPipeline

    model = _copy(tiny_sd15, tmp_path)
    _edit_json(model / "model_index.json", unet=["diffusers", "MyFancyUNet"])
    with pytest.raises(UnsupportedModelError) as err:
        SphereDiffPipeline.from_pretrained(str(model), offline=True)
    message = str(err.value)
    assert "component 'unet'" in message and "diffusers.MyFancyUNet" in message
    assert "trust_remote_code" not in message


def test_tiny_pipeline_folder_passes_the_folder_check(tiny_sd15, tiny_ltx):
    for folder in (tiny_sd15, tiny_ltx):
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        modelcheck.check_model_folder(folder, index)


def test_standard_sd_safety_checker_library_is_not_custom_code(tiny_sd15, tmp_path):
    """Real SD 1.5 names its safety checker ["stable_diffusion", ...] (a diffusers.pipelines
    sub-package): not code from the folder. The adapter does not load it (skip)."""
    model = _copy(tiny_sd15, tmp_path)
    _edit_json(
        model / "model_index.json",
        safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"],
    )
    index = json.loads((model / "model_index.json").read_text(encoding="utf-8"))
    modelcheck.check_model_folder(model, index, skip=("safety_checker",))
    with pytest.raises(BrokenModelError, match="safety_checker/ is missing"):
        modelcheck.check_model_folder(model, index)


def test_hub_id_errors_keep_model_not_found():
    err = ModelNotFoundError("x is not cached.", local_hint=True)
    assert err.code == "model_not_found"
    assert "--model /path/to/folder" in str(err)
    assert "choose Custom in the Model menu" in err.message_for("blender")
    assert "--model" not in err.message_for("blender")


# --- item E: environment failures are output errors, not internal ones ---------------------


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        ("ENOSPC", "free some space"),
        ("EROFS", "read-only"),
        ("ENAMETOOLONG", "shorter name"),
        ("EACCES", "choose a folder you can write to"),
    ],
)
def test_environment_oserrors_map_to_output_error(name, fix):
    code = getattr(errno, name)
    exc = OSError(code, os.strerror(code), "/data/out/pano.png")
    report = runner.describe_error(exc)
    assert (report.code, report.exit_code) == ("output_error", 5)
    assert "/data/out/pano.png" in report.message and fix in report.message
    assert "internal" not in report.message and "please report" not in report.message


def test_a_folder_in_the_sidecars_place_is_refused_before_loading(engine_env, tiny_sd15, tmp_path):
    """A folder where the sidecar goes is refused up front (issue 8 B); failures late in
    the run (a full disk, a folder made read-only) are output errors, exit 5: see the
    fault cases of tests/test_reliability.py."""
    out = tmp_path / "out" / "pano.png"
    (tmp_path / "out" / "pano.json").mkdir(parents=True)
    proc = subprocess.run(
        [sys.executable, "-m", "spherediff_core.cli", *args_for(tiny_sd15, out, "--offline")],
        env=engine_env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "pano.json" in proc.stderr and "is a folder" in proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr


def test_write_failures_become_output_errors_naming_the_path(tmp_path):
    in_the_way = tmp_path / "pano.json"
    in_the_way.mkdir()
    with pytest.raises(OutputError) as err, runner._output_errors(str(tmp_path / "pano.png")):
        open(in_the_way, "w").close()
    assert err.value.code == "output_error" and err.value.exit_code == 5
    assert str(in_the_way) in str(err.value) and "a folder is in the way" in str(err.value)


def test_output_name_too_long_is_refused_up_front(engine_env, tiny_sd15, tmp_path):
    """The name fits alone but not with the temporary-name additions (was: an internal
    error after the whole generation)."""
    out = tmp_path / "out" / ("p" * 245 + ".png")
    r = run_refused(args_for(tiny_sd15, out), engine_env)
    assert r.code == 2, r.stderr
    assert "output: the file name 'ppp" in r.error and "too long" in r.error
    assert_quick(r)
    assert not out.parent.exists()


def test_name_length_is_checked_in_options(tmp_path):
    # 223 + ".json" + 26 reserved = 254 bytes fits; a video's "<stem>_frames" (256) not.
    stem = "p" * 223
    GenerationOptions(prompt="x", output=str(tmp_path / f"{stem}.png")).validate()
    video = GenerationOptions(prompt="x", output=str(tmp_path / f"{stem}.mp4"), video=True)
    with pytest.raises(ValueError, match=r"output: the file name 'ppp.*shorten it by 1 bytes"):
        video.validate()
    deep = GenerationOptions(prompt="x", output=str(tmp_path / ("d" * 300) / "p.png"))
    with pytest.raises(ValueError, match="output: the folder name 'ddd"):
        deep.validate()
