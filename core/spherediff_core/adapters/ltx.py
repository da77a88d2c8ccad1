"""LTX-Video (DiT over a token sequence, T5 text encoder, 32x / 8x video VAE) — the paper's
video model.

The sphere holds the VAE's 128-channel latents (normalised with the VAE's latents_mean /
latents_std, as LTXPipeline's sampling space), one point per latent pixel and latent frame.
A view's (n, C, F, h, w) grid is packed into LTX's token sequence only for the transformer
call, with the rotary-embedding interpolation scale from the VAE's compression and the frame
rate, exactly as ``LTXPipeline.__call__`` does it. The schedule's resolution shift ``mu``
follows the view's sequence length (latent frames x h x w).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..denoise import DenoiserInput
from .base import ModelAdapter, PromptEmbedding, stack_conditioning
from .flow import flow_match_scheduler, linspace_sigmas, shift_from_config


class LTXVideoAdapter(ModelAdapter):
    family = "ltx"
    display_name = "LTX-Video"
    pipeline_classes = ("LTXPipeline",)
    denoiser_io_like_pipeline_latents = True
    # method.md section 8: the paper ran LTX-Video 0.9.1 with 121 frames at 24 fps, 20 steps
    # and guidance 4.5 (121 frames are heavy; fewer frames are much cheaper).
    default_steps = 20
    default_guidance = 4.5
    # One step is a zero-length terminal-shifted schedule (NaN timesteps, in LTXPipeline too).
    min_steps = 2
    preferred_half = torch.bfloat16
    # Trained around 768 x 512; a 2K panorama gives 576 px views.
    native_view_px = 512
    min_view_px = 384
    default_size = "2K"
    typical_vae_scale_factor = 32
    is_video = True
    temporal_compression = 8
    default_frames = 121
    default_fps = 24
    max_sequence_length: ClassVar[int] = 128
    """T5 tokens per prompt, as LTXPipeline's default."""
    # The LTX-Video decoder is not causal: chunks need context after them too (diffusers'
    # own temporal tiling of this VAE overlaps one latent frame and blends).
    decode_context_latents: ClassVar[tuple[int, int]] = (2, 1)
    # Timestep-conditioned VAEs (LTX-Video 0.9.1 and later) decode slightly re-noised
    # latents; diffusers' LTX documentation recommends these values for them.
    decode_timestep: ClassVar[float] = 0.05
    decode_noise_scale: ClassVar[float] = 0.025

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(pipe, device, dtype)
        self.temporal_compression = int(pipe.vae_temporal_compression_ratio)
        self.patch_size = int(pipe.transformer_spatial_patch_size)
        self.patch_size_t = int(pipe.transformer_temporal_patch_size)
        self.grid_multiple = self.patch_size

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.transformer.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_spatial_compression_ratio)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        embeds, mask, _, _ = self.pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=False,
            num_videos_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
            device=self.device,
        )
        return PromptEmbedding(
            prompt, {"encoder_hidden_states": embeds.cpu(), "encoder_attention_mask": mask.cpu()}
        )

    # --- test hooks: LTXPipeline's latents are sequences of patches ----------------------
    def pipeline_latents(self, grid: torch.Tensor) -> torch.Tensor:
        return self.pipe._pack_latents(grid, self.patch_size, self.patch_size_t)

    def grid_from_pipeline_latents(
        self, latents: torch.Tensor, grid_shape: tuple[int, ...]
    ) -> torch.Tensor:
        *_, f, h, w = grid_shape
        p, pt = self.patch_size, self.patch_size_t
        return self.pipe._unpack_latents(latents, f, h // p, w // p, p, pt)

    def make_scheduler(self, steps: int, grid_hw: tuple[int, int], latent_frames: int = 1) -> Any:
        p, pt = self.patch_size, self.patch_size_t
        seq_len = (latent_frames // pt) * (grid_hw[0] // p) * (grid_hw[1] // p)
        # LTXPipeline passes mu whatever the config, with FLUX's sigmas.
        return flow_match_scheduler(
            self.pipe.scheduler,
            steps,
            self.device,
            mu=shift_from_config(self.pipe.scheduler.config, seq_len),
            sigmas=linspace_sigmas(steps),
        )

    @torch.no_grad()
    def denoise(self, inp: DenoiserInput, guidance: float, fps: float = 24) -> torch.Tensor:
        pipe = self.pipe
        transformer = pipe.transformer
        dtype = transformer.dtype
        if inp.latents.dim() != 5:
            shape = tuple(inp.latents.shape)
            raise ValueError(f"LTX-Video denoises (n, C, F, h, w) grids, got {shape}")
        _n, _c, f, h, w = inp.latents.shape
        p, pt = self.patch_size, self.patch_size_t
        cond = stack_conditioning(inp.conditioning, self.device, dtype)
        latents = inp.latents.to(device=self.device, dtype=dtype)
        packed = pipe._pack_latents(latents, p, pt)
        rope_interpolation_scale = (
            self.temporal_compression / float(fps),
            self.vae_scale_factor,
            self.vae_scale_factor,
        )
        out = transformer(
            hidden_states=packed,
            encoder_hidden_states=cond["encoder_hidden_states"],
            timestep=self.expand_timestep(inp),
            encoder_attention_mask=cond["encoder_attention_mask"],
            num_frames=f // pt,
            height=h // p,
            width=w // p,
            rope_interpolation_scale=rope_interpolation_scale,
            return_dict=False,
        )[0]
        out = pipe._unpack_latents(out.float(), f // pt, h // p, w // p, p, pt)
        return out.to(inp.latents.device)

    # --- decoding -----------------------------------------------------------------------
    @property
    def timestep_conditioning(self) -> bool:
        return bool(self.pipe.vae.config.get("timestep_conditioning", False))

    @property
    def decode_needs_noise(self) -> bool:
        return self.timestep_conditioning and self.decode_noise_scale > 0

    def to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.pipe.vae
        return self.pipe._denormalize_latents(
            latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor
        )

    def from_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The encoder's latents -> the denoiser's (LTXPipeline's ``_normalize_latents``;
        the live preview's fit encodes with it)."""
        vae = self.pipe.vae
        return self.pipe._normalize_latents(
            latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor
        )

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        vae = self.pipe.vae
        if latents.dim() != 5:
            shape = tuple(latents.shape)
            raise ValueError(f"LTX-Video decodes (n, C, F, h, w) latents, got {shape}")
        lat = self.to_vae_latents(latents.to(device=self.device, dtype=torch.float32))
        temb = None
        if self.timestep_conditioning:
            if noise is not None and self.decode_noise_scale > 0:
                s = self.decode_noise_scale
                lat = (1 - s) * lat + s * noise.to(device=lat.device, dtype=lat.dtype)
            temb = torch.full((lat.shape[0],), self.decode_timestep, device=self.device)
        lat = lat.to(vae.dtype)
        if temb is not None:
            temb = temb.to(vae.dtype)
        if temb is not None and getattr(vae, "use_slicing", False) and lat.shape[0] > 1:
            # AutoencoderKLLTXVideo.decode's own slicing loop mis-pairs latents and timesteps
            # (diffusers 0.3x-0.42); slice here instead.
            video = torch.cat(
                [
                    vae.decode(lat[i : i + 1], temb[i : i + 1], return_dict=False)[0]
                    for i in range(lat.shape[0])
                ]
            )
        else:
            video = vae.decode(lat, temb, return_dict=False)[0]
        # In place: a decoded clip is large, and the VAE's output is ours.
        return video.float().div_(2).add_(0.5).clamp_(0, 1)

    def enable_vae_memory_savers(self, tiling: bool = True, slicing: bool = True) -> bool:
        changed = super().enable_vae_memory_savers(tiling, slicing)
        vae = self.pipe.vae
        if tiling and not getattr(vae, "use_framewise_decoding", True):
            # Long clips: decode in overlapping chunks of frames too, not only spatial tiles.
            vae.use_framewise_decoding = True
            changed = True
        return changed

    def describe(self) -> dict[str, Any]:
        return super().describe() | {
            "decode_timestep": self.decode_timestep if self.timestep_conditioning else None
        }
