"""Model adapters, one per family. The family is detected from model_index.json's class."""

from __future__ import annotations

from .base import ModelAdapter, PromptEmbedding
from .flux import FluxAdapter
from .sana import SanaAdapter
from .sd import StableDiffusionAdapter
from .sd3 import StableDiffusion3Adapter
from .sdxl import StableDiffusionXLAdapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (
    SanaAdapter,
    StableDiffusionAdapter,
    StableDiffusionXLAdapter,
    FluxAdapter,
    StableDiffusion3Adapter,
)

__all__ = [
    "ADAPTERS",
    "FluxAdapter",
    "ModelAdapter",
    "PromptEmbedding",
    "SanaAdapter",
    "StableDiffusion3Adapter",
    "StableDiffusionAdapter",
    "StableDiffusionXLAdapter",
    "adapter_for_class",
    "supported_families_text",
]


def adapter_for_class(class_name: str) -> type[ModelAdapter] | None:
    """The adapter that drives a diffusers pipeline class, or None."""
    for adapter in ADAPTERS:
        if class_name in adapter.pipeline_classes:
            return adapter
    return None


def supported_families_text() -> str:
    """e.g. 'sd (StableDiffusionPipeline), sana (SanaPipeline)'."""
    return ", ".join(f"{a.family} ({'/'.join(a.pipeline_classes)})" for a in ADAPTERS)
