"""SANA (linear-attention DiT, Gemma-2 text encoder, 32x DC-AE) — the paper's image model."""

from __future__ import annotations

from typing import ClassVar

import torch

from ..denoise import DenoiserInput
from .base import ModelAdapter, PromptEmbedding, stack_conditioning


class SanaAdapter(ModelAdapter):
    family = "sana"
    pipeline_classes = ("SanaPipeline",)
    default_steps = 20
    default_guidance = 4.5
    preferred_half = torch.bfloat16
    max_sequence_length: ClassVar[int] = 300
    """Gemma tokens per prompt, as SanaPipeline's default."""

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.transformer.config.in_channels)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        # No "complex human instruction": SanaPipeline prepends a long prompt-enhancing system
        # prompt by default; for the panorama's short per-direction prompts (and the negative
        # prompt, which the pipeline never gives it) the plain prompt is encoded.
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=False,
            num_images_per_prompt=1,
            device=self.device,
            clean_caption=False,
            max_sequence_length=self.max_sequence_length,
            complex_human_instruction=None,
        )
        return PromptEmbedding(
            prompt, {"encoder_hidden_states": embeds.cpu(), "encoder_attention_mask": mask.cpu()}
        )

    @torch.no_grad()
    def denoise(self, inp: DenoiserInput, guidance: float) -> torch.Tensor:
        transformer = self.pipe.transformer
        dtype = transformer.dtype
        cond = stack_conditioning(inp.conditioning, self.device, dtype)
        timestep = self.expand_timestep(inp) * transformer.config.timestep_scale
        out = transformer(
            inp.latents.to(device=self.device, dtype=dtype),
            encoder_hidden_states=cond["encoder_hidden_states"],
            encoder_attention_mask=cond["encoder_attention_mask"],
            timestep=timestep,
            return_dict=False,
        )[0]
        out = out.float()
        # Learned sigma: the first half of the channels is the prediction.
        if transformer.config.out_channels // 2 == self.latent_channels:
            out = out.chunk(2, dim=1)[0]
        return out.to(inp.latents.device)
