"""Live preview: the panorama as it forms, a small ERP PNG every few denoising steps.

The recipe (docs/engine.md, "Live preview"), all of it vectorised and cheap next to a
denoising step:

1. **Predicted clean latents** (:func:`predict_x0`). After a step, the model's own guess
   of the clean sphere latents, from the fused model output and the step's model input,
   in the scheduler's terms: the model input is ``alpha * x0 + sigma * noise`` with
   ``(alpha, sigma)`` read from the scheduler's own tables (:func:`noise_levels`), and the
   output is an ``epsilon``, ``v_prediction``, ``sample`` or ``flow_prediction`` (flow
   matching's velocity, ``noise - x0``; SANA's DPM-Solver names it so) as the scheduler's
   ``prediction_type`` says. A family whose output is something else overrides
   :meth:`ModelAdapter.predict_x0 <spherediff_core.adapters.base.ModelAdapter.predict_x0>`.
2. **Latents -> RGB** (:class:`LatentProjection`): a 3 x C matrix and a bias per model,
   fitted once by least squares (:func:`fit_projection`) on a fixed set of synthetic colour
   images (solid colours and smooth random colour fields, :func:`fit_images`) encoded by
   the model's own VAE (``ModelAdapter.preview_fit_latents``), against the images
   average-pooled to the latent grid. Cached per VAE (:func:`projection_for`).
3. **Sphere -> ERP** (:func:`erp_index`): every preview pixel shows its nearest covered
   sphere point (a KD-tree query, once per plan and width, kept on the plan), in
   :mod:`spherediff_core.geometry`'s ERP convention (v = 1 the top row, the centre +X).
4. **Files** (:class:`PreviewSink`): an 8-bit sRGB PNG written under a temporary name and
   renamed into place, named ``.<stem>.preview.<pid>-<step>.png`` in the output's folder;
   only the latest two are kept, and all are removed when the job ends, however it ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import geometry, placing
from .denoise import StepState
from .lifecycle import protected

__all__ = [
    "KEEP_PREVIEWS",
    "LatentProjection",
    "PreviewSink",
    "PreviewUnavailable",
    "encode_png",
    "erp_index",
    "fit_images",
    "fit_projection",
    "fit_projection_from_encoder",
    "narrow_state",
    "noise_levels",
    "plan_erp_index",
    "predict_x0",
    "prediction_type",
    "projection_for",
    "remove_live_previews",
    "render_erp",
    "vae_key",
    "write_png",
]

logger = logging.getLogger(__name__)

KEEP_PREVIEWS = 2
"""Preview files kept at a time: the one just announced and the one before (a client
reading the older one while the next is written still finds it)."""
FORMAT = 1
"""Version of the fit (images, pooling, solver) and of its cache file."""
FIT_SEED = 20240915
FIT_SOLIDS = (
    (0.0, 0.0, 0.0),
    (1.0, 1.0, 1.0),
    (0.5, 0.5, 0.5),
    (1.0, 0.0, 0.0),
    (0.0, 1.0, 0.0),
    (0.0, 0.0, 1.0),
    (1.0, 1.0, 0.0),
    (0.0, 1.0, 1.0),
    (1.0, 0.0, 1.0),
)
FIT_FIELDS = 24
"""Smooth random colour fields in the fit (at least; more for many latent channels)."""
FIT_PIXELS = 256
"""The fit's images are about this many pixels across (8 to 16 latent cells)."""
FIT_RIDGE = 1e-3
"""Ridge of the least-squares fit, relative to the latents' mean variance: it keeps the
weights of nearly unused latent directions small, so noisy early predictions do not
speckle the preview."""


class PreviewUnavailable(RuntimeError):
    """The live preview cannot be made for this model or scheduler (the job goes on)."""


# --------------------------------------------------------------------------------------
# 1. Predicted clean latents
# --------------------------------------------------------------------------------------


def _config(scheduler: Any) -> Any:
    return getattr(scheduler, "config", {}) or {}


def _is_flow(scheduler: Any) -> bool:
    """Flow-matching sigmas (``x = (1 - sigma) x0 + sigma noise``): flow-matching
    schedulers (no ``alphas_cumprod``) and diffusion solvers set to flow sigmas."""
    config = _config(scheduler)
    return bool(config.get("use_flow_sigmas", False)) or not hasattr(scheduler, "alphas_cumprod")


def prediction_type(scheduler: Any) -> str:
    """What the model output is: ``epsilon``, ``v_prediction``, ``sample`` or
    ``flow_prediction`` (a flow-matching scheduler names none: its output is the flow)."""
    kind = _config(scheduler).get("prediction_type")
    if kind is None:
        return "flow_prediction" if _is_flow(scheduler) else "epsilon"
    return "sample" if kind == "original_sample" else str(kind)


def _sigma_at(scheduler: Any, index: int) -> float | None:
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or not 0 <= index < len(sigmas):
        return None
    return float(sigmas[index])


def noise_levels(scheduler: Any, index: int, timestep: Any) -> tuple[float, float]:
    """``(alpha, sigma)`` of a step's model input: ``model_input = alpha * x0 + sigma *
    noise``, from the scheduler's own tables.

    ``index`` is the step's index into the scheduler's ``sigmas`` (``StepState.
    scheduler_index``), ``timestep`` its timestep (for schedulers that index
    ``alphas_cumprod`` by it). Schedulers with sigmas: the scheduler's own
    ``_sigma_to_alpha_sigma_t`` where it has one (DPM-Solver, UniPC, DEIS: flow sigmas or
    not), else flow sigmas ``(1 - sigma, sigma)``, else Karras-style sigmas (Euler, Heun,
    LMS: the sample is ``x0 + sigma * noise`` and ``scale_model_input`` divides it by
    ``sqrt(sigma^2 + 1)``). Schedulers without: ``sqrt(alphas_cumprod[t])``,
    ``sqrt(1 - alphas_cumprod[t])`` (DDIM, DDPM, PNDM, LCM).
    """
    sigma = _sigma_at(scheduler, index)
    if sigma is not None:
        to_alpha_sigma = getattr(scheduler, "_sigma_to_alpha_sigma_t", None)
        if callable(to_alpha_sigma):
            alpha_t, sigma_t = to_alpha_sigma(torch.tensor(sigma, dtype=torch.float64))
            return float(alpha_t), float(sigma_t)
        if _is_flow(scheduler):
            return 1.0 - sigma, sigma
        alpha = 1.0 / math.sqrt(sigma * sigma + 1.0)
        return alpha, sigma * alpha
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if alphas is not None:
        t = min(max(round(float(timestep)), 0), len(alphas) - 1)
        a = float(alphas[t])
        return math.sqrt(a), math.sqrt(max(0.0, 1.0 - a))
    raise PreviewUnavailable(
        f"{type(scheduler).__name__} has neither sigmas nor alphas_cumprod to tell its noise "
        "level from"
    )


def predict_x0(scheduler: Any, state: StepState) -> torch.Tensor:
    """The predicted clean latents of a finished step, shaped like ``state.sample``
    ((B, C, N) or (B, C, F, N)), float32, on its device.

    ``epsilon``: ``(x - sigma * eps) / alpha``; ``v_prediction``: ``alpha * x - sigma * v``;
    ``sample``: the output; ``flow_prediction``: ``x - sigma * v`` (``v = noise - x0``);
    ``x`` is the model input and ``(alpha, sigma)`` come from :func:`noise_levels`.
    Schedulers that precondition (EDM) use their own ``precondition_outputs``.
    """
    out = state.model_output.float()
    kind = prediction_type(scheduler)
    precondition = getattr(scheduler, "precondition_outputs", None)
    sigma_edm = _sigma_at(scheduler, state.scheduler_index)
    if callable(precondition) and sigma_edm is not None:
        x0 = precondition(state.sample.float(), out, torch.tensor(sigma_edm))
        return x0.float()
    if kind == "sample":
        return out
    alpha, sigma = noise_levels(scheduler, state.scheduler_index, state.timestep)
    x = state.model_input.float()
    if kind == "epsilon":
        # The noisiest DDPM steps have alpha near 0: the guess is then mostly noise,
        # and the floor only keeps it finite.
        return (x - sigma * out) / max(alpha, 1e-4)
    if kind == "v_prediction":
        return alpha * x - sigma * out
    if kind == "flow_prediction":
        return x - sigma * out
    raise PreviewUnavailable(f"prediction type {kind!r} of {type(scheduler).__name__} is unknown")


# --------------------------------------------------------------------------------------
# 2. Latents -> RGB
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatentProjection:
    """A linear latent -> RGB map: ``rgb = matrix @ latent + bias`` (sRGB values in [0, 1]).

    Attributes:
        matrix: (3, C) float32.
        bias: (3,) float32.
        fit_s: seconds the fit took (encoding included), 0 when not fitted here.
        rms: root mean square error of the fit on its own samples (RGB in [0, 1]).
        samples: latent cells the fit used.
    """

    matrix: torch.Tensor
    bias: torch.Tensor
    fit_s: float = 0.0
    rms: float = 0.0
    samples: int = 0

    @property
    def channels(self) -> int:
        return int(self.matrix.shape[1])

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """(C, ...) latents -> (3, ...) RGB (not clamped), in the latents' device, float32."""
        m = self.matrix.to(latents.device)
        b = self.bias.to(latents.device)
        flat = latents.reshape(latents.shape[0], -1).float()
        return (m @ flat + b[:, None]).reshape(3, *latents.shape[1:])

    def to_json(self) -> dict[str, Any]:
        return {
            "matrix": self.matrix.tolist(),
            "bias": self.bias.tolist(),
            "fit_s": self.fit_s,
            "rms": self.rms,
            "samples": self.samples,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LatentProjection:
        matrix = torch.tensor(doc["matrix"], dtype=torch.float32)
        bias = torch.tensor(doc["bias"], dtype=torch.float32)
        if matrix.dim() != 2 or matrix.shape[0] != 3 or bias.shape != (3,):
            raise ValueError(f"bad shapes {tuple(matrix.shape)}, {tuple(bias.shape)}")
        if not (torch.isfinite(matrix).all() and torch.isfinite(bias).all()):
            raise ValueError("not finite")
        return cls(
            matrix,
            bias,
            float(doc.get("fit_s", 0.0)),
            float(doc.get("rms", 0.0)),
            int(doc.get("samples", 0)),
        )


def fit_projection(
    latents: torch.Tensor, rgb: torch.Tensor, ridge: float = FIT_RIDGE
) -> LatentProjection:
    """Least-squares ``rgb ~ matrix @ latent + bias`` over M samples.

    Args:
        latents: (M, C) latent cells.
        rgb: (M, 3) their colours.
        ridge: the ridge, relative to the mean variance of the latents' channels (0: plain
            least squares).
    """
    x = latents.to(torch.float64)
    y = rgb.to(torch.float64)
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    lam = ridge * float(gram.diagonal().mean().clamp(min=1e-12))
    eye = torch.eye(gram.shape[0], dtype=torch.float64)
    w = torch.linalg.solve(gram + lam * eye, xc.T @ yc)  # (C, 3)
    bias = y_mean - x_mean @ w
    rms = float(((xc @ w - yc) ** 2).mean().sqrt())
    return LatentProjection(w.T.float().contiguous(), bias.float(), rms=rms, samples=len(x))


def fit_images(size: int, fields: int = FIT_FIELDS, seed: int = FIT_SEED) -> torch.Tensor:
    """The fit's synthetic images: (len(FIT_SOLIDS) + fields, 3, size, size) in [0, 1].

    Solid colours (black, white, grey, the primaries and secondaries) and smooth random
    colour fields: random colours on a coarse k x k grid (k = 2, 3, 4, 6 in turn),
    bicubically upsampled, so every colour and gradients between them are seen at the
    scales a VAE's latent cell sees. Fixed by ``seed``.
    """
    g = torch.Generator().manual_seed(seed)
    solids = torch.tensor(FIT_SOLIDS, dtype=torch.float32)[:, :, None, None]
    images = [solids.expand(-1, 3, size, size)]
    for i in range(fields):
        k = (2, 3, 4, 6)[i % 4]
        coarse = torch.rand(1, 3, k, k, generator=g)
        images.append(
            torch.nn.functional.interpolate(
                coarse, size=(size, size), mode="bicubic", align_corners=True
            ).clamp(0.0, 1.0)
        )
    return torch.cat(images).contiguous()


def fit_projection_from_encoder(
    encode: Callable[[torch.Tensor], torch.Tensor],
    scale: int,
    channels: int,
    ridge: float = FIT_RIDGE,
    should_cancel: Callable[[], bool] | None = None,
) -> LatentProjection:
    """Fit the projection of an encoder: RGB (1, 3, H, W) in [0, 1] -> (1, C, H / scale,
    W / scale) latents (a model's ``preview_fit_latents``).

    The images (:func:`fit_images`) are ``grid * scale`` pixels square with ``grid`` 8 to 16
    latent cells, encoded one at a time (a few MB of activations, once per model); each
    latent cell's target is its ``scale x scale`` pixels' mean colour. The border cells
    are left out (the encoder's padding shapes them). Enough fields are added for at
    least 8 samples per unknown. ``should_cancel`` is polled between images (a big VAE
    on a CPU takes seconds an image): a cancel gives up the fit.
    """
    grid = min(16, max(8, FIT_PIXELS // scale))
    inner = (grid - 2) ** 2
    fields = max(FIT_FIELDS, math.ceil(8 * (channels + 1) / inner) - len(FIT_SOLIDS))
    t0 = time.perf_counter()
    images = fit_images(grid * scale, fields)
    lat_rows, rgb_rows = [], []
    for image in images.split(1):
        if should_cancel is not None and should_cancel():
            raise PreviewUnavailable("the job was cancelled during the fit")
        lat = encode(image).float().cpu()
        if not bool(torch.isfinite(lat).all()):
            raise PreviewUnavailable(
                "the VAE's encoder made non-finite latents of the fit's images (a VAE that "
                "overflows in half precision?)"
            )
        if lat.shape != (1, channels, grid, grid):
            raise PreviewUnavailable(
                f"the encoder made {tuple(lat.shape)} latents of a {grid * scale} px image; "
                f"expected (1, {channels}, {grid}, {grid})"
            )
        rgb = torch.nn.functional.avg_pool2d(image, scale)
        lat_rows.append(lat[0, :, 1:-1, 1:-1].reshape(channels, -1).T)
        rgb_rows.append(rgb[0, :, 1:-1, 1:-1].reshape(3, -1).T)
    fit = fit_projection(torch.cat(lat_rows), torch.cat(rgb_rows), ridge)
    return LatentProjection(fit.matrix, fit.bias, time.perf_counter() - t0, fit.rms, fit.samples)


def vae_key(adapter: Any) -> str:
    """What identifies a model's latent space for the fit: the adapter class, the sphere
    point's channels and pixels, the VAE's class and config, and its weights' fingerprint
    (the first and last parameter, the small buffers: normalisation statistics)."""
    vae = getattr(adapter.pipe, "vae", None)
    h = hashlib.sha256()
    head = {
        "format": FORMAT,
        "adapter": f"{type(adapter).__module__}.{type(adapter).__qualname__}",
        "channels": int(adapter.latent_channels),
        "scale": int(adapter.vae_scale_factor),
        "video": bool(adapter.is_video),
        "vae": type(vae).__name__,
        "config": dict(getattr(vae, "config", {}) or {}),
    }
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    if isinstance(vae, torch.nn.Module):
        params = list(vae.parameters())
        tensors = [params[0], params[-1]] if params else []
        tensors += [b for b in vae.buffers() if b.numel() <= 65536]
        for t in tensors:
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


_FITTED: weakref.WeakKeyDictionary[Any, LatentProjection] = weakref.WeakKeyDictionary()


def projection_for(
    adapter: Any,
    cache_dir: str | Path | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> LatentProjection:
    """The model's latent -> RGB projection: kept on the loaded adapter, cached on disk as
    ``preview-<vae_key>.json`` in ``cache_dir`` (default: the plan cache folder), fitted
    when neither has it (:func:`fit_projection_from_encoder` with the adapter's
    ``preview_fit_latents``; seconds on a CPU, once per model)."""
    known = _FITTED.get(adapter)
    if known is not None:
        return known
    from .plan import default_cache_dir

    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = vae_key(adapter)
    path = folder / f"preview-{key}.json"
    projection = _load_projection(path, key, int(adapter.latent_channels))
    if projection is None:
        projection = fit_projection_from_encoder(
            adapter.preview_fit_latents,
            int(adapter.vae_scale_factor),
            int(adapter.latent_channels),
            should_cancel=should_cancel,
        )
        logger.info(
            "fitted the live preview's latent -> RGB projection in %.2f s (RMS %.3f, %d cells)",
            projection.fit_s,
            projection.rms,
            projection.samples,
        )
        _save_projection(path, key, projection)
    _FITTED[adapter] = projection
    return projection


def _load_projection(path: Path, key: str, channels: int) -> LatentProjection | None:
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT or doc.get("key") != key:
            raise ValueError("another fit")
        projection = LatentProjection.from_json(doc)
        if projection.channels != channels:
            raise ValueError(f"{projection.channels} channels, the model {channels}")
        return projection
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        logger.warning("ignoring unreadable preview fit %s (%s); fitting again", path, exc)
        return None


def _save_projection(path: Path, key: str, projection: LatentProjection) -> None:
    doc = {"format": FORMAT, "key": key, **projection.to_json()}
    try:
        with protected():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = placing.temp_path(path.parent, path)
            try:
                tmp.write_text(json.dumps(doc), encoding="utf-8")
                placing.replace(tmp, path)
            except BaseException:
                placing.remove(tmp)
                raise
    except OSError as exc:
        logger.warning("could not cache the preview fit at %s (%s)", path, exc)


# --------------------------------------------------------------------------------------
# 3. Sphere -> ERP
# --------------------------------------------------------------------------------------


def erp_index(
    points: torch.Tensor, width: int, covered: torch.Tensor | None = None
) -> torch.Tensor:
    """The nearest sphere point of every pixel of a ``width x width / 2`` ERP, row-major
    (top row first): (width * width / 2,) int64 into ``points`` (N, 3) unit vectors,
    choosing only among ``covered`` (N,) bool points when given (a point no view reads
    keeps its noise)."""
    from scipy.spatial import cKDTree

    height = width // 2
    dirs = geometry.erp_pixel_directions(height, width).reshape(-1, 3).numpy()
    candidates = (
        torch.arange(points.shape[0])
        if covered is None or not bool(covered.any())
        else covered.nonzero()[:, 0]
    )
    tree = cKDTree(points[candidates].to(torch.float64).numpy())
    _, nearest = tree.query(dirs, k=1, workers=-1)
    return candidates[torch.from_numpy(np.asarray(nearest, dtype=np.int64))]


_INDEX_LOCK = threading.Lock()


def plan_erp_index(plan: Any, width: int) -> torch.Tensor:
    """:func:`erp_index` of a sampling plan's covered points, made once per plan and
    width and kept on the plan (a serving worker keeps its plans between jobs)."""
    with _INDEX_LOCK:
        table = plan.__dict__.setdefault("_preview_erp_index", {})
        if width not in table:
            table[width] = erp_index(plan.points, width, plan.covered)
        return table[width]


def narrow_state(state: StepState, index: torch.Tensor) -> tuple[StepState, torch.Tensor | None]:
    """The part of a finished step a preview needs (x0 is elementwise): a video's middle
    latent frame, and only the points the ERP shows when they are fewer than the
    sphere's (an 8K plan has 4 points a 512 px preview pixel).

    Returns the narrowed state, (B, C, N) or (B, C, pixels), and the index
    :func:`render_erp` takes with it (None: already one value per pixel, in order)."""
    names = ("sample", "model_input", "model_output", "latents")
    tensors = {name: getattr(state, name) for name in names}
    if state.sample.dim() == 4:
        middle = state.sample.shape[2] // 2
        tensors = {name: t[:, :, middle] for name, t in tensors.items()}
    if index.numel() >= tensors["sample"].shape[-1]:
        return dataclasses.replace(state, **tensors), index
    taken: dict[int, torch.Tensor] = {}  # the model input is often the sample itself
    for name, t in tensors.items():
        if id(t) not in taken:
            taken[id(t)] = _take(t, index)
        tensors[name] = taken[id(t)]
    return dataclasses.replace(state, **tensors), None


def _take(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[..., index]`` as one gather along the rows of a 2-D view (on the CPU ten times
    faster than index_select on the last axis of a 3-D tensor)."""
    n = t.shape[-1]
    return t.reshape(-1, n).index_select(1, index).reshape(*t.shape[:-1], index.numel())


def render_erp(
    x0: torch.Tensor, projection: LatentProjection, index: torch.Tensor | None, width: int
) -> np.ndarray:
    """Sphere latents (C, N) -> an 8-bit RGB ERP (width / 2, width, 3) uint8.

    ``index``: :func:`erp_index` (on the latents' device); None when ``x0`` already holds
    one value per pixel, row-major (:func:`narrow_state`). Only the points the pixels
    show are projected when they are fewer than the sphere's.
    """
    height = width // 2
    if index is None:
        rgb = projection(x0)
    elif index.numel() < x0.shape[-1]:
        rgb = projection(_take(x0, index))
    else:
        rgb = _take(projection(x0), index)
    image = rgb.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
    return image.reshape(3, height, width).permute(1, 2, 0).contiguous().cpu().numpy()


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> an 8-bit RGB PNG with the sRGB chunk, its pixels stored
    uncompressed (filter 0, deflate's stored blocks).

    A preview lives for seconds on a local disk: storing takes about 1 ms for 512 x 256
    where Pillow's encoder takes 10 to 55 ms (its filtering and deflate on noisy early
    previews), the budget of a whole preview. The file is 393 kB at 512 px, 6 MB at the
    largest width; any PNG reader reads it.
    """
    height, width, _ = image.shape
    rows = np.empty((height, width * 3 + 1), np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = image.reshape(height, width * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(data, zlib.crc32(kind))
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", header),
            chunk(b"sRGB", b"\x00"),  # sRGB colour space, perceptual rendering intent
            chunk(b"IDAT", zlib.compress(rows.tobytes(), 0)),
            chunk(b"IEND", b""),
        )
    )


def write_png(image: np.ndarray, path: Path) -> None:
    """(H, W, 3) uint8 -> an 8-bit sRGB PNG at ``path`` (:func:`encode_png`), written under
    a temporary name in its folder and renamed onto it (a reader sees the old file or the
    new one, whole)."""
    data = encode_png(image)
    with protected():  # a worker's hard stop waits rather than leave the temporary file
        tmp = placing.temp_path(path.parent, path)
        try:
            with open(tmp, "xb") as fh:
                fh.write(data)
            placing.replace(tmp, path)
        except BaseException:
            placing.remove(tmp)
            raise


# --------------------------------------------------------------------------------------
# 4. A job's previews
# --------------------------------------------------------------------------------------

_PREVIEW_NAME = re.compile(r"^\.(?P<stem>.+)\.preview\.(?P<pid>\d+)-\d+\.png$")
_LIVE: weakref.WeakSet[PreviewSink] = weakref.WeakSet()


class PreviewSink:
    """Where and how often one job's previews go; made by the runner, fed by the pipeline.

    ``every`` denoising steps (and after the last one) the predicted clean panorama is
    written as ``.<stem>.preview.<pid>-<step>.png`` (``width x width / 2``, 8-bit sRGB) in
    ``output``'s folder and ``announce(path, step, total)`` is called (``step`` = steps
    done, ``total`` = the scheduler's steps). The latest :data:`KEEP_PREVIEWS` files are
    kept; :meth:`close` (or leaving the ``with`` block) removes them all, and the output's
    folder when the previews made it and it is still empty. A preview that cannot be
    written (a full disk) turns the previews off with a warning; the job goes on.

    Used as::

        with PreviewSink(options.preview_every, options.preview_width, options.output,
                         announce) as sink:
            pipe(options, preview=sink)
    """

    def __init__(
        self,
        every: int,
        width: int,
        output: str | os.PathLike[str],
        announce: Callable[[str, int, int], None] | None = None,
        keep: int = KEEP_PREVIEWS,
    ) -> None:
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        if width < 2 or width % 2:
            raise ValueError(f"width must be even, got {width}")
        final = placing.output_path(output)
        self.every = int(every)
        self.width = int(width)
        self.folder = final.parent
        self.stem = final.stem
        self.announce = announce
        self.keep = max(1, int(keep))
        self.written: list[Path] = []
        """The files on disk now, oldest first."""
        self._leftover: list[Path] = []  # old previews a reader held open (Windows)
        self.steps: list[int] = []
        """The steps previewed, in order."""
        self.seconds = 0.0
        """Time spent on previews in the loop (x0, projection, ERP, PNG)."""
        self.setup_s = 0.0
        """Time spent preparing them (the fit or its cache, the ERP index)."""
        self.disabled = False
        self._created: list[Path] = []
        self._tidied = False
        _LIVE.add(self)

    # --- the loop's side ----------------------------------------------------------------
    def due(self, done: int, total: int) -> bool:
        """Whether a preview is made after ``done`` of ``total`` steps."""
        return not self.disabled and (done % self.every == 0 or done == total)

    def attach(
        self,
        adapter: Any,
        plan: Any,
        scheduler: Any,
        cache_dir: str | Path | None = None,
        projection: LatentProjection | None = None,
        should_cancel: Callable[[], bool] | None = None,
    ) -> Callable[[StepState], None] | None:
        """Prepare this job's previews (the model's projection, the plan's ERP index) and
        return the denoising loop's ``on_step``; None when no preview can be made (logged).

        ``adapter``: the loaded model's (its ``predict_x0`` hook and its projection);
        ``projection`` given instead, ``adapter`` may be None (the generic
        :func:`predict_x0`): an engine-level caller with its own latent space."""
        t0 = time.perf_counter()
        predict = predict_x0 if adapter is None else adapter.predict_x0
        try:
            if projection is None:
                projection = projection_for(adapter, cache_dir, should_cancel)
            index = plan_erp_index(plan, self.width)
        except Exception as exc:  # noqa: BLE001 - a preview must never cost the generation
            logger.warning("no live preview for this model: %s", exc)
            self.disabled = True
            return None
        finally:
            self.setup_s += time.perf_counter() - t0
        device_index: dict[torch.device, torch.Tensor] = {}

        def on_step(state: StepState) -> None:
            done = state.step_index + 1
            if not self.due(done, state.total_steps):
                return
            t1 = time.perf_counter()
            device = state.sample.device
            idx = device_index.get(device)
            if idx is None:
                idx = device_index[device] = index.to(device)
            try:
                part, idx_part = narrow_state(state, idx)
                x0 = predict(scheduler, part)[0]  # (C, N) or (C, pixels)
                image = render_erp(x0, projection, idx_part, self.width)
            except Exception as exc:  # noqa: BLE001 - a preview must never cost the generation
                logger.warning("live preview turned off: %s", exc)
                self.disabled = True
                return
            self.publish(image, done, state.total_steps)
            self.seconds += time.perf_counter() - t1

        return on_step

    def path_for(self, step: int) -> Path:
        return self.folder / f".{self.stem}.preview.{os.getpid()}-{step:04d}.png"

    def publish(self, image: np.ndarray, step: int, total: int) -> Path | None:
        """Write one preview, drop the oldest beyond ``keep``, announce it."""
        if self.disabled:
            return None
        path = self.path_for(step)
        try:
            if not self.written:
                self._prepare_folder()
            write_png(image, path)
        except OSError as exc:
            logger.warning("live preview turned off: could not write %s (%s)", path, exc)
            self.disabled = True
            return None
        self.written.append(path)
        self.steps.append(step)
        while len(self.written) > self.keep:
            oldest = self.written.pop(0)
            try:
                placing.remove(oldest)
            except OSError:  # Windows: a client still has it open; close() tries again
                self._leftover.append(oldest)
        if self.announce is not None:
            self.announce(str(path), step, total)
        return path

    # --- files --------------------------------------------------------------------------
    def _prepare_folder(self) -> None:
        """Make the output's folder if it is not there yet (remembering what was made,
        to remove it again if the job leaves it empty) and remove the previews that
        dead processes left of this stem (a killed worker cannot tidy up)."""
        missing: list[Path] = []
        folder = self.folder
        while not folder.exists() and folder.parent != folder:
            missing.append(folder)
            folder = folder.parent
        self.folder.mkdir(parents=True, exist_ok=True)
        self._created = missing  # deepest first
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.folder):
                match = _PREVIEW_NAME.match(entry.name)
                if match is None or match["stem"] != self.stem:
                    continue
                if not placing.pid_alive(int(match["pid"])):
                    placing.remove(Path(entry.path))

    def close(self) -> None:
        """Remove every preview file (and the folders the previews made, when empty).
        Safe to call again, and from another thread (a worker's hard stop)."""
        _LIVE.discard(self)
        self.disabled = True
        self.written.extend(self._leftover)
        self._leftover.clear()
        while self.written:
            with contextlib.suppress(OSError):
                placing.remove(self.written.pop(0))
        if not self._tidied:
            self._tidied = True
            for folder in self._created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty: the outputs may be there now

    def __enter__(self) -> PreviewSink:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def remove_live_previews() -> None:
    """Remove the preview files of every job still running in this process: for a
    worker's hard stop, which ends the process without unwinding the job."""
    for sink in list(_LIVE):
        sink.close()
