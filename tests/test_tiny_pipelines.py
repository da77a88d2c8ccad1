"""The tiny offline pipelines in tests/support/tiny_pipelines.py build, save, load and run."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

try:  # repo root on sys.path (python -m pytest, or pytest with pythonpath=".")
    from tests.support.tiny_pipelines import FAMILIES, build_tiny_pipeline
except ImportError:  # bare `pytest`: rootdir-less "prepend" import mode puts tests/ on sys.path
    from support.tiny_pipelines import FAMILIES, build_tiny_pipeline

# family -> (pipeline class name, latent channels, spatial VAE factor, temporal VAE factor or None)
EXPECTED = {
    "sana": ("SanaPipeline", 32, 32, None),
    "sd15": ("StableDiffusionPipeline", 4, 8, None),
    "sdxl": ("StableDiffusionXLPipeline", 4, 8, None),
    "flux": ("FluxPipeline", 16, 8, None),
    "sd3": ("StableDiffusion3Pipeline", 16, 8, None),
    "ltx": ("LTXPipeline", 128, 32, 8),
    "wan": ("WanPipeline", 16, 8, 4),
    "flux2-dev": ("Flux2Pipeline", 32, 8, None),
    "flux2-klein": ("Flux2KleinPipeline", 32, 8, None),
    "flux2-klein-base": ("Flux2KleinPipeline", 32, 8, None),
    "qwenimage": ("QwenImagePipeline", 16, 8, None),
    "zimage-turbo": ("ZImagePipeline", 16, 8, None),
    "zimage-base": ("ZImagePipeline", 16, 8, None),
    "wan22-ti2v5b": ("WanPipeline", 48, 16, 4),
    "wan22-a14b": ("WanPipeline", 16, 8, 4),
    "hunyuanvideo15": ("HunyuanVideo15Pipeline", 32, 16, 4),
}
# Image models whose VAE is a video VAE taking (n, 3, frames, H, W) (Qwen-Image's).
FRAME_AXIS_IMAGE_VAES = {"qwenimage"}

# Small 1:2 (panorama-like) call sizes; video families also get a frame count.
CALL_KWARGS = {
    "sana": dict(
        height=64, width=128, use_resolution_binning=False, complex_human_instruction=None
    ),
    "sd15": dict(height=64, width=128),
    "sdxl": dict(height=64, width=128),
    "flux": dict(height=64, width=128),
    "sd3": dict(height=64, width=128),
    "ltx": dict(height=64, width=128, num_frames=9),
    "wan": dict(height=64, width=128, num_frames=5),
    "flux2-dev": dict(height=64, width=128),
    "flux2-klein": dict(height=64, width=128),
    "flux2-klein-base": dict(height=64, width=128),
    "qwenimage": dict(height=64, width=128),
    "zimage-turbo": dict(height=64, width=128),
    "zimage-base": dict(height=64, width=128),
    "wan22-ti2v5b": dict(height=64, width=128, num_frames=5),
    "wan22-a14b": dict(height=64, width=128, num_frames=5),
    "hunyuanvideo15": dict(height=64, width=128, num_frames=5),
}

WEIGHT_SUFFIXES = {
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".msgpack",
    ".h5",
    ".onnx",
    ".pb",
    ".gguf",
}


@pytest.fixture(autouse=True)
def _offline_single_thread(monkeypatch):
    """No Hub access; one intra-op thread (tiny ops on a shared 2-core box run far faster)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        import huggingface_hub.constants as hf_constants

        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True, raising=False)
    except ImportError:  # pragma: no cover
        pass
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _first_attribute(obj, *names):
    return next((getattr(obj, n) for n in names if getattr(obj, n, None) is not None), None)


def _vae_factors(pipe, video: bool):
    """(spatial, temporal or None), under whichever name the pipeline class uses."""
    spatial = _first_attribute(
        pipe, "vae_spatial_compression_ratio", "vae_scale_factor_spatial", "vae_scale_factor"
    )
    if not video:
        return spatial, None
    temporal = _first_attribute(pipe, "vae_temporal_compression_ratio", "vae_scale_factor_temporal")
    return spatial, temporal


def _latent_channels(pipe):
    return _first_attribute(pipe.vae.config, "latent_channels", "z_dim")


def _encode(vae, x):
    out = vae.encode(x)
    dist = getattr(out, "latent_dist", None)
    return dist.mode() if dist is not None else out.latent


@pytest.mark.parametrize("family", FAMILIES)
def test_build_load_and_run(family, tmp_path):
    import diffusers

    class_name, channels, spatial, temporal = EXPECTED[family]

    t0 = time.perf_counter()
    folder = build_tiny_pipeline(family, tmp_path / family, seed=0)
    t1 = time.perf_counter()
    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    t2 = time.perf_counter()

    assert folder == tmp_path / family
    assert type(pipe) is getattr(diffusers, class_name)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == class_name

    # weights: safetensors only, one file per saved torch module
    files = [p for p in folder.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in WEIGHT_SUFFIXES]
    assert weights and all(p.suffix == ".safetensors" for p in weights), weights
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            assert list((folder / name).glob("*.safetensors")), name

    # structure: latent channels and real VAE down-sampling
    assert _latent_channels(pipe) == channels
    assert _vae_factors(pipe, temporal is not None) == (spatial, temporal)
    with torch.no_grad():
        if family in FRAME_AXIS_IMAGE_VAES:
            latent = _encode(pipe.vae, torch.randn(1, 3, 1, 64, 128))
            assert latent.shape == (1, channels, 1, 64 // spatial, 128 // spatial)
        elif temporal is None:
            latent = _encode(pipe.vae, torch.randn(1, 3, 64, 128))
            assert latent.shape == (1, channels, 64 // spatial, 128 // spatial)
        else:
            frames = 1 + 2 * temporal
            latent = _encode(pipe.vae, torch.randn(1, 3, frames, 64, 128))
            assert latent.shape == (1, channels, 3, 64 // spatial, 128 // spatial)

    # end to end: the ordinary pipeline call, 2 steps, numpy output
    pipe.set_progress_bar_config(disable=True)
    kwargs = CALL_KWARGS[family]
    out = pipe(
        prompt="a city by the sea under a clear sky, wide view",
        num_inference_steps=2,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(0),
        **kwargs,
    )
    t3 = time.perf_counter()
    if temporal is None:
        images = np.asarray(out.images)
        assert images.shape == (1, kwargs["height"], kwargs["width"], 3)
    else:
        images = np.asarray(out.frames)
        assert images.shape == (1, kwargs["num_frames"], kwargs["height"], kwargs["width"], 3)
    assert np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    print(f"\n[{family}] build {t1 - t0:.2f}s  load {t2 - t1:.2f}s  2-step call {t3 - t2:.2f}s")


def _state(folder):
    from safetensors.torch import load_file

    return {
        f"{p.relative_to(folder)}::{k}": v
        for p in sorted(folder.rglob("*.safetensors"))
        for k, v in load_file(p).items()
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_seeded_weights_are_reproducible(family, tmp_path):
    a = _state(build_tiny_pipeline(family, tmp_path / "a", seed=0))
    b = _state(build_tiny_pipeline(family, tmp_path / "b", seed=0))
    c = _state(build_tiny_pipeline(family, tmp_path / "c", seed=1))
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_unknown_family_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        build_tiny_pipeline("nope", tmp_path)
