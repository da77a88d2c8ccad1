"""Stable Diffusion 1.x / 2.x (UNet, one CLIP text encoder)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..denoise import DenoiserInput
from .base import ModelAdapter, PromptEmbedding, stack_conditioning


class StableDiffusionAdapter(ModelAdapter):
    family = "sd"
    pipeline_classes = ("StableDiffusionPipeline",)
    default_steps = 30
    default_guidance = 7.5
    # The panorama never goes through the NSFW checker's image path; don't load it.
    load_kwargs: ClassVar[dict[str, Any]] = {
        "safety_checker": None,
        "requires_safety_checker": False,
    }

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.unet.config.in_channels)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        embeds, _ = self.pipe.encode_prompt(
            prompt, self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        return PromptEmbedding(prompt, {"encoder_hidden_states": embeds.cpu()})

    @torch.no_grad()
    def denoise(self, inp: DenoiserInput, guidance: float) -> torch.Tensor:
        unet = self.pipe.unet
        cond = stack_conditioning(inp.conditioning, self.device, unet.dtype)
        out = unet(
            inp.latents.to(device=self.device, dtype=unet.dtype),
            self.expand_timestep(inp),
            encoder_hidden_states=cond["encoder_hidden_states"],
            return_dict=False,
        )[0]
        return out.float().to(inp.latents.device)
