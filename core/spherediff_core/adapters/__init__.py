"""Model adapters, one per family. The family is detected from model_index.json's class.

Image families: SANA, SD 1.x/2.x, SDXL, FLUX.1, SD3. Video families (``is_video``):
LTX-Video and Wan 2.1/2.2 text-to-video.
"""

from __future__ import annotations

from ..errors import UnsupportedModelError
from ..families import supported_families_text
from .base import ModelAdapter, PromptEmbedding
from .flux import FluxAdapter
from .ltx import LTXVideoAdapter
from .sana import SanaAdapter
from .sd import StableDiffusionAdapter
from .sd3 import StableDiffusion3Adapter
from .sdxl import StableDiffusionXLAdapter
from .wan import WanAdapter

ADAPTERS: tuple[type[ModelAdapter], ...] = (
    SanaAdapter,
    StableDiffusionAdapter,
    StableDiffusionXLAdapter,
    FluxAdapter,
    StableDiffusion3Adapter,
    LTXVideoAdapter,
    WanAdapter,
)

__all__ = [
    "ADAPTERS",
    "FluxAdapter",
    "LTXVideoAdapter",
    "ModelAdapter",
    "PromptEmbedding",
    "SanaAdapter",
    "StableDiffusion3Adapter",
    "StableDiffusionAdapter",
    "StableDiffusionXLAdapter",
    "WanAdapter",
    "adapter_class_for",
    "adapter_for_class",
    "supported_families_text",
]


def adapter_for_class(class_name: str) -> type[ModelAdapter] | None:
    """The adapter that drives a diffusers pipeline class, or None."""
    for adapter in ADAPTERS:
        if class_name in adapter.pipeline_classes:
            return adapter
    return None


def adapter_class_for(index: object, model: str) -> type[ModelAdapter]:
    """The adapter for a parsed model_index.json, or UnsupportedModelError naming the families."""
    class_name = index.get("_class_name", "") if isinstance(index, dict) else ""
    adapter = adapter_for_class(class_name)
    if adapter is None:
        raise UnsupportedModelError(
            f"{model} is a {class_name or 'model of unknown type'}, which SphereDiff cannot "
            f"drive; it drives {supported_families_text()}"
        )
    return adapter
