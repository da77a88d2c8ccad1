"""360° video: LTX-Video and Wan end to end on tiny random-weight models.

The tiny pipelines (tests/support/tiny_pipelines.py) are built once per session and loaded
through the real ``SphereDiffPipeline.from_pretrained(folder, offline=True)``. Checked for
both families: a short ERP sequence through the pipeline, the command and the worker;
every frame without seam or pole pinch; the same seed giving the same frames; frame counts
the model cannot take refused with the nearest valid ones; a cancelled worker leaving no
frames behind; and the adapters' schedule, denoiser call and decode matching the diffusers
pipelines' own.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from PIL import Image
from spherediff_core import outputs, pipeline
from spherediff_core.adapters import LTXVideoAdapter, SanaAdapter, WanAdapter
from spherediff_core.denoise import DenoiserInput
from spherediff_core.errors import EXIT_CANCELLED, CancelledError, OutputError
from spherediff_core.options import GenerationOptions, OptionsError
from spherediff_core.pipeline import (
    GenerationResult,
    SphereDiffPipeline,
    check_video_request,
    loop_shift,
    plan_frame_chunks,
)
from spherediff_core.spherical import read_spherical_metadata

from tests.core.panoramas import row_variation, seam_ratio
from tests.support.engine_process import WorkerProcess, run_cli, run_worker
from tests.support.tiny_pipelines import build_tiny_pipeline

PROMPT = "a city by the sea"
# family -> generation settings: a few frames (two latent frames), two steps, a small ERP.
CASES = {
    "ltx": {"width": 256, "frames": 9, "fps": 8, "steps": 2},
    "wan": {"width": 128, "frames": 5, "fps": 8, "steps": 2},
}
FAMILY = {"ltx": "ltx", "wan": "wan"}


@pytest.fixture(scope="session")
def video_models(tmp_path_factory):
    """family -> folder of its tiny pipeline (built once per session)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("video_models")
        return {fam: build_tiny_pipeline(fam, root / fam) for fam in CASES}
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def video_plan_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("video_plans")


_LOADED: dict[str, SphereDiffPipeline] = {}
_RESULTS: dict[tuple[str, int], object] = {}


def load(folder, plan_dir) -> SphereDiffPipeline:
    return SphereDiffPipeline.from_pretrained(str(folder), offline=True, plan_cache_dir=plan_dir)


@pytest.fixture
def loaded(video_models, video_plan_dir):
    def get(family: str) -> SphereDiffPipeline:
        if family not in _LOADED:
            _LOADED[family] = load(video_models[family], video_plan_dir)
        return _LOADED[family]

    return get


def video_options(folder, out, family: str, **kw) -> GenerationOptions:
    base = {**CASES[family], "video": True, "output": str(out)}
    return GenerationOptions(prompt=PROMPT, model=str(folder), **(base | kw))


@pytest.fixture
def generate(loaded, video_models, tmp_path):
    """(family, seed) -> GenerationResult, generated once per session."""

    def get(family: str, seed: int = 0):
        key = (family, seed)
        if key not in _RESULTS:
            opts = video_options(video_models[family], tmp_path / "v.png", family, seed=seed)
            _RESULTS[key] = loaded(family)(opts)
        return _RESULTS[key]

    return get


# --- the pipeline ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", CASES)
def test_pipeline_makes_an_erp_sequence(family, generate, loaded):
    result = generate(family)
    case = CASES[family]
    n, width = case["frames"], case["width"]
    frames = result.frames
    assert result.is_video and result.n_frames == n
    assert frames.shape == (n, 3, width // 2, width) and frames.dtype == torch.float32
    assert torch.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1
    assert frames.std() > 0.01
    # The frames are a sequence, not one image repeated.
    assert (frames[1:] - frames[:-1]).abs().mean() > 1e-3
    # ``image`` is the first frame; the options record what was made.
    assert torch.equal(result.image, frames[0])
    assert result.fps == case["fps"]
    assert (result.options.frames, result.options.fps) == (n, case["fps"])
    assert result.options.video is True and result.options.steps == case["steps"]
    adapter = loaded(family).adapter
    assert result.options.guidance == adapter.default_guidance
    assert result.model["family"] == FAMILY[family]
    assert result.model["temporal_compression"] == adapter.temporal_compression


@pytest.mark.parametrize("family", CASES)
def test_every_frame_has_no_seam_and_no_pole_pinch(family, generate):
    frames = generate(family).frames
    h = frames.shape[2]
    for i, image in enumerate(frames):
        assert seam_ratio(image) <= 1.5, f"frame {i}: seam"
        assert row_variation(image, 0) <= row_variation(image, 1), f"frame {i}: north pole"
        assert row_variation(image, h - 1) <= row_variation(image, h - 2), f"frame {i}: south pole"
    if family == "wan":
        # The check can fail: a crop whose ends are 90 degrees apart has a seam. (The tiny
        # LTX's frames vary too little from column to column for this control to show.)
        assert seam_ratio(frames[0][:, :, : 3 * frames.shape[-1] // 4]) > 1.5


@pytest.mark.parametrize("family", CASES)
def test_same_seed_same_frames_other_seed_other_frames(
    family, generate, loaded, video_models, tmp_path
):
    first = generate(family).frames
    events = []
    again = loaded(family)(
        video_options(video_models[family], tmp_path / "a.png", family), callback=events.append
    )
    assert torch.equal(first, again.frames)
    other = generate(family, 1).frames
    assert (first - other).abs().mean() > 1e-3
    # Progress covers the steps (view batches) and then the views, each with all its frames.
    phases = [e.phase for e in events]
    assert phases == sorted(phases, key=["denoise", "decode"].index) and "denoise" in phases
    decode = [e for e in events if e.phase == "decode"]
    assert decode[-1].step == decode[-1].total == again.n_views
    n = CASES[family]["frames"]
    assert f"frames 1-{n} of {n}" in decode[-1].message


def test_vae_memory_options_are_honoured_and_out_of_memory_retries_view_by_view(
    video_models, video_plan_dir, tmp_path, monkeypatch
):
    folder = video_models["ltx"]
    opts = video_options(folder, tmp_path / "m.png", "ltx", width=128, frames=17)
    tiled = SphereDiffPipeline.from_pretrained(
        str(folder), offline=True, plan_cache_dir=video_plan_dir, vae_tiling=True, vae_slicing=True
    )
    vae = tiled.adapter.pipe.vae
    # LTX-Video: tiling also decodes long clips in overlapping chunks of frames.
    assert vae.use_tiling and vae.use_slicing and vae.use_framewise_decoding
    frames = tiled(opts).frames
    assert frames.shape == (17, 3, 64, 128) and torch.isfinite(frames).all()

    # Out of memory while decoding: tiling and slicing go on, then one view per VAE call.
    sphere = load(folder, video_plan_dir)
    adapter = sphere.adapter
    assert not adapter.pipe.vae.use_tiling
    real_decode, calls = adapter.decode, []

    def decode(latents, noise=None):
        calls.append(latents.shape[0])
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_decode(latents, noise)

    monkeypatch.setattr(adapter, "decode", decode)
    result = sphere(opts)
    assert calls[0] == opts.view_batch_size and set(calls[1:]) == {1}
    assert len(calls) == 1 + result.n_views
    assert adapter.pipe.vae.use_tiling and adapter.pipe.vae.use_slicing
    assert result.frames.shape == (17, 3, 64, 128)


# --- what a model cannot make ---------------------------------------------------------------

BAD_FRAMES = {
    # family: (frames asked, the message's rule and suggestion)
    "ltx": (50, "frames: 50 is not valid for LTX-Video (8k+1); use 49 or 57"),
    "wan": (50, "frames: 50 is not valid for Wan (4k+1); use 49 or 53"),
}


@pytest.mark.parametrize("family", CASES)
def test_bad_frame_counts_are_refused_with_the_nearest_valid_ones(
    family, loaded, video_models, tmp_path
):
    asked, message = BAD_FRAMES[family]
    opts = video_options(video_models[family], tmp_path / "b.png", family, frames=asked)
    # Before the model loads (the adapter class) and by the loaded pipeline.
    adapter_cls = {"ltx": LTXVideoAdapter, "wan": WanAdapter}[family]
    with pytest.raises(OptionsError) as err:
        check_video_request(opts, adapter_cls)
    assert str(err.value) == message and err.value.field == "frames"
    with pytest.raises(OptionsError) as err:
        loaded(family)(opts)
    assert str(err.value) == message
    # Below the first valid count above 1 only one suggestion is left for LTX.
    small = video_options(video_models[family], tmp_path / "b.png", family, frames=3)
    with pytest.raises(OptionsError, match=r"use 1 or (9|5)$"):
        check_video_request(small, adapter_cls)
    # Valid counts pass and give (frames, fps, latent frames).
    ok = video_options(video_models[family], tmp_path / "b.png", family, frames=17)
    c = adapter_cls.temporal_compression
    assert check_video_request(ok, adapter_cls) == (17, CASES[family]["fps"], 16 // c + 1)


def test_one_step_is_refused_for_ltx(loaded, video_models, tmp_path):
    opts = video_options(video_models["ltx"], tmp_path / "s.png", "ltx", steps=1)
    with pytest.raises(OptionsError, match="steps: 1 is too few for LTX-Video; use 2 or more"):
        loaded("ltx")(opts)


def test_video_needs_a_video_model_and_a_still_an_image_model(loaded, video_models, tmp_path):
    opts = GenerationOptions(prompt=PROMPT, model=str(video_models["ltx"]), video=True)
    with pytest.raises(OptionsError) as err:
        check_video_request(opts, SanaAdapter)
    assert err.value.field == "video"
    assert "image model" in str(err.value) and "LTX-Video" in str(err.value)
    still = GenerationOptions(prompt=PROMPT, model=str(video_models["ltx"]), width=256)
    with pytest.raises(OptionsError) as err:
        loaded("ltx")(still)
    assert err.value.field == "video" and "--video" in str(err.value)
    # Defaults: the family's frame count and rate.
    default = GenerationOptions(prompt=PROMPT, model=str(video_models["ltx"]), video=True)
    assert check_video_request(default, LTXVideoAdapter) == (121, 24, 16)
    assert check_video_request(default, WanAdapter) == (81, 16, 21)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("frames", 0, "frames: 0 is out of range; use 1 to 1025"),
        ("frames", 2000, "frames: 2000 is out of range; use 1 to 1025"),
        ("frames", 9.0, "frames: 9.0 must be a whole number between 1 and 1025"),
        ("fps", 0, "fps: 0 is out of range; use 1 to 240"),
        ("fps", "24", "fps: '24' must be a whole number between 1 and 240"),
        ("video", "yes", "video: 'yes' must be true or false"),
        ("output", "clip.gif", "output: 'clip.gif' must end in .png or .mp4"),
    ],
)
def test_video_options_are_validated(field, value, message, tmp_path):
    base = {"prompt": PROMPT, "video": True, "output": str(tmp_path / "clip.mp4")}
    opts = GenerationOptions(**{**base, field: value})
    with pytest.raises(OptionsError) as err:
        opts.validate()
    assert err.value.field == field
    assert str(err.value).startswith(message)
    # A still still needs a .png.
    with pytest.raises(OptionsError, match=r"must end in \.png"):
        GenerationOptions(prompt=PROMPT, output=str(tmp_path / "clip.mp4")).validate()


# --- the adapters == the diffusers pipelines' own calls -------------------------------------


def _capture_calls(module, calls: list):
    def hook(mod, args, kwargs, output):
        calls.append((args, {k: v for k, v in kwargs.items()}, output))

    return module.register_forward_hook(hook, with_kwargs=True)


def _inp(x, timestep, conds, uncond) -> DenoiserInput:
    n, grid = x.shape[0], x.shape[-1]
    return DenoiserInput(
        latents=x,
        timestep=torch.as_tensor(timestep),
        conditioning=conds,
        unconditional=torch.tensor(uncond),
        view_index=torch.zeros(n, dtype=torch.long),
        view_dirs=torch.zeros(n, 3),
        rays=torch.zeros(n, grid, grid, 3),
        step_index=0,
    )


def test_ltx_schedule_and_denoiser_match_ltx_pipeline(video_models, video_plan_dir):
    sphere = load(video_models["ltx"], video_plan_dir)  # fresh: the call steps its scheduler
    adapter, pipe = sphere.adapter, sphere.adapter.pipe
    steps, fps, size, frames, guidance = 3, 12, 64, 9, 4.5
    calls: list = []
    handle = _capture_calls(pipe.transformer, calls)
    try:
        pipe(
            PROMPT,
            negative_prompt="",
            height=size,
            width=size,
            num_frames=frames,
            frame_rate=fps,
            num_inference_steps=steps,
            guidance_scale=guidance,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        handle.remove()
    _, kwargs, output = calls[0]
    f, g = adapter.latent_frames_for(frames), size // adapter.vae_scale_factor
    x = pipe._unpack_latents(kwargs["hidden_states"], f, g, g)
    ref = pipe._unpack_latents(output[0].float(), f, g, g)
    assert x.shape == (2, adapter.latent_channels, f, g, g)

    # The schedule for this sequence length (latent frames x grid) is the pipeline's.
    scheduler = adapter.make_scheduler(steps, (g, g), f)
    torch.testing.assert_close(scheduler.timesteps, pipe.scheduler.timesteps)
    torch.testing.assert_close(scheduler.sigmas, pipe.scheduler.sigmas)

    conds = [adapter.encode_prompt(""), adapter.encode_prompt(PROMPT)]
    inp = _inp(x, scheduler.timesteps[0], conds, [True, False])
    out = adapter.denoise(inp, guidance, fps=fps)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    # The frame rate reaches the model (LTX's rotary embedding is scaled by it).
    assert not torch.allclose(adapter.denoise(inp, guidance, fps=2 * fps), ref, atol=1e-4)


def test_wan_schedule_and_denoiser_match_wan_pipeline(video_models, video_plan_dir):
    sphere = load(video_models["wan"], video_plan_dir)
    adapter, pipe = sphere.adapter, sphere.adapter.pipe
    steps, size, frames, guidance = 3, 32, 5, 5.0
    calls: list = []
    handle = _capture_calls(pipe.transformer, calls)
    try:
        pipe(
            PROMPT,
            height=size,
            width=size,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
        )
    finally:
        handle.remove()
    # WanPipeline calls the model twice per step: the prompt, then the negative prompt.
    (_, cond_kw, cond_out), (_, uncond_kw, uncond_out) = calls[0], calls[1]
    x = cond_kw["hidden_states"]
    assert torch.equal(uncond_kw["hidden_states"], x)
    f, g = adapter.latent_frames_for(frames), size // adapter.vae_scale_factor
    assert x.shape == (1, adapter.latent_channels, f, g, g)

    scheduler = adapter.make_scheduler(steps, (g, g), f)
    torch.testing.assert_close(scheduler.timesteps, pipe.scheduler.timesteps)
    torch.testing.assert_close(scheduler.sigmas, pipe.scheduler.sigmas)

    conds = [adapter.encode_prompt(""), adapter.encode_prompt(PROMPT)]
    inp = _inp(torch.cat([x, x]), scheduler.timesteps[0], conds, [True, False])
    out = adapter.denoise(inp, guidance, fps=16)
    ref = torch.cat([uncond_out[0], cond_out[0]]).float()
    assert out.dtype == torch.float32 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", CASES)
def test_decode_matches_the_pipelines_own_decode(family, loaded):
    adapter = loaded(family).adapter
    pipe = adapter.pipe
    size = 64 if family == "ltx" else 32
    kwargs = {"height": size, "width": size, "num_frames": 9, "num_inference_steps": 2}
    latents = pipe(
        PROMPT, output_type="latent", generator=torch.Generator().manual_seed(3), **kwargs
    ).frames
    video = pipe(
        PROMPT, output_type="pt", generator=torch.Generator().manual_seed(3), **kwargs
    ).frames  # (B, F, 3, H, W) in [0, 1]
    if family == "ltx":  # packed tokens -> (B, C, F, h, w)
        g = size // adapter.vae_scale_factor
        latents = pipe._unpack_latents(latents, adapter.latent_frames_for(9), g, g)
    decoded = adapter.decode(latents)
    assert decoded.shape == (1, 3, 9, size, size)
    torch.testing.assert_close(decoded, video.permute(0, 2, 1, 3, 4).float(), rtol=0, atol=1e-5)


# --- outputs: the frame sequence, the MP4 and the sidecar -----------------------------------


def fake_video_result(tmp_path, n: int = 5, fps: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.rand(n, 3, 16, 32, generator=gen)
    options = GenerationOptions(
        prompt=PROMPT, output=str(tmp_path / "unused.png"), video=True, frames=n, fps=fps
    )
    model = {"family": "ltx", "source": "owner/ltx", "revision": None}
    return GenerationResult(
        frames[0], options, 68, (3, 3), 89, {"total": 1.0}, model, frames=frames, fps=fps
    )


def read_png(path):
    with Image.open(path) as im:
        im.load()
        return np.asarray(im), dict(im.text)


def test_video_outputs_are_a_numbered_sequence_an_mp4_and_a_sidecar(tmp_path):
    result = fake_video_result(tmp_path, n=5, fps=12)
    seen = []
    paths = outputs.write_video_outputs(
        result, tmp_path / "out" / "clip.png", on_frame=lambda i, n: seen.append((i, n))
    )
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["clip.json", "clip.mp4", "clip_frames"]  # no temporaries
    names = [f"frame_{i:04d}.png" for i in range(1, 6)]
    assert sorted(os.listdir(out / "clip_frames")) == names
    assert seen == [(i, 5) for i in range(1, 6)]
    assert paths.first_frame == out.absolute() / "clip_frames" / "frame_0001.png"
    assert (paths.frame_count, paths.fps, paths.mp4) == (5, 12, out.absolute() / "clip.mp4")
    for i, name in enumerate(names):
        pixels, text = read_png(out / "clip_frames" / name)
        assert np.array_equal(pixels, outputs.image_to_uint8(result.frames[i]))
        doc = json.loads(text[outputs.METADATA_KEY])
        assert doc["video"] == {"frames": 5, "fps": 12, "frame": i + 1}
        assert "output" not in doc["options"]
    sidecar = json.loads((out / "clip.json").read_text(encoding="utf-8"))
    assert sidecar["image"] == "clip_frames/frame_0001.png"
    assert sidecar["video"] == {
        "frames": 5,
        "fps": 12,
        "loop": False,
        "frames_folder": "clip_frames",
        "first_frame": "clip_frames/frame_0001.png",
        "frame_pattern": "frame_%04d.png",
        "first_frame_number": 1,
        "mp4": "clip.mp4",
        "mp4_spherical": ["v1-xmp", "v2-sv3d"],
    }
    # The MP4 preview: H.264, every frame, the frame rate, the ERP size, and 360° video.
    reader = imageio_ffmpeg.read_frames(str(out / "clip.mp4"))
    meta = next(reader)
    assert meta["codec"] == "h264" and meta["size"] == (32, 16) and meta["fps"] == 12
    assert sum(1 for _ in reader) == 5
    info = read_spherical_metadata(out / "clip.mp4")
    assert info.v1 and info.v2


def _stop_after(k: int):
    calls = {"n": 0}

    def should_cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > k

    return should_cancel


def test_a_cancel_or_failure_while_writing_leaves_the_earlier_sequence(tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = fake_video_result(tmp_path, n=4, seed=0)
    outputs.write_video_outputs(first, out / "clip.png")
    before = {p.name: p.read_bytes() for p in sorted((out / "clip_frames").iterdir())}
    sidecar = (out / "clip.json").read_bytes()
    second = fake_video_result(tmp_path, n=6, seed=1)
    # Cancelled after three frames: nothing new, nothing half-written, the old one intact.
    with pytest.raises(CancelledError):
        outputs.write_video_outputs(second, out / "clip.png", should_cancel=_stop_after(3))
    assert sorted(os.listdir(out)) == ["clip.json", "clip.mp4", "clip_frames"]
    assert {p.name: p.read_bytes() for p in (out / "clip_frames").iterdir()} == before
    assert (out / "clip.json").read_bytes() == sidecar
    # ffmpeg failing mid-way: the same.
    false = shutil.which("false")
    if false is not None:
        monkeypatch.setattr(outputs, "ffmpeg_exe", lambda: false)
        with pytest.raises(RuntimeError, match="ffmpeg"):
            outputs.write_video_outputs(second, out / "clip.png")
        assert sorted(os.listdir(out)) == ["clip.json", "clip.mp4", "clip_frames"]
        assert (out / "clip.json").read_bytes() == sidecar
    # A new sequence replaces the old one whole (no frame of the longer one is left over).
    monkeypatch.setattr(outputs, "ffmpeg_exe", lambda: None)  # and without ffmpeg: no MP4
    paths = outputs.write_video_outputs(second, out / "clip.mp4")
    assert paths.mp4 is None
    assert sorted(os.listdir(out)) == ["clip.json", "clip_frames"]  # the stale MP4 is gone
    assert len(os.listdir(out / "clip_frames")) == 6
    assert json.loads((out / "clip.json").read_text(encoding="utf-8"))["video"]["mp4"] is None


def test_a_sidecar_name_that_is_a_folder_keeps_the_earlier_video(tmp_path):
    out = tmp_path / "out"
    outputs.write_video_outputs(fake_video_result(tmp_path, n=3, seed=0), out / "clip.png")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".json"}
    (out / "clip.json").unlink()
    (out / "clip.json").mkdir()
    with pytest.raises(OutputError, match=r"clip\.json.*is a folder"):
        outputs.write_video_outputs(fake_video_result(tmp_path, n=4, seed=1), out / "clip.mp4")
    assert {p: p.read_bytes() for p in before} == before  # the MP4 and the frames
    assert sorted(os.listdir(out)) == ["clip.json", "clip.mp4", "clip_frames"]


def test_a_failed_sidecar_rename_keeps_the_earlier_video(tmp_path, monkeypatch):
    out = tmp_path / "out"
    outputs.write_video_outputs(fake_video_result(tmp_path, n=3, seed=0), out / "clip.png")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("clip.json") and ".tmp" in str(src):
            raise OSError(28, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(OutputError, match="No space left on device"):
        outputs.write_video_outputs(fake_video_result(tmp_path, n=4, seed=1), out / "clip.png")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(os.listdir(out)) == ["clip.json", "clip.mp4", "clip_frames"]


def test_an_unnormalised_video_path_leaves_no_stray_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "ffmpeg_exe", lambda: None)  # no MP4: quicker
    out = tmp_path / "out"
    out.mkdir()
    paths = outputs.write_video_outputs(fake_video_result(tmp_path, n=2), f"{out}/sub/../../c.mp4")
    assert paths.frames_dir == tmp_path / "c_frames"
    assert sorted(os.listdir(tmp_path)) == ["c.json", "c_frames", "out"]
    assert os.listdir(out) == []  # no sub/


# A writer of a long video, killed (or held) in the middle of its frames.
SLOW_WRITER = """
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from pathlib import Path
from spherediff_core import outputs
from tests.core.test_video import fake_video_result
out = Path(sys.argv[3])

def on_frame(i, n):
    if i == 3:
        print("writing", flush=True)
        sys.stdin.readline()  # held here until the test says go (or kills it)

outputs.write_video_outputs(fake_video_result(out.parent, n=6), out, on_frame=on_frame)
print("written", flush=True)
"""


def start_slow_writer(out):
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(repo / "core"), str(repo), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.stdout.readline().strip() == "writing"
    return proc


def hidden(folder) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith("."))


def wait_until_unchanged(folder, seconds: float = 1.0, limit: float = 20.0) -> None:
    """Until nothing in ``folder`` changes for ``seconds`` (a killed writer's ffmpeg
    finishes its file after its parent is gone)."""
    import time

    def state():
        return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir())

    end = time.monotonic() + limit
    last = state()
    while time.monotonic() < end:
        time.sleep(seconds)
        now = state()
        if now == last:
            return
        last = now


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_temporaries_of_a_killed_writer_are_removed_by_the_next_run(tmp_path):
    import signal

    out = tmp_path / "out"
    out.mkdir()
    killed = start_slow_writer(out / "clip.png")
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(10)
    wait_until_unchanged(out)
    left = hidden(out)
    assert any(n.startswith(".clip_frames.") and n.endswith(".tmp") for n in left), left
    assert any(n.startswith(".clip.mp4.") and n.endswith(".tmp") for n in left), left
    assert all(f".{killed.pid}-" in n for n in left), left  # named by the writer's pid

    # A live writer's temporaries are left alone by another run in the same folder ...
    live = start_slow_writer(out / "live.png")
    outputs.write_video_outputs(fake_video_result(tmp_path, n=2), out / "other.png")
    live_left = hidden(out)
    assert any(n.startswith(".live_frames.") for n in live_left), live_left
    # ... while the dead writer's are gone.
    assert not any(n.startswith((".clip_frames.", ".clip.mp4.")) for n in live_left)
    live.stdin.write("go\n")
    live.stdin.flush()
    assert live.stdout.readline().strip() == "written"
    assert live.wait(30) == 0
    assert hidden(out) == []
    assert sorted(os.listdir(out)) == [
        "live.json",
        "live.mp4",
        "live_frames",
        "other.json",
        "other.mp4",
        "other_frames",
    ]
    assert len(os.listdir(out / "live_frames")) == 6


# --- the command and the worker -------------------------------------------------------------


def cli_args(model, out, family: str, seed: int = 0) -> list[str]:
    case = CASES[family]
    args = ["generate", "--model", str(model), "--offline", "--video", "--prompt", PROMPT]
    for key in ("width", "frames", "fps", "steps"):
        args += [f"--{key}", str(case[key])]
    return [*args, "--seed", str(seed), "--out", str(out)]


@pytest.mark.parametrize("family", CASES)
def test_command_and_worker_write_the_same_sequence(
    family, video_models, generate, engine_env, tmp_path
):
    case = CASES[family]
    n, width = case["frames"], case["width"]
    # The command: the frames are those of the in-process run with the same seed.
    cli_out = tmp_path / "cli" / "clip.mp4"
    done = run_cli(cli_args(video_models[family], cli_out, family), engine_env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"wrote {n} frames ({width}x{width // 2}, {case['fps']} fps)" in done.stdout
    # Progress (plain lines, not a terminal) covers the views of the chunk of frames (one
    # here), then the frames written (as each chunk completed) and the files placed.
    assert f"(views {89}/89, frames 1-{n} of {n})" in done.stderr
    assert f"spherediff: write {n}/{n + 1} " in done.stderr
    assert f"spherediff: write {n + 1}/{n + 1} " in done.stderr
    assert sorted(os.listdir(cli_out.parent)) == ["clip.json", "clip.mp4", "clip_frames"]
    frames_dir = cli_out.parent / "clip_frames"
    expected = generate(family).frames
    for i in range(n):
        pixels, _ = read_png(frames_dir / f"frame_{i + 1:04d}.png")
        assert np.array_equal(pixels, outputs.image_to_uint8(expected[i])), f"frame {i + 1}"
    sidecar = json.loads(cli_out.with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["model"]["family"] == FAMILY[family]
    assert (sidecar["video"]["frames"], sidecar["video"]["fps"]) == (n, case["fps"])

    # The worker, same options: the same frames, byte for byte; progress per frame.
    worker_out = tmp_path / "worker" / "clip.png"
    options = {**case, "prompt": PROMPT, "model": str(video_models[family]), "video": True}
    job = {"protocol": 1, "options": {**options, "offline": True, "output": str(worker_out)}}
    code, events, proc = run_worker([], engine_env, tmp_path, job=job, timeout=300)
    assert code == 0, proc.stderr()
    progress = [e for e in events if e["event"] == "progress"]
    assert [p["phase"] for p in progress] == sorted(
        (p["phase"] for p in progress), key=["load", "denoise", "decode", "write"].index
    )
    write = [p for p in progress if p["phase"] == "write"]
    assert [(p["step"], p["total"]) for p in write] == [(n, n + 1), (n + 1, n + 1)]
    result = events[-1]
    wdir = worker_out.parent
    assert result == {
        "event": "result",
        "image": str(wdir / "clip_frames" / "frame_0001.png"),
        "sidecar": str(wdir / "clip.json"),
        "width": width,
        "height": width // 2,
        "seconds": result["seconds"],
        "seed": 0,
        "warnings": result["warnings"],
        "exr": None,  # videos stay LDR (issue 10)
        "sun": None,
        "loaded": True,
        "video": True,
        "frames": n,
        "fps": case["fps"],
        "frames_dir": str(wdir / "clip_frames"),
        "first_frame": str(wdir / "clip_frames" / "frame_0001.png"),
        "mp4": str(wdir / "clip.mp4"),
    }
    assert sorted(os.listdir(wdir / "clip_frames")) == sorted(os.listdir(frames_dir))
    for name in os.listdir(frames_dir):
        assert (wdir / "clip_frames" / name).read_bytes() == (frames_dir / name).read_bytes()


def test_bad_frame_count_is_refused_by_the_command_before_loading(
    video_models, engine_env, tmp_path
):
    args = cli_args(video_models["ltx"], tmp_path / "out" / "clip.png", "ltx")
    args[args.index("--frames") + 1] = "50"
    done = run_cli(args, engine_env, timeout=120)
    assert done.returncode == 2
    assert "frames: 50 is not valid for LTX-Video (8k+1); use 49 or 57" in done.stderr
    assert not (tmp_path / "out").exists()


def test_worker_cancel_mid_run_leaves_no_frames(video_models, engine_env, tmp_path):
    out = tmp_path / "out" / "clip.png"
    # Enough frames that decoding the views takes a while; cancel when it starts.
    options = {**CASES["ltx"], "frames": 33, "prompt": PROMPT, "video": True}
    job = {
        "protocol": 1,
        "options": {
            **options,
            "model": str(video_models["ltx"]),
            "offline": True,
            "output": str(out),
        },
    }
    worker = WorkerProcess([], engine_env, tmp_path / "worker-stderr.txt")
    worker.send(json.dumps(job))
    events = []
    while (event := worker.next_event(timeout=120)) is not None:
        events.append(event)
        if event.get("phase") == "decode":
            worker.send("cancel")
            break
    events += worker.events(timeout=120)
    code = worker.wait(timeout=60)
    assert code == EXIT_CANCELLED, worker.stderr()
    assert events[-1]["event"] == "error" and events[-1]["code"] == "cancelled"
    assert "write" not in {e.get("phase") for e in events}
    # Nothing left: no frames folder, no MP4, no sidecar, no temporaries.
    assert not out.parent.exists() or os.listdir(out.parent) == []


# --- loops ----------------------------------------------------------------------------------

# Clips of four latent frames; "contrast": whether the tiny model's frames are coherent in
# time, so that a plain clip's seam stands out. The tiny LTX-Video VAE's frames are not: it
# unfolds every latent frame into eight frames from separate random channels, so every
# pair of neighbouring frames differs as much as the first and the last (measured: the
# plain clip's seam is 0.97x its mean neighbour difference), and only the loop's bound can
# be shown with it. Wan's causal VAE gives coherent frames.
LOOP_CASES = {
    "ltx": {"width": 256, "frames": 33, "fps": 8, "steps": 4, "contrast": False},
    "wan": {"width": 128, "frames": 17, "fps": 8, "steps": 4, "contrast": True},
}


def temporal_seam(frames: torch.Tensor) -> float:
    """Mean |last frame - first frame| over the mean |frame i+1 - frame i|; frames (F, 3, H, W)."""
    neighbours = (frames[1:] - frames[:-1]).abs().mean()
    return float((frames[-1] - frames[0]).abs().mean() / neighbours)


@pytest.mark.parametrize("family", CASES)
def test_a_loop_closes_as_smoothly_as_any_two_neighbours(family, loaded, video_models, tmp_path):
    case = dict(LOOP_CASES[family])
    contrast = case.pop("contrast")
    pipe = loaded(family)
    folder = video_models[family]
    plain = pipe(video_options(folder, tmp_path / "a.png", family, **case))
    looped = pipe(video_options(folder, tmp_path / "b.png", family, loop=True, **case))
    # The loop's last frame is the one before the closing frame (frame 1 again).
    assert plain.n_frames == case["frames"] and looped.n_frames == case["frames"] - 1
    assert looped.options.loop and looped.options.frames == case["frames"]
    seam_loop, seam_plain = temporal_seam(looped.frames), temporal_seam(plain.frames)
    assert seam_loop <= 1.5, (seam_loop, seam_plain)
    if contrast:
        assert seam_plain > 1.5 and seam_plain > 1.5 * seam_loop, (seam_loop, seam_plain)
    # Every frame of the loop is still a seamless panorama.
    assert max(seam_ratio(f) for f in looped.frames) < 2.0


def test_loop_shifts_cover_the_clip_and_keep_moving():
    for m in (2, 3, 4, 15):
        shifts = [loop_shift(i, m) for i in range(20)]
        assert all(0 <= s < m for s in shifts)
        assert set(shifts) == set(range(m))  # every boundary, the wrap included, is inside
        assert shifts[0] != 0  # the first steps, which lay out the motion, see the wrap
        assert sum(a != b for a, b in itertools.pairwise(shifts)) >= 12  # it keeps moving
    assert {loop_shift(i, 1) for i in range(5)} == {0}


def test_loop_options_are_checked(tmp_path):
    with pytest.raises(OptionsError, match="loop: true, but a still has no time"):
        GenerationOptions(prompt=PROMPT, output=str(tmp_path / "a.png"), loop=True).validate()
    with pytest.raises(OptionsError, match="loop: 'yes' must be true or false"):
        GenerationOptions(prompt=PROMPT, video=True, loop="yes").validate()
    one = GenerationOptions(prompt=PROMPT, video=True, loop=True, frames=1)
    with pytest.raises(
        OptionsError,
        match="frames: 1 is too few for a loop with LTX-Video; a loop needs at least 9",
    ):
        check_video_request(one, LTXVideoAdapter)
    opts = GenerationOptions(prompt=PROMPT, video=True, loop=True, frames=5)
    assert check_video_request(opts, WanAdapter) == (5, 16, 1)
    assert check_video_request(
        GenerationOptions(prompt=PROMPT, video=True, loop=True), WanAdapter
    ) == (81, 16, 20)


# --- streaming: a chunk of frames at a time -------------------------------------------------


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("context", [(2, 1), (3, 0), (1, 0)])
def test_frame_chunks_cover_the_clip_each_frame_from_its_own_latent(loop, context):
    c = 4
    for m in (1, 2, 3, 5, 9):
        for per_chunk in (1, 2, 4, 16):
            chunks = plan_frame_chunks(m, c, per_chunk, loop=loop, context=context)
            total = m * c if loop else (m - 1) * c + 1
            ends = np.cumsum([ch.n_frames for ch in chunks])
            assert [ch.start for ch in chunks] == [0, *ends[:-1].tolist()]
            assert sum(ch.n_frames for ch in chunks) == total
            for ch in chunks:
                decoded = (len(ch.latent_ids) - 1) * c + 1
                assert ch.offset + ch.n_frames <= decoded
                for i in range(ch.n_frames):
                    frame, f = ch.start + i, ch.offset + i  # in the clip, in the decode
                    position = 0 if f == 0 else (f - 1) // c + 1
                    # The latent frame a clip frame comes from: in a loop frame t is made by
                    # latent t // c (no lone first frame); otherwise by 0, then (t - 1) // c + 1.
                    own = frame // c if loop else (0 if frame == 0 else (frame - 1) // c + 1)
                    assert ch.latent_ids[position] == own
                # Context: at most context[0] latent frames before, context[1] after.
                own = {
                    (f - 1) // c + 1 if f else 0 for f in range(ch.offset, ch.offset + ch.n_frames)
                }
                assert min(own) <= context[0] and len(ch.latent_ids) - 1 - max(own) <= context[1]
            if loop:  # the wrap: the first chunk is decoded after the clip's last frames
                # (at most one cycle of them: more would decode the same frames again)
                before = min(context[0], m)
                assert chunks[0].latent_ids[:before] == tuple(i % m for i in range(-before, 0))
                assert len(chunks[0].latent_ids) <= before + per_chunk + min(context[1], m)
            else:
                assert chunks[0].latent_ids[0] == 0 and chunks[-1].latent_ids[-1] == m - 1


@pytest.mark.parametrize("family", CASES)
def test_a_clip_streams_chunk_by_chunk_as_it_would_be_held(
    family, loaded, video_models, tmp_path, monkeypatch
):
    pipe = loaded(family)
    case = {"width": 128, "frames": 4 * pipe.adapter.temporal_compression + 1, "steps": 2}
    opts = video_options(video_models[family], tmp_path / "c.png", family, **case)
    whole = pipe(opts)
    # A canvas budget of two latent frames' frames: chunks of two latent frames.
    c = pipe.adapter.temporal_compression
    monkeypatch.setattr(pipeline, "CANVAS_BUDGET_VALUES", 3 * 64 * 128 * 2 * c)
    got = []
    streamed = pipe(opts, frame_sink=got.append)
    assert streamed.frames is None and streamed.n_frames == whole.n_frames
    assert [ch.start for ch in got] == [0, c + 1, 3 * c + 1]
    assert all(ch.total == whole.n_frames and ch.result is streamed for ch in got)
    frames = torch.cat([ch.frames for ch in got])
    assert frames.shape == whole.frames.shape
    assert torch.equal(streamed.image, frames[0])
    # Held in memory with the same chunks: the same frames.
    held = pipe(opts)
    assert torch.equal(held.frames, frames)
    # The first chunk has no context before it; with a causal decoder (Wan) and no context
    # after it is the whole-clip decode's beginning.
    if pipe.adapter.decode_context_latents[1] == 0:
        first = got[0].frames.shape[0]
        torch.testing.assert_close(frames[:first], whole.frames[:first], atol=1e-5, rtol=0)
    # Later chunks are decoded with their context: close to the whole-clip decode.
    err = (frames - whole.frames).abs().mean()
    motion = (whole.frames[1:] - whole.frames[:-1]).abs().mean()
    assert err < motion, (float(err), float(motion))


def test_a_cancel_while_frames_stream_leaves_the_earlier_clip(video_models, tmp_path, monkeypatch):
    from spherediff_core.runner import CancelToken
    from spherediff_core.runner import generate as run_generate

    monkeypatch.setattr(pipeline, "CANVAS_BUDGET_VALUES", 3 * 64 * 128 * 8)  # 2 latent frames
    out = tmp_path / "out" / "clip.png"
    options = GenerationOptions(
        prompt=PROMPT,
        model=str(video_models["wan"]),
        video=True,
        frames=17,
        fps=8,
        steps=2,
        width=128,
        offline=True,
        output=str(out),
    )
    run_generate(options)
    before = {p.name: p.read_bytes() for p in (out.parent / "clip_frames").iterdir()}
    files = {name: (out.parent / name).read_bytes() for name in ("clip.json", "clip.mp4")}
    assert len(before) == 17
    # Again with another seed, cancelled while the second chunk is decoded: the first
    # chunk's frames are on disk by then (in the temporary folder).
    token = CancelToken()
    written: list[int] = []

    def on_progress(event):
        if event.phase == "decode" and event.step > event.total // 3 + 10 and not written:
            written.extend(
                len(list(d.glob("*.png")))
                for d in out.parent.iterdir()
                if d.is_dir() and d.name.startswith(".")
            )
            token.cancel("test")

    again = GenerationOptions(**{**options.to_dict(), "seed": 1})
    with pytest.raises(CancelledError):
        run_generate(again, on_progress=on_progress, should_cancel=token)
    assert written == [5], written  # the clip was streaming: the first chunk (frames 1-5)
    assert sorted(os.listdir(out.parent)) == ["clip.json", "clip.mp4", "clip_frames"]
    assert {p.name: p.read_bytes() for p in (out.parent / "clip_frames").iterdir()} == before
    assert {n: (out.parent / n).read_bytes() for n in files} == files
