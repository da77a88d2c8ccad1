"""Progress reports, shared by the pipeline, the command and the worker (no heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Progress"]


@dataclass
class Progress:
    """A progress report: ``phase`` is load, denoise, decode or write; step of total."""

    phase: str
    step: int
    total: int
    eta_s: float | None = None
    message: str = ""
