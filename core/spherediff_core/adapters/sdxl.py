"""Stable Diffusion XL (UNet, two CLIP text encoders, pooled and size conditioning)."""

from __future__ import annotations

import torch

from ..denoise import DenoiserInput
from .base import ModelAdapter, PromptEmbedding, stack_conditioning
from .sd import guidance_embedding


class StableDiffusionXLAdapter(ModelAdapter):
    family = "sdxl"
    pipeline_classes = ("StableDiffusionXLPipeline",)
    pipeline_latents_in_model_dtype = True
    default_steps = 30
    default_guidance = 5.0
    native_view_px = 1024
    default_size = "4K"

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.unet.config.in_channels)

    def uses_cfg(self, guidance: float) -> bool:
        # A UNet with a guidance embedding (LCM-distilled) takes the scale as an input instead.
        return guidance > 1.0 and self.pipe.unet.config.time_cond_proj_dim is None

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        pipe = self.pipe
        if not prompt.strip() and pipe.config.get("force_zeros_for_empty_prompt", False):
            # SDXL's pipeline makes an unset negative prompt all zeros (embeddings and pooled),
            # not the encoding of "": the base model was trained that way.
            embeds, _, pooled, _ = pipe.encode_prompt(
                "x", device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            embeds, pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompt,
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=False,
            )
        return PromptEmbedding(
            prompt, {"encoder_hidden_states": embeds.cpu(), "text_embeds": pooled.cpu()}
        )

    @property
    def native_size(self) -> tuple[int, int]:
        """The model's default generation size (1024 x 1024 for SDXL base), in pixels."""
        side = int(self.pipe.default_sample_size) * self.vae_scale_factor
        return side, side

    def _time_ids(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """Micro-conditioning: original size, crop (0, 0), target size. Both sizes are the
        model's native size, as SDXLPipeline's defaults for a generation at that size: a
        view is a crop of a high-resolution panorama, not an upscaled small image."""
        size = self.native_size
        pooled_dim = (
            self.pipe.text_encoder_2.config.projection_dim
            if self.pipe.text_encoder_2 is not None
            else None
        )
        if pooled_dim is None:
            ids = torch.tensor([[*size, 0, 0, *size]], dtype=dtype)
        else:
            ids = self.pipe._get_add_time_ids(
                size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=pooled_dim
            )
        return ids.to(self.device).repeat(n, 1)

    @torch.no_grad()
    def denoise(self, inp: DenoiserInput, guidance: float) -> torch.Tensor:
        unet = self.pipe.unet
        n = inp.latents.shape[0]
        cond = stack_conditioning(inp.conditioning, self.device, unet.dtype)
        added = {
            "text_embeds": cond["text_embeds"],
            "time_ids": self._time_ids(n, unet.dtype),
        }
        timestep_cond = guidance_embedding(self.pipe, guidance, n)
        out = unet(
            inp.latents.to(device=self.device, dtype=unet.dtype),
            self.expand_timestep(inp),
            encoder_hidden_states=cond["encoder_hidden_states"],
            timestep_cond=timestep_cond,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]
        return out.float().to(inp.latents.device)

    def from_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        # As StableDiffusionXLImg2ImgPipeline: a VAE with latents_mean/std is normalised.
        vae = self.pipe.vae
        mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
        if mean is None or std is None:
            return latents * vae.config.scaling_factor
        c = latents.shape[1]
        mean_t = torch.tensor(mean, dtype=latents.dtype, device=latents.device).view(1, c, 1, 1)
        std_t = torch.tensor(std, dtype=latents.dtype, device=latents.device).view(1, c, 1, 1)
        return (latents - mean_t) * vae.config.scaling_factor / std_t

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        # The encoder overflows in float16 too (force_upcast), as StableDiffusionXLImg2Img
        # knows: encode in float32 (the known image, the live preview's fit).
        vae = self.pipe.vae
        if vae.dtype == torch.float16 and vae.config.get("force_upcast", False):
            vae.to(torch.float32)
        return super().encode_images(images)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        vae = self.pipe.vae
        # SDXL's VAE overflows in float16 (force_upcast): decode in float32, as diffusers does.
        if vae.dtype == torch.float16 and vae.config.get("force_upcast", False):
            vae.to(torch.float32)
        lat = latents.to(device=self.device, dtype=vae.dtype)
        mean = vae.config.get("latents_mean")
        std = vae.config.get("latents_std")
        if mean is not None and std is not None:
            c = lat.shape[1]
            mean_t = torch.tensor(mean, dtype=lat.dtype, device=lat.device).view(1, c, 1, 1)
            std_t = torch.tensor(std, dtype=lat.dtype, device=lat.device).view(1, c, 1, 1)
            lat = lat * std_t / vae.config.scaling_factor + mean_t
        else:
            lat = lat / vae.config.scaling_factor
        image = vae.decode(lat, return_dict=False)[0]
        return (image.float() / 2 + 0.5).clamp(0, 1)
