"""What each model family can make, known without importing torch or diffusers.

The adapters (spherediff_core.adapters) drive the families; they import torch, which takes
seconds. Refusing a bad request (a video from an image model, a frame count the VAE cannot
take, too few steps) must not wait for that, so the facts those checks need are here too,
and tests/core/test_adapters.py keeps them equal to the adapters' class attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .options import MAX_FRAMES, GenerationOptions, OptionsError

__all__ = [
    "FAMILIES",
    "FamilyFacts",
    "check_guidance_2",
    "check_steps",
    "check_video_request",
    "facts_for_class",
    "frames_rule",
    "nearest_valid_frames",
    "supported_families_text",
]


@dataclass(frozen=True)
class FamilyFacts:
    """The class attributes of a family's adapter that requests are checked against."""

    family: str
    pipeline_classes: tuple[str, ...]
    adapter: str
    """Where the adapter is: ``"module:Class"`` in spherediff_core.adapters."""
    display_name: str = ""
    min_steps: int = 1
    is_video: bool = False
    temporal_compression: int = 1
    default_frames: int = 1
    default_fps: int | None = None
    skipped_components: tuple[str, ...] = ()
    """Components the adapter loads as None (its load_kwargs): never read, so not checked."""
    second_expert: str | None = None
    """The model_index.json component of a second (low-noise) denoiser, present in the
    models that take ``guidance_2`` (Wan 2.2 A14B's ``transformer_2``)."""

    @property
    def name(self) -> str:
        return self.display_name or self.family


FAMILIES: tuple[FamilyFacts, ...] = (
    FamilyFacts("sana", ("SanaPipeline",), "sana:SanaAdapter"),
    FamilyFacts(
        "sd",
        ("StableDiffusionPipeline",),
        "sd:StableDiffusionAdapter",
        skipped_components=("safety_checker",),
    ),
    FamilyFacts("sdxl", ("StableDiffusionXLPipeline",), "sdxl:StableDiffusionXLAdapter"),
    FamilyFacts("flux", ("FluxPipeline",), "flux:FluxAdapter"),
    FamilyFacts("sd3", ("StableDiffusion3Pipeline",), "sd3:StableDiffusion3Adapter"),
    FamilyFacts(
        "ltx",
        ("LTXPipeline",),
        "ltx:LTXVideoAdapter",
        display_name="LTX-Video",
        min_steps=2,
        is_video=True,
        temporal_compression=8,
        default_frames=121,
        default_fps=24,
    ),
    FamilyFacts(
        "wan",
        ("WanPipeline",),
        "wan:WanAdapter",
        display_name="Wan",
        second_expert="transformer_2",
        is_video=True,
        temporal_compression=4,
        default_frames=81,
        default_fps=16,
    ),
    FamilyFacts("flux2", ("Flux2Pipeline",), "flux2:Flux2Adapter", display_name="FLUX.2 [dev]"),
    FamilyFacts(
        "flux2-klein",
        ("Flux2KleinPipeline",),
        "flux2:Flux2KleinAdapter",
        display_name="FLUX.2 [klein]",
    ),
    FamilyFacts(
        "qwenimage",
        ("QwenImagePipeline",),
        "qwenimage:QwenImageAdapter",
        display_name="Qwen-Image",
        min_steps=2,
    ),
    FamilyFacts("zimage", ("ZImagePipeline",), "zimage:ZImageAdapter", display_name="Z-Image"),
    FamilyFacts(
        "hunyuanvideo15",
        ("HunyuanVideo15Pipeline",),
        "hunyuanvideo15:HunyuanVideo15Adapter",
        display_name="HunyuanVideo 1.5",
        is_video=True,
        temporal_compression=4,
        default_frames=121,
        default_fps=24,
    ),
)


def facts_for_class(class_name: Any) -> FamilyFacts | None:
    """The family of a model_index.json ``_class_name``, or None."""
    for facts in FAMILIES:
        if isinstance(class_name, str) and class_name in facts.pipeline_classes:
            return facts
    return None


def supported_families_text() -> str:
    """e.g. 'sd (StableDiffusionPipeline), sana (SanaPipeline)'."""
    return ", ".join(f"{f.family} ({'/'.join(f.pipeline_classes)})" for f in FAMILIES)


def frames_rule(temporal_compression: int) -> str:
    """The frame counts a model takes, as a formula: "8k+1"."""
    return f"{temporal_compression}k+1" if temporal_compression > 1 else "any count"


def nearest_valid_frames(frames: int, temporal_compression: int, lo: int, hi: int) -> list[int]:
    """The valid counts (k * compression + 1) in [lo, hi] just below and above ``frames``."""
    c = max(1, temporal_compression)
    below = (frames - 1) // c * c + 1
    candidates = [below, below + c] if below != frames else [frames]
    return [n for n in candidates if lo <= n <= hi]


def check_steps(options: GenerationOptions, family: Any) -> None:
    """Refuse fewer steps than the family's schedule can make (OptionsError on ``steps``)."""
    if options.steps is not None and options.steps < family.min_steps:
        name = family.display_name or family.family
        raise OptionsError(
            "steps",
            f"{options.steps} is too few for {name}; use {family.min_steps} or more",
        )


def check_guidance_2(options: GenerationOptions, family: FamilyFacts, index: Any) -> None:
    """Refuse ``guidance_2`` for a model without a second denoiser, read from its
    model_index.json before anything loads (the loaded adapter checks again)."""
    if options.guidance_2 is None:
        return
    expert = family.second_expert
    entry = index.get(expert) if expert and isinstance(index, dict) else None
    if not (isinstance(entry, list | tuple) and len(entry) == 2 and entry[1]):
        raise OptionsError(
            "guidance_2",
            f"{options.guidance_2} is set, but {family.name} has one denoiser and one "
            "guidance; leave guidance_2 unset (it is the low-noise expert's guidance of "
            "Wan 2.2 A14B)",
        )


def check_video_request(options: GenerationOptions, family: Any) -> tuple[int, int, int] | None:
    """(frames, fps, latent frames) of a video request, None for a still; or OptionsError.

    A loop (``options.loop``) has one latent frame fewer: its latents are cyclic and the
    frame that would close it (frame 1 again) is not made.

    A video model makes videos only and an image model stills only: ``video`` must match
    (OptionsError on ``video`` otherwise). A frame count the model's VAE cannot make is
    refused on ``frames`` with the nearest valid counts. ``family`` is a FamilyFacts (a
    check before anything heavy is imported), an adapter class, or a loaded adapter (its
    VAE's real temporal compression).
    """
    name = family.display_name or family.family
    if options.video and not family.is_video:
        video_models = ", ".join(f.name for f in FAMILIES if f.is_video)
        raise OptionsError(
            "video",
            f"true, but {name} is an image model and makes stills only; turn video off, or "
            f"choose a video model ({video_models})",
        )
    if not options.video and family.is_video:
        raise OptionsError(
            "video",
            f"false, but {name} is a video model; turn video on (--video) for a 360° video, "
            "or choose an image model for a still",
        )
    if not options.video:
        return None
    frames = options.frames if options.frames is not None else family.default_frames
    fps = options.fps if options.fps is not None else family.default_fps
    compression = int(family.temporal_compression)
    if (frames - 1) % compression:
        near = nearest_valid_frames(frames, compression, 1, MAX_FRAMES)
        raise OptionsError(
            "frames",
            f"{frames} is not valid for {name} ({frames_rule(compression)}); "
            f"use {' or '.join(str(n) for n in near)}",
        )
    if getattr(options, "loop", False):
        # A loop of k latent frames, cyclic: frames = k * compression + 1 counts the frame
        # that closes it (frame 1 again), so k >= 1.
        if frames < compression + 1:
            raise OptionsError(
                "frames",
                f"{frames} is too few for a loop with {name}; a loop needs at least "
                f"{compression + 1} (one latent frame), e.g. {2 * compression + 1}",
            )
        return frames, int(fps or 24), (frames - 1) // compression
    return frames, int(fps or 24), (frames - 1) // compression + 1
