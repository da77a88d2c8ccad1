"""Stable Diffusion 3 / 3.5 (MMDiT with 2x2 patches, CLIP-L + CLIP-G + T5 text encoders)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..denoise import DenoiserInput
from .base import ModelAdapter, PromptEmbedding, stack_conditioning
from .flow import flow_match_scheduler


class StableDiffusion3Adapter(ModelAdapter):
    family = "sd3"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    pipeline_latents_in_model_dtype = True
    default_steps = 28
    default_guidance = 7.0
    grid_multiple = 2
    # SD3.5 is released in bf16 and its T5 overflows in fp16; bf16 suits SD3-medium as well.
    preferred_half = torch.bfloat16
    native_view_px = 1024
    default_size = "4K"
    max_sequence_length: ClassVar[int] = 256
    """T5 tokens per prompt, as StableDiffusion3Pipeline's default."""

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.transformer.config.in_channels)

    def grid_limit(self) -> tuple[int, str] | None:
        config = self.pipe.transformer.config
        max_size = config.get("pos_embed_max_size")
        if not max_size:
            return None
        patch = int(config.patch_size)
        return (
            int(max_size) * patch,
            f"its positional embedding covers pos_embed_max_size = {max_size} patches of "
            f"{patch} latents per side",
        )

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt,
            prompt_2=None,
            prompt_3=None,
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return PromptEmbedding(
            prompt, {"encoder_hidden_states": embeds.cpu(), "pooled_projections": pooled.cpu()}
        )

    def make_scheduler(self, steps: int, grid_hw: tuple[int, int], latent_frames: int = 1) -> Any:
        patch = int(self.pipe.transformer.config.patch_size)
        image_seq_len = (grid_hw[0] // patch) * (grid_hw[1] // patch)
        # StableDiffusion3Pipeline's own spacing (no sigmas), its max_shift fallback 1.16.
        return flow_match_scheduler(
            self.pipe.scheduler,
            steps,
            self.device,
            image_seq_len=image_seq_len,
            default_max_shift=1.16,
        )

    @torch.no_grad()
    def denoise(self, inp: DenoiserInput, guidance: float) -> torch.Tensor:
        transformer = self.pipe.transformer
        dtype = transformer.dtype
        limit = self.grid_limit()
        h, w = inp.latents.shape[-2:]
        if limit is not None and max(h, w) > limit[0]:
            raise ValueError(
                f"a view grid of {h} x {w} latents is larger than this SD3 model accepts "
                f"({limit[0]} per side: {limit[1]}); choose a smaller size"
            )
        cond = stack_conditioning(inp.conditioning, self.device, dtype)
        out = transformer(
            hidden_states=inp.latents.to(device=self.device, dtype=dtype),
            timestep=self.expand_timestep(inp),
            encoder_hidden_states=cond["encoder_hidden_states"],
            pooled_projections=cond["pooled_projections"],
            return_dict=False,
        )[0]
        return out.float().to(inp.latents.device)
