"""Wan 2.1 / 2.2 text-to-video (DiT over 1x2x2 patches, UMT5 text encoder, video VAE).

The sphere holds the VAE's latents normalised with the VAE's latents_mean / latents_std
(WanPipeline's sampling space): 16 channels at 8x / 4x for Wan 2.1 and Wan2.2-T2V-A14B,
48 channels at 16x / 4x for Wan2.2-TI2V-5B (its residual VAE patchifies 2x2 pixels before
an 8x encoder). The transformer takes a view's (n, C, F, h, w) grid directly and patches
it itself, so grids only need even sides. The schedule is the pipeline's own
(flow-matching UniPC with a fixed shift; nothing depends on the grid). Wan 2.2's two
experts (``transformer_2`` below ``boundary_ratio``, each with its own guidance scale) and
its per-token timesteps (``expand_timesteps``) are followed as WanPipeline does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..denoise import DenoiserInput, Guidance
from ..options import MAX_FRAMES
from .base import ModelAdapter, PromptEmbedding, ReleasedModel, stack_conditioning


@dataclass(frozen=True)
class WanExpertGuidance(Guidance):
    """Wan 2.2 A14B's CFG: ``scale`` while the high-noise expert runs (timestep >=
    ``boundary_timestep``), ``scale_2`` (WanPipeline's ``guidance_scale_2``) below it
    (pipeline_wan.py: ``current_guidance_scale``)."""

    scale_2: float = 1.0
    boundary_timestep: float = 0.0

    def scale_at(self, step_index: int, timestep: float) -> float | None:
        return self.scale if timestep >= self.boundary_timestep else self.scale_2


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

    @classmethod
    def released_models(cls) -> tuple[ReleasedModel, ...]:
        # Wan 2.1 and 2.2 A14B share the 8x VAE; TI2V-5B's is 16x, trained at 704 px.
        return (
            ReleasedModel("Wan 2.1 T2V / 2.2 T2V-A14B", cls.default_steps, True),
            ReleasedModel("Wan 2.2 TI2V-5B", cls.default_steps, True, 16, 704),
        )

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
        # WanPipeline takes guidance_scale_2 as a call argument only (it defaults to
        # guidance_scale); a model_index.json that records one is honoured.
        scale_2 = pipe.config.get("guidance_scale_2", None)
        self.guidance_scale_2 = None if scale_2 is None else float(scale_2)
        if self.vae_scale_factor >= 16:
            # Wan2.2-TI2V-5B (16x VAE): 121 frames at 24 fps, 704 x 1280 (the Wan 2.2
            # pipeline docs' example and the model card); the class defaults are Wan 2.1's.
            self.default_frames = 121
            self.default_fps = 24
            self.native_view_px = 704
            self.min_view_px = 528
            self.typical_vae_scale_factor = 16
        if pipe.vae.config.get("is_residual", False):
            # The Wan 2.2 residual VAE's decoder state carries every earlier latent frame
            # (measured on the tiny model: 3 frames of context leave a mean error of 60% of
            # the frame-to-frame motion, 5 frames 20%; the whole prefix is exact), so each
            # chunk is decoded with all the frames before it. Its decoder is causal and runs
            # frame by frame, so this costs time linear in the prefix, not memory.
            self.decode_context_latents = ((MAX_FRAMES - 1) // self.temporal_compression + 1, 0)

    @property
    def takes_guidance_2(self) -> bool:
        return self.boundary_timestep is not None

    def guidance_rule(self, guidance: float, options: Any) -> Guidance | None:
        """Plain CFG for one expert; with two, ``guidance`` above the boundary and
        ``guidance_scale_2`` (or ``guidance`` again) below it. CFG runs iff guidance > 1,
        as WanPipeline's ``do_classifier_free_guidance``."""
        rule = super().guidance_rule(guidance, options)
        if rule is None or self.boundary_timestep is None:
            return rule
        scale_2 = getattr(options, "guidance_2", None)
        if scale_2 is None:
            scale_2 = rule.scale if self.guidance_scale_2 is None else self.guidance_scale_2
        return WanExpertGuidance(rule.scale, scale_2, float(self.boundary_timestep))

    def grid_limit(self) -> tuple[int, str] | None:
        # WanRotaryPosEmbed slices rows [:patches] of a rope_max_seq_len-row table per axis.
        rows = int(self._model.config.get("rope_max_seq_len", 1024))
        side = rows * min(self.patch_size[1], self.patch_size[2])
        return (
            side,
            f"its rotary position table covers rope_max_seq_len = {rows} patches of "
            f"{self.patch_size[1]} latents per side",
        )

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

    def from_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The encoder's latents -> the denoiser's, as WanImageToVideoPipeline writes it:
        ``(latents - mean) / std`` (the live preview's fit encodes with it)."""
        config = self.pipe.vae.config
        c = latents.shape[1]
        shape = (1, c) + (1,) * (latents.dim() - 2)
        mean = torch.tensor(config.latents_mean, dtype=latents.dtype, device=latents.device)
        std = torch.tensor(config.latents_std, dtype=latents.dtype, device=latents.device)
        return (latents - mean.view(shape)) / std.view(shape)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if latents.dim() != 5:
            raise ValueError(f"Wan decodes (n, C, F, h, w) latents, got {tuple(latents.shape)}")
        return super().decode(latents, noise)
