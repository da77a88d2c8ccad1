"""Every video family end to end through the real command and the real worker (and the
VAEs whose chunked decoding must be exact); tests/core/test_video.py goes in depth."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from spherediff_core.adapters import adapter_for_class

from tests.support.engine_process import run_cli_and_worker
from tests.support.tiny_pipelines import FAMILIES as TINY_MODELS
from tests.support.tiny_pipelines import pipeline_class_name

# Every tiny video model but the two tests/core/test_video.py runs through the command and
# the worker in depth (LTX-Video, Wan 2.1) -> its family code.
IN_TEST_VIDEO = ("ltx", "wan")
FAMILIES = {
    key: adapter.family
    for key in TINY_MODELS
    if (adapter := adapter_for_class(pipeline_class_name(key))).is_video
    and key not in IN_TEST_VIDEO
}
# Two steps (A14B: both experts), a small ERP, and 27 wide views rather than 89 (every
# HunyuanVideo 1.5 call also attends over its 729 image tokens).
CASE = {
    "prompt": "a quiet harbour at dusk",
    "width": 128,
    "fps": 8,
    "steps": 2,
    "fov_deg": 120.0,
    "overlap": 0.2,
}


@pytest.mark.parametrize("tiny", list(FAMILIES))
def test_command_and_worker_make_a_video_with_every_family(
    tiny, tiny_folders, engine_env, tmp_path
):
    # Two latent frames, whatever the VAE's temporal compression.
    n = 1 + adapter_for_class(pipeline_class_name(tiny)).temporal_compression
    model, case = tiny_folders[tiny], {**CASE, "frames": n}
    # The command and the worker, same options (side by side): the same frames, byte for byte
    cli_out = tmp_path / "cli" / "clip.png"
    args = ["generate", "--model", str(model), "--offline", "--video", "--seed", "5"]
    for key in ("prompt", "width", "frames", "fps", "steps", "fov_deg", "overlap"):
        args += [f"--{key.replace('_', '-')}", str(case[key])]
    worker_out = tmp_path / "worker" / "clip.png"
    options = {**case, "seed": 5, "model": str(model), "video": True, "offline": True}
    job = {"protocol": 1, "options": {**options, "output": str(worker_out)}}
    done, (code, events, proc) = run_cli_and_worker(
        [*args, "--out", str(cli_out)], job, engine_env, tmp_path
    )
    assert done.returncode == 0, done.stderr
    frames_dir = cli_out.parent / "clip_frames"
    names = sorted(p.name for p in frames_dir.iterdir())
    assert names == [f"frame_{i + 1:04d}.png" for i in range(n)]
    pixels = []
    for name in names:
        with Image.open(frames_dir / name) as im:
            assert im.mode == "RGB" and im.size == (128, 64)
            pixels.append(np.asarray(im, dtype=np.float32))
    assert np.std(pixels[0]) > 1.0  # an image, not a flat colour
    assert max(np.abs(pixels[i] - pixels[0]).mean() for i in range(1, n)) > 0  # it moves
    sidecar = json.loads(cli_out.with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["model"]["family"] == FAMILIES[tiny]
    assert (sidecar["video"]["frames"], sidecar["video"]["fps"]) == (n, case["fps"])
    assert code == 0, proc.stderr()
    assert events[0]["event"] == "hello" and events[-1]["event"] == "result"
    assert events[-1]["frames"] == n
    for name in names:
        got = (worker_out.parent / "clip_frames" / name).read_bytes()
        assert got == (frames_dir / name).read_bytes(), name


# The VAEs whose decode context is their whole prefix (Wan 2.2's residual VAE, HunyuanVideo
# 1.5's causal attention); Wan 2.1's VAE (also A14B's) keeps a short context: close, not exact.
EXACT_CHUNKS = ("wan22-ti2v5b", "hunyuanvideo15")


@pytest.mark.parametrize("tiny", EXACT_CHUNKS)
def test_a_clip_decoded_chunk_by_chunk_is_the_whole_clip(tiny, tiny_folders, tmp_path):
    """The adapter's decode_context_latents make chunked decoding (pipeline.plan_frame_chunks)
    give the whole-clip decode's frames, where a short context would be visibly off."""
    from spherediff_core.pipeline import SphereDiffPipeline, plan_frame_chunks

    adapter = SphereDiffPipeline.from_pretrained(
        str(tiny_folders[tiny]), offline=True, plan_cache_dir=tmp_path
    ).adapter
    m, c = 6, adapter.temporal_compression
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, adapter.latent_channels, m, 2, 2, generator=gen)
    whole = adapter.decode(latents)[0]  # (3, frames, H, W)

    def chunked(context):
        parts = []
        for chunk in plan_frame_chunks(m, c, 2, context=context):
            frames = adapter.decode(latents[:, :, list(chunk.latent_ids)])[0]
            parts.append(frames[:, chunk.offset : chunk.offset + chunk.n_frames])
        return torch.cat(parts, dim=1)

    torch.testing.assert_close(chunked(adapter.decode_context_latents), whole, rtol=0, atol=1e-5)
    # One frame of context is not enough for these decoders: the check can fail.
    assert (chunked((1, 0)) - whole).abs().max() > 1e-2
