"""Z-Image and Z-Image-Turbo (single-stream DiT, Qwen3 text, FLUX-style 16-channel VAE).

The sphere holds the VAE's 16-channel latents (scaled and shifted as FLUX.1's) in float32,
as ZImagePipeline keeps them; the transformer patchifies 2x2 inside, so grids have even sides.
ZImagePipeline differs from the other flow-matching pipelines in ways the adapter reproduces:

- the transformer takes lists: one (16, 1, h, w) latent and one unpadded (L, D) caption per
  item. It pads every caption to a multiple of 32 with a *learned* pad token, so a caption
  must not be zero-padded to another's length; the adapter keeps the list.
- it gets the reversed time ``(1000 - t) / 1000`` and predicts the negated velocity: the
  adapter hands the scheduler ``-output``, as the pipeline does.
- guidance is ``pos + g * (pos - neg)``, on for any g > 0 (:class:`ZImageGuidance`).

Turbo and base are the same pipeline class with the same transformer config; only the
scheduler config tells them apart (Turbo: ``shift=3.0`` static; base: ``shift=6.0``). Turbo's
defaults (8 steps, no guidance: the pipeline's own example) apply only when the scheduler config
is Turbo's; any other model gets ZImagePipeline.__call__'s defaults (50 steps, guidance 5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..denoise import DenoiserInput, Guidance
from .base import ModelAdapter, PromptEmbedding, ReleasedModel
from .flow import flow_match_scheduler

# Tongyi-MAI/Z-Image-Turbo's scheduler config (the keys that set its schedule).
TURBO_SCHEDULER = {"shift": 3.0, "use_dynamic_shifting": False}


def z_image_sigmas(steps: int) -> list[float]:
    """ZImagePipeline's sigmas: ``torch.linspace(1, 1 / steps, steps)`` in float32 (not
    np.linspace in float64 as FLUX: the values differ in the last bits)."""
    return torch.linspace(1.0, 1 / steps, steps).tolist()


@dataclass(frozen=True)
class ZImageGuidance(Guidance):
    """ZImagePipeline's guidance: ``pred = pos + g * (pos - neg)`` (``scale`` is g).

    Attributes:
        truncation: ``cfg_truncation``; no negative pass on steps whose normalised time
            ``(1000 - t) / 1000`` is above it (1.0, the pipeline's default: never).
        normalization: ``cfg_normalization``; when above 0 the guided prediction's norm is
            clipped to ``normalization`` times the positive one's. The pipeline takes the
            norms over its whole image; here they are over each view (equal in a one-view
            run, and the only form that keeps views independent on the sphere). 0.0 (the
            pipeline's default False): off.
    """

    truncation: float = 1.0
    normalization: float = 0.0

    def scale_at(self, step_index: int, timestep: float) -> float | None:
        if (1000.0 - timestep) / 1000.0 > self.truncation:
            return None
        return self.scale

    def combine(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        # The denoiser returns the negated predictions; negation is exact, so this is the
        # pipeline's -(pos + g * (pos - neg)) bit for bit.
        pred = cond + scale * (cond - uncond)
        if self.normalization > 0.0:
            dims = tuple(range(1, cond.ndim))
            pos_norm = torch.linalg.vector_norm(cond, dim=dims, keepdim=True)
            pred_norm = torch.linalg.vector_norm(pred, dim=dims, keepdim=True)
            max_norm = pos_norm * self.normalization
            pred = torch.where(pred_norm > max_norm, pred * (max_norm / pred_norm), pred)
        return pred


class ZImageAdapter(ModelAdapter):
    family = "zimage"
    pipeline_classes = ("ZImagePipeline",)
    display_name = "Z-Image"
    # ZImagePipeline.__call__ defaults (the base model's); Turbo's replace them on load.
    default_steps = 50
    default_guidance = 5.0
    turbo_steps: ClassVar[int] = 8
    turbo_guidance: ClassVar[float] = 0.0
    grid_multiple = 2
    preferred_half = torch.bfloat16
    native_view_px = 1024
    default_size = "4K"
    max_sequence_length = 512
    """Text tokens per prompt (ZImagePipeline.__call__'s default)."""
    cfg_truncation: ClassVar[float] = 1.0
    """ZImagePipeline's cfg_truncation default (off); GenerationOptions does not carry it."""
    cfg_normalization: ClassVar[float] = 0.0
    """ZImagePipeline's cfg_normalization default (False: off); not in GenerationOptions."""

    @classmethod
    def released_models(cls) -> tuple[ReleasedModel, ...]:
        # CFG for any guidance above 0 (Turbo's is 0).
        return (
            ReleasedModel("Z-Image-Turbo", cls.turbo_steps, cls.turbo_guidance > 0),
            ReleasedModel("Z-Image", cls.default_steps, cls.default_guidance > 0),
        )

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__(pipe, device, dtype)
        config = pipe.scheduler.config
        self.is_turbo = all(config.get(k) == v for k, v in TURBO_SCHEDULER.items())
        if self.is_turbo:
            self.default_steps = self.turbo_steps
            self.default_guidance = self.turbo_guidance

    @property
    def latent_channels(self) -> int:
        return int(self.pipe.transformer.config.in_channels)

    def grid_limit(self) -> tuple[int, str] | None:
        # Image rows and columns index RoPE tables of axes_lens[1] and [2] patch positions; a
        # larger grid reads past their end (IndexError on the CPU, a device assert on CUDA).
        config = self.pipe.transformer.config
        patches = min(int(config.axes_lens[1]), int(config.axes_lens[2]))
        patch = int(config.all_patch_size[0])
        return patches * patch, f"its position tables hold {patches} patches per side"

    def uses_cfg(self, guidance: float) -> bool:
        # ZImagePipeline.do_classifier_free_guidance: guidance_scale > 0 (not > 1).
        return guidance > 0.0

    def cfg_scale(self, guidance: float, options: Any) -> float:
        # pos + g (pos - neg) is neg + (1 + g)(pos - neg): the plain-CFG scale is 1 + g.
        return 1.0 + float(guidance) if self.uses_cfg(guidance) else 1.0

    def guidance_rule(self, guidance: float, options: Any) -> Guidance | None:
        if not self.uses_cfg(guidance):
            return None
        return ZImageGuidance(
            float(guidance), truncation=self.cfg_truncation, normalization=self.cfg_normalization
        )

    def describe(self) -> dict[str, Any]:
        return super().describe() | {"variant": "turbo" if self.is_turbo else "base"}

    # --- prompts ------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        """(1, L, D) embeddings of the prompt's L real tokens (Qwen3's second-to-last layer)."""
        (embeds,) = self.pipe._encode_prompt(
            prompt, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return PromptEmbedding(prompt, {"encoder_hidden_states": embeds[None].cpu()})

    # --- timesteps ----------------------------------------------------------------------
    def make_scheduler(self, steps: int, grid_hw: tuple[int, int], latent_frames: int = 1) -> Any:
        # ZImagePipeline: torch.linspace sigmas; mu from the patch count (used only by a
        # dynamic-shifting config: both released models shift statically).
        scheduler = flow_match_scheduler(
            self.pipe.scheduler,
            steps,
            self.device,
            image_seq_len=(grid_hw[0] // 2) * (grid_hw[1] // 2),
            sigmas=z_image_sigmas(steps),
        )
        scheduler.set_begin_index(0)
        return scheduler

    # --- denoiser -----------------------------------------------------------------------
    @torch.no_grad()
    def denoise(self, inp: DenoiserInput, guidance: float) -> torch.Tensor:
        """(n, 16, h, w) grids -> (n, 16, h, w) flow velocity for the scheduler, float32
        (the transformer's output negated, as ZImagePipeline steps with it)."""
        transformer = self.pipe.transformer
        dtype = transformer.dtype
        latents = inp.latents.to(device=self.device, dtype=dtype)
        timestep = (1000 - self.expand_timestep(inp)) / 1000
        texts: dict[int, torch.Tensor] = {}  # each distinct prompt moved once
        for c in inp.conditioning:
            if id(c) not in texts:
                texts[id(c)] = c.tensors["encoder_hidden_states"][0].to(self.device, dtype)
        captions = [texts[id(c)] for c in inp.conditioning]
        out = transformer(
            list(latents.unsqueeze(2).unbind(0)),
            timestep,
            captions,
            return_dict=False,
        )[0]
        pred = torch.stack([o.float() for o in out]).squeeze(2)
        return (-pred).to(inp.latents.device)

    # --- test hooks: the transformer takes and returns lists ------------------------------
    def text_from_denoiser_call(self, args: tuple, kwargs: dict[str, Any]) -> list[torch.Tensor]:
        return list(args[2] if len(args) > 2 else kwargs["cap_feats"])

    def grids_from_denoiser_call(
        self, args: tuple, kwargs: dict[str, Any], output: Any, grid_shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The input and the output as (n, 16, h, w) grids; the output negated, as
        :meth:`denoise` returns it."""
        x = args[0] if args else kwargs["x"]
        return torch.stack(list(x)).squeeze(2), -torch.stack(list(output[0])).squeeze(2)
