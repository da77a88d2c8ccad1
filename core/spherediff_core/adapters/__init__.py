"""Model adapters, one per family. The family is detected from model_index.json's class."""

from __future__ import annotations

from .base import ModelAdapter, PromptEmbedding
from .sd import StableDiffusionAdapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (StableDiffusionAdapter,)

__all__ = [
    "ADAPTERS",
    "ModelAdapter",
    "PromptEmbedding",
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
