"""Stable Diffusion 1.x / 2.x (UNet, one CLIP text encoder)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..denoise import DenoiserInput
from .base import ModelAdapter, PromptEmbedding, stack_conditioning


class StableDiffusionAdapter(ModelAdapter):
    family = "sd"
    pipeline_classes = ("StableDiffusionPipeline",)
    pipeline_latents_in_model_dtype = True
    default_steps = 30
    default_guidance = 7.5
    # The panorama never goes through the NSFW checker's image path; don't load it.
    load_kwargs: ClassVar[dict[str, Any]] = {
        "safety_checker": None,
        "requires_safety_checker": False,
    }

    # SD 1.5: 512 px; a 2K panorama gives 552 px views.
    native_view_px = 512
    min_view_px = 384
    default_size = "2K"

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.unet.config.in_channels)

    def uses_cfg(self, guidance: float) -> bool:
        # An LCM-distilled UNet (time_cond_proj_dim) takes the scale as an input instead,
        # as StableDiffusionPipeline does.
        return guidance > 1.0 and self.pipe.unet.config.time_cond_proj_dim is None

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
            timestep_cond=guidance_embedding(self.pipe, guidance, inp.latents.shape[0]),
            return_dict=False,
        )[0]
        return out.float().to(inp.latents.device)


def guidance_embedding(pipe: Any, guidance: float, n: int) -> torch.Tensor | None:
    """The guidance-scale embedding an LCM-distilled UNet takes as ``timestep_cond`` (None
    for other UNets), as the SD and SDXL pipelines make it: embed(guidance - 1)."""
    unet = pipe.unet
    dim = unet.config.time_cond_proj_dim
    if dim is None:
        return None
    w = torch.tensor(guidance - 1.0).repeat(n)
    embedding = pipe.get_guidance_scale_embedding(w, embedding_dim=dim)
    return embedding.to(device=unet.device, dtype=unet.dtype)
