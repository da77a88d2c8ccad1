"""Lift an LDR equirectangular panorama to scene-referred linear HDR, with its sun.

Pure NumPy (no torch, no bpy), vectorised; the ERP convention is
:mod:`spherediff_core.geometry`'s (Blender's Environment Texture: ``u = 0.5 - lon / 2 pi``,
``v = 0.5 + lat / pi``, centre facing +X, Z up), restated here in NumPy.

The model
=========
1. **Undo the display encoding.** 8- and 16-bit inputs go through a lookup table of the
   sRGB transfer function (IEC 61966-2-1); float inputs (a generation's decoded ERP,
   display values in [0, 1]) through the same formula. Nothing else touches an unclipped
   pixel: ``image = exposure * srgb_to_linear(input)`` there, so re-exposed and re-encoded
   the EXR gives the input back (up to half-float rounding, > 60 dB).
2. **Find the clipped pixels** (any channel at the top code, >= 254/255) and, on a
   512-pixel-wide analysis copy, their blobs (4-connected, wrapping at the seam) and each
   pixel's angular depth inside its blob (distance to the nearest unclipped pixel).
3. **Detect the sun.** Candidates are the deepest clipped blobs above the horizon. A sun's
   blob is *soft* (the sky's radiance falls smoothly from the aureole, so the unclipped ring
   just outside is at least half the clip level, where lamps, windows and lit walls have
   hard edges), has an aureole (unclipped sky 1-4 deg beyond it >= 1.25x brighter than
   10-20 deg beyond) and is at most 40 deg wide (an overcast sky clipped all over is not a
   sun). Where the sky is lopsided (the medians of twelve 30-deg sectors, summed as
   vectors, lean to one side) the blob must sit on the bright side and the strongest
   aureole wins; otherwise (a low sun) the widest blob wins. A blob under 1.5 deg (a bare
   disc) must have its aureole in all four quadrants around it (>= 1.5x, or >= 1.2x when
   the lopsided sky leans towards it). Its direction: a clear sky is symmetric about the sun's
   vertical, so the azimuth is the median midpoint of the blob's clipped runs; along that
   vertical the unclipped sky above the blob falls as (elevation - sun elevation) **
   -AUREOLE_POWER, and the sun's elevation is the best fit of that profile (a bare disc:
   its centroid). Nothing else is called a sun: overcast skies, interiors and night scenes
   get ``visible = False``.
4. **Reconstruct clipped highlights smoothly.** Inside the sun's blob the aureole is
   extrapolated with a flat-topped power law of the angle ``g`` to the sun,
   ``L ~ (g**2 + AUREOLE_CORE_DEG**2) ** (-AUREOLE_POWER / 2)``, scaled to the clip level on
   the blob's edge (``g + depth`` there), so it is continuous there and rises towards the
   sun. Other soft clipped areas
   (bright sky, clouds) get a gentle dome, ``1 + 0.5 (1 - exp(-d / 4 deg))``. Hard-edged
   clipped blobs (the ring outside at most 0.3 of the clip level) in a panorama without a
   sun are light sources: their radiance is raised
   until their mean irradiance balances what the surroundings reflect (closed-world energy
   balance with an average albedo of 0.4), at most 4096x the clip level. The gain is computed
   on the analysis copy, blurred, and applied only to clipped pixels of the full image.
5. **Give the sun its energy** from the clear-sky sun/sky ratio of Blender's own physical
   sky (MULTIPLE_SCATTERING, the Nishita model's successor): ``E_sun = R(elevation) *
   E_sky``, where ``E_sky`` is the horizontal irradiance of the lifted sky (upper
   hemisphere, sun excluded) and ``R`` the ratio of the sun disc's normal irradiance to the
   sky's horizontal diffuse irradiance, tabulated by elevation (``SKY_RATIO_TABLE``,
   measured by ``tests/blender/render_hdr_ground_truth.py --calibrate`` in Blender 5.0 on
   sky-only renders, not on the scenes it is evaluated on). The sun's colour is the same
   table's disc colour at that elevation. The disc is painted into the image (energy
   conserving, anti-aliased) with the estimated angular size, widened only as much as
   half-float's largest value (65504) needs, so the EXR alone carries the whole radiance.

Absolute scale
==============
The input panorama was exposed by its generator for display; its mid-grey is whatever the
generator made it (a log-average of about 0.18 for auto-exposed images). The lift keeps
that exposure: ``exposure = 1.0`` means an unclipped pixel's EXR value is exactly its
sRGB-decoded display value, so with World strength 1.0 Blender's default view transform
(AgX or Filmic, exposure 0) shows the world as the panorama looked, and every value is in
Blender's radiometric units (W/m^2/sr; a Sun lamp's strength is its irradiance in W/m^2,
and a white diffuse surface under a uniform World of value 1 renders as 1). An LDR image
carries no absolute luminance; if the panorama was a photograph exposed by the sunny-16
rule (EV100 = 15, mid-grey 0.18), 1.0 stands for about 22,800 cd/m^2 (=
12.5 * 2**15 / 100 / 0.18); World strength 1.0 then means that.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BadInputError

__all__ = [
    "HALF_MAX",
    "SKY_RATIO_TABLE",
    "HDRResult",
    "SunEstimate",
    "diffuse_irradiance",
    "erp_directions",
    "erp_solid_angles",
    "lift_to_hdr",
    "linear_to_srgb",
    "srgb_to_linear",
]

HALF_MAX = 65504.0
ANALYSIS_WIDTH = 512
SUN_ANGLE_DEG = 0.545  # the Sun's mean angular diameter seen from the Earth
LIGHT_MAX_RING = 0.3  # a light source's edge is hard: the ring outside is this dark or darker
LIGHT_MAX_GAIN = 4096.0  # at most this many times the clip level for a light source
SUN_MIN_RING = 0.5  # upper-quartile radiance just outside a sun's blob, over the clip level
SUN_STRONG_DIPOLE = 0.08  # a sky this lopsided (_sky_dipole) is clear with a sun up
SUN_TINY_AUREOLE = 1.5  # a blob under 1.5 deg (the bare disc): aureole in every quadrant
SUN_TINY_AUREOLE_LEANING = 1.2  # ... enough when the lopsided sky leans towards it
SUN_TINY_GAP_DEG = 30.0  # ... within this azimuth of the sky's bright side
SUN_MAX_DIPOLE_DEG = 90.0  # angle between a sun's blob and the sky's bright side
SUN_MIN_AUREOLE = 1.25  # sky radiance 1-4 deg out over 10-20 deg out, around a sun
_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # Rec.709 luminance

# Blender 5.0 MULTIPLE_SCATTERING sky, sun size 0.545 deg, default atmosphere (see the
# module docstring, step 5): elevation (deg) -> (R = sun normal irradiance / sky horizontal
# irradiance (luminance), sun colour (max channel 1)).
SKY_RATIO_TABLE: tuple[tuple[float, float, tuple[float, float, float]], ...] = (
    (1.0, 3.380, (1.0000, 0.2231, 0.0000)),
    (2.0, 5.542, (1.0000, 0.3131, 0.0021)),
    (4.0, 8.287, (1.0000, 0.4559, 0.0738)),
    (7.0, 10.125, (1.0000, 0.5900, 0.1981)),
    (10.0, 10.854, (1.0000, 0.6675, 0.3003)),
    (15.0, 11.277, (1.0000, 0.7392, 0.4184)),
    (20.0, 11.327, (1.0000, 0.7787, 0.4944)),
    (30.0, 11.042, (1.0000, 0.8200, 0.5834)),
    (45.0, 10.432, (1.0000, 0.8474, 0.6482)),
    (60.0, 9.934, (1.0000, 0.8599, 0.6793)),
    (75.0, 9.625, (1.0000, 0.8657, 0.6941)),
    (90.0, 9.519, (1.0000, 0.8674, 0.6986)),
)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class SunEstimate:
    """The sun found in a panorama (``visible`` False: there is none; the rest is None).

    ``direction`` is the unit vector towards the sun in the world frame (Z up);
    ``azimuth_deg`` its longitude (0 towards +X, 90 towards +Y), ``elevation_deg`` its
    latitude; ``angle_deg`` the angular diameter of the disc painted into the image (use it
    as a Sun lamp's angle); ``color`` linear Rec.709 with its largest channel 1; ``strength``
    the irradiance in W/m^2 of a Blender Sun lamp with that colour (the lamp's channels give
    ``strength * color``), in the HDR image's units.
    """

    visible: bool
    direction: tuple[float, float, float] | None = None
    azimuth_deg: float | None = None
    elevation_deg: float | None = None
    angle_deg: float | None = None
    color: tuple[float, float, float] | None = None
    strength: float = 0.0
    score: float = 0.0
    surround: tuple[float, float, float] | None = None
    """The sky's linear radiance just outside the disc (1 to 3 pixels out): what a World
    shows in the disc's place when a Sun lamp carries the sun (the add-on masks the disc)."""

    def to_dict(self) -> dict[str, Any]:
        def rounded(v: Any, nd: int = 6) -> Any:
            if v is None:
                return None
            if isinstance(v, tuple):
                return [round(float(c), nd) for c in v]
            return round(float(v), nd)

        return {
            "visible": bool(self.visible),
            "direction": rounded(self.direction),
            "azimuth_deg": rounded(self.azimuth_deg, 3),
            "elevation_deg": rounded(self.elevation_deg, 3),
            "angle_deg": rounded(self.angle_deg, 4),
            "color": rounded(self.color),
            "strength": rounded(self.strength, 4),
            "surround": rounded(self.surround),
        }


@dataclass(frozen=True)
class HDRResult:
    """A lifted panorama: ``image`` (H, W, 3) float32 linear Rec.709, sun included."""

    image: np.ndarray
    exposure: float
    sun: SunEstimate
    method: str
    clipped_fraction: float
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def hdr_block(self, exr_name: str) -> dict[str, Any]:
        """The sidecar's ``hdr`` block (issue 10): path, exposure, method and sun."""
        return {
            "exr": exr_name,
            "exposure": float(self.exposure),
            "method": self.method,
            "sun": self.sun.to_dict(),
        }


# --------------------------------------------------------------------------- encoding
def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB display values in [0, 1] -> linear (IEC 61966-2-1), float32."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Linear values -> sRGB display values (not clipped above 1), float32."""
    x = np.maximum(np.asarray(x, dtype=np.float32), 0.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1.0 / 2.4) - 0.055).astype(np.float32)


_LUTS: dict[int, np.ndarray] = {}


def _lut(bits: int) -> np.ndarray:
    if bits not in _LUTS:
        top = (1 << bits) - 1
        _LUTS[bits] = srgb_to_linear(np.arange(top + 1, dtype=np.float64) / top)
    return _LUTS[bits]


def _check_input(image: Any) -> np.ndarray:
    """A (H, W, 3) array (or a generation's (3, H, W) float image), refused by name else."""
    if hasattr(image, "detach"):  # a torch tensor, without importing torch
        image = image.detach().to("cpu").numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 1):
        raise BadInputError(
            f"the panorama is grayscale (shape {tuple(arr.shape)}): the lift needs RGB; "
            "convert it to RGB first"
        )
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise BadInputError(
            f"the panorama has shape {tuple(arr.shape)}: expected (height, width, 3) RGB"
        )
    if arr.shape[-1] == 4:
        raise BadInputError(
            "the panorama has an alpha channel (RGBA): an environment has no transparency; "
            "save it as RGB without alpha"
        )
    h, w = arr.shape[:2]
    if h < 16 or w != 2 * h:
        raise BadInputError(
            f"the panorama is {w}x{h}: an equirectangular panorama is exactly twice as wide "
            f"as it is high (e.g. {2 * h}x{h}) and at least 32x16"
        )
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32, copy=False)
        if not np.isfinite(arr).all():
            raise BadInputError("the panorama has NaN or infinite values")
        top = float(arr.max())
        if top > 1.0 + 1e-3:
            raise BadInputError(
                f"the panorama is already HDR (values up to {top:.3g} > 1): the lift takes "
                "display-referred LDR values in [0, 1]; use the HDR image as it is"
            )
        return arr
    raise BadInputError(f"unsupported pixel type {arr.dtype}: use uint8, uint16 or float")


def _any_channel_at_least(arr: np.ndarray, level) -> np.ndarray:
    # Three comparisons beat a max over a length-3 last axis by far on large images.
    return (arr[..., 0] >= level) | (arr[..., 1] >= level) | (arr[..., 2] >= level)


def _decode(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (linear float32 (H, W, 3), clipped bool (H, W)): any channel at the top code."""
    if arr.dtype == np.uint8:
        return np.take(_lut(8), arr), _any_channel_at_least(arr, 254)
    if arr.dtype == np.uint16:
        return np.take(_lut(16), arr), _any_channel_at_least(arr, 65535 - 257)
    disp = np.clip(arr, 0.0, 1.0)
    return srgb_to_linear(disp), _any_channel_at_least(disp, 254.0 / 255.0)


# --------------------------------------------------------------------------- sphere
def erp_directions(height: int, width: int) -> np.ndarray:
    """Unit directions through ERP pixel centres, (H, W, 3) float64 (geometry's convention)."""
    lon = (0.5 - (np.arange(width) + 0.5) / width) * 2.0 * np.pi
    lat = (0.5 - (np.arange(height) + 0.5) / height) * np.pi
    cl = np.cos(lat)[:, None]
    return np.stack(
        np.broadcast_arrays(cl * np.cos(lon)[None], cl * np.sin(lon)[None], np.sin(lat)[:, None]),
        axis=-1,
    )


def erp_solid_angles(height: int, width: int) -> np.ndarray:
    """Exact solid angle of each ERP row's pixels, (H,) float64; they sum to 4 pi / W."""
    edges = np.pi / 2.0 - np.arange(height + 1) * np.pi / height
    return (np.sin(edges[:-1]) - np.sin(edges[1:])) * (2.0 * np.pi / width)


def _lonlat_to_dir(lon: float, lat: float) -> np.ndarray:
    return np.array([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)])


def _dir_to_uv_pixel(d: np.ndarray, height: int, width: int) -> tuple[float, float]:
    lon, lat = math.atan2(d[1], d[0]), math.asin(max(-1.0, min(1.0, d[2])))
    col = ((0.5 - lon / (2 * math.pi)) % 1.0) * width - 0.5
    row = (0.5 - lat / math.pi) * height - 0.5
    return row, col


def diffuse_irradiance(image: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Irradiance at unit ``normals`` (N, 3) from an ERP radiance image (H, W, C) -> (N, C).

    ``E(n) = sum L(w) max(0, n . w) dOmega`` over the pixels (cosine-weighted, unoccluded).
    """
    h, w = image.shape[:2]
    dirs = erp_directions(h, w).reshape(-1, 3).astype(np.float32)
    weights = np.repeat(erp_solid_angles(h, w), w).astype(np.float32)
    cos = np.maximum(np.asarray(normals, np.float32) @ dirs.T, 0.0) * weights[None]
    return (cos @ image.reshape(h * w, -1).astype(np.float32)).astype(np.float64)


# --------------------------------------------------------------------------- analysis helpers
def _block_mean(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-average (H, W, ...) down to (height, width, ...) (any integer or not factor)."""
    h, w = x.shape[:2]
    if (h, w) == (height, width):
        return x.astype(np.float32)
    r = (np.arange(height) * h) // height
    c = (np.arange(width) * w) // width
    rows = np.add.reduceat(x.astype(np.float32), r, axis=0)
    both = np.add.reduceat(rows, c, axis=1)
    nr = np.diff(np.append(r, h)).astype(np.float32)
    nc = np.diff(np.append(c, w)).astype(np.float32)
    scale = 1.0 / (nr[:, None] * nc[None, :])
    return both * (scale if both.ndim == 2 else scale[..., None])


def _shifts(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """4-neighbours of every pixel: wrap in longitude, replicate at the poles."""
    up = np.concatenate([m[:1], m[:-1]], axis=0)
    down = np.concatenate([m[1:], m[-1:]], axis=0)
    return up, down, np.roll(m, 1, axis=1), np.roll(m, -1, axis=1)


def _erode(m: np.ndarray) -> np.ndarray:
    up, down, left, right = _shifts(m)
    return m & up & down & left & right


def _dilate(m: np.ndarray) -> np.ndarray:
    up, down, left, right = _shifts(m)
    return m | up | down | left | right


def _depth(mask: np.ndarray, max_steps: int) -> np.ndarray:
    """Erosion count: 0 outside, 1 on the blob's edge, growing inwards (pixels)."""
    depth = np.zeros(mask.shape, np.float32)
    cur = mask.copy()
    for _ in range(max_steps):
        if not cur.any():
            break
        depth += cur
        cur = _erode(cur)
    return depth


def _flood(seed: tuple[int, int], mask: np.ndarray) -> np.ndarray:
    """The 4-connected component of ``mask`` holding ``seed`` (wrapping at the seam)."""
    blob = np.zeros_like(mask)
    blob[seed] = True
    # Grow a few steps per check: cheap, and a component of radius r needs ~r steps.
    for _ in range(4 * sum(mask.shape)):
        grown = blob
        for _ in range(8):
            grown = _dilate(grown) & mask
        if grown.sum() == blob.sum():
            return grown
        blob = grown
    return blob


def _blur(x: np.ndarray, passes: int = 3) -> np.ndarray:
    """Separable 3-tap box blur, repeated (close to a Gaussian), wrapping in longitude."""
    for _ in range(passes):
        x = (np.roll(x, 1, axis=1) + x + np.roll(x, -1, axis=1)) / 3.0
        x = (np.concatenate([x[:1], x[:-1]]) + x + np.concatenate([x[1:], x[-1:]])) / 3.0
    return x


def _sample_bilinear(field_: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Bilinear lookup of (h, w) at fractional pixel coordinates; wraps in longitude."""
    h, w = field_.shape
    r = np.clip(rows, 0.0, h - 1.0)
    r0 = np.floor(r).astype(np.int64)
    r1 = np.minimum(r0 + 1, h - 1)
    fr = (r - r0).astype(np.float32)
    c0f = np.floor(cols)
    fc = (cols - c0f).astype(np.float32)
    c0 = c0f.astype(np.int64) % w
    c1 = (c0 + 1) % w
    top = field_[r0, c0] * (1 - fc) + field_[r0, c1] * fc
    bot = field_[r1, c0] * (1 - fc) + field_[r1, c1] * fc
    return top * (1 - fr) + bot * fr


def _sky_ratio(elevation_deg: float) -> tuple[float, np.ndarray]:
    e = np.array([row[0] for row in SKY_RATIO_TABLE])
    r = np.array([row[1] for row in SKY_RATIO_TABLE])
    c = np.array([row[2] for row in SKY_RATIO_TABLE])
    x = float(np.clip(elevation_deg, e[0], e[-1]))
    ratio = float(np.exp(np.interp(x, e, np.log(r))))
    colour = np.array([np.interp(x, e, c[:, k]) for k in range(3)])
    return ratio, colour / colour.max()


# --------------------------------------------------------------------------- the sun
@dataclass
class _Blob:
    mask: np.ndarray
    area_sr: float
    radius_deg: float
    ring: float
    centre: np.ndarray
    slope: float = 0.0
    rms: float = float("inf")


def _describe_blob(blob, lum, clip_lum, dirs, omega, px_deg) -> _Blob:
    area = float((blob * omega[:, None]).sum())
    radius = math.degrees(math.acos(max(-1.0, 1.0 - area / (2.0 * math.pi))))
    # Ring about 1.5-4 deg outside the blob (skipping the anti-aliased edge pixels).
    inner = blob.copy()
    steps_in = max(1, round(1.5 / px_deg))
    steps_out = max(steps_in + 1, round(4.0 / px_deg))
    for _ in range(steps_in):
        inner = _dilate(inner)
    outer = inner.copy()
    for _ in range(steps_out - steps_in):
        outer = _dilate(outer)
    ring = outer & ~inner
    ring_lum = lum[ring]
    # The upper quartile: a sun low on the horizon has ground under half its ring.
    ring_level = float(np.percentile(ring_lum, 75)) / clip_lum if ring_lum.size else 0.0
    centre = dirs[blob].mean(axis=0)
    centre /= np.linalg.norm(centre)
    return _Blob(blob, area, radius, ring_level, centre)


AUREOLE_POWER = 1.2
"""Slope of the clear sky's circumsolar radiance, L ~ angle**-p, 5-30 deg from the sun (the
Blender sky's is 1.0-1.45 by elevation on the ground truth; the middle is used)."""


AUREOLE_CORE_DEG = 8.0
"""Angle inside which the clear sky's aureole flattens (Blender's sky: about 4-8 deg)."""


def _run_halfwidths(blob: np.ndarray, row: int, col: int) -> tuple[int, int]:
    """Clipped pixels left and right of (row, col) in the blob's run on that row."""
    w = blob.shape[1]
    line = np.roll(blob[row], w // 2 - col)  # the column sits at w // 2
    c = w // 2
    left_gap = np.nonzero(~line[:c][::-1])[0]
    right_gap = np.nonzero(~line[c + 1 :])[0]
    left = int(left_gap[0]) if left_gap.size else c
    right = int(right_gap[0]) if right_gap.size else w - c - 1
    return left, right


def _locate_sun(lum, clipped, dirs, blob: np.ndarray, px_deg: float) -> np.ndarray:
    """The sun's direction in its clipped blob.

    A clear sky is symmetric about the sun's vertical: the azimuth is the median midpoint of
    the blob's clipped runs over its upper 60 %. Along that vertical, the unclipped sky
    above the blob falls as (elevation - sun elevation)**-AUREOLE_POWER; the sun's elevation
    is the one that fits that profile best (least squares in log, grid of 0.1 deg). A blob
    a few pixels wide is the disc itself: its centroid.
    """
    h, w = blob.shape
    rows = np.nonzero(blob.any(axis=1))[0]
    r_top, r_bot = int(rows.min()), int(rows.max())
    inside = dirs[blob]
    centroid = inside.mean(axis=0)
    centroid /= np.linalg.norm(centroid)
    if r_bot - r_top <= max(2, round(2.5 / px_deg)):
        return centroid
    cols_top = np.nonzero(blob[r_top])[0]
    c0 = int(cols_top[len(cols_top) // 2])
    mids = []
    for r in range(r_top, r_top + max(1, int(0.6 * (r_bot - r_top))) + 1):
        if blob[r, c0]:
            left, right = _run_halfwidths(blob, r, c0)
            mids.append(c0 + (right - left) / 2.0)
    col = float(np.median(mids)) if mids else float(c0)
    lon = (0.5 - (col + 0.5) / w) * 2.0 * math.pi
    lat_rows = (0.5 - (np.arange(h) + 0.5) / h) * 180.0
    e_top = float(lat_rows[r_top])
    cols = (round(col) + np.arange(-2, 3)) % w
    prof_rows = np.arange(max(0, r_top - int(25.0 / px_deg)), r_top)
    prof = lum[np.ix_(prof_rows, cols)]
    ok = ~clipped[np.ix_(prof_rows, cols)] & (prof > 1e-5)
    if ok.sum() < 6:
        return _lonlat_to_dir(lon, math.radians(e_top))
    y = np.log(np.where(ok, prof, 1.0))
    e = np.broadcast_to(lat_rows[prof_rows][:, None], y.shape)
    cands = np.arange(-0.5, e_top - 0.2, 0.1)
    if cands.size == 0:
        return _lonlat_to_dir(lon, math.radians(e_top))
    x = -AUREOLE_POWER * np.log(np.maximum(e[None] - cands[:, None, None], 1e-3))
    r = np.where(ok[None], y[None] - x, 0.0)
    n = ok.sum()
    c = r.sum(axis=(1, 2)) / n
    res = (np.where(ok[None], r - c[:, None, None], 0.0) ** 2).sum(axis=(1, 2))
    e_sun = float(cands[int(np.argmin(res))])
    return _lonlat_to_dir(lon, math.radians(e_sun))


def _aureole_ratio(lum, clipped, dirs, blob: _Blob) -> tuple[float, float]:
    """Median unclipped sky radiance 1-4 deg beyond the blob over that 10-20 deg beyond:
    all around, and in its weakest quadrant (up, down, left, right of the blob)."""
    centre = blob.centre
    ang = np.degrees(np.arccos(np.clip(dirs @ centre, -1.0, 1.0)))
    sky = (~clipped) & (dirs[..., 2] > math.sin(math.radians(0.5)))
    rad = blob.radius_deg
    near = sky & (ang > rad + 1.0) & (ang < rad + 4.0)
    far = sky & (ang > rad + 10.0) & (ang < rad + 20.0)
    if near.sum() < 5 or far.sum() < 5:
        return 0.0, 0.0
    overall = float(np.median(lum[near]) / max(float(np.median(lum[far])), 1e-6))
    east = np.cross([0.0, 0.0, 1.0], centre)
    east = east / max(float(np.linalg.norm(east)), 1e-9)
    north = np.cross(centre, east)
    theta = np.arctan2(dirs @ north, dirs @ east)
    weakest = float("inf")
    for k in range(4):
        quad = np.abs((theta - k * math.pi / 2 + math.pi) % (2 * math.pi) - math.pi) < math.pi / 4
        n, f = near & quad, far & quad
        if n.sum() >= 3 and f.sum() >= 3:
            weakest = min(weakest, float(np.median(lum[n]) / max(float(np.median(lum[f])), 1e-6)))
    return overall, (0.0 if weakest == float("inf") else weakest)


def _sky_dipole(lum, dirs) -> tuple[float, np.ndarray]:
    """How lopsided the sky is, and towards which azimuth: the median radiance of twelve
    30-deg sectors between 8 and 70 deg of elevation (medians: buildings in front of the
    sky barely move them) summed as vectors, over their sum."""
    lat = np.degrees(np.arcsin(np.clip(dirs[..., 2], -1.0, 1.0)))
    lon = np.degrees(np.arctan2(dirs[..., 1], dirs[..., 0]))
    band = (lat > 8.0) & (lat < 70.0)
    sector = np.floor((lon + 180.0) / 30.0).astype(np.int64) % 12
    meds = np.array([np.median(lum[band & (sector == k)]) for k in range(12)])
    phi = np.radians(-165.0 + 30.0 * np.arange(12))
    vec = np.array([(meds * np.cos(phi)).sum(), (meds * np.sin(phi)).sum(), 0.0])
    total = max(float(meds.sum()), 1e-12)
    return float(np.hypot(vec[0], vec[1])) / total, vec


def _azimuth_gap_deg(a: np.ndarray, b: np.ndarray) -> float:
    d = math.atan2(a[1], a[0]) - math.atan2(b[1], b[0])
    return abs(math.degrees((d + math.pi) % (2.0 * math.pi) - math.pi))


def _find_sun(lum, clipped, dirs, omega, px_deg):
    """-> (_Blob of the sun or None, candidate blobs, depth) on the analysis grid."""
    cand = clipped & (dirs[..., 2] > 0.0)
    depth = _depth(clipped, 64)
    blobs = []
    remaining = cand.copy()
    for _ in range(6):
        score = np.where(remaining, depth, 0.0)
        if score.max() <= 0:
            break
        seed = np.unravel_index(int(np.argmax(score)), score.shape)
        blob = _flood(seed, cand)
        remaining &= ~blob
        blobs.append(_describe_blob(blob, lum, 1.0, dirs, omega, px_deg))
    dipole_h, dipole = _sky_dipole(lum, dirs)
    best = None
    for b in blobs:
        b.slope, weakest = _aureole_ratio(lum, clipped, dirs, b)
        b.rms = _azimuth_gap_deg(b.centre, dipole)
        tiny = b.radius_deg < 1.5  # the bare disc: no clipped aureole to judge its edge by
        if b.radius_deg > 40.0 or b.slope < SUN_MIN_AUREOLE:
            continue
        if not tiny and b.ring < SUN_MIN_RING:
            continue
        # A bare disc (or a stray bright pixel) must be ringed by its aureole on all sides
        # (a lit patch on a wall brightens towards its lamp only): clearly, or somewhat
        # when the sky also leans towards it.
        strong = dipole_h >= SUN_STRONG_DIPOLE
        leaning = strong and b.rms <= SUN_TINY_GAP_DEG
        if tiny and weakest < (SUN_TINY_AUREOLE_LEANING if leaning else SUN_TINY_AUREOLE):
            continue
        # A clearly lopsided sky vetoes blobs on its dark side (sunlit walls face away
        # from the sun) and, on its bright side, the strongest aureole wins (the disc over
        # a clipped strip of horizon glow under it); a sky that is not lopsided has a low
        # sun, whose clipped aureole is the widest blob.
        if strong and b.rms > SUN_MAX_DIPOLE_DEG:
            continue
        if best is None or (b.slope > best.slope if strong else b.radius_deg > best.radius_deg):
            best = b
    if best is not None:
        best.centre = _locate_sun(lum, clipped, dirs, best.mask, px_deg)
    return best, blobs, depth


def _aureole_gain(gamma_deg: np.ndarray, depth_deg: np.ndarray) -> np.ndarray:
    """Clipped aureole radiance over the clip level: 1 on the blob's edge, rising inwards.

    The clear sky's circumsolar radiance is modelled as ``(g**2 + g0**2) ** (-p / 2)``
    (``g`` the angle to the sun, flat inside ``g0`` = AUREOLE_CORE_DEG, falling as
    ``g**-p`` beyond); a pixel at ``g`` whose ray from the sun leaves the blob at about
    ``g + depth`` gets the model's ratio between the two.
    """
    g0 = AUREOLE_CORE_DEG**2
    edge = (gamma_deg + depth_deg) ** 2
    return (((edge + g0) / (gamma_deg**2 + g0)) ** (AUREOLE_POWER / 2.0)).astype(np.float32)


# --------------------------------------------------------------------------- the lift
def lift_to_hdr(image: Any, *, exposure: float = 1.0) -> HDRResult:
    """Lift an LDR ERP panorama to scene-referred linear Rec.709 HDR (module docstring).

    ``image``: (H, W, 3) uint8 / uint16 sRGB codes or float display values in [0, 1]
    (a generation's (3, H, W) float image is accepted too); W must be 2 H. Returns an
    :class:`HDRResult`; bad input raises :class:`~spherediff_core.errors.BadInputError`.
    """
    t0 = time.perf_counter()
    if not (exposure > 0 and math.isfinite(exposure)):
        raise BadInputError(f"exposure must be a positive number, got {exposure!r}")
    # 1. Undo the display encoding.
    arr = _check_input(image)
    lin, clipped_full = _decode(arr)
    h, w = lin.shape[:2]
    clipped_fraction = float(clipped_full.mean())

    # 2. The analysis copy.
    wa = min(w, ANALYSIS_WIDTH)
    ha = wa // 2
    px_deg = 180.0 / ha
    # Large images are thinned first (every k-th pixel, k = half the reduction) so the area
    # average reads a quarter of them: the analysis only needs 0.35-deg detail.
    k = max(1, (w // wa) // 2)
    lin_a = _block_mean(lin[::k, ::k], ha, wa)
    clip_a = _block_mean(clipped_full[::k, ::k].astype(np.float32), ha, wa) > 0.5
    lum_a = lin_a @ _LUMA
    dirs_a = erp_directions(ha, wa)
    omega_a = erp_solid_angles(ha, wa)

    # 3. The sun.
    sun_blob, blobs, depth_a = (None, [], np.zeros((ha, wa), np.float32))
    if clip_a.any():
        sun_blob, blobs, depth_a = _find_sun(lum_a, clip_a, dirs_a, omega_a, px_deg)

    # 4. Smooth gain for clipped pixels, on the analysis grid.
    depth_deg = _blur(depth_a * px_deg)
    gain_a = np.ones((ha, wa), np.float32)
    if clip_a.any():
        soft_dome = 1.0 + 0.5 * (1.0 - np.exp(-depth_deg / 4.0))
        gain_a = np.where(clip_a, soft_dome, 1.0).astype(np.float32)
    method = "srgb-decode"
    details: dict[str, Any] = {"blobs": len(blobs)}
    sun = SunEstimate(visible=False)
    if sun_blob is not None:
        s = sun_blob.centre
        gamma = np.degrees(np.arccos(np.clip(dirs_a @ s, -1.0, 1.0)))
        aureole = _aureole_gain(gamma, depth_deg)
        gain_a = np.where(sun_blob.mask, _blur(np.where(sun_blob.mask, aureole, 1.0), 1), gain_a)
        details.update(blob_radius_deg=sun_blob.radius_deg, ring=sun_blob.ring)
        method = "srgb-decode+aureole+sky-ratio-sun"
    elif blobs:
        method = _light_sources(lin_a, lum_a, clip_a, blobs, omega_a, gain_a, dirs_a)
    # Applied only to clipped pixels of the full image (unclipped ones stay exact).
    out = lin
    if exposure != 1.0:
        out *= np.float32(exposure)
    rows_i, cols_i = np.nonzero(clipped_full)
    if rows_i.size:
        ra = (rows_i + 0.5) * (ha / h) - 0.5
        ca = (cols_i + 0.5) * (wa / w) - 0.5
        g = _sample_bilinear(gain_a, ra, ca)
        out[rows_i, cols_i] *= g[:, None]

    # 5. The sun's energy, colour and disc.
    if sun_blob is not None:
        sun = _paint_sun(out, clipped_full, sun_blob, lin_a, gain_a, dirs_a, omega_a, exposure)
    return HDRResult(
        image=out,
        exposure=float(exposure),
        sun=sun,
        method=method,
        clipped_fraction=clipped_fraction,
        seconds=time.perf_counter() - t0,
        details=details,
    )


def _light_sources(lin_a, lum_a, clip_a, blobs, omega_a, gain_a, dirs_a) -> str:
    """Raise hard-edged clipped blobs (lamps, windows) by a closed-world energy balance.

    The surroundings' mean radiance ``Ls`` is what an average albedo ``a`` = 0.4 reflects of
    the mean irradiance; the light sources supply ``pi Ls (1 / a - 1)`` of it, which for
    sources of total solid angle ``O`` and radiance ``Le`` is ``Le O / 4`` on average over
    the sphere of normals: ``Le = 4 pi Ls (1 / a - 1) / O``.
    """
    hard = [b for b in blobs if b.ring < LIGHT_MAX_RING and b.radius_deg < 35.0]
    if not hard:
        return "srgb-decode+soft-highlights"
    sources = np.zeros_like(clip_a)
    for b in hard:
        sources |= b.mask
    total_omega = float((sources * omega_a[:, None]).sum())
    rest = ~clip_a
    weights = np.broadcast_to(omega_a[:, None], rest.shape)[rest]
    ls = float((lum_a[rest] * weights).sum() / max(weights.sum(), 1e-12))
    albedo = 0.4
    le = 4.0 * math.pi * ls * (1.0 / albedo - 1.0) / max(total_omega, 1e-6)
    level = float(np.clip(le, 1.0, LIGHT_MAX_GAIN))
    gain_a[sources] = level
    return "srgb-decode+light-sources"


def _paint_sun(out, clipped, blob: _Blob, lin_a, gain_a, dirs_a, omega_a, exposure) -> SunEstimate:
    s = blob.centre
    lon, lat = math.atan2(s[1], s[0]), math.asin(float(np.clip(s[2], -1, 1)))
    elev = math.degrees(lat)
    ratio, colour = _sky_ratio(max(elev, 0.0))
    # Horizontal sky irradiance of the lifted sky (upper hemisphere; the sun is not yet in).
    sky = lin_a * gain_a[..., None] * exposure
    up = dirs_a[..., 2] > 0
    cos_z = np.where(up, dirs_a[..., 2], 0.0) * omega_a[:, None]
    e_sky = float(((sky @ _LUMA) * cos_z).sum())
    e_lum = ratio * e_sky  # luminance irradiance of the sun at normal incidence
    colour_lum = float(colour @ _LUMA)
    strength = e_lum / colour_lum  # the max channel's irradiance (colour's max is 1)
    e_rgb = strength * colour

    h, w = out.shape[:2]
    px = math.pi / h  # rad per pixel (vertical)
    # Radius: the sun's own, at least ~0.75 pixel, and wide enough for half floats.
    r = max(math.radians(SUN_ANGLE_DEG) / 2.0, 0.75 * px)
    peak_needed = float(e_rgb.max()) / (0.5 * HALF_MAX)  # solid angle so max <= HALF_MAX / 2
    r = max(r, math.acos(max(-1.0, 1.0 - peak_needed / (2.0 * math.pi))))
    row_c, col_c = _dir_to_uv_pixel(s, h, w)
    reach = r + 3.0 * px
    half_rows = math.ceil(reach / px) + 1
    r0, r1 = max(0, int(row_c) - half_rows), min(h, int(row_c) + half_rows + 2)
    cos_lat = max(math.cos(lat), 1e-3)
    half_cols = min(w // 2, math.ceil(reach / px / cos_lat) + 2)
    cols = (np.arange(int(col_c) - half_cols, int(col_c) + half_cols + 2)) % w
    cols = np.unique(cols)
    rows = np.arange(r0, r1)
    lon_c = (0.5 - (cols + 0.5) / w) * 2 * np.pi
    lat_r = (0.5 - (rows + 0.5) / h) * np.pi
    d = np.stack(
        np.broadcast_arrays(
            np.cos(lat_r)[:, None] * np.cos(lon_c)[None],
            np.cos(lat_r)[:, None] * np.sin(lon_c)[None],
            np.sin(lat_r)[:, None],
        ),
        axis=-1,
    )
    gamma = np.arccos(np.clip(d @ s, -1.0, 1.0))
    cover = np.clip((r + 0.5 * px - gamma) / px, 0.0, 1.0)  # anti-aliased edge
    omega = erp_solid_angles(h, w)[rows][:, None]
    # The disc goes into clipped pixels only where they hold most of it (they always do but
    # for a disc widened for half floats): unclipped pixels keep the input's values.
    in_clip = cover * clipped[np.ix_(rows, cols)]
    clip_total = float((in_clip * omega).sum())
    mostly_clipped = clip_total >= 0.5 * float((cover * omega).sum())
    peak = float(e_rgb.max()) * float(in_clip.max()) / max(clip_total, 1e-30)
    if mostly_clipped and peak < HALF_MAX:
        cover = in_clip
    total = float((cover * omega).sum())
    if total <= 0:
        return SunEstimate(visible=False)
    radiance = cover / total  # integrates to 1 over the disc
    region = out[np.ix_(rows, cols)]
    ring = ((gamma > r + 1.0 * px) & (gamma < r + 3.0 * px)).astype(np.float32) * omega
    surround = (region * ring[..., None]).sum(axis=(0, 1)) / max(float(ring.sum()), 1e-30)
    out[np.ix_(rows, cols)] += (radiance[..., None] * e_rgb[None, None, :]).astype(np.float32)
    return SunEstimate(
        visible=True,
        direction=(float(s[0]), float(s[1]), float(s[2])),
        azimuth_deg=math.degrees(lon),
        elevation_deg=elev,
        angle_deg=math.degrees(2.0 * r),
        color=(float(colour[0]), float(colour[1]), float(colour[2])),
        strength=float(strength),
        score=float(blob.ring),
        surround=(float(surround[0]), float(surround[1]), float(surround[2])),
    )
