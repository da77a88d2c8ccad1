"""Tiny, seeded, random-weight FLUX.2 pipelines ([dev] and [klein]) built offline, in code.

The structure of the real checkpoints is kept where the engine depends on it: a
``Flux2Transformer2DModel`` over 128-channel tokens (32 VAE channels x a 2x2 patch), an
``AutoencoderKLFlux2`` that really down-samples 8x and whose BatchNorm holds non-trivial
running statistics (a fresh BatchNorm, mean 0 and var 1, would leave the normalisation
untested), and text encoders deep enough for the pipelines' default hidden-state layers
((10, 20, 30) for [dev], (9, 18, 27) for [klein]), so every call uses the defaults.

[dev]'s real tokenizer is a ``PixtralProcessor``, which needs torchvision; here it is a
byte-level ``Qwen2Tokenizer`` with a chat template that reads list-typed message contents,
which is all ``Flux2Pipeline`` asks of its tokenizer on the text path
(``apply_chat_template(conversations, tokenize=True, return_dict=True, padding=...)``).

Builders (``seed -> components``), registered in ``tiny_pipelines._BUILDERS``::

    flux2-dev          Flux2Pipeline        guidance embedding, Mistral3 text encoder
    flux2-klein        Flux2KleinPipeline   is_distilled=True (no CFG), Qwen3 text encoder
    flux2-klein-base   Flux2KleinPipeline   is_distilled=False (CFG with an empty negative)

Sizes: height/width multiples of 16 (VAE 8 x patch 2).
"""

from __future__ import annotations

import torch

__all__ = ["flux2_dev", "flux2_klein", "flux2_klein_base"]


def _tiny():
    # Imported late: tiny_pipelines registers this module's builders.
    from . import tiny_pipelines

    return tiny_pipelines


def _transformer(seed: int, *, guidance_embeds: bool, text_hidden: int):
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(seed)
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=128,  # 32 VAE channels x a 2x2 patch, as the real model
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * text_hidden,  # three stacked hidden states
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    ).eval()


def _vae(seed: int):
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(seed)
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 8, 16, 16),  # 3 down-samplings: 8x
        layers_per_block=1,
        latent_channels=32,
        norm_num_groups=8,
    ).eval()
    # Non-trivial BatchNorm statistics (buffers saved with the weights): the latents'
    # normalisation is part of what the parity tests check.
    with torch.no_grad():
        vae.bn.running_mean.normal_(0, 0.1)
        vae.bn.running_var.uniform_(0.5, 2.0)
    return vae


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    # FLUX.2's scheduler config (dynamic, exponential shift; mu comes from the pipeline).
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        time_shift_type="exponential",
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )


def flux2_dev(seed: int) -> dict:
    """Components of a tiny ``Flux2Pipeline`` (FLUX.2 [dev])."""
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    tok = _tiny()._make_qwen_tokenizer()
    hidden = 16
    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tok),
            "hidden_size": hidden,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 30,  # the pipeline reads hidden states 10, 20 and 30
            "num_key_value_heads": 1,
            "head_dim": 8,
            "sliding_window": None,
            "max_position_embeddings": 1024,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "image_size": 32,
            "patch_size": 8,
        },
    )
    torch.manual_seed(seed + 1)
    text_encoder = Mistral3ForConditionalGeneration(config).eval()
    return {
        "transformer": _transformer(seed, guidance_embeds=True, text_hidden=hidden),
        "vae": _vae(seed + 2),
        "text_encoder": text_encoder,
        "tokenizer": tok,
        "scheduler": _scheduler(),
    }


def flux2_klein(seed: int, *, distilled: bool = True) -> dict:
    """Components of a tiny ``Flux2KleinPipeline`` (FLUX.2 [klein], step-distilled unless
    ``distilled`` is False)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = _tiny()._make_qwen_tokenizer()
    hidden = 16
    config = Qwen3Config(
        hidden_size=hidden,
        intermediate_size=32,
        num_hidden_layers=27,  # the pipeline reads hidden states 9, 18 and 27
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,  # Qwen3Config's default is 128 whatever the width
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.eos_token_id,  # Qwen3's defaults are ids of the real vocabulary
        eos_token_id=tok.eos_token_id,
        max_position_embeddings=1024,
    )
    torch.manual_seed(seed + 1)
    text_encoder = Qwen3ForCausalLM(config).eval()
    return {
        "transformer": _transformer(seed, guidance_embeds=False, text_hidden=hidden),
        "vae": _vae(seed + 2),
        "text_encoder": text_encoder,
        "tokenizer": tok,
        "scheduler": _scheduler(),
        "is_distilled": distilled,
    }


def flux2_klein_base(seed: int) -> dict:
    """Components of a tiny undistilled ``Flux2KleinPipeline`` (klein base: real CFG)."""
    return flux2_klein(seed, distilled=False)
