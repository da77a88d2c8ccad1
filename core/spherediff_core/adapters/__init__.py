"""Model adapters, one per family. The family is detected from model_index.json's class.

The registry is ``spherediff_core.families.FAMILIES`` (torch-free, so requests are checked
before anything heavy loads): each entry names its adapter as ``"module:Class"`` in this
package, and ``ADAPTERS`` is built from it in the same order. Adding a family is a new
module here and one FamilyFacts entry (docs/engine.md, "Adding a model family").
"""

from __future__ import annotations

import importlib

from ..errors import UnsupportedModelError
from ..families import FAMILIES, supported_families_text
from .base import ModelAdapter, PromptEmbedding


def _load_adapter(where: str) -> type[ModelAdapter]:
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(f".{module}", __name__), name)


ADAPTERS: tuple[type[ModelAdapter], ...] = tuple(_load_adapter(f.adapter) for f in FAMILIES)
_BY_NAME = {adapter.__name__: adapter for adapter in ADAPTERS}

__all__ = [
    "ADAPTERS",
    "ModelAdapter",
    "PromptEmbedding",
    "adapter_class_for",
    "adapter_for_class",
    "supported_families_text",
    *_BY_NAME,
]


def __getattr__(name: str) -> type[ModelAdapter]:
    """Every adapter class by its name (``from spherediff_core.adapters import WanAdapter``)."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


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
