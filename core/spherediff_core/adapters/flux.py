"""FLUX.1 dev and schnell (MMDiT over 2x2-packed latents, CLIP pooled + T5, distilled guidance).

The sphere holds the VAE's raw 16-channel latents; a view's grid (even sides) is packed into
FLUX's sequence of 2x2 patches only for the transformer call and unpacked after it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..denoise import DenoiserInput
from .base import ModelAdapter, PromptEmbedding, ReleasedModel, stack_conditioning
from .flow import flow_match_scheduler, linspace_sigmas, shift_from_config


class FluxAdapter(ModelAdapter):
    family = "flux"
    pipeline_classes = ("FluxPipeline",)
    denoiser_io_like_pipeline_latents = True
    # FLUX.1-dev's defaults; a model without a guidance embedding (schnell) gets 4 and 0.
    default_steps = 28
    default_guidance = 3.5
    grid_multiple = 2
    preferred_half = torch.bfloat16
    native_view_px = 1024
    default_size = "4K"
    schnell_steps: ClassVar[int] = 4
    schnell_guidance: ClassVar[float] = 0.0

    @classmethod
    def released_models(cls) -> tuple[ReleasedModel, ...]:
        # Guidance-distilled: no negative pass at the default guidance.
        return (
            ReleasedModel("FLUX.1-dev", cls.default_steps, False),
            ReleasedModel("FLUX.1-schnell", cls.schnell_steps, False),
        )

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(pipe, device, dtype)
        self.guidance_embeds = bool(pipe.transformer.config.guidance_embeds)
        if not self.guidance_embeds:
            # Timestep-distilled (schnell): few steps, no guidance at all.
            self.default_steps = self.schnell_steps
            self.default_guidance = self.schnell_guidance
        # T5 tokens per prompt: schnell was trained with 256, dev with 512.
        self.max_sequence_length = 512 if self.guidance_embeds else 256

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.transformer.config.in_channels) // 4

    def uses_cfg(self, guidance: float) -> bool:
        # Guidance-distilled: the scale goes into the transformer's guidance embedding.
        return False

    def cfg_scale(self, guidance: float, options: Any) -> float:
        # FluxPipeline's true CFG: a negative prompt with true_cfg_scale > 1 adds a negative
        # pass, pred = neg + true_cfg_scale * (pos - neg), on top of the distilled guidance.
        true_cfg = getattr(options, "true_cfg_scale", None) or 1.0
        negative = getattr(options, "negative_prompt", "") or ""
        return float(true_cfg) if true_cfg > 1.0 and negative.strip() else 1.0

    # --- test hooks: FluxPipeline's latents are sequences of 2x2 patches -----------------
    def pipeline_latents(self, grid: torch.Tensor) -> torch.Tensor:
        _, c, h, w = grid.shape
        return self.pipe._pack_latents(grid, 1, c, h, w)

    def grid_from_pipeline_latents(
        self, latents: torch.Tensor, grid_shape: tuple[int, ...]
    ) -> torch.Tensor:
        s = self.vae_scale_factor
        return self.pipe._unpack_latents(latents, grid_shape[-2] * s, grid_shape[-1] * s, s)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompt,
            prompt_2=None,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
        )
        return PromptEmbedding(
            prompt, {"encoder_hidden_states": embeds.cpu(), "pooled_projections": pooled.cpu()}
        )

    def make_scheduler(self, steps: int, grid_hw: tuple[int, int], latent_frames: int = 1) -> Any:
        # FluxPipeline passes mu whatever the config (a static-shift scheduler ignores it).
        config = self.pipe.scheduler.config
        return flow_match_scheduler(
            self.pipe.scheduler,
            steps,
            self.device,
            mu=shift_from_config(config, (grid_hw[0] // 2) * (grid_hw[1] // 2)),
            sigmas=None if config.get("use_flow_sigmas", False) else linspace_sigmas(steps),
        )

    @torch.no_grad()
    def denoise(self, inp: DenoiserInput, guidance: float) -> torch.Tensor:
        pipe = self.pipe
        transformer = pipe.transformer
        dtype = transformer.dtype
        n, c, h, w = inp.latents.shape
        cond = stack_conditioning(inp.conditioning, self.device, dtype)
        latents = inp.latents.to(device=self.device, dtype=dtype)
        packed = pipe._pack_latents(latents, n, c, h, w)
        img_ids = pipe._prepare_latent_image_ids(n, h // 2, w // 2, self.device, dtype)
        txt_ids = torch.zeros(cond["encoder_hidden_states"].shape[1], 3, device=self.device)
        txt_ids = txt_ids.to(dtype)
        guidance_t = None
        if self.guidance_embeds:
            guidance_t = torch.full((n,), float(guidance), device=self.device, dtype=torch.float32)
        timestep = self.expand_timestep(inp).to(dtype) / 1000
        out = transformer(
            hidden_states=packed,
            timestep=timestep,
            guidance=guidance_t,
            pooled_projections=cond["pooled_projections"],
            encoder_hidden_states=cond["encoder_hidden_states"],
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0]
        # _unpack_latents takes pixel sizes: the grid times the VAE factor.
        s = self.vae_scale_factor
        out = pipe._unpack_latents(out, h * s, w * s, s)
        return out.float().to(inp.latents.device)
