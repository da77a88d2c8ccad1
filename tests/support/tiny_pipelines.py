"""Tiny, seeded, random-weight diffusers pipelines built fully offline, in code.

This mirrors what diffusers' own fast tests do with ``get_dummy_components``: every
component (tokenizers included) is constructed from hand-written configs, so nothing is
ever fetched from the Hugging Face Hub.  The pipelines keep the *structure* of the real
checkpoints (same pipeline/model/scheduler classes, same latent channel counts, a VAE that
really down-samples by the family's factor, cross attention, pooled embeddings, ...) but
every network is shrunk to a few channels and one or two layers, so a denoiser forward
pass on a batch of 16 latent grids of 8x8..16x16 takes milliseconds on a CPU.

Public API::

    FAMILIES = ("sana", "sd15", "sdxl", "flux", "sd3", "ltx", "wan")
    build_tiny_pipeline(family, folder, seed=0) -> folder

``build_tiny_pipeline`` writes ``save_pretrained(folder, safe_serialization=True)`` output
(``model_index.json`` + one sub-folder per component, weights as ``.safetensors`` only),
loadable with ``diffusers.DiffusionPipeline.from_pretrained(folder)`` with
``HF_HUB_OFFLINE=1``.  The same ``seed`` gives bit-identical weights
(``torch.manual_seed(seed)`` is called before building each component).

What each family gets (pipeline class; latent channels; VAE scale factor(s))::

    sana  SanaPipeline                  32 ch   spatial 32 (AutoencoderDC, 6 stages)
    sd15  StableDiffusionPipeline        4 ch   spatial 8  (AutoencoderKL, 4 stages)
    sdxl  StableDiffusionXLPipeline      4 ch   spatial 8
    flux  FluxPipeline                  16 ch   spatial 8  (x2 more by 2x2 packing)
    sd3   StableDiffusion3Pipeline      16 ch   spatial 8  (transformer patch 2)
    ltx   LTXPipeline                  128 ch   spatial 32, temporal 8
    wan   WanPipeline                   16 ch   spatial 8,  temporal 4 (transformer patch 1x2x2)

Pixel sizes that work (checked with 2-step calls; ``lat`` = latent grid side):

* sana: height/width multiple of 32 (any latent grid, e.g. 7x14, 9x9, 16x32).  **Call
  with** ``use_resolution_binning=False`` and ``complex_human_instruction=None`` --
  otherwise the pipeline snaps the size to the 1024px aspect-ratio bins
  (``transformer.config.sample_size == 32`` like the real 1024px model), denoises at that
  size and resizes back, and prepends a long "complex human instruction" system prompt.
* sd15 / sdxl: multiple of 8 (any latent grid, odd ones too; the 2-level UNet copes via
  ``upsample_size``).
* flux: multiple of 16 (latent grid must be even: latents are packed 2x2); other sizes
  are silently rounded *down* by the pipeline (with a warning).
* sd3: multiple of 16 (transformer patch size 2; otherwise ValueError); latent grid at
  most ``2 * pos_embed_max_size`` = 192 per side (``pos_embed_max_size=96``, the
  diffusers default; 194 raises ValueError).
* ltx: multiple of 32; ``num_frames = 8*k + 1`` (9 -> 2 latent frames -> 9 frames out;
  5 -> 1 latent frame -> only 1 frame out).
* wan: multiple of 16 (VAE 8 x patch 2); ``num_frames = 4*k + 1`` (5 -> 2 latent frames,
  9 -> 3; other counts are rounded with a warning).

Tokenizers are built in memory: a byte-level BPE CLIP tokenizer (all 256 byte symbols, a
handful of merges, ``model_max_length=77``), a Unigram T5 tokenizer (``extra_ids=0``,
``model_max_length=512``) and a byte-fallback BPE Gemma tokenizer.  Every text encoder's
``vocab_size`` equals ``len(tokenizer)`` so any prompt text can be embedded.
"""

from __future__ import annotations

import importlib
import pathlib
from collections.abc import Callable

import torch

__all__ = [
    "FAMILIES",
    "build_tiny_components",
    "build_tiny_flux_schnell",
    "build_tiny_pipeline",
    "pipeline_class_name",
]


# --------------------------------------------------------------------------------------
# Tokenizers (offline, in memory)
# --------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode mapping used by ByteLevel pre-tokenizers."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


# A few whole-word merges so the BPE actually merges something, like the real vocab.
_CLIP_MERGE_WORDS = ("the", "a", "of", "and", "sky", "sea", "city", "forest", "room", "view")


def _make_clip_tokenizer(pad_token: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for s in symbols:
        vocab[s] = len(vocab)
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in _CLIP_MERGE_WORDS:
        if len(word) < 2:
            continue
        pieces = [*list(word[:-1]), word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merges.append((left, right))
            left = left + right
            if left not in vocab:
                vocab[left] = len(vocab)
    # the real CLIP vocab ends with the two special tokens (49406, 49407)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def _t5_vocab() -> list[tuple[str, float]]:
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    for w in ("the", "a", "of", "and", "sky", "sea", "city", "forest", "room", "view"):
        vocab.append(("▁" + w, -3.0))
    for c in letters:
        vocab.append(("▁" + c, -6.0))
    for c in letters + letters.upper() + "0123456789" + ".,;:!?'\"-()/&%+*=#@_":
        vocab.append((c, -8.0))
    return vocab


def _make_t5_tokenizer():
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=_t5_vocab(), extra_ids=0, model_max_length=512)


def _make_gemma_tokenizer():
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for b in range(256):  # byte fallback pieces, as in the real Gemma vocab
        vocab[f"<0x{b:02X}>"] = len(vocab)
    chars = "▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/"
    for c in chars:
        vocab[c] = len(vocab)
    merges: list[tuple[str, str]] = []
    for c in "abcdefghijklmnopqrstuvwxyz":
        merges.append(("▁", c))
        vocab["▁" + c] = len(vocab)
    # like the real Gemma tokenizer: prepend <bos>, no <eos>
    return GemmaTokenizer(
        vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, model_max_length=8192
    )


# Qwen's chat specials (Qwen2.5-VL's and Qwen3's) and a ChatML template that reads plain
# and list-typed contents (Flux2Pipeline sends [{"type": "text", ...}]); Qwen3's
# enable_thinking=False adds an empty think block, as the real template does.
_QWEN_SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
_QWEN_MERGE_WORDS = (*_CLIP_MERGE_WORDS, "image", "video", "by", "user", "system")


def _make_qwen_tokenizer():
    """A byte-level BPE ``Qwen2Tokenizer`` (all 256 byte symbols, a few whole-word merges)
    with Qwen's chat specials and a ChatML template: the tokenizer of FLUX.2, Qwen-Image,
    Z-Image and HunyuanVideo 1.5, built in memory."""
    from transformers import Qwen2Tokenizer

    vocab = {s: i for i, s in enumerate(_bytes_to_unicode().values())}
    merges: list[tuple[str, str]] = []
    for word in _QWEN_MERGE_WORDS:
        left = word[0]
        for right in word[1:]:
            merges.append((left, right))
            left += right
            vocab.setdefault(left, len(vocab))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": list(_QWEN_SPECIAL_TOKENS)})
    tokenizer.chat_template = _QWEN_CHAT_TEMPLATE
    return tokenizer


# --------------------------------------------------------------------------------------
# Text encoders
# --------------------------------------------------------------------------------------


def _clip_text_model(
    tokenizer,
    *,
    hidden: int,
    proj: int,
    with_projection: bool,
    seed: int,
    hidden_act: str = "quick_gelu",
):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        projection_dim=proj,
        num_hidden_layers=2,  # SDXL / SD3 read the penultimate hidden state
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        hidden_act=hidden_act,  # CLIP-L: quick_gelu, OpenCLIP bigG: gelu
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def _t5_encoder(tokenizer, *, d_model: int, seed: int, umt5: bool = False):
    if umt5:
        from transformers import UMT5Config as Config
        from transformers import UMT5EncoderModel as Model
    else:
        from transformers import T5Config as Config
        from transformers import T5EncoderModel as Model

    config = Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_decoder_layers=0,
        num_heads=d_model // 8,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",  # T5 v1.1 / UMT5 style
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return Model(config).eval()


def _gemma2_encoder(tokenizer, *, hidden: int, seed: int):
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,  # one sliding-window + one full-attention layer, like Gemma2
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        query_pre_attn_scalar=8,
        sliding_window=64,
        max_position_embeddings=8192,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=False,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    return Gemma2Model(config).eval()


# --------------------------------------------------------------------------------------
# VAEs
# --------------------------------------------------------------------------------------


def _autoencoder_kl(
    *,
    latent_channels: int,
    seed: int,
    flow: bool,
    scaling_factor: float,
    shift_factor: float | None,
):
    """4-stage AutoencoderKL (3 down-samplings -> vae_scale_factor 8) with 8/16 channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=not flow,  # FLUX / SD3 VAEs have no (post_)quant_conv
        use_post_quant_conv=not flow,
        force_upcast=True,
    ).eval()


# --------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------


def _sd15(seed: int) -> dict:
    from diffusers import PNDMScheduler, UNet2DConditionModel

    tokenizer = _make_clip_tokenizer()
    text_encoder = _clip_text_model(tokenizer, hidden=32, proj=32, with_projection=False, seed=seed)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=4,
    ).eval()
    vae = _autoencoder_kl(
        latent_channels=4, seed=seed, flow=False, scaling_factor=0.18215, shift_factor=None
    )
    torch.manual_seed(seed)
    # runwayml/stable-diffusion-v1-5 ships this PNDM config
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "unet": unet,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def _sdxl(seed: int) -> dict:
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    tokenizer = _make_clip_tokenizer()
    tokenizer_2 = _make_clip_tokenizer(pad_token="!")  # SDXL's second tokenizer pads with "!"
    text_encoder = _clip_text_model(tokenizer, hidden=32, proj=32, with_projection=False, seed=seed)
    text_encoder_2 = _clip_text_model(
        tokenizer_2, hidden=32, proj=32, with_projection=True, seed=seed, hidden_act="gelu"
    )
    addition_time_embed_dim = 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 1),
        cross_attention_dim=32 + 32,  # concat of both text encoders' hidden states
        addition_embed_type="text_time",
        addition_time_embed_dim=addition_time_embed_dim,
        # 6 micro-conditioning ints (orig size, crop, target size) + pooled text_embeds
        projection_class_embeddings_input_dim=6 * addition_time_embed_dim + 32,
    ).eval()
    vae = _autoencoder_kl(
        latent_channels=4, seed=seed, flow=False, scaling_factor=0.13025, shift_factor=None
    )
    torch.manual_seed(seed)
    # stabilityai/stable-diffusion-xl-base-1.0 scheduler config
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
        use_karras_sigmas=False,
    )
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "unet": unet,
        "scheduler": scheduler,
        "image_encoder": None,
        "feature_extractor": None,
        "force_zeros_for_empty_prompt": True,
        "add_watermarker": False,
    }


def _flux(seed: int) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    tokenizer = _make_clip_tokenizer()
    tokenizer_2 = _make_t5_tokenizer()
    text_encoder = _clip_text_model(tokenizer, hidden=32, proj=32, with_projection=False, seed=seed)
    text_encoder_2 = _t5_encoder(tokenizer_2, d_model=32, seed=seed)
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16 * 4,  # 16 latent channels packed 2x2
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,  # T5 d_model
        pooled_projection_dim=32,  # CLIP pooled output
        guidance_embeds=True,  # FLUX.1-dev style distilled guidance
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    ).eval()
    vae = _autoencoder_kl(
        latent_channels=16, seed=seed, flow=True, scaling_factor=0.3611, shift_factor=0.1159
    )
    torch.manual_seed(seed)
    # black-forest-labs/FLUX.1-dev scheduler config
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return {
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "transformer": transformer,
        "image_encoder": None,
        "feature_extractor": None,
    }


def _sd3(seed: int) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    tokenizer = _make_clip_tokenizer()
    tokenizer_2 = _make_clip_tokenizer(pad_token="!")
    tokenizer_3 = _make_t5_tokenizer()
    # CLIP-L + CLIP-G hidden states are concatenated (16+16) and zero-padded to T5's d_model (32)
    text_encoder = _clip_text_model(tokenizer, hidden=16, proj=16, with_projection=True, seed=seed)
    text_encoder_2 = _clip_text_model(
        tokenizer_2, hidden=16, proj=16, with_projection=True, seed=seed, hidden_act="gelu"
    )
    text_encoder_3 = _t5_encoder(tokenizer_3, d_model=32, seed=seed)
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32,  # default call size 32 * 8 = 256px
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=32,  # T5 d_model
        caption_projection_dim=32,  # == num_heads * head_dim
        pooled_projection_dim=32,  # concat of both CLIP projections (16+16)
        pos_embed_max_size=96,  # latent grids up to 192x192 (patch 2); SD3-medium uses 192
    ).eval()
    vae = _autoencoder_kl(
        latent_channels=16, seed=seed, flow=True, scaling_factor=1.5305, shift_factor=0.0609
    )
    torch.manual_seed(seed)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return {
        "transformer": transformer,
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2,
        "tokenizer_2": tokenizer_2,
        "text_encoder_3": text_encoder_3,
        "tokenizer_3": tokenizer_3,
        "image_encoder": None,
        "feature_extractor": None,
    }


def _sana(seed: int) -> dict:
    from diffusers import (
        AutoencoderDC,
        DPMSolverMultistepScheduler,
        SanaTransformer2DModel,
    )

    tokenizer = _make_gemma_tokenizer()
    text_encoder = _gemma2_encoder(tokenizer, hidden=16, seed=seed)
    torch.manual_seed(seed)
    transformer = SanaTransformer2DModel(
        in_channels=32,
        out_channels=32,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,  # == num_attention_heads * attention_head_dim
        caption_channels=16,  # Gemma2 hidden size
        sample_size=32,  # as the real 1024px model (32 * 32 = 1024 px default size)
        patch_size=1,
    ).eval()
    torch.manual_seed(seed)
    # DC-AE f32c32 structure: 6 stages (5 down-samplings -> 32x),
    # 3 ResBlock stages + 3 linear-attention (EfficientViT) stages
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=32,
        attention_head_dim=8,
        encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        encoder_block_out_channels=(8, 8, 16, 16, 32, 32),
        decoder_block_out_channels=(8, 8, 16, 16, 32, 32),
        encoder_layers_per_block=(1, 1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1, 1),
        encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
        decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
        downsample_block_type="Conv",
        upsample_block_type="interpolate",
        decoder_norm_types=("batch_norm",) * 3 + ("rms_norm",) * 3,
        decoder_act_fns=("relu",) * 3 + ("silu",) * 3,
        scaling_factor=0.41407,
    ).eval()
    torch.manual_seed(seed)
    # Efficient-Large-Model/Sana_1600M_1024px_diffusers scheduler config (flow DPM-Solver++)
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        solver_order=2,
        prediction_type="flow_prediction",
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        use_flow_sigmas=True,
        flow_shift=3.0,
        timestep_spacing="linspace",
        steps_offset=0,
    )
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "transformer": transformer,
        "scheduler": scheduler,
    }


def _ltx(seed: int) -> dict:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXVideoTransformer3DModel,
    )

    tokenizer = _make_t5_tokenizer()
    text_encoder = _t5_encoder(tokenizer, d_model=32, seed=seed)
    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=128,
        out_channels=128,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,  # == num_attention_heads * attention_head_dim
        num_layers=1,
        caption_channels=32,  # T5 d_model
    ).eval()
    torch.manual_seed(seed)
    # LTX-Video 0.9 VAE structure: pixel patch 4 + 3 spatio-temporal down-samplings
    # -> 32x spatial, 8x temporal
    vae = AutoencoderKLLTXVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=128,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        timestep_conditioning=False,
        patch_size=4,
        patch_size_t=1,
        scaling_factor=1.0,
        encoder_causal=True,
        decoder_causal=False,
    ).eval()
    torch.manual_seed(seed)
    # Lightricks/LTX-Video scheduler config
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.95,
        max_shift=2.05,
        base_image_seq_len=1024,
        max_image_seq_len=4096,
        shift_terminal=0.1,
    )
    return {
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "transformer": transformer,
    }


def _wan(seed: int) -> dict:
    from diffusers import (
        AutoencoderKLWan,
        UniPCMultistepScheduler,
        WanTransformer3DModel,
    )

    tokenizer = _make_t5_tokenizer()
    text_encoder = _t5_encoder(tokenizer, d_model=32, seed=seed, umt5=True)
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,  # rope split t/h/w = 4/4/4
        in_channels=16,
        out_channels=16,
        text_dim=32,  # UMT5 d_model
        freq_dim=256,
        ffn_dim=32,
        num_layers=1,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=1024,
    ).eval()
    torch.manual_seed(seed)
    # Wan2.1 VAE structure: 4 stages (3 spatial down-samplings -> 8x, 2 temporal -> 4x)
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        scale_factor_temporal=4,
        scale_factor_spatial=8,
    ).eval()
    torch.manual_seed(seed)
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler config (flow UniPC)
    scheduler = UniPCMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        solver_order=2,
        prediction_type="flow_prediction",
        predict_x0=True,
        solver_type="bh2",
        lower_order_final=True,
        final_sigmas_type="zero",
        use_flow_sigmas=True,
        flow_shift=3.0,
        timestep_spacing="linspace",
        steps_offset=0,
    )
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "scheduler": scheduler,
        "transformer": transformer,
        "transformer_2": None,
        "boundary_ratio": None,
        "expand_timesteps": False,
    }


def _elsewhere(module: str, name: str) -> Callable[[int], dict]:
    """A builder of another ``tiny_*`` module of this package, imported when it builds
    (those modules use this one's tokenizer and encoder helpers: importing them here, at
    import time, would be an import circle)."""

    def build(seed: int) -> dict:
        return getattr(importlib.import_module(f".{module}", __package__), name)(seed)

    return build


# tiny model key -> (diffusers pipeline class, builder). Every key is built once per test
# session (conftest.tiny_folders); a new family adds its keys here (docs/engine.md).
_BUILDERS: dict[str, tuple[str, Callable[[int], dict]]] = {
    "sana": ("SanaPipeline", _sana),
    "sd15": ("StableDiffusionPipeline", _sd15),
    "sdxl": ("StableDiffusionXLPipeline", _sdxl),
    "flux": ("FluxPipeline", _flux),
    "sd3": ("StableDiffusion3Pipeline", _sd3),
    "ltx": ("LTXPipeline", _ltx),
    "wan": ("WanPipeline", _wan),
    "flux2-dev": ("Flux2Pipeline", _elsewhere("tiny_flux2", "flux2_dev")),
    "flux2-klein": ("Flux2KleinPipeline", _elsewhere("tiny_flux2", "flux2_klein")),
    "flux2-klein-base": ("Flux2KleinPipeline", _elsewhere("tiny_flux2", "flux2_klein_base")),
    "qwenimage": ("QwenImagePipeline", _elsewhere("tiny_qwen_zimage", "qwenimage")),
    "zimage-turbo": ("ZImagePipeline", _elsewhere("tiny_qwen_zimage", "zimage_turbo")),
    "zimage-base": ("ZImagePipeline", _elsewhere("tiny_qwen_zimage", "zimage_base")),
    "wan22-ti2v5b": ("WanPipeline", _elsewhere("tiny_video_roster", "wan22_ti2v5b")),
    "wan22-a14b": ("WanPipeline", _elsewhere("tiny_video_roster", "wan22_a14b")),
    "hunyuanvideo15": ("HunyuanVideo15Pipeline", _elsewhere("tiny_video_roster", "hunyuanvideo15")),
}
FAMILIES = tuple(_BUILDERS)


def pipeline_class_name(family: str) -> str:
    """The diffusers pipeline class a tiny model key builds, e.g. "WanPipeline"."""
    return _BUILDERS[family][0]


def build_tiny_components(family: str, seed: int = 0) -> tuple[type, dict]:
    """Return ``(pipeline_class, components_kwargs)`` for a tiny pipeline (not saved)."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    import diffusers

    class_name, builder = _BUILDERS[family]
    return getattr(diffusers, class_name), builder(seed)


def build_tiny_pipeline(family: str, folder: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Build a tiny seeded random-weight pipeline of ``family`` and save it to ``folder``.

    The pipeline is written with ``save_pretrained(folder, safe_serialization=True)``
    (``model_index.json`` + component sub-folders, ``.safetensors`` weights only) and
    ``folder`` is returned.  Load it back with
    ``diffusers.DiffusionPipeline.from_pretrained(folder)`` (works with ``HF_HUB_OFFLINE=1``).
    The same ``seed`` yields identical weights.

    Call-time notes for the loaded pipelines (see the module docstring for sizes):

    * ``sana``: pass ``use_resolution_binning=False`` and ``complex_human_instruction=None``
      (otherwise sizes are snapped to the 1024px aspect-ratio bins and a long system
      prompt is prepended to every prompt).  Height/width multiple of 32.
    * ``flux``: height/width multiple of 16 (even latent grid, packed 2x2); other sizes are
      silently rounded down.
    * ``sd3``: height/width multiple of 16; latent grid <= 192 per side
      (``pos_embed_max_size=96`` patches of 2).
    * ``ltx``: height/width multiple of 32, ``num_frames`` = 8k+1 (5 frames -> 1 frame out).
    * ``wan``: height/width multiple of 16, ``num_frames`` = 4k+1.

    On a small shared CPU box, run these with ``torch.set_num_threads(1)``: with 2 OpenMP
    threads and another busy process, the tiny ops got ~100x slower (seconds per forward).
    """
    pipeline_class, components = build_tiny_components(family, seed)
    pipe = pipeline_class(**components)
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_flux_schnell(flux_folder: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
    """The tiny FLUX (``build_tiny_pipeline("flux", ...)``) with FLUX.1-schnell's
    differences: no guidance embedding, a static shift of 1; saved to ``folder``."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    pipe = FluxPipeline.from_pretrained(flux_folder)
    torch.manual_seed(1)
    pipe.transformer = FluxTransformer2DModel.from_config(
        {**pipe.transformer.config, "guidance_embeds": False}
    ).eval()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, use_dynamic_shifting=False, shift=1.0
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
