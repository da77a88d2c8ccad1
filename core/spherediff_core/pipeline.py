"""Text to 360-degree panorama: the SphereDiff pipeline over a model adapter.

``SphereDiffPipeline.from_pretrained(model)`` detects the model family from the folder's
``model_index.json`` and loads it through diffusers' ``from_pretrained`` (safetensors only,
never remote code). Calling the pipeline with :class:`GenerationOptions` runs the sphere
engine and returns a :class:`GenerationResult` holding the ERP image.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import geometry
from .adapters import ADAPTERS, adapter_for_class, supported_families_text
from .adapters.base import ModelAdapter, PromptEmbedding, ceil_to_multiple
from .denoise import (
    DenoiseProgress,
    GenerationCancelled,
    init_noise_sigma,
    prepare_sphere_latents,
    sphere_denoise,
)
from .erp import views_to_erp
from .errors import (
    BadInputError,
    CancelledError,
    ModelNotFoundError,
    OutOfMemoryError,
    UnsupportedModelError,
)
from .fusion import gather_views
from .options import GenerationOptions
from .plan import PlanConfig, SamplingPlan, load_or_build_plan

__all__ = [
    "GenerationResult",
    "Progress",
    "SphereDiffPipeline",
    "check_grid_limit",
    "plan_config_for",
    "resolve_device",
    "route_prompts",
]

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """A progress report: ``phase`` is load, denoise, decode or write; step of total."""

    phase: str
    step: int
    total: int
    eta_s: float | None = None
    message: str = ""


@dataclass
class GenerationResult:
    """What a generation made.

    Attributes:
        image: (3, H, W) float32 ERP image in [0, 1] (sRGB-encoded values, as decoded).
        options: the options used, with family defaults filled in (steps, guidance).
        n_points, grid, n_views: the sphere and view configuration.
        timings: seconds per phase (plan, encode, denoise, decode, erp, total) and the time
            spent inside the denoiser and the VAE alone (denoiser, vae).
        model: family, pipeline class, dtype, device, source and revision.
    """

    image: torch.Tensor
    options: GenerationOptions
    n_points: int
    grid: tuple[int, int]
    n_views: int
    timings: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda, then mps, then cpu; an explicit device must be available."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelNotFoundError(
            f"device {device!r} was asked for but this PyTorch sees no CUDA GPU "
            f"(torch {torch.__version__}); use device 'auto' or 'cpu', or install a CUDA build"
        )
    if device == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise ModelNotFoundError("device 'mps' was asked for but Metal is not available here")
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


def read_model_index(
    model: str, revision: str | None, offline: bool, cache_dir: str | None
) -> dict[str, Any]:
    """model_index.json of a local folder or a Hub repo (from the cache when offline)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        index = folder / "model_index.json"
        if not index.is_file():
            raise UnsupportedModelError(
                f"{model} has no model_index.json, so it is not a diffusers pipeline folder; "
                f"SphereDiff drives {supported_families_text()}"
            )
        return json.loads(index.read_text(encoding="utf-8"))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = hf_hub_download(
            model,
            "model_index.json",
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as exc:
        where = cache_dir or os.environ.get("HF_HUB_CACHE") or "the Hugging Face cache"
        why = "offline mode is on" if offline else "the Hugging Face Hub cannot be reached"
        raise ModelNotFoundError(
            f"model {model!r} is not in {where} and {why}. Fetch it on a machine with "
            f"internet access (`huggingface-cli download {model}`) and copy the cache, or "
            "pass a local diffusers model folder instead (--model /path/to/folder)."
        ) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise ModelNotFoundError(
            f"model {model!r} (revision {revision or 'main'}) was not found on the Hub: "
            f"check the id, or pass a local diffusers model folder"
        ) from exc
    return json.loads(Path(path).read_text(encoding="utf-8"))


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
    ) -> None:
        self.adapter = adapter
        self.source = source
        self.revision = revision
        self.plan_cache_dir = plan_cache_dir

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
    ) -> SphereDiffPipeline:
        """Detect the family from model_index.json and load the model with diffusers."""
        import diffusers
        from huggingface_hub import constants as hub_constants

        offline = offline or bool(hub_constants.HF_HUB_OFFLINE)
        index = read_model_index(model, revision, offline, cache_dir)
        class_name = index.get("_class_name", "")
        adapter_cls = adapter_for_class(class_name)
        if adapter_cls is None:
            raise UnsupportedModelError(
                f"{model} is a {class_name or 'model of unknown type'}, which SphereDiff "
                f"cannot drive; it drives {supported_families_text()}"
            )
        torch_device = resolve_device(device)
        dtype = resolve_dtype(precision, torch_device, adapter_cls.preferred_half)
        pipeline_cls = getattr(diffusers, class_name)
        # Newer diffusers renamed torch_dtype to dtype (and warn on the old name).
        from diffusers.pipelines import pipeline_utils

        dtype_kw = "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"
        try:
            pipe = pipeline_cls.from_pretrained(
                model,
                revision=revision,
                **{dtype_kw: dtype},
                use_safetensors=True,
                local_files_only=offline,
                cache_dir=cache_dir,
                **adapter_cls.load_kwargs,
            )
        except OSError as exc:
            raise ModelNotFoundError(
                f"could not load {model!r}: {exc}. With the Hub unreachable, pass a local "
                "folder or fetch the model first (`huggingface-cli download ...`)."
            ) from exc
        adapter = adapter_cls(pipe, torch_device, dtype)
        adapter.apply_memory_options(cpu_offload, vae_tiling, vae_slicing)
        return cls(adapter, source=model, revision=revision, plan_cache_dir=plan_cache_dir)

    @torch.no_grad()
    def __call__(
        self,
        options: GenerationOptions,
        callback: Callable[[Progress], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        adapter = self.adapter
        timings: dict[str, float] = {"denoiser": 0.0, "vae": 0.0}
        t_start = time.perf_counter()

        # 1. Check inputs, fill in the family's defaults
        options.validate()
        steps = options.steps if options.steps is not None else adapter.default_steps
        guidance = options.guidance if options.guidance is not None else adapter.default_guidance
        do_cfg = adapter.uses_cfg(guidance)

        # 2. Sampling plan (cached on disk)
        t0 = time.perf_counter()
        config = plan_config_for(options, adapter.vae_scale_factor, adapter.grid_multiple)
        check_grid_limit(config, options, adapter)
        plan = load_or_build_plan(config, self.plan_cache_dir)
        timings["plan"] = time.perf_counter() - t0

        # 3. Encode prompts: each distinct prompt once, routed to views by elevation
        t0 = time.perf_counter()
        view_prompts = route_prompts(
            plan, options.prompt, options.sky_prompt, options.horizon_prompt, options.ground_prompt
        )
        encoded: dict[str, PromptEmbedding] = {}
        for text in dict.fromkeys(view_prompts):
            encoded[text] = adapter.encode_prompt(text)
        conditioning = [encoded[text] for text in view_prompts]
        negative = adapter.encode_prompt(options.negative_prompt) if do_cfg else None
        timings["encode"] = time.perf_counter() - t0

        # 4. Prepare timesteps
        scheduler = adapter.make_scheduler(steps, plan.grid_size)

        # 5. Prepare latents (drawn on the CPU: the same seed gives the same noise anywhere)
        generator = torch.Generator("cpu").manual_seed(options.seed)
        latents = prepare_sphere_latents(plan, adapter.latent_channels, generator=generator)
        latents = (latents * init_noise_sigma(scheduler)).to(adapter.device)

        # 6. Denoising loop on the sphere
        def denoiser(inp):
            t = time.perf_counter()
            out = adapter.denoise(inp, guidance)
            _sync(adapter.device)
            timings["denoiser"] += time.perf_counter() - t
            return out

        def on_denoise(p: DenoiseProgress) -> None:
            if callback is not None:
                done = (p.step - 1) * p.total_batches + p.batch
                callback(
                    Progress(
                        "denoise",
                        done,
                        p.total_steps * p.total_batches,
                        p.eta_s,
                        f"step {p.step}/{p.total_steps}",
                    )
                )

        t0 = time.perf_counter()
        try:
            latents = sphere_denoise(
                denoiser,
                scheduler,
                plan,
                latents,
                conditioning,
                negative_conditioning=negative,
                guidance_scale=guidance if do_cfg else 1.0,
                view_batch_size=options.view_batch_size,
                callback=on_denoise,
                should_cancel=should_cancel,
            )
        except GenerationCancelled as exc:
            raise CancelledError("generation cancelled") from exc
        except torch.OutOfMemoryError as exc:
            raise _oom(options) from exc
        timings["denoise"] = time.perf_counter() - t0

        # 7. Decode every view with the VAE
        t0 = time.perf_counter()
        view_latents = gather_views(latents, plan)[:, 0]  # (V, C, h, w)
        images = []
        n_views = plan.n_views
        batch = max(1, options.view_batch_size)
        for i in range(0, n_views, batch):
            if should_cancel is not None and should_cancel():
                raise CancelledError("generation cancelled")
            t = time.perf_counter()
            try:
                images.append(adapter.decode(view_latents[i : i + batch]).cpu())
            except torch.OutOfMemoryError as exc:
                raise _oom(options) from exc
            timings["vae"] += time.perf_counter() - t
            if callback is not None:
                callback(Progress("decode", min(i + batch, n_views), n_views))
        images_t = torch.cat(images)
        timings["decode"] = time.perf_counter() - t0

        # 8. Blend the decoded views into the ERP image
        t0 = time.perf_counter()
        erp = views_to_erp(
            images_t,
            plan.frames,
            plan.fov_deg,
            options.height,
            options.resolved_width,
            options.temperature,
        ).clamp(0, 1)
        timings["erp"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start

        used = GenerationOptions(**{**options.to_dict(), "steps": steps, "guidance": guidance})
        model = adapter.describe() | {"source": self.source, "revision": self.revision}
        return GenerationResult(
            erp, used, plan.n_points, plan.grid_size, plan.n_views, timings, model
        )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _oom(options: GenerationOptions) -> OutOfMemoryError:
    return OutOfMemoryError(
        f"the device ran out of memory (view batch size {options.view_batch_size}); lower "
        "the view batch size, turn on model CPU offload and VAE tiling, or choose a smaller size"
    )


__all__ += ["ADAPTERS", "read_model_index"]
