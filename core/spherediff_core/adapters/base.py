"""The contract between the sphere engine and one family of diffusers models.

An adapter owns a loaded diffusers pipeline's components and knows three things the engine
does not: how to encode a prompt, how to run its denoiser on a batch of latent view grids,
and how to decode view latents to RGB. The sphere engine never sees a family.

Sphere points hold the VAE's latents as they are (C channels, one point per latent
pixel); families whose transformer packs 2x2 patches (FLUX, SD3) only ask for even grids
(``grid_multiple``) and pack inside :meth:`ModelAdapter.denoise`.

Video families (``is_video``) are the same contract with a time axis: their grids are
(n, C, F, h, w) with F latent frames, their VAE compresses time by
``temporal_compression`` (frames = (F - 1) * compression + 1), ``denoise`` gets the
frame rate and ``decode`` returns (n, 3, frames, H, W).
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..denoise import DenoiserInput, Guidance, StepState
from ..families import frames_rule, nearest_valid_frames

__all__ = [
    "ModelAdapter",
    "PromptEmbedding",
    "ReleasedModel",
    "frames_rule",
    "nearest_valid_frames",
    "stack_conditioning",
]


@dataclass(frozen=True)
class PromptEmbedding:
    """One encoded prompt: named tensors, each with a leading batch dimension of 1."""

    text: str
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class ReleasedModel:
    """One released model of a family as the size and cost tables show it, known without
    loading it (benchmarks/size_table.py). None: the family's class default."""

    name: str
    steps: int
    cfg: bool
    """Whether a negative pass runs at the default guidance."""
    vae_scale_factor: int | None = None
    native_view_px: int | None = None


def stack_conditioning(conds: list[PromptEmbedding], device, dtype) -> dict[str, torch.Tensor]:
    """Concatenate per-item embeddings into batch tensors, (n, ...) each.

    Items of a batch mostly share a few prompts, so each distinct prompt is moved once.
    """
    names = conds[0].tensors.keys()
    out: dict[str, torch.Tensor] = {}
    for name in names:
        cache: dict[int, torch.Tensor] = {}
        parts = []
        for c in conds:
            t = cache.get(id(c))
            if t is None:
                t = c.tensors[name].to(device=device)
                if t.is_floating_point():
                    t = t.to(dtype)
                cache[id(c)] = t
            parts.append(t)
        out[name] = torch.cat(parts)
    return out


class ModelAdapter(ABC):
    """One model family over diffusers components.

    Subclasses set the class attributes and implement the abstract methods; ``pipe`` is the
    loaded diffusers pipeline (used for its components and its ``encode_prompt``).
    """

    family: ClassVar[str]
    """Short family name, e.g. "sd", "sdxl", "sana", "flux", "sd3"."""
    pipeline_classes: ClassVar[tuple[str, ...]]
    """``_class_name`` values in model_index.json that this adapter drives."""
    default_steps: ClassVar[int] = 30
    default_guidance: ClassVar[float] = 7.5
    min_steps: ClassVar[int] = 1
    """The fewest sampling steps the family's schedule can make."""
    grid_multiple: ClassVar[int] = 1
    """The view grid's sides must be multiples of this (2 for 2x2-patch transformers)."""
    preferred_half: ClassVar[torch.dtype] = torch.float16
    """The half precision 'auto' picks on a GPU (bf16 for models trained in it)."""
    load_kwargs: ClassVar[dict[str, Any]] = {}
    """Extra keyword arguments for the pipeline's from_pretrained."""
    weight_variants: ClassVar[tuple[str | None, ...]] = (None,)
    """Weight file variants to try loading, in order (e.g. ("bf16", None): the bf16 files
    when the model has them, else the plain ones)."""
    component_dtypes: ClassVar[dict[str, torch.dtype]] = {}
    """Components that keep their own dtype whatever the precision (e.g. a VAE kept in
    float32, as the family's diffusers recipe does)."""
    display_name: ClassVar[str] = ""
    denoiser_io_like_pipeline_latents: ClassVar[bool] = False
    """The denoiser module takes and returns the pipeline's ``latents`` layout (packed
    tokens), so :meth:`grid_from_pipeline_latents` maps its captured calls too: a test hook."""
    pipeline_latents_in_model_dtype: ClassVar[bool] = False
    """The family's diffusers pipeline uses given ``latents=`` in the denoiser's dtype as
    they are (it draws its own noise in that dtype and never casts): a test hook."""
    """The family's name in messages, e.g. "LTX-Video" (the family code when empty)."""

    # --- sizes --------------------------------------------------------------------------
    native_view_px: ClassVar[int] = 512
    """The square image side (px) the model was trained at."""
    min_view_px: ClassVar[int | None] = None
    """Views smaller than this (px) degrade visibly; a size that gives them is flagged.
    None: three quarters of ``native_view_px``."""
    default_size: ClassVar[str] = "2K"
    typical_vae_scale_factor: ClassVar[int] = 8
    """Pixels per latent of the family's released models, for size advice before a model
    loads (a loaded adapter reads its VAE's own factor)."""
    """The ERP size preset used when neither size nor width is given: the one whose views
    (at the default FOV) are closest to what the model does well."""

    @classmethod
    def released_models(cls) -> tuple[ReleasedModel, ...]:
        """The family's released models with their defaults (the ones a loaded adapter
        switches to by config, e.g. FLUX.1-schnell's 4 steps), for the size tables."""
        cfg = cls.default_guidance > 1.0
        return (ReleasedModel(cls.display_name or cls.family, cls.default_steps, cfg),)

    @classmethod
    def smallest_good_view_px(cls) -> int:
        return cls.min_view_px if cls.min_view_px is not None else cls.native_view_px * 3 // 4

    # --- video --------------------------------------------------------------------------
    is_video: ClassVar[bool] = False
    """A video model: it makes frame sequences (and refuses stills); an image model the
    reverse."""
    temporal_compression: int = 1
    """Output frames per latent frame (after the first). A class default, read before a
    model loads; video adapters replace it with their VAE's value when they load."""
    default_frames: ClassVar[int] = 1
    default_fps: ClassVar[int | None] = None
    decode_context_latents: ClassVar[tuple[int, int]] = (2, 1)
    """(before, after): latent frames decoded around a chunk of a video's latents and
    dropped, so that the chunk's frames come out as in a whole-clip decode (the VAE
    decoder's temporal reach; a causal decoder needs none after). See
    pipeline.plan_frame_chunks."""

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.pipe = pipe
        self.device = torch.device(device)
        self.dtype = dtype

    # --- what the engine needs to know -------------------------------------------------
    @property
    @abstractmethod
    def latent_channels(self) -> int:
        """Channels of one sphere point (the VAE's latent channels)."""

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along one side."""
        return int(self.pipe.vae_scale_factor)

    def grid_limit(self) -> tuple[int, str] | None:
        """The largest view grid side (latents) the denoiser accepts and why; None: no limit.

        The pipeline refuses a larger grid before it builds any plan.
        """
        return None

    @property
    def name(self) -> str:
        return self.display_name or self.family

    def valid_frames(self, frames: int) -> bool:
        """Whether the model can make ``frames`` output frames ((k * compression) + 1)."""
        return frames >= 1 and (frames - 1) % self.temporal_compression == 0

    def latent_frames_for(self, frames: int) -> int:
        """Latent frames for ``frames`` output frames (1 for a still)."""
        return (frames - 1) // self.temporal_compression + 1

    def uses_cfg(self, guidance: float) -> bool:
        """Whether classifier-free guidance runs (guidance-distilled models embed it instead)."""
        return guidance > 1.0

    def cfg_scale(self, guidance: float, options: Any) -> float:
        """The classifier-free guidance scale the loop applies; 1.0 means no CFG (no
        negative pass). ``options`` is the GenerationOptions (FLUX reads its true CFG)."""
        return guidance if self.uses_cfg(guidance) else 1.0

    @property
    def takes_guidance_2(self) -> bool:
        """Whether the model has a second guidance (``options.guidance_2``): a second,
        low-noise expert (Wan 2.2 A14B). Elsewhere ``guidance_2`` is refused."""
        return False

    def guidance_rule(self, guidance: float, options: Any) -> Guidance | None:
        """How the loop guides: plain CFG at :meth:`cfg_scale` by default, None for no
        negative pass at all. A family whose pipeline guides otherwise returns its own
        :class:`~spherediff_core.denoise.Guidance` (per-step scale, another formula)."""
        scale = float(self.cfg_scale(guidance, options))
        return Guidance(scale) if scale != 1.0 else None

    # --- prompts ------------------------------------------------------------------------
    @abstractmethod
    def encode_prompt(self, prompt: str) -> PromptEmbedding:
        """Encode one (positive) prompt."""

    def encode_negative_prompt(self, prompt: str) -> PromptEmbedding:
        """Encode the negative prompt (the same as a positive one unless the family's
        pipeline treats it differently, e.g. SANA gives it no system instruction)."""
        return self.encode_prompt(prompt)

    # --- timesteps ----------------------------------------------------------------------
    def make_scheduler(self, steps: int, grid_hw: tuple[int, int], latent_frames: int = 1) -> Any:
        """A fresh copy of the pipeline's scheduler with ``set_timesteps`` done.

        ``grid_hw`` and ``latent_frames`` give the denoiser's input size, for families whose
        schedule shifts with the sequence length.
        """
        scheduler = copy.deepcopy(self.pipe.scheduler)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    # --- denoiser -----------------------------------------------------------------------
    @abstractmethod
    def denoise(self, inp: DenoiserInput, guidance: float) -> torch.Tensor:
        """Model output for a batch of grids, (n, C, [F,] h, w) float32 on the latents' device.

        Video adapters take the frame rate too: ``denoise(inp, guidance, fps=24)``.
        """

    # --- decoding -----------------------------------------------------------------------
    @property
    def decode_needs_noise(self) -> bool:
        """Whether :meth:`decode` wants a ``noise`` tensor shaped like its latents (a
        timestep-conditioned VAE that decodes slightly noised latents). The pipeline draws
        that noise on the sphere, so overlapping views get the same noise."""
        return False

    def decode(self, latents: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """View latents -> RGB in [0, 1], float32.

        Images: (n, C, h, w) -> (n, 3, h * s, w * s). Video: (n, C, F, h, w) ->
        (n, 3, frames, h * s, w * s), ``frames = (F - 1) * temporal_compression + 1``.
        """
        vae = self.pipe.vae
        lat = self.to_vae_latents(latents.to(device=self.device, dtype=vae.dtype))
        image = vae.decode(lat, return_dict=False)[0]
        # In place: a decoded video is large, and the VAE's output is ours.
        return image.float().div_(2).add_(0.5).clamp_(0, 1)

    def to_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The denoiser's latents -> the VAE decoder's (undo the scaling / normalisation)."""
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return latents / vae.config.scaling_factor + shift

    # --- encoding (known images) -------------------------------------------------------
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """RGB (n, 3, H, W) in [0, 1] -> the denoiser's latents (n, C, H / s, W / s).

        The VAE's encoder (its distribution's mode, or the latent of a deterministic
        encoder such as SANA's DC-AE), then :meth:`from_vae_latents`: the inverse of what
        :meth:`decode` undoes, as the family's img2img / inpaint pipelines encode."""
        vae = self.pipe.vae
        x = (images * 2.0 - 1.0).to(device=self.device, dtype=vae.dtype)
        out = vae.encode(x)
        dist = getattr(out, "latent_dist", None)
        lat = dist.mode() if dist is not None else out.latent
        return self.from_vae_latents(lat.float()).float()

    def from_vae_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE encoder's latents -> the denoiser's (the scaling / normalisation)."""
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return (latents - shift) * vae.config.scaling_factor

    # --- live preview (spherediff_core.preview) -----------------------------------------
    @torch.no_grad()
    def preview_fit_latents(self, images: torch.Tensor) -> torch.Tensor:
        """RGB (n, 3, H, W) in [0, 1] -> sphere-point latents (n, C, H / s, W / s), from
        which the live preview's linear latent -> RGB projection is fitted.

        :meth:`encode_images` (a sphere point's channels as the denoiser sees them,
        packed 2x2 tokens included); a video family's encoder takes each image as a
        one-frame clip and its one latent frame is kept."""
        if self.is_video:
            return self.encode_images(images[:, :, None])[:, :, 0]
        return self.encode_images(images)

    def predict_x0(self, scheduler: Any, state: StepState) -> torch.Tensor:
        """The predicted clean sphere latents of a finished step, shaped like
        ``state.sample``, float32 (:func:`spherediff_core.preview.predict_x0`: from the
        scheduler's prediction type and its own noise tables). A family whose model
        output is not a diffusers prediction type of its scheduler overrides this. The
        preview hands it the step narrowed to what it shows (a video's middle latent
        frame, the points of its pixels): the prediction must be point by point."""
        from ..preview import predict_x0

        return predict_x0(scheduler, state)

    # --- memory -------------------------------------------------------------------------
    def apply_memory_options(self, cpu_offload: bool, vae_tiling: bool, vae_slicing: bool) -> None:
        self.enable_vae_memory_savers(vae_tiling, vae_slicing)
        if cpu_offload and self.device.type != "cpu":
            self.pipe.enable_model_cpu_offload(device=self.device)
        else:
            self.pipe.to(self.device)

    def enable_vae_memory_savers(self, tiling: bool = True, slicing: bool = True) -> bool:
        """Turn on the VAE's tiled and/or sliced decoding; True when something changed."""
        vae = self.pipe.vae
        changed = False
        if tiling and hasattr(vae, "enable_tiling") and not getattr(vae, "use_tiling", False):
            vae.enable_tiling()
            changed = True
        if slicing and hasattr(vae, "enable_slicing") and not getattr(vae, "use_slicing", False):
            vae.enable_slicing()
            changed = True
        return changed

    # --- test hooks: how the family's diffusers pipeline and denoiser see the data ------
    # The family-generic tests (tests/core/test_parity.py, test_adapters.py) compare the
    # adapter with the family's own diffusers pipeline through these, with no per-family
    # branch. The defaults fit a UNet or transformer fed (n, C, h, w) latents and
    # ``encoder_hidden_states``.
    @property
    def denoiser_module(self) -> torch.nn.Module:
        """The network whose call receives the latents and the text (UNet or transformer)."""
        return getattr(self.pipe, "unet", None) or self.pipe.transformer

    def text_from_denoiser_call(self, args: tuple, kwargs: dict[str, Any]) -> list[torch.Tensor]:
        """Per batch item, the text embedding one call of :attr:`denoiser_module` got."""
        return list(kwargs["encoder_hidden_states"].unbind(0))

    def text_of(self, embedding: PromptEmbedding) -> torch.Tensor:
        """What :meth:`text_from_denoiser_call` shows for an item of that prompt."""
        return embedding.tensors["encoder_hidden_states"][0]

    def pipeline_latents(self, grid: torch.Tensor) -> torch.Tensor:
        """A view grid (1, C, [F,] h, w) float32 as the diffusers pipeline's ``latents=``
        argument (packed, in the dtype that pipeline draws its own noise in)."""
        return grid.to(self.denoiser_module.dtype) if self.pipeline_latents_in_model_dtype else grid

    def grid_from_pipeline_latents(
        self, latents: torch.Tensor, grid_shape: tuple[int, ...]
    ) -> torch.Tensor:
        """The pipeline's ``output_type="latent"`` result as a grid of ``grid_shape``."""
        return latents

    def grids_from_denoiser_call(
        self, args: tuple, kwargs: dict[str, Any], output: Any, grid_shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One captured call of :attr:`denoiser_module`: its latent input and its output,
        each as grids (n, C, [F,] h, w) with ``grid_shape``'s trailing sizes."""
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("sample"))
        out = output[0]
        if self.denoiser_io_like_pipeline_latents:
            return (
                self.grid_from_pipeline_latents(x, grid_shape),
                self.grid_from_pipeline_latents(out, grid_shape),
            )
        return x, out

    # --- helpers for subclasses -----------------------------------------------------------
    def expand_timestep(self, inp: DenoiserInput) -> torch.Tensor:
        """The scalar timestep as an (n,) tensor on the model's device."""
        t = inp.timestep.to(self.device)
        return t.reshape(1).expand(inp.latents.shape[0])

    def describe(self) -> dict[str, Any]:
        info = {
            "family": self.family,
            "pipeline_class": type(self.pipe).__name__,
            "latent_channels": self.latent_channels,
            "vae_scale_factor": self.vae_scale_factor,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }
        if self.is_video:
            info["temporal_compression"] = int(self.temporal_compression)
        return info


def ceil_to_multiple(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple - 1e-9) * multiple)
