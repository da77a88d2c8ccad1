"""Tiny offline Qwen-Image and Z-Image pipelines (see tests/support/tiny_pipelines.py).

Both families read their prompts with a Qwen-family LLM through a byte-level BPE
``Qwen2Tokenizer`` with a ChatML template; the tokenizer here is built in memory with the
special tokens the pipelines' templates name. The networks keep the real structure: 16 latent
channels at 8x (Qwen-Image's Wan-style causal 3-D VAE, Z-Image's FLUX-style AutoencoderKL),
2x2 patches in the transformer, Z-Image's real position tables (``axes_lens`` 1024/512/512)
and learned caption / image pad tokens set to random values, so the pad path is exercised.

Builders (``name(seed) -> dict of components``), registered in ``tiny_pipelines._BUILDERS``::

    qwenimage     QwenImagePipeline   16 ch, 8x; Qwen-Image's scheduler config
    zimage-turbo  ZImagePipeline      16 ch, 8x; Z-Image-Turbo's scheduler (shift 3, static)
    zimage-base   ZImagePipeline      the same networks; Z-Image (base)'s scheduler (shift 6)

Sizes: height and width multiples of 16 (Z-Image raises otherwise; Qwen-Image floors them).
Qwen-Image needs 2 steps or more (1 step gives a NaN sigma with ``shift_terminal``).
"""

from __future__ import annotations

import torch

from .tiny_pipelines import _autoencoder_kl, _make_qwen_tokenizer

__all__ = ["qwenimage", "zimage_base", "zimage_turbo"]


def qwenimage(seed: int) -> dict:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = _make_qwen_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    # transformers 5: vocab_size must sit inside text_config (a top-level one is not passed on).
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            # mrope_section sums to head_dim / 2 = 4
            "rope_parameters": {
                "mrope_section": [1, 1, 2],
                "rope_type": "default",
                "rope_theta": 1e6,
            },
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": 16,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16 * 4,  # 16 latent channels packed 2x2
        out_channels=16,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,  # the text encoder's hidden size
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    ).eval()
    torch.manual_seed(seed)
    # Wan-2.1-style causal VAE: 4 stages, 3 spatial down-samplings (8x), per-channel stats
    # away from (0, 1) so the normalisation is exercised.
    stats = torch.Generator().manual_seed(seed)
    mean = (0.1 * torch.randn(16, generator=stats)).tolist()
    std = (0.5 + torch.rand(16, generator=stats)).tolist()
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=mean,
        latents_std=std,
    ).eval()
    # Qwen/Qwen-Image scheduler config
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    return {
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "transformer": transformer,
    }


def _zimage(seed: int, scheduler) -> dict:
    from diffusers import ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    tokenizer = _make_qwen_tokenizer()
    torch.manual_seed(seed)
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=2,  # Z-Image reads hidden_states[-2]
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=8,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id,
        )
    ).eval()
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=1,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=16,  # the text encoder's hidden size
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],
        axes_lens=[1024, 512, 512],  # the real tables: at most 512 patches per side
    ).eval()
    with torch.no_grad():  # created as zeros: random, so padding to 32 tokens matters
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    vae = _autoencoder_kl(
        latent_channels=16, seed=seed, flow=True, scaling_factor=0.3611, shift_factor=0.1159
    )
    return {
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "transformer": transformer,
    }


def zimage_turbo(seed: int) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler

    # Tongyi-MAI/Z-Image-Turbo scheduler config
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )
    return _zimage(seed, scheduler)


def zimage_base(seed: int) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler

    # Tongyi-MAI/Z-Image (base) scheduler config
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=6.0, use_dynamic_shifting=False
    )
    return _zimage(seed, scheduler)
