"""Wan 2.1 / 2.2 text-to-video (DiT over 1x2x2 patches, UMT5 text encoder, 8x / 4x video VAE).

The sphere holds the VAE's 16-channel latents normalised with the VAE's latents_mean /
latents_std (WanPipeline's sampling space). The transformer takes a view's
(n, C, F, h, w) grid directly and patches it itself, so grids only need even sides. The
schedule is the pipeline's own (flow-matching UniPC with a fixed shift; nothing depends on
the grid). Wan 2.2's two experts (``transformer_2`` below ``boundary_ratio``) and its
per-token timesteps (``expand_timesteps``) are followed as WanPipeline does.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch

from ..denoise import DenoiserInput
from .base import ModelAdapter, PromptEmbedding, stack_conditioning


class WanAdapter(ModelAdapter):
    family = "wan"
    display_name = "Wan"
    pipeline_classes = ("WanPipeline",)
    # WanPipeline's defaults (Wan2.1-T2V-1.3B: 81 frames at 16 fps, guidance 5).
    default_steps = 50
    default_guidance = 5.0
    preferred_half = torch.bfloat16
    # Wan's recipe keeps AutoencoderKLWan in float32 whatever the transformer's dtype.
    component_dtypes: ClassVar[dict[str, torch.dtype]] = {"vae": torch.float32}
    # Wan 2.1 1.3B: 832 x 480; a 2K panorama gives 560 px views.
    native_view_px = 480
    min_view_px = 360
    default_size = "2K"
    grid_multiple = 2
    is_video = True
    temporal_compression = 4
    default_frames = 81
    default_fps = 16
    # AutoencoderKLWan decodes causally, latent frame by latent frame, each causal conv
    # keeping two frames of the one before: a chunk needs context before it only, and
    # three latent frames bring the decoder's state close to a whole-clip decode's.
    decode_context_latents: ClassVar[tuple[int, int]] = (3, 0)
    max_sequence_length: ClassVar[int] = 512
    """UMT5 tokens per prompt, as WanPipeline's default."""

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(pipe, device, dtype)
        self.temporal_compression = int(pipe.vae_scale_factor_temporal)
        self.patch_size = tuple(int(v) for v in self._model.config.patch_size)  # (t, h, w)
        self.grid_multiple = max(self.patch_size[1], self.patch_size[2])
        ratio = pipe.config.get("boundary_ratio", None)
        self.boundary_timestep = (
            None if ratio is None else ratio * pipe.scheduler.config.num_train_timesteps
        )
        self.expand_timesteps = bool(pipe.config.get("expand_timesteps", False))

    @property
    def _model(self) -> Any:
        pipe = self.pipe
        return pipe.transformer if pipe.transformer is not None else pipe.transformer_2

    @property
    def latent_channels(self) -> int:
        return int(self._model.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        return int(self.pipe.vae_scale_factor_spatial)

    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        embeds, _ = self.pipe.encode_prompt(
            prompt,
            do_classifier_free_guidance=False,
            num_videos_per_prompt=1,
            max_sequence_length=self.max_sequence_length,
            device=self.device,
        )
        return PromptEmbedding(prompt, {"encoder_hidden_states": embeds.cpu()})

    def make_scheduler(self, steps: int, grid_hw: tuple[int, int], latent_frames: int = 1) -> Any:
        scheduler = copy.deepcopy(self.pipe.scheduler)
        scheduler.set_timesteps(steps, device=self.device)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)  # as WanPipeline: step i is the i-th timestep
        return scheduler

    def _model_for(self, t: torch.Tensor) -> Any:
        """Wan 2.2: the high-noise expert above the boundary, the low-noise one below."""
        pipe = self.pipe
        if self.boundary_timestep is None or float(t) >= self.boundary_timestep:
            return self._model
        return pipe.transformer_2 if pipe.transformer_2 is not None else pipe.transformer

    @torch.no_grad()
    def denoise(self, inp: DenoiserInput, guidance: float, fps: float = 16) -> torch.Tensor:
        if inp.latents.dim() != 5:
            raise ValueError(f"Wan denoises (n, C, F, h, w) grids, got {tuple(inp.latents.shape)}")
        model = self._model_for(inp.timestep)
        dtype = model.dtype
        n, _c, f, h, w = inp.latents.shape
        cond = stack_conditioning(inp.conditioning, self.device, dtype)
        timestep = self.expand_timestep(inp)
        if self.expand_timesteps:
            pt, ph, pw = self.patch_size
            seq_len = (f // pt) * (h // ph) * (w // pw)
            timestep = timestep[:, None].expand(n, seq_len)
        out = model(
            hidden_states=inp.latents.to(device=self.device, dtype=dtype),
            timestep=timestep,
            encoder_hidden_states=cond["encoder_hidden_states"],
            return_dict=False,
        )[0]
        return out.float().to(inp.latents.device)

    def to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        config = self.pipe.vae.config
        c = latents.shape[1]
        shape = (1, c) + (1,) * (latents.dim() - 2)
        mean = torch.tensor(config.latents_mean, dtype=latents.dtype, device=latents.device)
        std = torch.tensor(config.latents_std, dtype=latents.dtype, device=latents.device)
        return latents * std.view(shape) + mean.view(shape)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if latents.dim() != 5:
            raise ValueError(f"Wan decodes (n, C, F, h, w) latents, got {tuple(latents.shape)}")
        return super().decode(latents, noise)
