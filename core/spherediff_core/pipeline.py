"""Text to 360-degree panorama: the SphereDiff pipeline over a model adapter.

``SphereDiffPipeline.from_pretrained(model)`` detects the model family from the folder's
``model_index.json`` and loads it through diffusers' ``from_pretrained`` (safetensors only,
never remote code). Calling the pipeline with :class:`GenerationOptions` runs the sphere
engine and returns a :class:`GenerationResult` holding the ERP image, or for a video model
(``options.video``) one ERP image per frame.

Stills and video share every step; video only adds a time axis: sphere latents
(1, C, F_lat, N), view grids (n, C, F_lat, h, w) through the video denoiser, and a clip
decoded, blended and handed on a chunk of latent frames at a time (:func:`plan_frame_chunks`):
each view's latents for the chunk (with a little leading context) go through the video VAE
to (n, 3, frames, H, W) and are blended into an ERP canvas that holds only the chunk's
frames, on the generation's device. Peak memory follows the chunk, not the clip. A loop
(``options.loop``) denoises a time-cyclic latent (:func:`loop_shift`) and decodes it with
wrapped context, so the last frame leads into the first.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import geometry
from .adapters import ADAPTERS, adapter_class_for
from .adapters.base import ModelAdapter, PromptEmbedding, ceil_to_multiple
from .denoise import (
    DenoiseProgress,
    GenerationCancelled,
    Guidance,
    init_noise_sigma,
    pool_noise,
    prepare_sphere_latents,
    sphere_denoise,
)
from .erp import ErpCanvas
from .errors import (
    BadInputError,
    BrokenModelError,
    CancelledError,
    ModelNotFoundError,
    OutOfMemoryError,
    UnsupportedModelError,
)
from .families import check_video_request
from .fusion import gather_views
from .known import ImagePlacement, KnownRegion, footprint, known_grid_size, sample_grid
from .modelcheck import (
    check_component_classes,
    check_component_modules,
    check_model_folder,
    read_model_index,
)
from .options import SIZE_PRESETS, GenerationOptions, OptionsError
from .plan import PlanConfig, SamplingPlan, load_or_build_plan
from .progress import Progress

if TYPE_CHECKING:
    from .distributed import DistContext
    from .preview import PreviewSink

__all__ = [
    "DecodeChunk",
    "FrameChunk",
    "GenerationResult",
    "Progress",
    "Request",
    "SizeAdvice",
    "SphereDiffPipeline",
    "check_grid_limit",
    "check_video_request",
    "loop_shift",
    "plan_config_for",
    "plan_frame_chunks",
    "resolve_device",
    "resolve_request",
    "resolve_size",
    "route_prompts",
    "size_advice",
]

DECODE_BUDGET_VALUES = 2**27
"""Decoded values (3 x frames x H x W per view) a video decode batch may hold: 512 MiB in
float32. Video views are decoded fewer at a time than ``view_batch_size`` above it."""
CANVAS_BUDGET_VALUES = 2**27
"""ERP values (3 x frames x H x W) one chunk of a video's canvas may hold: 512 MiB in
float32 (about 21 frames at 2K, 5 at 4K). A chunk has at least MIN_CHUNK_LATENTS latent
frames (one latent frame of LTX-Video is 8 frames: 0.8 GiB at 4K). Small chunks keep a long
clip's peak memory that of a short one; each costs its decoding context (see
plan_frame_chunks)."""
MIN_CHUNK_LATENTS = 1
LOOP_SHIFT_STRIDE = 0.6180339887498949
"""Golden-ratio stride of the loop's per-step time shift: the offsets spread evenly over
the clip whatever the number of steps."""

logger = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    """What a generation made.

    Attributes:
        image: (3, H, W) float32 ERP image in [0, 1] (sRGB-encoded values, as decoded).
            For a video: its first frame (a view into ``frames``, no copy).
        options: the options used, with family defaults filled in (steps, guidance, and
            for a video frames and fps; both None for a still).
        n_points, grid, n_views: the sphere and view configuration.
        timings: seconds per phase (plan, encode, denoise, decode, erp, total) and the time
            spent inside the denoiser and the VAE alone (denoiser, vae).
        model: family, pipeline class, dtype, device, source and revision.
        frames: video only: (F, 3, H, W) float32 ERP frames in [0, 1]; None for a still,
            and None for a video whose frames went to a ``frame_sink`` chunk by chunk.
        fps: video only: the frame rate; None for a still.
        frame_count: the frames made (1 for a still; for a loop, one fewer than asked).
        view_px: the decoded side of one view, in pixels.
        distributed: the layout of a torchrun run (world_size, backend, views_per_rank:
            the views each rank denoised and decoded); None for one process.
        warnings: notes for the user about this generation (e.g. views far below the
            model's native size), each a sentence.
    """

    image: torch.Tensor
    options: GenerationOptions
    n_points: int
    grid: tuple[int, int]
    n_views: int
    timings: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    frames: torch.Tensor | None = None
    fps: int | None = None
    view_px: int = 0
    warnings: list[str] = field(default_factory=list)
    frame_count: int = 1
    distributed: dict[str, Any] | None = None

    @property
    def is_video(self) -> bool:
        return self.fps is not None

    @property
    def n_frames(self) -> int:
        """Frames made: 1 for a still."""
        return int(self.frames.shape[0]) if self.frames is not None else self.frame_count


@dataclass(frozen=True)
class FrameChunk:
    """Consecutive ERP frames of a video, handed to a ``frame_sink`` as they are made.

    Attributes:
        start: the 0-based index of the first frame in the clip.
        frames: (f, 3, H, W) float32 ERP frames in [0, 1], on the CPU.
        total: the clip's frame count.
        result: the generation so far: options, model, sphere and views (``frames`` None,
            ``image`` the clip's first frame, ``timings`` still growing).
    """

    start: int
    frames: torch.Tensor
    total: int
    result: GenerationResult


@dataclass(frozen=True)
class DecodeChunk:
    """One chunk of a video's latent frames to decode (see :func:`plan_frame_chunks`).

    ``latent_ids`` are the sphere's latent frames decoded, context included; of the
    decoded ``(len(latent_ids) - 1) * compression + 1`` frames, ``n_frames`` from
    ``offset`` on are the clip's frames ``start .. start + n_frames - 1``.
    """

    latent_ids: tuple[int, ...]
    start: int
    n_frames: int
    offset: int = 0


def plan_frame_chunks(
    latent_frames: int,
    compression: int,
    latents_per_chunk: int,
    *,
    loop: bool = False,
    context: tuple[int, int] = (2, 1),
) -> list[DecodeChunk]:
    """Split a clip's latent frames into chunks decoded one after the other.

    A video VAE decodes latent frame 0 to one frame and every later one to
    ``compression`` frames. A chunk is decoded with up to ``context = (before, after)``
    latent frames around it (the VAE's temporal reach: a causal decoder needs none
    after), whose frames are dropped; the clip's first chunk has none before, its last
    none after. A loop's latents are cyclic: every chunk gets its full context, wrapping
    around the clip, so the clip has ``latent_frames * compression`` frames and the seam
    from the last to the first is decoded like any other boundary.
    """
    before, after = context
    if latent_frames < 1 or compression < 1 or latents_per_chunk < 1 or before < 1 or after < 0:
        raise ValueError(
            f"need positive sizes, got {latent_frames} latent frames, compression "
            f"{compression}, {latents_per_chunk} per chunk, context {context}"
        )
    m, c = latent_frames, compression
    if loop:  # a context past one whole cycle would decode the same frames again
        before, after = min(before, m), min(after, m)
    chunks = []
    for a in range(0, m, latents_per_chunk):
        b = min(m, a + latents_per_chunk)
        if loop:
            ids = [i % m for i in range(a - before, b + after)]
            chunks.append(DecodeChunk(tuple(ids), a * c, (b - a) * c, (before - 1) * c + 1))
            continue
        p, q = min(before, a), min(after, m - b)
        ids = list(range(a - p, b + q))
        if a == 0:
            chunks.append(DecodeChunk(tuple(ids), 0, (b - 1) * c + 1, 0))
        else:
            chunks.append(DecodeChunk(tuple(ids), (a - 1) * c + 1, (b - a) * c, (p - 1) * c + 1))
    return chunks


def loop_shift(step_index: int, latent_frames: int) -> int:
    """The time shift (latent frames) of a loop's denoiser input at a step.

    The denoiser sees the cyclic latents rolled by this many frames (and its output is
    rolled back), so over the steps every boundary between latent frames, the wrap from
    the last to the first included, lies inside the model's window and is denoised as
    motion between neighbours. Golden-ratio offsets cover the clip evenly; step 0 is
    already shifted, since the first steps lay out the motion.
    """
    return int(((step_index + 1) * LOOP_SHIFT_STRIDE) % 1.0 * latent_frames)


@dataclass(frozen=True)
class Request:
    """What one call makes, with the family's defaults filled in (see resolve_request).

    ``frames`` and ``latent_frames`` are 1 and ``fps`` None for a still. ``cfg`` is how
    the loop guides (the adapter's :meth:`ModelAdapter.guidance_rule`; None: no negative
    prompt and no negative pass). A ``loop`` makes ``out_frames`` = ``frames`` - 1 frames
    from ``latent_frames`` cyclic latent frames.
    """

    steps: int
    guidance: float
    cfg: Guidance | None
    video: bool
    frames: int = 1
    fps: int | None = None
    latent_frames: int = 1
    loop: bool = False

    @property
    def do_cfg(self) -> bool:
        """Whether a negative prompt is encoded and negative passes run."""
        return self.cfg is not None

    @property
    def cfg_scale(self) -> float:
        """The guidance rule's scale (for most families the guidance, for FLUX.1 its true
        CFG scale); 1.0 without CFG."""
        return float(self.cfg.scale) if self.cfg is not None else 1.0

    @property
    def out_frames(self) -> int:
        """The frames made: ``frames``, less the closing one of a loop."""
        return self.frames - 1 if self.loop else self.frames


def resolve_request(options: GenerationOptions, adapter: ModelAdapter) -> Request:
    """Fill in the family's defaults and refuse what the model cannot make
    (see :func:`check_video_request`)."""
    steps = options.steps if options.steps is not None else adapter.default_steps
    guidance = options.guidance if options.guidance is not None else adapter.default_guidance
    if options.guidance_2 is not None and not adapter.takes_guidance_2:
        raise OptionsError(
            "guidance_2",
            f"{options.guidance_2} is set, but {adapter.name} has one denoiser and one "
            "guidance; leave guidance_2 unset (it is the low-noise expert's guidance of "
            "Wan 2.2 A14B)",
        )
    cfg = adapter.guidance_rule(guidance, options)
    if steps < adapter.min_steps:
        raise OptionsError(
            "steps",
            f"{steps} is too few for {adapter.name}; use {adapter.min_steps} or more",
        )
    video = check_video_request(options, adapter)
    if video is None:
        return Request(steps, guidance, cfg, video=False)
    frames, fps, latent_frames = video
    return Request(steps, guidance, cfg, True, frames, fps, latent_frames, options.loop)


def resolve_size(
    options: GenerationOptions, adapter: ModelAdapter | type[ModelAdapter]
) -> GenerationOptions:
    """The options with the family's default size filled in when neither ``size`` nor
    ``width`` was given (a copy; explicit sizes are kept as they are)."""
    if options.size_given or options.n_points is not None:
        return options
    return dataclasses.replace(options, size=adapter.default_size)


@dataclass(frozen=True)
class SizeAdvice:
    """How a size suits a model: its views' decoded side against the model's native one.

    ``note`` is a sentence for the user when the views are far below the native size, or
    over twice it (None otherwise)."""

    width: int
    view_px: int
    native_view_px: int
    note: str | None


def size_advice(
    options: GenerationOptions, adapter: ModelAdapter | type[ModelAdapter]
) -> SizeAdvice:
    """The view size a request gives on a family, with a note when it is far below what
    the model was trained for (the family's ``smallest_good_view_px``)."""
    options = resolve_size(options, adapter)
    config = plan_config_for(options, _vae_factor(adapter), int(adapter.grid_multiple))
    view_px = config.grid_size[1] * _vae_factor(adapter)
    name = adapter.display_name or adapter.family
    note = None
    if view_px < adapter.smallest_good_view_px():
        better = [
            label
            for label, width in SIZE_PRESETS.items()
            if _view_px_at(width, options, adapter) >= adapter.smallest_good_view_px()
        ]
        hint = f"choose {better[0]} or larger" if better else "choose a larger size"
        note = (
            f"views of {view_px} px are far below {name}'s native {adapter.native_view_px} px "
            f"(at width {options.resolved_width}), so detail will suffer; {hint} "
            f"(the {name} default is {adapter.default_size})"
        )
    elif view_px > 2 * adapter.native_view_px:
        note = (
            f"views of {view_px} px are over twice {name}'s native {adapter.native_view_px} px "
            f"(at width {options.resolved_width}); it may repeat objects within a view "
            f"(the {name} default is {adapter.default_size})"
        )
    return SizeAdvice(options.resolved_width, view_px, adapter.native_view_px, note)


def _vae_factor(adapter: ModelAdapter | type[ModelAdapter]) -> int:
    """The VAE factor of a loaded adapter, or a class's typical one (before loading)."""
    if isinstance(adapter, ModelAdapter):
        return int(adapter.vae_scale_factor)
    return int(adapter.typical_vae_scale_factor)


def _view_px_at(width: int, options: GenerationOptions, adapter: Any) -> int:
    at = dataclasses.replace(options, size=None, width=width, n_points=None)
    config = plan_config_for(at, _vae_factor(adapter), int(adapter.grid_multiple))
    return config.grid_size[1] * _vae_factor(adapter)


def step_kwargs_for(scheduler: Any, generator: torch.Generator) -> dict[str, Any]:
    """``scheduler.step``'s extra arguments: the seeded generator for schedulers that draw
    noise (ancestral, SDE), as diffusers' pipelines pass it."""
    params = inspect.signature(scheduler.step).parameters
    return {"generator": generator} if "generator" in params else {}


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; an explicit device must be available."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(
            f"device: {device!r} was asked for but this PyTorch sees no CUDA GPU "
            f"(torch {torch.__version__}); use device 'auto' or 'cpu', or install a CUDA build"
        )
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise BadInputError(
            "device: 'mps' was asked for but Metal is not available here; use 'auto' or 'cpu'"
        )
    return torch.device(device)


def resolve_dtype(precision: str, device: torch.device, preferred_half: torch.dtype) -> torch.dtype:
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    # auto: half precision on accelerators, float32 on the CPU (half is slow or unsupported).
    return preferred_half if device.type in ("cuda", "mps") else torch.float32


def plan_config_for(
    options: GenerationOptions, vae_scale_factor: int, grid_multiple: int
) -> PlanConfig:
    """The sphere and view grid for an output width (or an explicit ``n_points``).

    A view's decoded image should have the ERP's pixel density at its centre: an ERP of
    width W has W / (2 pi) pixels per radian, and a view of horizontal FOV a spans
    2 tan(a / 2) radians on its image plane, so it needs W tan(a / 2) / pi pixels, i.e.
    that many divided by the VAE factor latents. (2,048 px with SANA's 32x VAE: 18 x 18.)
    The number of points then follows from the grid (geometry.grid_side_for's inverse).
    """
    if options.n_points is not None:
        side = geometry.grid_side_for(options.n_points, options.fov_deg)
        side = max(grid_multiple, side - side % grid_multiple)
        n_points = options.n_points
    else:
        pixels = options.resolved_width * math.tan(math.radians(options.fov_deg) / 2) / math.pi
        side = ceil_to_multiple(max(pixels / vae_scale_factor, 2.0), grid_multiple)
        solid = geometry.view_solid_angle(options.fov_deg)
        n_points = math.ceil(side * side * 4.0 * math.pi / solid) + 1
    return PlanConfig(
        n_points=n_points,
        fov_deg=options.fov_deg,
        overlap=options.overlap,
        grid_height=side,
        grid_width=side,
        method=options.sampling,
        temperature=options.temperature,
    )


def check_grid_limit(config: PlanConfig, options: GenerationOptions, adapter: ModelAdapter) -> None:
    """Refuse a view grid larger than the model's denoiser accepts (e.g. SD3's position
    embedding), naming the limit and the largest width that fits."""
    limit = adapter.grid_limit()
    if limit is None:
        return
    max_side, why = limit
    h, w = config.grid_size
    if max(h, w) <= max_side:
        return
    fits = max_side - max_side % adapter.grid_multiple
    # plan_config_for's side is width * tan(fov / 2) / pi / vae_scale_factor, rounded up.
    tan_half = math.tan(math.radians(options.fov_deg) / 2)
    max_width = int(fits * adapter.vae_scale_factor * math.pi / tan_half) // 2 * 2
    if options.n_points is not None:
        hint = "use fewer n_points (or a narrower fov_deg)"
    else:
        hint = (
            f"choose a smaller size: a width of at most {max_width} px "
            f"at fov_deg {options.fov_deg:g}"
        )
    raise BadInputError(
        f"the views would need a {h} x {w} latent grid, but this {adapter.family} model takes at "
        f"most {max_side} x {max_side} ({why}); {hint}"
    )


def route_prompts(
    plan: SamplingPlan, prompt: str, sky: str | None, horizon: str | None, ground: str | None
) -> list[str]:
    """The prompt of every view (method.md section 6).

    Views on the equator ring get the horizon prompt, views above it the sky prompt and
    views below it the ground prompt; each falls back to the main prompt when unset.
    """
    out = []
    for lat in plan.lat_rad.tolist():
        if lat > 1e-6:
            out.append(sky or prompt)
        elif lat < -1e-6:
            out.append(ground or prompt)
        else:
            out.append(horizon or prompt)
    return out


class SphereDiffPipeline:
    """Panorama generation with one loaded model.

    Example::

        pipe = SphereDiffPipeline.from_pretrained("path/or/hub-id")
        result = pipe(GenerationOptions(prompt="a misty pine forest at dawn"))
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        source: str = "",
        revision: str | None = None,
        plan_cache_dir: str | Path | None = None,
        dist: DistContext | None = None,
    ) -> None:
        self.adapter = adapter
        self.source = source
        self.revision = revision
        self.plan_cache_dir = plan_cache_dir
        # Set: this process is one rank of a torchrun job (spherediff_core.distributed).
        self.dist = dist
        # Kept between calls (a serving worker runs many jobs on one pipeline): an artist
        # changes a word or the seed, so most prompts and plans come back.
        self._prompts: collections.OrderedDict[tuple[str, str], PromptEmbedding] = (
            collections.OrderedDict()
        )
        self._plans: collections.OrderedDict[str, SamplingPlan] = collections.OrderedDict()

    @classmethod
    def from_pretrained(
        cls,
        model: str,
        *,
        revision: str | None = None,
        device: str = "auto",
        precision: str = "auto",
        offline: bool = False,
        cache_dir: str | None = None,
        cpu_offload: bool = False,
        vae_tiling: bool = False,
        vae_slicing: bool = False,
        plan_cache_dir: str | Path | None = None,
        dist: DistContext | None = None,
    ) -> SphereDiffPipeline:
        """Detect the family from model_index.json and load the model with diffusers.

        ``dist``: this process is one rank of a torchrun job; 'auto'/'cuda' then mean
        ``cuda:LOCAL_RANK``."""
        import diffusers
        from huggingface_hub import constants as hub_constants

        offline = offline or bool(hub_constants.HF_HUB_OFFLINE)
        index = read_model_index(model, revision, offline, cache_dir)
        adapter_cls = adapter_class_for(index, model)
        check_component_modules(index, model)
        if Path(model).expanduser().is_dir():
            skip = tuple(k for k, v in adapter_cls.load_kwargs.items() if v is None)
            check_model_folder(model, index, skip)
        torch_device = resolve_device(device)
        if dist is not None:
            torch_device = dist.device(torch_device)
        dtype = resolve_dtype(precision, torch_device, adapter_cls.preferred_half)
        import transformers

        check_component_classes(
            index, model, {"diffusers": diffusers, "transformers": transformers}
        )
        pipeline_cls = getattr(diffusers, index["_class_name"])
        # Newer diffusers renamed torch_dtype to dtype (and warn on the old name).
        from diffusers.pipelines import pipeline_utils

        dtype_kw = "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"
        # Components the family keeps in their own dtype (Wan's VAE in float32) load in it.
        load_dtype: Any = dtype
        if adapter_cls.component_dtypes:
            load_dtype = {"default": dtype, **adapter_cls.component_dtypes}
        pipe = None
        variants = adapter_cls.weight_variants
        for i, variant in enumerate(variants):
            extra = {} if variant is None else {"variant": variant}
            try:
                pipe = pipeline_cls.from_pretrained(
                    model,
                    revision=revision,
                    **{dtype_kw: load_dtype},
                    use_safetensors=True,
                    local_files_only=offline,
                    cache_dir=cache_dir,
                    **adapter_cls.load_kwargs,
                    **extra,
                )
                break
            except (OSError, ValueError, RuntimeError) as exc:
                # No files of this variant (locally, in the cache or on the Hub; diffusers'
                # wording differs between releases and sources): try the next one. A model
                # that is missing altogether fails the last try, with its own error.
                if i + 1 < len(variants):
                    logger.info("%s: no %s weight files (%s); trying the next", model, variant, exc)
                    continue
                raise _load_error(model, exc) from exc
        for name, component_dtype in adapter_cls.component_dtypes.items():
            component = getattr(pipe, name, None)
            if component is not None and component.dtype != component_dtype:
                component.to(component_dtype)  # diffusers without per-component dtypes
        adapter = adapter_cls(pipe, torch_device, dtype)
        adapter.apply_memory_options(cpu_offload, vae_tiling, vae_slicing)
        return cls(
            adapter, source=model, revision=revision, plan_cache_dir=plan_cache_dir, dist=dist
        )

    @torch.no_grad()
    def __call__(
        self,
        options: GenerationOptions,
        callback: Callable[[Progress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        frame_sink: Callable[[FrameChunk], None] | None = None,
        preview: PreviewSink | None = None,
    ) -> GenerationResult:
        """Generate. A video's frames come back in ``result.frames``, or, with
        ``frame_sink``, are handed to it chunk by chunk (:class:`FrameChunk`) and not kept,
        so memory holds one chunk of the clip (how :mod:`.runner` writes a video).

        ``preview``: a :class:`~spherediff_core.preview.PreviewSink` that gets the live
        preview while denoising (its caller closes it)."""
        adapter = self.adapter
        timings: dict[str, float] = {"denoiser": 0.0, "vae": 0.0, "erp": 0.0}
        t_start = time.perf_counter()

        # 1. Check inputs, fill in the family's defaults (size, and the frames of a video)
        options.validate()
        options = resolve_size(options, adapter)
        request = resolve_request(options, adapter)
        advice = size_advice(options, adapter)
        warnings = [] if advice.note is None else [advice.note]
        for note in warnings:
            logger.warning("%s", note)

        # 2. Sampling plan (cached on disk)
        with _timed(timings, "plan"):
            config = plan_config_for(options, adapter.vae_scale_factor, adapter.grid_multiple)
            check_grid_limit(config, options, adapter)
            plan = self._plan(config, should_cancel)

        # 3. Encode prompts: each distinct prompt once, routed to views by elevation
        with _timed(timings, "encode"):
            conditioning, negative = self._encode_prompts(plan, options, request.do_cfg)

        # 4. Prepare timesteps
        scheduler = adapter.make_scheduler(request.steps, plan.grid_size, request.latent_frames)

        # 5. Prepare latents, (1, C, N) or (1, C, F_lat, N): drawn on the CPU, so the same
        #    seed gives the same noise anywhere
        generator = torch.Generator("cpu").manual_seed(options.seed)
        noise = self._noise(plan, request, generator, self._final_n_points(options))
        latents = (noise * init_noise_sigma(scheduler)).to(adapter.device)

        # 6. A known image: its latents on the sphere, held while denoising
        known = None
        if options.image is not None:
            with _timed(timings, "encode_image"):
                known = self._known_region(plan, options, len(scheduler.timesteps))

        # 7. Denoising loop on the sphere
        run = _Run(options, request, plan, timings, callback, should_cancel, warnings)
        with _timed(timings, "denoise"):
            step_kwargs = step_kwargs_for(scheduler, generator)
            latents = self._denoise(
                run, scheduler, latents, conditioning, negative, step_kwargs, known, noise, preview
            )

        # 8. Decode every view with the VAE, blending it into the ERP canvas as it comes;
        #    a video a chunk of frames at a time, each handed on when it is complete
        result = self._result(run)
        with _timed(timings, "decode"):
            self._decode_to_erp(run, latents, generator, result, frame_sink)
        timings["decode"] -= timings["erp"]

        # 9. The ERP image, or one ERP image per frame
        timings["total"] = time.perf_counter() - t_start
        return result

    # --- the steps of __call__ ------------------------------------------------------------
    def _plan(self, config: PlanConfig, should_cancel: Callable[[], bool] | None) -> SamplingPlan:
        """The sampling plan; in a distributed run rank 0 builds and caches it while the
        others wait, then they load it (or, on another machine, build the same plan)."""
        dist = self.dist
        key = config.cache_key()
        if dist is None and key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        if dist is None or dist.is_root:
            plan = load_or_build_plan(config, self.plan_cache_dir, should_cancel)
        if dist is not None:
            dist.barrier()
            if not dist.is_root:
                plan = load_or_build_plan(config, self.plan_cache_dir, should_cancel)
        else:
            _remember(self._plans, key, plan, KEEP_PLANS)
        return plan

    def _encode_prompts(
        self, plan: SamplingPlan, options: GenerationOptions, do_cfg: bool
    ) -> tuple[list[PromptEmbedding], PromptEmbedding | None]:
        adapter = self.adapter
        view_prompts = route_prompts(
            plan, options.prompt, options.sky_prompt, options.horizon_prompt, options.ground_prompt
        )
        encoded = {
            text: self._encoded(("prompt", text), adapter.encode_prompt)
            for text in dict.fromkeys(view_prompts)
        }
        conditioning = [encoded[text] for text in view_prompts]
        negative = None
        if do_cfg:
            negative = self._encoded(
                ("negative", options.negative_prompt), adapter.encode_negative_prompt
            )
        return conditioning, negative

    def _encoded(
        self, key: tuple[str, str], encode: Callable[[str], PromptEmbedding]
    ) -> PromptEmbedding:
        """A prompt's embedding, encoded once for the life of the pipeline (LRU)."""
        if key in self._prompts:
            self._prompts.move_to_end(key)
            return self._prompts[key]
        embedding = encode(key[1])
        _remember(self._prompts, key, embedding, KEEP_PROMPTS)
        return embedding

    def _noise(
        self,
        plan: SamplingPlan,
        request: Request,
        generator: torch.Generator,
        final_n_points: int | None = None,
    ) -> torch.Tensor:
        """Unit-Gaussian sphere latents: (1, C, N), or (1, C, F_lat, N) for a video.

        ``final_n_points`` (a draft): the noise is that of the final's sphere of that many
        points, drawn exactly as the final draws it and pooled onto this plan's points
        (:func:`~spherediff_core.denoise.pool_noise`).
        """
        frames = request.latent_frames if request.video else None
        channels = self.adapter.latent_channels
        if final_n_points is None or final_n_points <= plan.n_points:
            return prepare_sphere_latents(plan, channels, frames=frames, generator=generator)
        fine = prepare_sphere_latents(
            plan, channels, frames=frames, generator=generator, n_points=final_n_points
        )
        fine_points = geometry.fibonacci_sphere(final_n_points)
        return pool_noise(fine, fine_points, plan.points, generator)

    def _final_n_points(self, options: GenerationOptions) -> int | None:
        """A draft's final's number of sphere points (None: not a draft)."""
        if options.final_width is None:
            return None
        if options.final_width < options.resolved_width:
            raise BadInputError(
                f"final_width: {options.final_width} is smaller than this draft's width "
                f"{options.resolved_width}; use a final_width at least the draft's width"
            )
        final = dataclasses.replace(
            options, size=None, width=options.final_width, final_width=None, n_points=None
        )
        adapter = self.adapter
        return plan_config_for(final, adapter.vae_scale_factor, adapter.grid_multiple).n_points

    def _known_region(
        self, plan: SamplingPlan, options: GenerationOptions, n_steps: int
    ) -> KnownRegion:
        """The known image encoded in perspective and written onto the sphere points of
        its footprint (spherediff_core.known): one latent cell per sphere point across."""
        from PIL import Image

        adapter = self.adapter
        placement = ImagePlacement(
            yaw_deg=options.image_yaw_deg,
            pitch_deg=options.image_pitch_deg,
            roll_deg=options.image_roll_deg,
            fov_deg=options.image_fov_deg,
            feather_deg=options.image_feather_deg,
        )
        with Image.open(Path(options.image).expanduser()) as im:
            rgb = im.convert("RGB")
        rows, cols = known_grid_size(
            placement, rgb.height, rgb.width, plan.n_points, adapter.grid_multiple
        )
        s = adapter.vae_scale_factor
        rgb = rgb.resize((cols * s, rows * s), Image.Resampling.LANCZOS)
        pixels = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)
        grid = adapter.encode_images(pixels.permute(2, 0, 1)[None])[0].cpu()  # (C, rows, cols)
        fp = footprint(plan.points, placement, rows, cols)
        latents = sample_grid(grid, fp.x.float(), fp.y.float()) * (fp.weight > 0)
        return KnownRegion(latents, fp.weight, math.ceil(options.image_strength * n_steps))

    def _denoise(
        self,
        run: _Run,
        scheduler: Any,
        latents: torch.Tensor,
        conditioning: list[PromptEmbedding],
        negative: PromptEmbedding | None,
        step_kwargs: dict[str, Any] | None = None,
        known: KnownRegion | None = None,
        noise: torch.Tensor | None = None,
        preview: PreviewSink | None = None,
    ) -> torch.Tensor:
        adapter, request, options, timings = self.adapter, run.request, run.options, run.timings
        callback = run.callback
        # A video denoiser also gets the frame rate (LTX-Video's rotary embedding uses it).
        extra: dict[str, Any] = {"fps": request.fps} if request.video else {}

        watch = _Stopwatch(adapter.device)

        def denoiser(inp):
            mark = watch.start()
            # A loop: the model sees the cyclic latents rolled in time (its window then
            # holds the wrap), and its output is rolled back onto the sphere's frames.
            shift = loop_shift(inp.step_index, request.latent_frames) if request.loop else 0
            if shift:
                inp = dataclasses.replace(inp, latents=torch.roll(inp.latents, shift, dims=2))
            out = adapter.denoise(inp, request.guidance, **extra)
            if shift:
                out = torch.roll(out, -shift, dims=2)
            watch.stop(mark)
            return out

        # The count shown is the scheduler's real number of denoiser evaluations. A
        # multistep solver that warms up (PNDM, the SD 1.x default, evaluates its first
        # timestep twice) makes more than the steps asked for: say so, not just "3/3".
        extra_evals = len(scheduler.timesteps) - request.steps
        warm_up = ""
        if extra_evals > 0:
            warm_up = (
                f" ({request.steps} steps + {extra_evals} warm-up of {type(scheduler).__name__})"
            )

        def on_denoise(p: DenoiseProgress) -> None:
            if callback is not None:
                done = (p.step - 1) * p.total_batches + p.batch
                callback(
                    Progress(
                        "denoise",
                        done,
                        p.total_steps * p.total_batches,
                        p.eta_s,
                        f"step {p.step}/{p.total_steps}{warm_up}",
                    )
                )

        on_step = None
        if preview is not None:  # the model's projection (fitted once), the ERP index
            on_step = preview.attach(
                adapter, run.plan, scheduler, self.plan_cache_dir, should_cancel=run.should_cancel
            )
        if callback is not None:  # the first view batch may take long: say it has begun
            n_steps = len(scheduler.timesteps)
            batch = max(1, options.view_batch_size)
            n_batches = math.ceil(run.plan.n_views / batch)
            if self.dist is not None:  # this rank's rounds, as sphere_denoise counts them
                n_batches = self.dist.rounds(run.plan.n_views, batch)
            callback(Progress("denoise", 0, n_steps * n_batches, None, f"step 1/{n_steps}"))
        try:
            latents = sphere_denoise(
                denoiser,
                scheduler,
                run.plan,
                latents,
                conditioning,
                negative_conditioning=negative,
                guidance=request.cfg,
                view_batch_size=options.view_batch_size,
                callback=on_denoise,
                should_cancel=run.should_cancel,
                step_kwargs=step_kwargs,
                known=known,
                noise=None if noise is None else noise.to(latents.device),
                dist=self.dist,
                on_step=on_step,
            )
            timings["denoiser"] += watch.total_s()  # the one wait for the device
            if preview is not None:
                timings["preview"] = preview.setup_s + preview.seconds
            return latents
        except GenerationCancelled as exc:
            raise CancelledError("generation cancelled") from exc
        except torch.OutOfMemoryError as exc:
            raise _oom(options, request) from exc

    def _decode_batch_size(self, plan: SamplingPlan, frames: int, batch: int) -> int:
        """Views per VAE call: ``batch``, fewer for long videos (each decoded view holds
        3 x frames x H x W values; a batch stays under DECODE_BUDGET_VALUES)."""
        h, w = plan.grid_size
        s = self.adapter.vae_scale_factor
        per_view = 3 * frames * h * s * w * s
        return max(1, min(batch, DECODE_BUDGET_VALUES // per_view))

    def _decode_chunks(self, run: _Run) -> list[DecodeChunk | None]:
        """The chunks of latent frames decoded one after the other ([None]: a still)."""
        request, options = run.request, run.options
        if not request.video:
            return [None]
        c = int(self.adapter.temporal_compression)
        per_frame = 3 * options.height * options.resolved_width
        budget = CANVAS_BUDGET_VALUES
        device = self.adapter.device
        if device.type == "cuda":
            # The canvas lives on the GPU: at most a quarter of what is free now (the
            # VAE's activations and a view's samples need the rest), float32 values.
            # Ranks must cut the clip alike: the smallest GPU decides.
            free_bytes, _total = torch.cuda.mem_get_info(device)
            if self.dist is not None:
                free_bytes = self.dist.min_int(free_bytes)
            budget = min(budget, free_bytes // 4 // 4)
        per_chunk = max(MIN_CHUNK_LATENTS, budget // per_frame // c)
        return plan_frame_chunks(
            request.latent_frames,
            c,
            per_chunk,
            loop=request.loop,
            context=self.adapter.decode_context_latents,
        )

    def _decode_to_erp(
        self,
        run: _Run,
        latents: torch.Tensor,
        generator: torch.Generator,
        result: GenerationResult,
        frame_sink: Callable[[FrameChunk], None] | None,
    ) -> None:
        """Decode the views into ERP canvases on the generation's device: one for a
        still, one per chunk of frames for a video; fill ``result`` (or the sink).

        Decoded views are blended at once and dropped, so memory holds one batch of
        decoded views and one canvas. Out of device memory, the VAE's tiling and slicing
        are turned on and the batch is decoded again one view at a time.
        """
        request = run.request
        # A timestep-conditioned VAE decodes slightly re-noised latents: the noise is drawn
        # on the sphere, so the views agree where they overlap.
        noise = None
        if self.adapter.decode_needs_noise:
            noise = self._noise(run.plan, request, generator).to(latents.device, latents.dtype)
        chunks = self._decode_chunks(run)
        root = self.dist is None or self.dist.is_root
        if chunks[0] is not None and frame_sink is None and root:  # the clip, chunk by chunk
            height, width = run.options.height, run.options.resolved_width
            result.frames = torch.empty(request.out_frames, 3, height, width)
        for k, chunk in enumerate(chunks):
            erp = self._decode_chunk(run, latents, noise, chunk, k, len(chunks))
            if erp is None:  # another rank than 0: its views went into rank 0's canvas
                continue
            if chunk is None:
                result.image = erp
                return
            frames = erp.reshape(chunk.n_frames, 3, *erp.shape[-2:])
            if result.frames is not None:
                result.frames[chunk.start : chunk.start + chunk.n_frames] = frames
                result.image = result.frames[0]
                continue
            if chunk.start == 0:
                result.image = frames[0].clone()
            assert frame_sink is not None
            frame_sink(FrameChunk(chunk.start, frames, request.out_frames, result))

    def _decode_chunk(
        self,
        run: _Run,
        latents: torch.Tensor,
        noise: torch.Tensor | None,
        chunk: DecodeChunk | None,
        k: int,
        n_chunks: int,
    ) -> torch.Tensor | None:
        """One canvas: (3, H, W), or (f * 3, H, W) for a chunk of f frames, on the CPU.

        In a distributed run every rank decodes its share of the views and the canvases
        are summed onto rank 0; the other ranks get None.
        """
        adapter, plan, request, options = self.adapter, run.plan, run.request, run.options
        timings, callback, should_cancel = run.timings, run.callback, run.should_cancel
        dist = self.dist
        frames, decoded = 1, 1
        if chunk is not None:
            ids_t = torch.tensor(chunk.latent_ids, device=latents.device)
            latents = latents.index_select(2, ids_t)
            noise = None if noise is None else noise.index_select(2, ids_t)
            frames = chunk.n_frames
            decoded = (len(chunk.latent_ids) - 1) * adapter.temporal_compression + 1
        canvas = ErpCanvas(
            plan.frames,
            plan.fov_deg,
            options.height,
            options.resolved_width,
            3 * frames,
            options.temperature,
            device=adapter.device,
        )
        batch = max(1, options.view_batch_size)
        if chunk is not None:
            batch = self._decode_batch_size(plan, decoded, batch)
        mine = torch.arange(plan.n_views) if dist is None else dist.shard(plan.n_views)
        batches = [mine[i : i + batch] for i in range(0, len(mine), batch)]
        n_rounds = len(batches) if dist is None else dist.rounds(plan.n_views, batch)
        vae_watch, erp_watch = _Stopwatch(adapter.device), _Stopwatch(adapter.device)
        done, start = 0, time.perf_counter()
        for b in range(n_rounds):
            stop = should_cancel is not None and should_cancel()
            if dist is not None:  # one agreed check per round (ranks run equal rounds)
                stop = dist.any(stop)
            if stop:
                raise CancelledError("generation cancelled")
            if b >= len(batches):
                continue
            for ids, images in self._decode_views(run, latents, noise, batches[b], vae_watch):
                if chunk is not None:
                    if images.dim() != 5 or images.shape[2] != decoded:
                        raise RuntimeError(
                            f"the VAE decoded {tuple(images.shape)}; expected "
                            f"(n, 3, {decoded}, H, W)"
                        )
                    images = images[:, :, chunk.offset : chunk.offset + frames]  # no copy
                mark = erp_watch.start()
                # One view at a time: blending a big view into a big canvas takes seconds
                # (and a video view's frames become channels one view at a time).
                for i in range(len(ids)):
                    if dist is None and should_cancel is not None and should_cancel():
                        raise CancelledError("generation cancelled")
                    image = images[i : i + 1]
                    if chunk is not None:
                        image = _frames_as_channels(image, frames)
                    canvas.add(image, ids[i : i + 1])
                del images
                erp_watch.stop(mark)
                done += len(ids)
            if callback is not None:
                n_mine = len(mine)
                elapsed = time.perf_counter() - start
                eta = elapsed * ((n_chunks - k) * n_mine - done) / done
                what = f"views {done}/{n_mine}"
                if chunk is not None:
                    last = chunk.start + frames
                    what += f", frames {chunk.start + 1}-{last} of {request.out_frames}"
                callback(Progress("decode", k * n_mine + done, n_chunks * n_mine, eta, what))
        timings["vae"] += vae_watch.total_s()
        timings["erp"] += erp_watch.total_s()
        t = time.perf_counter()
        if dist is not None:
            dist.sum_to_root_(canvas.numerator, canvas.weight)
            if not dist.is_root:
                return None
        # The canvas stays on the device until here: one copy to the host.
        erp = canvas.result().clamp_(0, 1).cpu()
        timings["erp"] += time.perf_counter() - t
        return erp

    def _decode_views(
        self,
        run: _Run,
        latents: torch.Tensor,
        noise: torch.Tensor | None,
        ids: torch.Tensor,
        watch: _Stopwatch,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Decode the views ``ids``: yields (view ids, images (n, 3, H, W) or
        (n, 3, F, H, W)), the whole batch at once. Out of device memory, the VAE's tiling
        and slicing are turned on and the views are decoded, and yielded to be blended,
        one at a time (for the rest of this generation's decoding)."""
        adapter, options, request, plan = self.adapter, run.options, run.request, run.plan
        view_latents = gather_views(latents, plan, ids)[:, 0]  # (n, C, [F,] h, w)
        view_noise = None if noise is None else gather_views(noise, plan, ids)[:, 0]

        def decode(i: int, j: int) -> torch.Tensor:
            mark = watch.start()
            if view_noise is None:
                images = adapter.decode(view_latents[i:j])
            else:
                images = adapter.decode(view_latents[i:j], view_noise[i:j])
            watch.stop(mark)
            return images

        if not run.one_view_at_a_time:
            try:
                images = decode(0, len(ids))
            except torch.OutOfMemoryError as exc:
                savers = adapter.enable_vae_memory_savers()
                if not savers and len(ids) == 1:
                    raise _oom(options, request) from exc
                logger.warning(
                    "out of memory decoding %d view(s); retrying one view at a time%s",
                    len(ids),
                    " with VAE tiling and slicing" if savers else "",
                )
                run.one_view_at_a_time = True
                if adapter.device.type == "cuda":
                    torch.cuda.empty_cache()
            else:
                yield ids, images
                return
        for i in range(len(ids)):
            try:
                images = decode(i, i + 1)
            except torch.OutOfMemoryError as exc:
                raise _oom(options, request) from exc
            yield ids[i : i + 1], images
            del images

    def _result(self, run: _Run) -> GenerationResult:
        """The result before decoding: options used, model, sphere and views (the image
        and frames are filled in as they are decoded)."""
        adapter, options, request, plan = self.adapter, run.options, run.request, run.plan
        used = GenerationOptions(
            **{
                **options.to_dict(),
                "steps": request.steps,
                "guidance": request.guidance,
                "frames": request.frames if request.video else None,
                "fps": request.fps if request.video else None,
            }
        )
        model = adapter.describe() | {"source": self.source, "revision": self.revision}
        return GenerationResult(
            torch.empty(3, 0, 0),  # the decoded ERP replaces it (no 8K placeholder held)
            used,
            plan.n_points,
            plan.grid_size,
            plan.n_views,
            run.timings,
            model,
            fps=request.fps,
            view_px=plan.grid_size[1] * adapter.vae_scale_factor,
            warnings=list(run.warnings),
            frame_count=request.out_frames if request.video else 1,
            distributed=None if self.dist is None else self.dist.describe(plan.n_views),
        )


KEEP_PROMPTS = 32
"""Encoded prompts a pipeline keeps (a few hundred kB to a few MB each)."""
KEEP_PLANS = 4
"""Sampling plans a pipeline keeps in memory (also cached on disk)."""


def _remember(table: collections.OrderedDict, key: Any, value: Any, keep: int) -> None:
    """Put ``value`` in the LRU ``table``, dropping the oldest beyond ``keep``."""
    table[key] = value
    table.move_to_end(key)
    while len(table) > keep:
        table.popitem(last=False)


@dataclass
class _Run:
    """One call's settings and reporting, shared by the steps of ``__call__``."""

    options: GenerationOptions
    request: Request
    plan: SamplingPlan
    timings: dict[str, float]
    callback: Callable[[Progress], None] | None
    should_cancel: Callable[[], bool] | None
    warnings: list[str] = field(default_factory=list)
    one_view_at_a_time: bool = False  # set when the VAE ran out of device memory


def _load_error(model: str, exc: BaseException) -> Exception:
    """What went wrong loading ``model`` with diffusers, said for a folder or a Hub id.

    (model_index.json, the components and the weights of a local folder were checked before
    diffusers was imported: see modelcheck.check_model_folder; this is what is left.)
    """
    if isinstance(exc, torch.OutOfMemoryError):
        return _oom_loading()
    text = str(exc)
    if "trust_remote_code" in text:
        return UnsupportedModelError(
            f"{model} needs custom code to load, which SphereDiff never runs; use a standard "
            "diffusers pipeline folder of a supported model"
        )
    if Path(model).expanduser().is_dir():
        return BrokenModelError(
            f"the model folder {model} could not be loaded: {text}. The folder is incomplete "
            "or damaged: copy or download the model again"
        )
    if isinstance(exc, OSError):
        return ModelNotFoundError(
            f"could not load {model!r}: {text}. Fetch the whole model on a machine with "
            f"internet access (`hf download {model}`) and copy the cache.",
            local_hint=True,
        )
    return BrokenModelError(
        f"the model {model!r} could not be loaded: {text}. Its files in the Hugging Face "
        f"cache may be incomplete: fetch it again (`hf download {model}`)"
    )


def _oom_loading() -> OutOfMemoryError:
    return OutOfMemoryError(
        "the computer ran out of memory loading the model; close other programs, or choose "
        "a smaller model"
    )


def _frames_as_channels(images: torch.Tensor, frames: int) -> torch.Tensor:
    """Decoded video views (n, 3, F, H, W) -> (n, F * 3, H, W), frame-major."""
    if images.dim() != 5 or images.shape[2] != frames:
        raise RuntimeError(
            f"the VAE decoded {tuple(images.shape)}; expected (n, 3, {frames}, H, W)"
        )
    n, c, f, h, w = images.shape
    return images.transpose(1, 2).reshape(n, f * c, h, w)


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


class _Stopwatch:
    """Time spent in many calls on a device, without making the host wait after each.

    On a GPU every call is bracketed by CUDA events and the total read once at the end
    (one synchronisation instead of one per view batch, so the GPU never idles while the
    host waits); elsewhere it is the wall time of the calls.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self._pairs: list[tuple[Any, Any]] = []
        self._seconds = 0.0

    def _event(self) -> Any:
        """An event recorded on the generation's GPU (not the current device's stream)."""
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def start(self) -> Any:
        if self.cuda:
            return self._event()
        return time.perf_counter()

    def stop(self, mark: Any) -> None:
        if self.cuda:
            end = self._event()
            self._pairs.append((mark, end))
        else:
            self._seconds += time.perf_counter() - mark

    def total_s(self) -> float:
        """Seconds so far (waits for the device once); the stopwatch then restarts at 0."""
        if self._pairs:
            self._pairs[-1][1].synchronize()
            self._seconds += sum(a.elapsed_time(b) for a, b in self._pairs) / 1000.0
            self._pairs.clear()
        seconds, self._seconds = self._seconds, 0.0
        return seconds


def _oom(options: GenerationOptions, request: Request | None = None) -> OutOfMemoryError:
    fewer = ", or fewer frames" if request is not None and request.video else ""
    return OutOfMemoryError(
        f"the device ran out of memory (view batch size {options.view_batch_size}); lower "
        "the view batch size, turn on model CPU offload and VAE tiling, or choose a smaller "
        f"size{fewer}"
    )


__all__ += ["ADAPTERS", "read_model_index"]
