"""SANA (linear-attention DiT, Gemma-2 text encoder, 32x DC-AE) — the paper's image model."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch

from ..denoise import DenoiserInput
from .base import ModelAdapter, PromptEmbedding, stack_conditioning


class SanaAdapter(ModelAdapter):
    family = "sana"
    pipeline_classes = ("SanaPipeline",)
    default_steps = 20
    default_guidance = 4.5
    preferred_half = torch.bfloat16
    # SANA 1600M 1024px: the paper's 2K panorama gives 576 px views, which it makes well.
    native_view_px = 1024
    min_view_px = 512
    default_size = "2K"
    typical_vae_scale_factor = 32
    # The BF16 repos hold bf16 weight files (variant "bf16") next to float32 ones: half the
    # download and no cast. Folders without them load their plain files.
    weight_variants = ("bf16", None)
    max_sequence_length: ClassVar[int] = 300
    """Gemma tokens per prompt, as SanaPipeline's default."""

    def complex_human_instruction(self) -> list[str] | None:
        """SanaPipeline's default system instruction for positive prompts (the model was
        trained with it), read from the installed diffusers' ``__call__`` signature."""
        param = inspect.signature(type(self.pipe).__call__).parameters.get(
            "complex_human_instruction"
        )
        if param is None or param.default is inspect.Parameter.empty:
            return None
        return list(param.default) or None

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.transformer.config.in_channels)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        # As SanaPipeline: the system instruction goes before the prompt, and encode_prompt
        # keeps Gemma's token 0 plus the last 299 tokens (the prompt's, not the instruction's).
        return self._encode(prompt, self.complex_human_instruction())

    @torch.no_grad()
    def encode_negative_prompt(self, prompt: str) -> PromptEmbedding:
        # SanaPipeline encodes the negative prompt without the instruction.
        return self._encode(prompt, None)

    def _encode(self, prompt: str, instruction: list[str] | None) -> PromptEmbedding:
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=False,
            num_images_per_prompt=1,
            device=self.device,
            clean_caption=False,
            max_sequence_length=self.max_sequence_length,
            complex_human_instruction=instruction,
        )
        return PromptEmbedding(
            prompt, {"encoder_hidden_states": embeds.cpu(), "encoder_attention_mask": mask.cpu()}
        )

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "complex_human_instruction": self.complex_human_instruction() is not None
        }

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
