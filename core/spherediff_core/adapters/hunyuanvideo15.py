"""HunyuanVideo 1.5 text-to-video (DiT over 1x1x1 patches, Qwen2.5-VL + ByT5 text, 16x / 4x
video VAE with causal attention).

The sphere holds the VAE's 32-channel latents times ``scaling_factor`` (the sampling space
of ``HunyuanVideo15Pipeline``). The transformer takes a view's (n, C, F, h, w) grid as it
is, with the image-to-video inputs it also expects left empty as the T2V pipeline leaves
them: 33 zero channels (condition latents + mask) concatenated after the latents, and zero
``image_embeds``. The schedule is FlowMatchEuler with the pipeline's sigmas
``linspace(1, 0, N + 1)[:-1]`` and the scheduler's fixed shift (nothing depends on the
grid). Guidance is the pipeline's ``guider`` component (ClassifierFreeGuidance): its scale
is the model's default guidance, and its formulation, rescale and start/stop fractions are
followed step by step (:class:`HunyuanVideo15Guidance`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..denoise import DenoiserInput, Guidance
from ..options import MAX_FRAMES
from .base import ModelAdapter, PromptEmbedding, stack_conditioning
from .flow import flow_match_scheduler

__all__ = ["HunyuanVideo15Adapter", "HunyuanVideo15Guidance"]


@dataclass(frozen=True)
class HunyuanVideo15Guidance(Guidance):
    """diffusers' ``ClassifierFreeGuidance`` guider (guiders/classifier_free_guidance.py).

    Attributes:
        rescale: ``guidance_rescale``: the guided prediction's std pulled towards the
            positive one's (``rescale_noise_cfg``, std over each item, i.e. per view on the
            sphere: the pipeline's whole-sample std only for a one-view plan).
        original: ``use_original_formulation``: ``cond + scale * (cond - uncond)``.
        first_step, stop_step: CFG runs on steps ``first_step <= i < stop_step``
            (``int(start * steps)``, ``int(stop * steps)``); no negative pass on the others.
    """

    rescale: float = 0.0
    original: bool = False
    first_step: int = 0
    stop_step: int = 1 << 30

    def scale_at(self, step_index: int, timestep: float) -> float | None:
        return self.scale if self.first_step <= step_index < self.stop_step else None

    def combine(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        pred = (cond if self.original else uncond) + scale * (cond - uncond)
        if self.rescale > 0.0:
            from diffusers.guiders.guider_utils import rescale_noise_cfg

            pred = rescale_noise_cfg(pred, cond, self.rescale)
        return pred


class HunyuanVideo15Adapter(ModelAdapter):
    family = "hunyuanvideo15"
    display_name = "HunyuanVideo 1.5"
    pipeline_classes = ("HunyuanVideo15Pipeline",)
    # HunyuanVideo15Pipeline.__call__: 50 steps, 121 frames; the guidance is the guider's
    # (6.0 here until a model loads: the class default is only read before loading).
    default_steps = 50
    default_guidance = 6.0
    preferred_half = torch.bfloat16
    # The 480p checkpoints: target_size 640 in a 16:9 bucket, 480 x 848.
    native_view_px = 480
    min_view_px = 360
    default_size = "2K"
    typical_vae_scale_factor = 16
    is_video = True
    temporal_compression = 4
    default_frames = 121
    default_fps = 24
    # The VAE's mid-block attention is causal over ALL earlier latent frames, so a chunk
    # decodes exactly as in the whole clip only with every frame before it: the context
    # covers the longest clip a request may ask for (each chunk decodes the clip's prefix).
    decode_context_latents: ClassVar[tuple[int, int]] = ((MAX_FRAMES - 1) // 4 + 1, 0)

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(pipe, device, dtype)
        self.temporal_compression = int(pipe.vae_scale_factor_temporal)
        guider = pipe.guider
        self.default_guidance = float(guider.guidance_scale)

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.transformer.config.out_channels)

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor_spatial)

    def guidance_rule(self, guidance: float, options: Any) -> Guidance | None:
        """The guider's rule at ``guidance``: None (no negative prompt is encoded, as the
        pipeline) when the guider is disabled or the scale is neutral (1, or 0 with the
        original formulation)."""
        guider = self.pipe.guider
        original = bool(guider.use_original_formulation)
        if not guider._enabled or math.isclose(guidance, 0.0 if original else 1.0):
            return None
        steps = options.steps if options.steps is not None else self.default_steps
        return HunyuanVideo15Guidance(
            float(guidance),
            rescale=float(guider.guidance_rescale),
            original=original,
            first_step=int(guider._start * steps),
            stop_step=int(guider._stop * steps),
        )

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        embeds, mask, embeds_2, mask_2 = self.pipe.encode_prompt(
            prompt=prompt, device=self.device, dtype=self.pipe.transformer.dtype, batch_size=1
        )
        return PromptEmbedding(
            prompt,
            {
                "encoder_hidden_states": embeds.cpu(),
                "encoder_attention_mask": mask.cpu(),
                "encoder_hidden_states_2": embeds_2.cpu(),
                "encoder_attention_mask_2": mask_2.cpu(),
            },
        )

    def make_scheduler(self, steps: int, grid_hw: tuple[int, int], latent_frames: int = 1) -> Any:
        # HunyuanVideo15Pipeline: sigmas = np.linspace(1.0, 0.0, N + 1)[:-1].
        sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1]
        return flow_match_scheduler(self.pipe.scheduler, steps, self.device, sigmas=sigmas)

    @torch.no_grad()
    def denoise(self, inp: DenoiserInput, guidance: float, fps: float = 24) -> torch.Tensor:
        if inp.latents.dim() != 5:
            raise ValueError(
                f"HunyuanVideo 1.5 denoises (n, C, F, h, w) grids, got {tuple(inp.latents.shape)}"
            )
        pipe = self.pipe
        model = pipe.transformer
        dtype = model.dtype
        n, c, f, h, w = inp.latents.shape
        latents = inp.latents.to(device=self.device, dtype=dtype)
        # T2V: zero condition latents and a zero mask after the latents, zero image
        # embeddings (prepare_cond_latents_and_mask; the transformer tells T2V from the
        # all-zero image_embeds).
        extra = int(model.config.in_channels) - c
        empty = latents.new_zeros(n, extra, f, h, w)
        image_embeds = latents.new_zeros(
            n, pipe.vision_num_semantic_tokens, int(model.config.image_embed_dim)
        )
        cond = stack_conditioning(inp.conditioning, self.device, dtype)
        out = model(
            hidden_states=torch.cat([latents, empty], dim=1),
            image_embeds=image_embeds,
            # Raw 0..1000 timesteps in the latents' dtype, as the pipeline passes them.
            timestep=self.expand_timestep(inp).to(dtype),
            encoder_hidden_states=cond["encoder_hidden_states"],
            encoder_attention_mask=cond["encoder_attention_mask"],
            encoder_hidden_states_2=cond["encoder_hidden_states_2"],
            encoder_attention_mask_2=cond["encoder_attention_mask_2"],
            return_dict=False,
        )[0]
        return out.float().to(inp.latents.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if latents.dim() != 5:
            raise ValueError(
                f"HunyuanVideo 1.5 decodes (n, C, F, h, w) latents, got {tuple(latents.shape)}"
            )
        # One view per VAE call: the VAE's causal attention expands its (L, L) mask to
        # (n, L, L), which scaled_dot_product_attention broadcasts against (n, 1, L, L) as
        # heads, so a batch of several views fails (diffusers 0.42.1,
        # autoencoder_kl_hunyuanvideo15.py:150-154).
        decode_one = super().decode
        return torch.cat([decode_one(one) for one in latents.split(1)])

    def apply_memory_options(self, cpu_offload: bool, vae_tiling: bool, vae_slicing: bool) -> None:
        # Always tiled: the VAE's causal attention builds a dense (F*h*w)^2 mask (about
        # 10 GB for 31 latent frames of 40 x 40); a 256 px tile keeps it small. Views
        # under 256 px decode untiled, as the pipeline's own decode.
        super().apply_memory_options(cpu_offload, True, vae_slicing)

    # --- test hooks ---------------------------------------------------------------------
    def pipeline_latents(self, grid: torch.Tensor) -> torch.Tensor:
        # The pipeline draws (and keeps) its latents in the transformer's dtype.
        return grid.to(self.pipe.transformer.dtype)

    def grids_from_denoiser_call(
        self, args: tuple, kwargs: dict[str, Any], output: Any, grid_shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = args[0] if args else kwargs["hidden_states"]
        return x[:, : grid_shape[1]], output[0]
