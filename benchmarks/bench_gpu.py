"""GPU benchmark: full-size random-weight SANA, FLUX.1-dev and LTX-Video panoramas on 1 and N GPUs.

Nothing is downloaded. Every network is built in memory from its published configuration
(written below, with where each came from), straight on the GPU in bfloat16, its weights
redrawn at random; tokenizers are the tests' offline ones (tests/support/tiny_pipelines.py),
padding to the sequence lengths the real pipelines use (Gemma 300, T5 512 for FLUX and 128
for LTX-Video, CLIP 77). The diffusers pipeline object is wrapped in the family's adapter and
``SphereDiffPipeline`` and called with ``GenerationOptions``, exactly as a loaded model is.

    # every case on 1 GPU, then on all GPUs with torchrun (each run in its own process)
    python benchmarks/bench_gpu.py [--cases sana-2k flux-4k ltx-2k49] [--gpus 1 2 4 8]
        [--steps N] [--width W] [--frames F] [--view-batch 8] [--warmup]
    # on a short device budget: 2 steps a case, the rest of each schedule extrapolated
    python benchmarks/bench_gpu.py --steps 2
    # one case in this process, or under torchrun (rank 0 prints)
    python benchmarks/bench_gpu.py --case flux-4k [--steps 4]
    torchrun --standalone --nproc-per-node=8 benchmarks/bench_gpu.py --case flux-4k
    # CPU check of the same code path with scaled-down networks (2 steps, 256 x 128 ERP)
    PYTHONPATH=core HF_HUB_OFFLINE=1 python benchmarks/bench_gpu.py --tiny
    # the full configurations built on the meta device (no memory): parameter counts
    python benchmarks/bench_gpu.py --check-configs

Cases (sizes are the project's presets: "2K" is a 2048 x 1024 ERP, "4K" 4096 x 2048):

    sana-2k   SANA 1600M with the Sana_1600M_2Kpx_BF16 transformer config, ERP 2K (SANA's
              default size: 89 views of 576 px), 20 steps, CFG 4.5 (178 evaluations a step).
              The 2Kpx checkpoint has the same 1.6B transformer as the 1024px one (only its
              sinusoidal position embedding differs), so the cost per token is the same;
              ``--width 8192`` gives ~2200 px views, the 2Kpx model's own size.
    flux-4k   FLUX.1-dev, ERP 4K (FLUX's default size: 89 views of 1104 px), 28 steps,
              distilled guidance (89 evaluations a step).
    ltx-2k49  LTX-Video 0.9.1 (the paper's video model), ERP 2K, 49 frames (7 latent
              frames), 24 fps, 20 steps, CFG 4.5.

Columns: ``GPUs`` ranks (torch.distributed world size); ``steps`` run/full (``*``: cut by
``--steps``); ``views`` and ``view px`` the views and their decoded side; ``wall s`` the
generation call (model building excluded); ``plan``, ``encode``, ``denoise``, ``decode``,
``erp`` the pipeline's phases (``result.timings``: plan load, prompt encoding, the denoising
loop, VAE decoding without the blend, blending views into the ERP); ``net`` the time inside
the denoiser and ``vae`` inside the VAE (both synchronised, so exact); ``s/step`` denoise
seconds per step; ``full s`` the wall time at the full steps (``*``: the denoise time
extrapolated linearly from the steps run); ``x1`` speed-up of ``full s`` over the same case
on 1 GPU; ``peak GiB`` ``torch.cuda.max_memory_allocated`` during the call, weights
included (max over ranks; on the CPU the process's peak RSS); ``busy`` the GPU's busy
fraction: the mean of ``torch.cuda.utilization()`` sampled every 0.1 s (``nvml``, mean over
ranks) or, without pynvml, the share of the wall time inside the synchronised
denoiser/VAE/blend timings (``sync``); ``ok`` whether the ERP came out finite.

Weights: each network is constructed inside ``torch.device(<gpu>)`` with bfloat16 as the
default dtype (no float32 copy, no CPU init of 17B parameters), then every weight of two or
more dimensions is redrawn from N(0, 0.02^2); biases, norm scales and buffers keep their
constructors' values. Nothing is seeded: the numbers do not matter, only that they stay
finite and small (``ok`` checks the output), so no NaN or overflow path changes the speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "core", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

PROMPT = "a misty pine forest at dawn, volumetric light"
RESULT_TAG = "RESULT "
WEIGHT_STD = 0.02
GIB = 2**30

# --------------------------------------------------------------------------------------
# Published configurations (full size)
# --------------------------------------------------------------------------------------

FULL: dict[str, dict[str, Any]] = {
    # Efficient-Large-Model/Sana_1600M_2Kpx_BF16: diffusers' scripts/convert_sana_to_diffusers.py
    # for model_type SanaMS_1600M_P1_D20 at --image_size 2048 (sample_size 2048 // 32,
    # interpolation_scale {2048: 1.0}); the values equal SanaTransformer2DModel's defaults
    # but for sample_size and interpolation_scale.
    "sana_transformer": {
        "in_channels": 32,
        "out_channels": 32,
        "num_attention_heads": 70,
        "attention_head_dim": 32,
        "num_layers": 20,
        "num_cross_attention_heads": 20,
        "cross_attention_head_dim": 112,
        "cross_attention_dim": 2240,
        "caption_channels": 2304,
        "mlp_ratio": 2.5,
        "attention_bias": False,
        "sample_size": 64,
        "patch_size": 1,
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "interpolation_scale": 1.0,
    },
    # Gemma-2-2B (Efficient-Large-Model/gemma-2-2b-it, google/gemma-2-2b's config.json; the
    # same values are transformers' Gemma2Config defaults). SanaPipeline's text_encoder is a
    # Gemma2Model: the conversion script keeps AutoModelForCausalLM(...).get_decoder().
    # rope_theta 10000 is the default.
    "gemma2": {
        "vocab_size": 256000,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6,
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
    },
    # mit-han-lab dc-ae-f32c32-sana-1.0: diffusers' scripts/convert_dcae_to_diffusers.py
    # (convert_ae) and efficientvit's dc_ae_f32c32("dc-ae-f32c32-sana-1.0"): widths
    # 128..1024, encoder depths 2,2,2,3,3,3, decoder 3 x 6, EViTS5_GLU = EfficientViTBlock
    # with multiscale 5, Conv down / InterpolateConv up, trms2d + silu, scaling 0.41407.
    "dc_ae": {
        "in_channels": 3,
        "latent_channels": 32,
        "attention_head_dim": 32,
        "encoder_block_types": ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        "decoder_block_types": ("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        "encoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
        "decoder_block_out_channels": (128, 256, 512, 512, 1024, 1024),
        "encoder_layers_per_block": (2, 2, 2, 3, 3, 3),
        "decoder_layers_per_block": (3, 3, 3, 3, 3, 3),
        "encoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
        "decoder_qkv_multiscales": ((), (), (), (5,), (5,), (5,)),
        "downsample_block_type": "Conv",
        "upsample_block_type": "interpolate",
        "decoder_norm_types": "rms_norm",
        "decoder_act_fns": "silu",
        "scaling_factor": 0.41407,
    },
    # black-forest-labs/FLUX.1-dev transformer: FluxTransformer2DModel's defaults (19 double
    # and 38 single blocks, 24 heads x 128, T5 4096, CLIP pooled 768) with guidance_embeds
    # (BFL's config-dev: depth 19, depth_single_blocks 38, axes_dim 16/56/56, guidance_embed).
    "flux_transformer": {
        "patch_size": 1,
        "in_channels": 64,
        "num_layers": 19,
        "num_single_layers": 38,
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "pooled_projection_dim": 768,
        "guidance_embeds": True,
        "axes_dims_rope": (16, 56, 56),
    },
    # FLUX.1-dev text_encoder: openai/clip-vit-large-patch14's text tower (CLIPTextModel).
    "clip_l": {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "projection_dim": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
    # google/t5-v1_1-xxl encoder (FLUX.1-dev text_encoder_2, LTX-Video text_encoder; the
    # config.json FLUX ships: d_model 4096, 24 layers, d_ff 10240, 64 heads x 64, gated-gelu).
    "t5_xxl": {
        "vocab_size": 32128,
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_decoder_layers": 24,
        "num_heads": 64,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "layer_norm_epsilon": 1e-6,
        "dropout_rate": 0.1,
    },
    # FLUX.1-dev vae/config.json (AutoencoderKL, 16 latent channels, no quant convs).
    "flux_vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 16,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "force_upcast": True,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "mid_block_add_attention": True,
    },
    # Lightricks LTX-Video 0.9.x 2B transformer: diffusers' scripts/convert_ltx_to_diffusers.py
    # get_transformer_config (= LTXVideoTransformer3DModel's defaults): 28 layers, 32 heads x
    # 64, cross-attention dim 2048 (its inner dim; the T5 width 4096 is caption_channels).
    "ltx_transformer": {
        "in_channels": 128,
        "out_channels": 128,
        "patch_size": 1,
        "patch_size_t": 1,
        "num_attention_heads": 32,
        "attention_head_dim": 64,
        "cross_attention_dim": 2048,
        "num_layers": 28,
        "activation_fn": "gelu-approximate",
        "qk_norm": "rms_norm_across_heads",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "caption_channels": 4096,
        "attention_bias": True,
        "attention_out_bias": True,
    },
    # LTX-Video 0.9.1 VAE: the same script's get_vae_config("0.9.1") (128 latent channels,
    # 32x / 8x, timestep-conditioned decoder with noise injection).
    "ltx_vae": {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 128,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("LTXVideoDownBlock3D",) * 4,
        "decoder_block_out_channels": (256, 512, 1024),
        "layers_per_block": (4, 3, 3, 3, 4),
        "decoder_layers_per_block": (5, 6, 7, 8),
        "spatio_temporal_scaling": (True, True, True, False),
        "decoder_spatio_temporal_scaling": (True, True, True),
        "decoder_inject_noise": (True, True, True, False),
        "downsample_type": ("conv", "conv", "conv", "conv"),
        "upsample_residual": (True, True, True),
        "upsample_factor": (2, 2, 2),
        "timestep_conditioning": True,
        "patch_size": 4,
        "patch_size_t": 1,
        "resnet_norm_eps": 1e-6,
        "scaling_factor": 1.0,
        "encoder_causal": True,
        "decoder_causal": False,
    },
}

SCHEDULERS: dict[str, dict[str, Any]] = {
    # Sana_1600M_*_diffusers scheduler_config.json (flow DPM-Solver++); flow_shift 3.0 below
    # 4096 px (convert_sana_to_diffusers.py).
    "sana": {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "solver_order": 2,
        "prediction_type": "flow_prediction",
        "algorithm_type": "dpmsolver++",
        "solver_type": "midpoint",
        "lower_order_final": True,
        "final_sigmas_type": "zero",
        "use_flow_sigmas": True,
        "flow_shift": 3.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    },
    # black-forest-labs/FLUX.1-dev scheduler_config.json.
    "flux": {
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    },
    # LTX-Video 0.9.0/0.9.1 (convert_ltx_to_diffusers.py).
    "ltx": {
        "num_train_timesteps": 1000,
        "shift": 1.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.95,
        "max_shift": 2.05,
        "base_image_seq_len": 1024,
        "max_image_seq_len": 4096,
        "shift_terminal": 0.1,
    },
}

# --tiny: the same structures with a few channels and one or two layers (vocabularies and
# everything not named here stay as above).
TINY: dict[str, dict[str, Any]] = {
    "sana_transformer": {
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "num_layers": 1,
        "num_cross_attention_heads": 2,
        "cross_attention_head_dim": 8,
        "cross_attention_dim": 16,
        "caption_channels": 16,
    },
    "gemma2": {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 8,
        "query_pre_attn_scalar": 8,
        "sliding_window": 64,
    },
    "dc_ae": {
        "attention_head_dim": 8,
        "encoder_block_out_channels": (8, 8, 16, 16, 32, 32),
        "decoder_block_out_channels": (8, 8, 16, 16, 32, 32),
        "encoder_layers_per_block": (1,) * 6,
        "decoder_layers_per_block": (1,) * 6,
    },
    "flux_transformer": {
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "axes_dims_rope": (4, 6, 6),
    },
    "clip_l": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "projection_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    },
    "t5_xxl": {
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 64,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
    },
    "flux_vae": {"block_out_channels": (8, 8, 16, 16), "layers_per_block": 1, "norm_num_groups": 8},
    "ltx_transformer": {
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "cross_attention_dim": 16,
        "num_layers": 1,
        "caption_channels": 32,
    },
    "ltx_vae": {
        "block_out_channels": (8, 8, 16, 16),
        "decoder_block_out_channels": (8, 16, 32),
        "layers_per_block": (1, 1, 1, 1, 1),
        "decoder_layers_per_block": (1, 1, 1, 1),
    },
}


@dataclass(frozen=True)
class Case:
    """One benchmark case: a model family at an ERP size."""

    name: str
    family: str
    label: str
    size: str
    steps: int
    frames: int | None = None
    fps: int | None = None
    tiny_width: int = 256
    tiny_frames: int | None = None


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("sana-2k", "sana", "SANA 1600M (2Kpx config)", "2K", 20),
        Case("flux-4k", "flux", "FLUX.1-dev", "4K", 28),
        Case("ltx-2k49", "ltx", "LTX-Video 0.9.1", "2K", 20, 49, 24, tiny_frames=9),
    )
}

# --------------------------------------------------------------------------------------
# Building the models
# --------------------------------------------------------------------------------------


def make_config(name: str, tiny: bool) -> dict[str, Any]:
    """A component's configuration: the published one, scaled down for ``--tiny``."""
    return {**FULL[name], **(TINY[name] if tiny else {})}


@contextlib.contextmanager
def build_on_device(device: Any, dtype: Any):
    """Construct modules straight on ``device`` in ``dtype`` (no float32 copy, no CPU init)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def randomize_weights(module: Any, std: float = WEIGHT_STD) -> None:
    """Redraw every weight of 2+ dimensions from N(0, std^2), in place; biases, norm scales
    and buffers keep their constructor's values (all finite)."""
    import torch

    with torch.no_grad():
        for param in module.parameters():
            if param.dim() >= 2 and param.device.type != "meta":
                param.normal_(0.0, std)
    module.eval()


def build_gemma2(tokenizer: Any, tiny: bool) -> Any:
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        **make_config("gemma2", tiny),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=False,
    )
    return Gemma2Model(config)


def build_clip_text(tokenizer: Any, tiny: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        **make_config("clip_l", tiny),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_t5_encoder(tokenizer: Any, tiny: bool) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        **make_config("t5_xxl", tiny),
        is_encoder_decoder=False,
        use_cache=False,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def build_sana_pipeline(tiny: bool, device: Any, dtype: Any) -> Any:
    from diffusers import (
        AutoencoderDC,
        DPMSolverMultistepScheduler,
        SanaPipeline,
        SanaTransformer2DModel,
    )

    from tests.support.tiny_pipelines import _make_gemma_tokenizer

    tokenizer = _make_gemma_tokenizer()
    with build_on_device(device, dtype):
        text_encoder = build_gemma2(tokenizer, tiny)
        transformer = SanaTransformer2DModel(**make_config("sana_transformer", tiny))
        vae = AutoencoderDC(**make_config("dc_ae", tiny))
    return SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(**SCHEDULERS["sana"]),
    )


def build_flux_pipeline(tiny: bool, device: Any, dtype: Any) -> Any:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )

    from tests.support.tiny_pipelines import _make_clip_tokenizer, _make_t5_tokenizer

    tokenizer, tokenizer_2 = _make_clip_tokenizer(), _make_t5_tokenizer()
    with build_on_device(device, dtype):
        text_encoder = build_clip_text(tokenizer, tiny)
        text_encoder_2 = build_t5_encoder(tokenizer_2, tiny)
        transformer = FluxTransformer2DModel(**make_config("flux_transformer", tiny))
        vae = AutoencoderKL(**make_config("flux_vae", tiny))
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULERS["flux"]),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
        image_encoder=None,
        feature_extractor=None,
    )


def build_ltx_pipeline(tiny: bool, device: Any, dtype: Any) -> Any:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    from tests.support.tiny_pipelines import _make_t5_tokenizer

    tokenizer = _make_t5_tokenizer()
    with build_on_device(device, dtype):
        text_encoder = build_t5_encoder(tokenizer, tiny)
        transformer = LTXVideoTransformer3DModel(**make_config("ltx_transformer", tiny))
        vae = AutoencoderKLLTXVideo(**make_config("ltx_vae", tiny))
    return LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULERS["ltx"]),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


BUILDERS = {"sana": build_sana_pipeline, "flux": build_flux_pipeline, "ltx": build_ltx_pipeline}


def list_modules(pipe: Any) -> dict[str, Any]:
    """The pipeline's networks by component name."""
    import torch

    return {
        name: module
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }


def build_adapter(case: Case, tiny: bool, device: Any, dtype: Any) -> tuple[Any, dict]:
    """The case's random-weight pipeline wrapped in its family's adapter, and what was built
    (parameters per component, weight GiB, seconds)."""
    from spherediff_core.adapters import adapter_class_for

    t0 = time.perf_counter()
    pipe = BUILDERS[case.family](tiny, device, dtype)
    modules = list_modules(pipe)
    for module in modules.values():
        randomize_weights(module)
    # What adapter_class_for reads from a model_index.json, from the pipeline itself.
    index = {**dict(pipe.config), "_class_name": type(pipe).__name__}
    adapter = adapter_class_for(index, f"random-weight {case.label}")(pipe, device, dtype)
    adapter.apply_memory_options(cpu_offload=False, vae_tiling=False, vae_slicing=False)
    sync(device)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
    weight_bytes = sum(
        p.numel() * p.element_size() for m in modules.values() for p in m.parameters()
    )
    info = {
        "params": params,
        "weights_gib": weight_bytes / GIB,
        "build_s": time.perf_counter() - t0,
    }
    return adapter, info


def check_configs() -> None:
    """Build every full-size network on the meta device (no memory) and print its size."""
    import torch

    print(f"full-size configurations on the meta device, torch {torch.__version__}")
    print(f"{'case':<9} {'component':<15} {'class':<28} {'parameters':>14}")
    for case in CASES.values():
        pipe = BUILDERS[case.family](False, torch.device("meta"), torch.bfloat16)
        for name, module in list_modules(pipe).items():
            count = sum(p.numel() for p in module.parameters())
            print(f"{case.name:<9} {name:<15} {type(module).__name__:<28} {count:>14,}")


# --------------------------------------------------------------------------------------
# Running one case (in this process; under torchrun, on every rank)
# --------------------------------------------------------------------------------------


def sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


class UtilizationSampler:
    """Samples ``torch.cuda.utilization(device)`` every ``period`` seconds in a thread.

    ``available`` is False when it cannot be read (no pynvml, not a CUDA device); then
    ``mean()`` is None."""

    def __init__(self, device: Any, period: float = 0.1) -> None:
        import torch

        self.device = device
        self.period = period
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.available = False
        self.reason = "not a CUDA device"
        if getattr(device, "type", "") == "cuda":
            try:
                torch.cuda.utilization(device)
                self.available = True
            except Exception as exc:  # noqa: BLE001 - pynvml missing or NVML refused: fall back
                self.reason = f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        import torch

        while not self._stop.wait(self.period):
            try:
                self.samples.append(float(torch.cuda.utilization(self.device)))
            except Exception:  # noqa: BLE001 - a missed sample is only a missed sample
                continue

    def __enter__(self) -> UtilizationSampler:
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def mean(self) -> float | None:
        if not self.samples:
            return None
        return sum(self.samples) / len(self.samples) / 100.0


def start_distributed(device_kind: str) -> Any:
    """The engine's distributed context from torchrun's environment (WORLD_SIZE > 1)."""
    from spherediff_core import distributed as sd_dist

    return sd_dist.init_from_env(device=device_kind)


def make_sphere_pipeline(adapter: Any, ctx: Any, plan_cache: str) -> Any:
    from spherediff_core.pipeline import SphereDiffPipeline

    return SphereDiffPipeline(adapter, source="random weights", plan_cache_dir=plan_cache, dist=ctx)


def make_options(case: Case, args: argparse.Namespace, steps: int, out_dir: str) -> Any:
    from spherediff_core.options import GenerationOptions

    video: dict[str, Any] = {}
    if case.frames is not None:
        frames = args.frames or (case.tiny_frames if args.tiny else case.frames)
        video = {"video": True, "frames": frames, "fps": case.fps}
    width = args.width or (case.tiny_width if args.tiny else None)
    return GenerationOptions(
        prompt=PROMPT,
        model=f"random-weights/{case.name}",
        size=None if width else case.size,
        width=width,
        steps=steps,
        seed=0,
        view_batch_size=args.view_batch,
        output=str(Path(out_dir) / "bench.png"),
        **video,
    )


def wait_for_ranks(ctx: Any) -> None:
    """Wait for every rank (a run on several processes)."""
    if ctx is not None:
        ctx.barrier()


def prebuild_plan(pipe: Any, options: Any, ctx: Any, rank: int) -> float:
    """Build (or load) the sampling plan before timing, rank 0 first (one build, cached)."""
    from spherediff_core.pipeline import plan_config_for, resolve_size
    from spherediff_core.plan import load_or_build_plan

    adapter = pipe.adapter
    config = plan_config_for(
        resolve_size(options, adapter), adapter.vae_scale_factor, adapter.grid_multiple
    )
    t0 = time.perf_counter()
    if rank == 0:
        load_or_build_plan(config, pipe.plan_cache_dir)
    wait_for_ranks(ctx)
    if rank != 0:
        load_or_build_plan(config, pipe.plan_cache_dir)
    return time.perf_counter() - t0


def make_progress_printer(label: str, rank: int):
    """A callback that says where the generation is, at most every 10 s (rank 0, stderr)."""
    last = [0.0]

    def report(p: Any) -> None:
        now = time.perf_counter()
        if rank == 0 and now - last[0] >= 10.0:
            last[0] = now
            print(f"  {label}: {p.phase} {p.step}/{p.total} {p.message}", file=sys.stderr)

    return report


def read_peak_memory(device: Any) -> tuple[float, str]:
    """Peak memory of the call: CUDA allocator peak, or the process's peak RSS on the CPU."""
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB, "cuda"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss * 1024 / GIB, "rss"


def gather_rank_stats(ctx: Any, stats: dict) -> list[dict]:
    """Every rank's ``stats`` (just this one's on one process), gathered as numbers: each
    rank's (peak GiB, busy fraction or -1) in its slot of a tensor summed over ranks."""
    if ctx is None:
        return [stats]
    import torch

    table = torch.zeros(ctx.world_size, 2, dtype=torch.float64)
    busy = stats["busy"]
    table[ctx.rank] = torch.tensor([stats["peak_gib"], -1.0 if busy is None else busy])
    ctx.all_sum_(table)  # a CPU tensor: gloo
    out = []
    for r in range(ctx.world_size):
        peak, busy_r = table[r].tolist()
        row = {"peak_gib": peak, "busy": None if busy_r < 0 else busy_r, "finite": None}
        out.append(stats if r == ctx.rank else row)
    return out


def time_generation(pipe: Any, options: Any, device: Any, ctx: Any, rank: int) -> tuple:
    """One generation, timed, with its peak memory and busy fraction on this rank:
    ``(result, wall seconds, {"peak_gib", "busy", "finite"}, sampler, peak kind)``."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    wait_for_ranks(ctx)
    sampler = UtilizationSampler(device)
    with sampler:
        t0 = time.perf_counter()
        result = pipe(options, callback=make_progress_printer(options.model.split("/")[-1], rank))
        sync(device)
        wall = time.perf_counter() - t0
    peak, peak_kind = read_peak_memory(device)
    image = getattr(result, "image", None)
    finite = bool(torch.isfinite(image).all()) if image is not None and image.numel() else None
    stats = {"peak_gib": peak, "busy": sampler.mean(), "finite": finite}
    return result, wall, stats, sampler, peak_kind


def run_case(args: argparse.Namespace) -> dict | None:
    """Build the case's models, generate once (timed) and return the result (rank 0)."""
    import torch
    from spherediff_core.runner import prepare_environment

    prepare_environment(offline=True)
    case = CASES[args.case]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"bench_gpu: --device cuda but torch {torch.__version__} sees no GPU")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    ctx = start_distributed(device.type) if world > 1 else None

    adapter, built = build_adapter(case, args.tiny, device, dtype)
    # --steps below the case's: the full time is extrapolated; above it: it is the full run.
    steps = max(args.steps or case.steps, adapter.min_steps)
    full_steps = max(case.steps, steps)
    pipe = make_sphere_pipeline(adapter, ctx, args.plan_cache)
    # Nothing is written; the options only need an output name in a writable folder.
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as out_dir:
        options = make_options(case, args, steps, out_dir)
        plan_build_s = prebuild_plan(pipe, options, ctx, rank)
        if args.warmup:
            pipe(make_options(case, args, adapter.min_steps, out_dir))
        result, wall, stats, sampler, peak_kind = time_generation(pipe, options, device, ctx, rank)
    ranks = gather_rank_stats(ctx, stats)
    if rank != 0:
        return None
    return summarize(case, args, result, wall, steps, full_steps, ranks, built) | {
        "world": world,
        "peak_kind": peak_kind,
        "plan_build_s": plan_build_s,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": args.dtype,
        "torch": torch.__version__,
        "busy_note": None if sampler.available else sampler.reason,
    }


def summarize(
    case: Case,
    args: argparse.Namespace,
    result: Any,
    wall: float,
    steps: int,
    full_steps: int,
    ranks: list[dict],
    built: dict,
) -> dict:
    """The numbers of one run, with the full-steps extrapolation and the busy fraction."""
    timings = dict(result.timings)
    per_step = timings.get("denoise", 0.0) / max(1, steps)
    full_wall = wall + per_step * (full_steps - steps)
    busy_values = [r["busy"] for r in ranks if r.get("busy") is not None]
    if busy_values:
        busy, busy_kind = sum(busy_values) / len(busy_values), "nvml"
    else:
        inside = timings.get("denoiser", 0.0) + timings.get("vae", 0.0) + timings.get("erp", 0.0)
        busy, busy_kind = inside / max(wall, 1e-9), "sync"
    finite = [r["finite"] for r in ranks if r.get("finite") is not None]
    return {
        "case": case.name,
        "label": case.label,
        "tiny": args.tiny,
        "steps": steps,
        "full_steps": full_steps,
        "extrapolated": steps != full_steps,
        "views": result.n_views,
        "view_px": result.view_px,
        "grid": list(result.grid),
        "n_points": result.n_points,
        "frames": result.n_frames,
        "width": result.options.resolved_width,
        "wall": wall,
        "timings": timings,
        "s_per_step": per_step,
        "full_wall": full_wall,
        "peak_gib": max(r["peak_gib"] for r in ranks),
        "busy": busy,
        "busy_kind": busy_kind,
        "finite": all(finite) if finite else None,
        **built,
    }


# --------------------------------------------------------------------------------------
# The driver: every case on 1 GPU, then on N GPUs with torchrun, each in a fresh process
# --------------------------------------------------------------------------------------


def make_child_env() -> dict:
    """A case's environment: this checkout, offline, and no torchrun variables of ours."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "core"), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["HF_HUB_OFFLINE"] = "1"
    return env


def make_case_arguments(args: argparse.Namespace, case: str) -> list[str]:
    """The command-line arguments that make a child run ``case`` as this driver asks."""
    out = [str(Path(__file__).resolve()), "--case", case, "--device", args.device]
    out += ["--dtype", args.dtype, "--view-batch", str(args.view_batch)]
    out += ["--plan-cache", args.plan_cache]
    for flag, value in (
        ("--steps", args.steps),
        ("--width", args.width),
        ("--frames", args.frames),
    ):
        if value:
            out += [flag, str(value)]
    out += ["--tiny"] if args.tiny else []
    out += ["--warmup"] if args.warmup else []
    return out


def launch_case(args: argparse.Namespace, case: str, n_procs: int) -> dict:
    """Run one case in a fresh process (torchrun for more than one rank); its result or
    ``{"error": ...}``."""
    command = [sys.executable]
    if n_procs > 1:
        command += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n_procs}"]
    command += make_case_arguments(args, case)
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            env=make_child_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=args.timeout,
        )
    except subprocess.TimeoutExpired:
        return {"case": case, "world": n_procs, "error": f"timed out after {args.timeout} s"}
    lines = [x for x in done.stdout.splitlines() if x.startswith(RESULT_TAG)]
    elapsed = time.perf_counter() - t0
    if done.returncode == 0 and lines:
        return json.loads(lines[-1][len(RESULT_TAG) :]) | {"process_s": elapsed}
    output = (done.stderr or done.stdout).strip().splitlines()
    # Our own refusals (no distributed support, no GPU) say so in one line; torchrun turns
    # the exit status into its own, so the line is what tells them apart.
    ours = [x for x in output if x.startswith("bench_gpu: ")]
    why = ours[0] if ours else f"failed (exit {done.returncode})"
    tail = "\n".join(output[-15:])
    return {"case": case, "world": n_procs, "error": f"{why}\n{tail}"}


def choose_process_counts(args: argparse.Namespace) -> list[int]:
    """Rank counts to run each case with: --gpus, else 1 and every visible GPU."""
    if args.gpus:
        return sorted(set(args.gpus))
    if args.device != "cuda":
        return [1]
    import torch

    count = torch.cuda.device_count()
    return [1, count] if count > 1 else [1]


def run_driver(args: argparse.Namespace) -> int:
    counts = choose_process_counts(args)
    rows = []
    for case in args.cases:
        for n in counts:
            where = f"{n} GPU(s)" if args.device == "cuda" else f"{n} {args.device} process(es)"
            print(f"running {case} on {where} ...", file=sys.stderr, flush=True)
            row = launch_case(args, case, n)
            status = "error" if "error" in row else f"{row.get('process_s', 0):.0f} s"
            print(f"  {case}, {n}: {status}", file=sys.stderr, flush=True)
            rows.append(row)
    print_table(rows)
    return 1 if any("error" in r for r in rows) else 0


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


def format_count(n: float) -> str:
    """A parameter count: 11.90B, 12.7M, 13k."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}" if unit == "B" else f"{n / size:.1f}{unit}"
    return str(int(n))


def format_row(r: dict, base: dict | None) -> str:
    t = r["timings"]
    mark = "*" if r["extrapolated"] else ""
    steps = f"{r['steps']}/{r['full_steps']}{mark}"
    speedup = "" if base is None else f"{base['full_wall'] / r['full_wall']:.2f}"
    finite = {True: "yes", False: "NaN", None: "-"}[r["finite"]]
    return (
        f"{r['case']:<9} {r['world']:>4} {steps:>7} {r['views']:>5} {r['view_px']:>7} "
        f"{r['wall']:>8.1f} {t.get('plan', 0):>6.2f} {t.get('encode', 0):>6.2f} "
        f"{t.get('denoise', 0):>8.1f} {r['s_per_step']:>7.2f} {t.get('denoiser', 0):>8.1f} "
        f"{t.get('decode', 0):>7.1f} {t.get('vae', 0):>7.1f} {t.get('erp', 0):>6.2f} "
        f"{r['full_wall']:>8.1f}{mark or ' '} {speedup:>5} {r['peak_gib']:>8.2f} "
        f"{100 * r['busy']:>4.0f}% {r['busy_kind']:<4} {finite:>3}"
    )


def print_table(rows: list[dict]) -> None:
    good = [r for r in rows if "error" not in r]
    if good:
        first = good[0]
        kind = "tiny CPU-sized" if first["tiny"] else "full-size"
        print(
            f"{kind} random-weight models, {first['dtype']}, {first['device']}, "
            f"torch {first['torch']}"
        )
        described = set()
        for r in good:
            if r["case"] not in described:
                described.add(r["case"])
                grid = "x".join(str(g) for g in r["grid"])
                print(
                    f"  {r['case']}: {r['label']}, {format_count(sum(r['params'].values()))} "
                    "parameters "
                    f"({r['weights_gib']:.1f} GiB), ERP {r['width']} x {r['width'] // 2}, "
                    f"{r['frames']} frame(s), {r['views']} views of {grid} latents, "
                    f"{r['n_points']:,} sphere points; built in {r['build_s']:.1f} s, plan "
                    f"{r['plan_build_s']:.1f} s"
                )
    header = (
        f"{'case':<9} {'GPUs':>4} {'steps':>7} {'views':>5} {'view px':>7} {'wall s':>8} "
        f"{'plan':>6} {'encode':>6} {'denoise':>8} {'s/step':>7} {'net':>8} {'decode':>7} "
        f"{'vae':>7} {'erp':>6} {'full s':>9} {'x1':>5} {'peak GiB':>8} {'busy':>10} {'ok':>3}"
    )
    print(header)
    print("-" * len(header))
    single = {r["case"]: r for r in good if r["world"] == 1}
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<9} {r['world']:>4}  {r['error'].splitlines()[0]}")
            continue
        base = single.get(r["case"]) if r["world"] > 1 else None
        print(format_row(r, base))
    if any(r.get("extrapolated") for r in good):
        print(
            "* steps cut by --steps: 'full s' = wall + (full - run steps) x s/step, the denoise "
            "time extrapolated linearly to the full steps (everything else measured)"
        )
    print(
        "net / vae = time inside the denoiser / VAE (synchronised); decode excludes the ERP "
        "blend (erp); x1 = speed-up of 'full s' over 1 GPU"
    )
    kinds = {r["busy_kind"] for r in good}
    if "sync" in kinds:
        notes = {r.get("busy_note") for r in good if r["busy_kind"] == "sync"} - {None}
        why = f" ({'; '.join(sorted(notes))})" if notes else ""
        print(
            "busy 'sync' = (net + vae + erp) / wall: NVML utilisation could not be read"
            f"{why}; 'nvml' = mean torch.cuda.utilization() sampled every 0.1 s"
        )
    if any(r["peak_kind"] == "rss" for r in good):
        print("peak GiB on the CPU: the process's peak RSS (not a GPU allocator peak)")
    for r in rows:
        if "error" in r and "\n" in r["error"]:
            print(f"\n{r['case']} on {r['world']}: {r['error']}")


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), help="run one case in this process")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument(
        "--gpus", type=int, nargs="+", help="driver: rank counts (default: 1 and all GPUs)"
    )
    parser.add_argument(
        "--steps", type=int, help="fewer steps than the case's; the full time is extrapolated"
    )
    parser.add_argument("--width", type=int, help="ERP width instead of the case's preset")
    parser.add_argument("--frames", type=int, help="LTX-Video frames instead of 49")
    parser.add_argument("--view-batch", type=int, default=8, help="views per denoiser call")
    parser.add_argument("--warmup", action="store_true", help="one untimed short run first")
    parser.add_argument("--tiny", action="store_true", help="scaled-down networks on the CPU")
    parser.add_argument("--dry-run", dest="tiny", action="store_true", help="same as --tiny")
    parser.add_argument("--device", help="cuda (default) or cpu (--tiny's default)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument(
        "--plan-cache",
        default=str(Path(tempfile.gettempdir()) / "spherediff-bench-plans"),
        help="sampling-plan cache shared by the runs",
    )
    parser.add_argument("--timeout", type=int, default=3600, help="driver: seconds per run")
    parser.add_argument(
        "--check-configs",
        action="store_true",
        help="build the full-size networks on the meta device and print parameter counts",
    )
    args = parser.parse_args()
    if args.device is None:
        args.device = "cpu" if args.tiny else "cuda"
    if args.tiny and not args.steps:
        args.steps = 2
    return args


def main() -> None:
    args = parse_args()
    if args.check_configs:
        check_configs()
        return
    if args.case:
        import torch

        if args.device == "cpu":
            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
        result = run_case(args)
        if result is not None:
            print_table([result])
            print(RESULT_TAG + json.dumps(result), flush=True)
        return
    raise SystemExit(run_driver(args))


if __name__ == "__main__":
    main()
