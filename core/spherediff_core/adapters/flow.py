"""The flow-matching schedule the diffusers pipelines of FLUX, SD3 and their successors share.

Their ``FlowMatchEulerDiscreteScheduler`` shifts the sigmas towards noise for larger images:
with ``use_dynamic_shifting`` the pipeline passes ``mu``, a straight line in the image's
token count between (``base_image_seq_len``, ``base_shift``) and (``max_image_seq_len``,
``max_shift``) of the scheduler's config. On the sphere the "image" is one view's grid, so
every view denoises on the schedule its pipeline would use for a picture of that size.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["calculate_shift", "flow_match_scheduler", "linspace_sigmas", "shift_from_config"]


def calculate_shift(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """The resolution-dependent timestep shift ``mu`` (diffusers' ``calculate_shift``)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    b = base_shift - m * base_seq_len
    return image_seq_len * m + b


def shift_from_config(config: Any, image_seq_len: int, default_max_shift: float = 1.15) -> float:
    """``mu`` for ``image_seq_len`` tokens from a scheduler config's base/max values (the
    defaults are the ones FluxPipeline falls back to; SD3's pipeline uses 1.16)."""
    return calculate_shift(
        image_seq_len,
        config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5),
        config.get("max_shift", default_max_shift),
    )


def linspace_sigmas(steps: int) -> np.ndarray:
    """FLUX's and Qwen-Image's sigmas, ``np.linspace(1, 1 / steps, steps)`` (float64)."""
    return np.linspace(1.0, 1 / steps, steps)


def flow_match_scheduler(
    scheduler: Any,
    steps: int,
    device: torch.device | str,
    *,
    image_seq_len: int | None = None,
    sigmas: Sequence[float] | np.ndarray | None = None,
    mu: float | None = None,
    default_max_shift: float = 1.15,
) -> Any:
    """A deep copy of ``scheduler`` with ``set_timesteps`` done as the pipelines do.

    Args:
        scheduler: the pipeline's flow-matching scheduler (not changed).
        steps: sampling steps.
        device: where the timesteps live.
        image_seq_len: the denoiser's tokens per view (e.g. (h / 2) * (w / 2) for 2x2
            patches); gives ``mu`` when the config has ``use_dynamic_shifting`` and
            ``mu`` is None.
        sigmas: the pipeline's sigmas (e.g. :func:`linspace_sigmas`); None: the
            scheduler's own spacing (SD3).
        mu: the shift, when the pipeline computes it its own way (FLUX.2's empirical mu).
        default_max_shift: ``max_shift`` when the config has none.
    """
    scheduler = copy.deepcopy(scheduler)
    config = scheduler.config
    kwargs: dict[str, Any] = {}
    if mu is None and image_seq_len is not None and config.get("use_dynamic_shifting", False):
        mu = shift_from_config(config, image_seq_len, default_max_shift)
    if mu is not None:
        kwargs["mu"] = mu
    if sigmas is not None:
        kwargs["sigmas"] = sigmas
    scheduler.set_timesteps(steps, device=device, **kwargs)
    return scheduler
