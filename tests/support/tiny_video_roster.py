"""Tiny, seeded, random-weight Wan 2.2 and HunyuanVideo 1.5 pipelines, built offline in code.

Registered in ``tiny_pipelines._BUILDERS`` (this module is imported when one is built, as
it uses that module's tokenizer and text encoder helpers)::

    wan22-ti2v5b    WanPipeline               48 ch  spatial 16 (8x conv + 2x patchify,
                                                     residual VAE), temporal 4,
                                                     expand_timesteps (Wan2.2-TI2V-5B)
    wan22-a14b      WanPipeline               16 ch  spatial 8, temporal 4, two experts
                                                     (transformer_2 below boundary_ratio
                                                     0.875: Wan2.2-T2V-A14B)
    hunyuanvideo15  HunyuanVideo15Pipeline    32 ch  spatial 16, temporal 4, a
                                                     ClassifierFreeGuidance guider

Sizes: wan22-ti2v5b takes multiples of 32 px (VAE 16 x patch 2), wan22-a14b of 16,
hunyuanvideo15 of 16; all take 4k+1 frames (5 -> 2 latent frames).

The recipes are diffusers' fast tests' (tests/pipelines/wan/test_wan_22.py,
tests/pipelines/hunyuan_video1_5/test_hunyuan_1_5.py) with the real checkpoints' channel
counts and compression factors kept (see docs/notes-model-roster.md), and the Hub
tokenizers replaced by ones built in memory.
"""

from __future__ import annotations

import torch

__all__ = ["hunyuanvideo15", "wan22_a14b", "wan22_ti2v5b"]


def wan22_a14b(seed: int) -> dict:
    """The tiny Wan 2.1 pipeline with a second expert (other weights) below the boundary."""
    from diffusers import WanTransformer3DModel

    from .tiny_pipelines import _wan

    components = _wan(seed)
    torch.manual_seed(seed + 1)
    components["transformer_2"] = WanTransformer3DModel.from_config(
        components["transformer"].config
    ).eval()
    # Wan-AI/Wan2.2-T2V-A14B-Diffusers model_index.json: boundary_ratio 0.875 (with the
    # tiny scheduler's 3 steps the timesteps are 999, 857, 600: both experts run).
    components["boundary_ratio"] = 0.875
    return components


def wan22_ti2v5b(seed: int) -> dict:
    """48-channel latents, the residual 16x VAE, per-token timesteps (TI2V-5B)."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from .tiny_pipelines import _wan

    components = _wan(seed)
    torch.manual_seed(seed)
    components["transformer"] = WanTransformer3DModel.from_config(
        {**components["transformer"].config, "in_channels": 48, "out_channels": 48}
    ).eval()
    torch.manual_seed(seed)
    # Per-channel statistics that are not 0 / 1, so that the normalisation is exercised.
    mean = [round(0.1 * ((i % 5) - 2), 3) for i in range(48)]
    std = [round(0.5 + 0.05 * (i % 7), 3) for i in range(48)]
    components["vae"] = AutoencoderKLWan(
        base_dim=8,
        z_dim=48,
        in_channels=12,
        out_channels=12,
        is_residual=True,
        patch_size=2,
        latents_mean=mean,
        latents_std=std,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        temperal_downsample=[False, True, True],
    ).eval()
    components["expand_timesteps"] = True
    return components


def hunyuanvideo15(seed: int) -> dict:
    """HunyuanVideo 1.5 T2V: 32-ch latents, 16x / 4x VAE with its causal attention, a
    Qwen2.5-VL text model, a ByT5 glyph encoder and a guider with CFG on (scale 6)."""
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Transformer3DModel,
    )
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    from .tiny_pipelines import _make_qwen_tokenizer, _t5_encoder

    tokenizer = _make_qwen_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLTextModel(
        Qwen2_5_VLTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=3,  # the pipeline reads hidden_states[-3]
            num_attention_heads=2,
            num_key_value_heads=2,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            rope_theta=1000000.0,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).eval()
    tokenizer_2 = ByT5Tokenizer()
    text_encoder_2 = _t5_encoder(tokenizer_2, d_model=32, seed=seed)
    torch.manual_seed(seed)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=65,  # 32 latents + 32 condition latents + 1 mask
        out_channels=32,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=1,
        patch_size_t=1,
        text_embed_dim=16,
        text_embed_2_dim=32,
        image_embed_dim=12,
        rope_axes_dim=(2, 2, 4),
        target_size=640,
        task_type="t2v",
    ).eval()
    torch.manual_seed(seed)
    # (8, 16, 32, 64, 64): the smallest widths that keep 32 latent channels, 16x and 4x
    # and decode ((8, 8, 8, 8, 64) builds but fails to decode).
    vae = AutoencoderKLHunyuanVideo15(latent_channels=32, block_out_channels=(8, 16, 32, 64, 64))
    vae = vae.eval()
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "tokenizer_2": tokenizer_2,
        "text_encoder_2": text_encoder_2,
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(shift=7.0),
        "guider": ClassifierFreeGuidance(guidance_scale=6.0),
    }
