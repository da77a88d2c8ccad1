"""FLUX.2 [dev] and FLUX.2 [klein] (a 4-axis-RoPE MMDiT over 2x2-patchified latents).

A sphere point is one FLUX.2 token: a 2x2 patch of the VAE's 32-channel latents, flattened
channel-major to 128 channels and normalised by the VAE's BatchNorm running statistics,
which hold a separate mean and variance for each (channel, place in the patch). Holding
the raw 32-channel latents instead would make a point's normalisation depend on its
parity inside each view, and overlapping views would disagree; so the sphere holds the
tokens, at 16 px per point, and every grid is valid (``grid_multiple`` 1). Decoding undoes
the normalisation and the patchify (Flux2Pipeline.__call__, after its loop), encoding
redoes them (Flux2Pipeline._encode_vae_image).

[dev] is guidance-distilled: the guidance scale goes into the transformer's guidance
embedding, and there is no negative pass. [klein] has no guidance embedding; its base
models run classifier-free guidance ``neg + g * (pos - neg)`` with an empty negative
prompt, its step-distilled models (``is_distilled`` in model_index.json) none at all.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..denoise import DenoiserInput
from .base import ModelAdapter, PromptEmbedding, ReleasedModel, stack_conditioning
from .flow import flow_match_scheduler, linspace_sigmas


class Flux2Adapter(ModelAdapter):
    family = "flux2"
    pipeline_classes = ("Flux2Pipeline",)
    display_name = "FLUX.2 [dev]"
    # Flux2Pipeline.__call__'s defaults: num_inference_steps=50, guidance_scale=4.0.
    default_steps = 50
    default_guidance = 4.0
    grid_multiple = 1  # a point is already a 2x2 patch
    preferred_half = torch.bfloat16
    native_view_px = 1024  # default_sample_size 128 latents x 8
    default_size = "4K"
    typical_vae_scale_factor = 16  # VAE 8x, then the 2x2 patch
    text_encoder_out_layers: ClassVar[tuple[int, ...]] = (10, 20, 30)
    """The text encoder's hidden states stacked into the text embedding (the pipeline's
    default ``text_encoder_out_layers``)."""
    max_sequence_length: ClassVar[int] = 512
    """Text tokens per prompt (the pipeline's default)."""

    @classmethod
    def released_models(cls) -> tuple[ReleasedModel, ...]:
        # The guidance goes into the guidance embedding: no negative pass.
        return (ReleasedModel(cls.display_name, cls.default_steps, False),)

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.transformer.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        # The pipeline's factor is the VAE's (8); a point is a 2x2 patch of VAE latents.
        return 2 * int(self.pipe.vae_scale_factor)

    def uses_cfg(self, guidance: float) -> bool:
        # Guidance-distilled: the scale goes into the transformer's guidance embedding.
        return False

    @property
    def embeds_guidance(self) -> bool:
        return bool(self.pipe.transformer.config.guidance_embeds)

    # --- prompts ------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        embeds, _ = self.pipe.encode_prompt(
            prompt=prompt,
            device=self.device,
            num_images_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
            text_encoder_out_layers=self.text_encoder_out_layers,
        )
        return PromptEmbedding(prompt, {"encoder_hidden_states": embeds.cpu()})

    # --- timesteps ----------------------------------------------------------------------
    def make_scheduler(self, steps: int, grid_hw: tuple[int, int], latent_frames: int = 1) -> Any:
        # The pipelines' shift is empirical: it depends on the token count and the steps.
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        config = self.pipe.scheduler.config
        scheduler = flow_match_scheduler(
            self.pipe.scheduler,
            steps,
            self.device,
            mu=compute_empirical_mu(image_seq_len=grid_hw[0] * grid_hw[1], num_steps=steps),
            sigmas=None if config.get("use_flow_sigmas", False) else linspace_sigmas(steps),
        )
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        return scheduler

    # --- denoiser -----------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, inp: DenoiserInput, guidance: float) -> torch.Tensor:
        pipe = self.pipe
        transformer = pipe.transformer
        dtype = transformer.dtype
        n, _, h, w = inp.latents.shape
        cond = stack_conditioning(inp.conditioning, self.device, dtype)
        text = cond["encoder_hidden_states"]
        latents = inp.latents.to(device=self.device, dtype=dtype)
        # (n, hw, 4) ids (t, h, w, l) and (n, L, 4) ids (0, 0, 0, l), as the pipeline.
        img_ids = pipe._prepare_latent_ids(latents).to(self.device)
        txt_ids = pipe._prepare_text_ids(text).to(self.device)
        guidance_t = None
        if self.embeds_guidance:
            guidance_t = torch.full((n,), float(guidance), device=self.device, dtype=torch.float32)
        out = transformer(
            hidden_states=pipe._pack_latents(latents),  # (n, hw, C)
            timestep=self.expand_timestep(inp).to(dtype) / 1000,
            guidance=guidance_t,
            encoder_hidden_states=text,
            txt_ids=txt_ids,
            img_ids=img_ids,
            return_dict=False,
        )[0][:, : h * w]
        return self._grid_from_tokens(out, h, w).float().to(inp.latents.device)

    @staticmethod
    def _grid_from_tokens(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(n, h*w, C) raster-order tokens -> (n, C, h, w) (the inverse of _pack_latents)."""
        n, _, c = tokens.shape
        return tokens.permute(0, 2, 1).reshape(n, c, h, w)

    # --- latents <-> VAE ------------------------------------------------------------------
    def _bn_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE BatchNorm's (mean, std), (1, 128, 1, 1) each, in ``like``'s dtype."""
        vae = self.pipe.vae
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        return mean, std.to(like.device, like.dtype)

    def to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Tokens (n, 128, h, w) -> the VAE decoder's latents (n, 32, 2h, 2w)."""
        mean, std = self._bn_stats(latents)
        return self.pipe._unpatchify_latents(latents * std + mean)

    def from_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE encoder's latents (n, 32, 2h, 2w) -> tokens (n, 128, h, w)."""
        patches = self.pipe._patchify_latents(latents)
        mean, std = self._bn_stats(patches)
        return (patches - mean) / std

    # --- test hooks: the pipeline takes (1, 128, h, w) and returns packed tokens ----------
    def grid_from_pipeline_latents(
        self, latents: torch.Tensor, grid_shape: tuple[int, ...]
    ) -> torch.Tensor:
        return self._grid_from_tokens(latents, grid_shape[-2], grid_shape[-1])

    def grids_from_denoiser_call(
        self, args: tuple, kwargs: dict[str, Any], output: Any, grid_shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = grid_shape[-2], grid_shape[-1]
        x = kwargs["hidden_states"][:, : h * w]
        return self._grid_from_tokens(x, h, w), self._grid_from_tokens(output[0][:, : h * w], h, w)


class Flux2KleinAdapter(Flux2Adapter):
    family = "flux2-klein"
    pipeline_classes = ("Flux2KleinPipeline",)
    display_name = "FLUX.2 [klein]"
    # Flux2KleinPipeline.__call__'s defaults (num_inference_steps=50, guidance_scale=4.0)
    # fit the base models; the step-distilled ones get their model card's 4 steps and no
    # guidance (the pipeline ignores the scale).
    default_steps = 50
    default_guidance = 4.0
    distilled_steps: ClassVar[int] = 4
    distilled_guidance: ClassVar[float] = 1.0
    text_encoder_out_layers = (9, 18, 27)

    @classmethod
    def released_models(cls) -> tuple[ReleasedModel, ...]:
        return (
            ReleasedModel("FLUX.2 [klein] (distilled)", cls.distilled_steps, False),
            ReleasedModel("FLUX.2 [klein] base", cls.default_steps, True),
        )

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(pipe, device, dtype)
        # As Flux2KleinPipeline.do_classifier_free_guidance: the folder's model_index.json.
        self.is_distilled = bool(pipe.config.get("is_distilled", False))
        if self.is_distilled:
            self.default_steps = self.distilled_steps
            self.default_guidance = self.distilled_guidance

    def uses_cfg(self, guidance: float) -> bool:
        # pred = neg + g * (pos - neg) (the loop's default combine), base models only.
        return guidance > 1.0 and not self.is_distilled

    # The pipeline's negative prompt is always "" (it takes no negative_prompt); the
    # engine's default negative prompt is "" too, and a user's own goes in its place.

    # --- test hooks: Klein's latent output is unpatchified and denormalised ---------------
    def grid_from_pipeline_latents(
        self, latents: torch.Tensor, grid_shape: tuple[int, ...]
    ) -> torch.Tensor:
        return self.from_vae_latents(latents)
