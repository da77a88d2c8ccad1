"""Generation options: one validated dataclass shared by the command, the worker and the add-on.

Every bad value is refused by :meth:`GenerationOptions.validate` before any model loads,
with an :class:`OptionsError` that names the option, the value and what is allowed.
Options cross the process boundary as plain JSON (:meth:`to_dict` / :meth:`from_dict`).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from .placing import output_path, output_problem, probe_folder

__all__ = [
    "DEFAULT_MODEL",
    "DEVICES",
    "PRECISIONS",
    "SIZE_PRESETS",
    "GenerationOptions",
    "OptionsError",
]

DEFAULT_MODEL = "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers"
SIZE_PRESETS = {"1K": 1024, "2K": 2048, "4K": 4096, "8K": 8192}
FALLBACK_WIDTH = 2048
"""The width when neither size nor width is set and no model family is known yet (the
pipeline fills in the family's default size first: see ModelAdapter.default_size)."""
DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
SAMPLING_METHODS = ("dynamic", "nearest")
MAX_WIDTH = 16384
MAX_STEPS = 1000
MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**63 - 1
MAX_FRAMES = 1025
MAX_FPS = 240
MIN_PREVIEW_WIDTH = 64
MAX_PREVIEW_WIDTH = 2048
VIDEO_SUFFIXES = (".png", ".mp4")
OUTPUT_NAME_RESERVE = 26
"""Characters the outputs add to a name for their temporary files
(placing.temp_path: ".<name>.<pid, up to 10 digits>-<8 hex>.tmp")."""


class OptionsError(ValueError):
    """A bad option value. ``field`` names the option (as in the JSON job and the CLI)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class GenerationOptions:
    """What to generate and how. ``None`` means "the model family's default".

    Sizes: the output is an ERP image of ``width`` x ``width / 2`` pixels (``size`` picks a
    preset: 1K, 2K, 4K, 8K). Neither set: the model family's default size (2K for SANA,
    SD 1.5 and the video models, 4K for FLUX.1, SDXL and SD3, whose views then come out
    near their 1024 px training size). The number of sphere points and the views' latent
    grid follow from the width and the model's VAE, unless ``n_points`` is set.

    ``final_width`` makes this run a *draft* of a final at that width: its initial noise
    is the final's noise summed onto this run's coarser sphere points (each final point
    adds to its nearest draft point, the sums scaled back to unit variance), so a run at
    ``width=final_width`` with the same seed, prompts and model starts from the same
    low-frequency noise and makes the same world, sharper. The final itself is a normal
    run (no ``final_width``): its noise is exactly what it would be without a draft.

    ``true_cfg_scale`` (FLUX.1 only, as FluxPipeline): with a negative prompt and a value
    above 1, a negative pass runs and the prediction is neg + scale * (pos - neg).
    ``guidance_2`` (Wan 2.2 A14B only, WanPipeline's ``guidance_scale_2``): the guidance
    while the low-noise expert runs (default: ``guidance``).

    Video (``video=True``, video models only): ``frames`` ERP frames of that size at ``fps``
    (both default to the model family's, e.g. 121 at 24 fps for LTX-Video). A model takes
    only some frame counts ((frames - 1) must be a multiple of its VAE's temporal
    compression: 8k+1 for LTX-Video, 4k+1 for Wan); the pipeline refuses others, naming the
    nearest valid counts. ``output`` then names the outputs by its stem (it may end in .png
    or .mp4): ``<stem>_frames/frame_0001.png``..., ``<stem>.mp4`` and ``<stem>.json``.
    ``frames`` and ``fps`` are ignored for stills. ``loop`` (video only) makes the clip
    a seamless loop: ``frames`` counts the frame that closes it (frame ``frames`` would be
    frame 1 again), so ``frames - 1`` frames are written and the last is followed by the
    first as smoothly as any two neighbours (see docs/engine.md, 360° video).

    Known image (``image``, a PNG/JPEG/WebP file; image models only): the panorama is
    generated around it, the image placed where a camera at azimuth ``image_yaw_deg`` and
    elevation ``image_pitch_deg``, rolled by ``image_roll_deg``, with a horizontal field of
    view of ``image_fov_deg`` would see it (:mod:`spherediff_core.known`); its border blends
    over ``image_feather_deg``, and it is held for the first ``image_strength`` fraction of
    the steps (1: to the end, so it comes out as given).

    Live preview (``preview_every`` > 0): every that many denoising steps (and after the
    last), the predicted clean panorama is written as a small 8-bit sRGB ERP PNG of
    ``preview_width`` x ``preview_width / 2`` in the output's folder, under a hidden name,
    and announced to the caller (:mod:`spherediff_core.preview`); the files are removed
    by the end of the job. 0: no previews.

    HDR (``hdr=True``, stills only): the decoded panorama is also lifted to scene-referred
    linear HDR with its sun (:mod:`spherediff_core.hdr`) and written as ``<stem>.exr``
    beside the PNG; the sidecar gets the ``hdr`` block. Videos stay LDR in this version.
    """

    prompt: str
    output: str = "panorama.png"
    model: str = DEFAULT_MODEL
    revision: str | None = None
    sky_prompt: str | None = None
    horizon_prompt: str | None = None
    ground_prompt: str | None = None
    negative_prompt: str = ""
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    size: str | None = None
    width: int | None = None
    final_width: int | None = None
    n_points: int | None = None
    fov_deg: float = 80.0
    overlap: float = 0.6
    temperature: float = 0.1
    sampling: str = "dynamic"
    view_batch_size: int = 8
    device: str = "auto"
    precision: str = "auto"
    cpu_offload: bool = False
    vae_tiling: bool = False
    vae_slicing: bool = False
    offline: bool = False
    cache_dir: str | None = None
    video: bool = False
    frames: int | None = None
    fps: int | None = None
    loop: bool = False
    true_cfg_scale: float | None = None
    guidance_2: float | None = None
    hdr: bool = False
    image: str | None = None
    image_yaw_deg: float = 0.0
    image_pitch_deg: float = 0.0
    image_roll_deg: float = 0.0
    image_fov_deg: float = 60.0
    image_feather_deg: float = 4.0
    image_strength: float = 1.0
    preview_every: int = 0
    preview_width: int = 512

    @property
    def height(self) -> int:
        return self.resolved_width // 2

    @property
    def resolved_width(self) -> int:
        if self.size is not None:
            return SIZE_PRESETS[self.size]
        return self.width if self.width is not None else FALLBACK_WIDTH

    @property
    def size_given(self) -> bool:
        """Whether the caller chose a size or a width (else the family's default applies)."""
        return self.size is not None or self.width is not None

    def validate(self) -> GenerationOptions:
        """Raise OptionsError for the first bad value; return self when all are good."""
        # Prompts
        _check_text("prompt", self.prompt, required=True)
        for name in ("sky_prompt", "horizon_prompt", "ground_prompt"):
            _check_text(name, getattr(self, name), required=False)
        _check_text("negative_prompt", self.negative_prompt, required=True, allow_empty=True)
        # Model
        if not isinstance(self.model, str) or not self.model.strip():
            raise OptionsError(
                "model", f"{self.model!r} is empty; give a Hub id or a local model folder"
            )
        _check_no_nul("model", self.model)
        _check_model_source(self.model)
        if self.revision is not None and (
            not isinstance(self.revision, str) or not self.revision.strip()
        ):
            raise OptionsError("revision", f"{self.revision!r} must be a non-empty string or null")
        if self.revision is not None:
            _check_no_nul("revision", self.revision)
        # Sampling schedule
        if self.steps is not None:
            _check_int("steps", self.steps, 1, MAX_STEPS)
        if self.guidance is not None:
            _check_float("guidance", self.guidance, 0.0, 50.0)
        if self.true_cfg_scale is not None:
            _check_float("true_cfg_scale", self.true_cfg_scale, 0.0, 50.0)
        if self.guidance_2 is not None:
            _check_float("guidance_2", self.guidance_2, 0.0, 50.0)
        _check_int("seed", self.seed, 0, MAX_SEED)
        # Size
        if self.size is not None and (
            not isinstance(self.size, str) or self.size not in SIZE_PRESETS
        ):
            allowed = ", ".join(SIZE_PRESETS)
            raise OptionsError("size", f"{self.size!r} is not a preset; use one of {allowed}")
        if self.width is not None:
            _check_int("width", self.width, 64, MAX_WIDTH)
        if self.width is not None and self.width % 2:
            raise OptionsError(
                "width", f"{self.width} is odd; the height is width / 2, so use an even width"
            )
        if self.final_width is not None:
            _check_int("final_width", self.final_width, 64, MAX_WIDTH)
            if self.final_width % 2:
                raise OptionsError(
                    "final_width", f"{self.final_width} is odd; use the final's even width"
                )
            if self.size_given and self.final_width < self.resolved_width:
                raise OptionsError(
                    "final_width",
                    f"{self.final_width} is smaller than this draft's width "
                    f"{self.resolved_width}; a draft is made smaller than its final (use a "
                    "final_width at least the draft's width, or none for a normal run)",
                )
        if self.n_points is not None:
            _check_int("n_points", self.n_points, 100, 2_000_000)
        # Advanced
        _check_float("fov_deg", self.fov_deg, 30.0, 120.0)
        _check_float("overlap", self.overlap, 0.0, 0.9)
        _check_float("temperature", self.temperature, 0.01, 10.0)
        if not isinstance(self.sampling, str) or self.sampling not in SAMPLING_METHODS:
            raise OptionsError(
                "sampling",
                f"{self.sampling!r} is unknown; use one of {', '.join(SAMPLING_METHODS)}",
            )
        _check_int("view_batch_size", self.view_batch_size, 1, 256)
        if not isinstance(self.device, str) or (
            self.device not in DEVICES and not _is_indexed_cuda(self.device)
        ):
            raise OptionsError(
                "device", f"{self.device!r} is unknown; use one of {', '.join(DEVICES)} or cuda:N"
            )
        if not isinstance(self.precision, str) or self.precision not in PRECISIONS:
            raise OptionsError(
                "precision", f"{self.precision!r} is unknown; use one of {', '.join(PRECISIONS)}"
            )
        # Video
        if self.frames is not None:
            _check_int("frames", self.frames, 1, MAX_FRAMES)
        if self.fps is not None:
            _check_int("fps", self.fps, 1, MAX_FPS)
        for name in ("cpu_offload", "vae_tiling", "vae_slicing", "offline", "video", "hdr", "loop"):
            if not isinstance(getattr(self, name), bool):
                raise OptionsError(name, f"{getattr(self, name)!r} must be true or false")
        if self.loop and not self.video:
            raise OptionsError(
                "loop", "true, but a still has no time to loop; turn loop off, or video on"
            )
        if self.hdr and self.video:
            raise OptionsError(
                "hdr",
                "a video stays LDR in this version (the lift is for stills); turn hdr off "
                "for a video, or lift single frames with: spherediff hdr FRAME.png",
            )
        # Known image
        _check_float("image_yaw_deg", self.image_yaw_deg, -360.0, 360.0)
        _check_float("image_pitch_deg", self.image_pitch_deg, -90.0, 90.0)
        _check_float("image_roll_deg", self.image_roll_deg, -180.0, 180.0)
        _check_float("image_fov_deg", self.image_fov_deg, 1.0, 170.0)
        _check_float("image_feather_deg", self.image_feather_deg, 0.0, 45.0)
        _check_float("image_strength", self.image_strength, 0.05, 1.0)
        if self.image is not None:
            _check_known_image(self)
        # Live preview
        _check_int("preview_every", self.preview_every, 0, MAX_STEPS)
        _check_int("preview_width", self.preview_width, MIN_PREVIEW_WIDTH, MAX_PREVIEW_WIDTH)
        if self.preview_width % 2:
            raise OptionsError(
                "preview_width",
                f"{self.preview_width} is odd; the preview is width x width / 2, so use an "
                "even width",
            )
        # Files
        _check_name_length("output", self.output, self.video, self.hdr)
        _check_output(self.output, self.video)
        if self.cache_dir is not None:
            if not isinstance(self.cache_dir, str) or not self.cache_dir.strip():
                raise OptionsError("cache_dir", f"{self.cache_dir!r} must be a folder path or null")
            _check_no_nul("cache_dir", self.cache_dir)
            _check_writable_dir("cache_dir", self.cache_dir)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationOptions:
        """Build from plain JSON data; unknown keys are refused (a typo must not be ignored)."""
        if not isinstance(data, dict):
            raise OptionsError("options", f"expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise OptionsError(
                unknown[0], f"unknown option; known options are {', '.join(sorted(known))}"
            )
        if "prompt" not in data:
            raise OptionsError("prompt", "missing; every job needs a prompt")
        return cls(**data)


def _check_text(name: str, value: Any, *, required: bool, allow_empty: bool = False) -> None:
    if value is None and not required:
        return
    if not isinstance(value, str):
        raise OptionsError(name, f"{value!r} must be text")
    if not value.strip() and not allow_empty:
        hint = "write what the panorama should show" if required else "leave it unset instead"
        raise OptionsError(name, f"{value!r} is empty; {hint}")
    if len(value) > MAX_PROMPT_CHARS:
        raise OptionsError(
            name, f"is {len(value)} characters long; keep it under {MAX_PROMPT_CHARS}"
        )
    if "\x00" in value:
        raise OptionsError(name, "contains a NUL character")
    _check_unicode(name, value)


def _check_no_nul(name: str, value: str) -> None:
    if "\x00" in value:
        raise OptionsError(name, f"{value!r} contains a NUL character")
    _check_unicode(name, value)


def _check_unicode(name: str, value: str) -> None:
    """Refuse text that is not valid Unicode (it would fail in a tokenizer or a file
    name only after the model loaded).

    A lone surrogate (U+D800..U+DFFF) comes from a JSON job's "\\ud83d" escape without
    its pair; one in U+DC80..U+DCFF is how Python carries a byte that is not UTF-8 in a
    command-line argument or a file name.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = value[exc.start]
        if "\udc80" <= char <= "\udcff":
            why = (
                f"byte 0x{ord(char) - 0xDC00:02x} at position {exc.start} is not UTF-8; "
                "give the text (or the file name) in UTF-8"
            )
        else:
            why = (
                f"U+{ord(char):04X} at position {exc.start} is a lone surrogate, not a "
                "character; send valid Unicode (a JSON \\u escape of an emoji needs both "
                "halves of its pair)"
            )
        raise OptionsError(name, f"is not valid text: {why}") from None


def _check_name_length(name: str, value: str, video: bool, hdr: bool = False) -> None:
    """The output's names must fit the file system: refused here, not after the whole
    generation. The outputs derive names from it (``<stem>.json``, a video's
    ``<stem>_frames``) and write each first under a temporary name that adds up to
    OUTPUT_NAME_RESERVE characters. (Before _check_output: probing a name that is too long
    raises.)"""
    if not isinstance(value, str) or "\x00" in value:
        return  # _check_output refuses it
    path = Path(value).expanduser()
    limit = _name_max(path.parent)
    unit = "characters" if os.name == "nt" else "bytes"
    for part in path.parent.parts:
        if _name_size(part) > limit:
            raise OptionsError(
                name,
                f"the folder name {part[:40]!r}... is {_name_size(part)} {unit} long; the "
                f"file system takes at most {limit}: choose a shorter name",
            )
    derived = [path.name, f"{path.stem}.json"] + ([f"{path.stem}_frames"] if video else [])
    derived += [f"{path.stem}.exr"] if hdr else []
    longest = max(_name_size(n) for n in derived)
    excess = longest + OUTPUT_NAME_RESERVE - limit
    if excess > 0:
        raise OptionsError(
            name,
            f"the file name {path.name[:40]!r}... is too long for the file system: the names "
            f"made from it need {longest + OUTPUT_NAME_RESERVE} {unit} with their temporary "
            f"forms, and at most {limit} fit; shorten it by {excess} {unit}",
        )


def _name_size(part: str) -> int:
    """A name's length as the file system counts it (UTF-16 units on Windows)."""
    if os.name == "nt":
        return len(part.encode("utf-16-le", "surrogatepass")) // 2
    return len(os.fsencode(part))


def _name_max(folder: Path) -> int:
    """The longest file name the folder's file system takes (255 where unknown)."""
    probe = folder
    try:
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        return int(os.pathconf(probe, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):  # Windows has no pathconf
        return 255


_IMAGE_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"RIFF", "WebP"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
MAX_IMAGE_ASPECT = 4.0  # a known image at most 4:1 (or 1:4)
MAX_IMAGE_VFOV_DEG = 170.0


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) of an image file read from its header (Pillow); None without Pillow
    (in Blender's Python, where the worker checks again)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        return None
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise OptionsError("image", f"{path!r} cannot be read as an image ({exc})") from None


def _check_known_image(options: GenerationOptions) -> None:
    """The known image: a readable 8-bit picture of sensible shape, for a still."""
    path = options.image
    if not isinstance(path, str) or not path.strip():
        raise OptionsError("image", f"{path!r} must be the path of a PNG or JPEG image, or null")
    _check_no_nul("image", path)
    if options.video:
        raise OptionsError(
            "image",
            "a known image works with image models only in this version (image-to-360-video "
            "is not supported yet); leave image out for a video",
        )
    file = Path(path).expanduser()
    if not file.is_file():
        raise OptionsError("image", f"{path!r} does not exist (or is not a file)")
    try:
        with open(file, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise OptionsError("image", f"{path!r} cannot be read ({exc.strerror or exc})") from None
    kind = next((k for magic, k in _IMAGE_MAGIC if head.startswith(magic)), None)
    if kind is None or (kind == "WebP" and head[8:12] != b"WEBP"):
        raise OptionsError(
            "image", f"{path!r} is not a PNG, JPEG, WebP, BMP or TIFF image; convert it to PNG"
        )
    size = image_size(str(file))
    if size is None:
        return
    w, h = size
    if min(w, h) < 8 or max(w, h) / min(w, h) > MAX_IMAGE_ASPECT:
        raise OptionsError(
            "image",
            f"{path!r} is {w}x{h}: a known image must be at least 8 pixels on each side and "
            f"no more than {MAX_IMAGE_ASPECT:g}:1; crop it",
        )
    tx = math.tan(math.radians(options.image_fov_deg) / 2.0)
    vfov = math.degrees(2.0 * math.atan(tx * h / w))
    if vfov > MAX_IMAGE_VFOV_DEG:
        raise OptionsError(
            "image_fov_deg",
            f"{options.image_fov_deg:g} gives this {w}x{h} image a vertical field of view of "
            f"{vfov:.0f} deg (at most {MAX_IMAGE_VFOV_DEG:g}); lower it",
        )


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionsError(name, f"{value!r} must be a whole number between {lo} and {hi}")
    if not lo <= value <= hi:
        raise OptionsError(name, f"{value} is out of range; use {lo} to {hi}")


def _check_float(name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OptionsError(name, f"{value!r} must be a number between {lo:g} and {hi:g}")
    if not math.isfinite(value):
        raise OptionsError(name, f"{value!r} is not a finite number; use {lo:g} to {hi:g}")
    if not lo <= value <= hi:
        raise OptionsError(name, f"{value:g} is out of range; use {lo:g} to {hi:g}")


def _is_indexed_cuda(device: Any) -> bool:
    if not isinstance(device, str) or not device.startswith("cuda:"):
        return False
    return device[5:].isdigit()


def _looks_like_path(model: str) -> bool:
    """Hub ids are 'owner/name'; anything else with path syntax is meant as a folder."""
    return (
        model.startswith((".", "/", "~", "\\"))
        or "\\" in model
        or model.count("/") > 1
        or (len(model) > 1 and model[1] == ":")
    )


def _check_model_source(model: str) -> None:
    """A local folder must exist and hold model_index.json; a Hub id must look like one."""
    path = Path(model).expanduser()
    if path.exists() or _looks_like_path(model):
        if not path.is_dir():
            raise OptionsError(
                "model", f"{model!r} is not a folder; give a diffusers model folder or a Hub id"
            )
        if not (path / "model_index.json").is_file():
            raise OptionsError(
                "model",
                f"{model!r} has no model_index.json; point at a diffusers pipeline folder "
                "(the one saved with save_pretrained)",
            )
        if not os.access(path / "model_index.json", os.R_OK):
            raise OptionsError("model", f"{model!r} is not readable; check its permissions")
        return
    parts = model.split("/")
    if len(parts) != 2 or not all(parts) or any(c.isspace() for c in model):
        raise OptionsError(
            "model",
            f"{model!r} is neither an existing folder nor a Hub id like 'owner/name'",
        )


def _check_output(output: Any, video: Any = False) -> None:
    if not isinstance(output, str) or not output.strip():
        raise OptionsError("output", f"{output!r} is empty; give the PNG file to write")
    _check_no_nul("output", output)
    path = Path(output).expanduser()
    if video is True:
        if path.suffix.lower() not in VIDEO_SUFFIXES or not path.stem:
            raise OptionsError(
                "output",
                f"{output!r} must end in .png or .mp4 (for a video its stem names the frames "
                "folder, the MP4 and the sidecar)",
            )
    elif path.suffix.lower() != ".png":
        raise OptionsError("output", f"{output!r} must end in .png")
    if path.is_dir():
        raise OptionsError("output", f"{output!r} is a folder; give a file name ending in .png")
    # What the writer checks again at write time, here before anything loads.
    final = output_path(output)
    problem = output_problem(final, final.with_suffix(".json"))
    if problem:
        raise OptionsError("output", problem)
    _check_writable_dir("output", str(final.parent))


def _check_writable_dir(name: str, folder: str) -> None:
    """The folder, or the nearest existing folder above it, must take a new file."""
    problem = probe_folder(Path(folder).expanduser())
    if problem:
        raise OptionsError(name, problem)
