"""Writing a generation to disk: an 8-bit sRGB PNG and a JSON sidecar, both atomically.

The PNG carries its parameters in an iTXt chunk (key ``spherediff``, JSON) and an sRGB
chunk. Its bytes depend only on the parameters: the timings, the creation time and the
output path are left out of the PNG, so the same options and seed give a byte-identical
file wherever it is written. The sidecar (same stem, ``.json``) holds everything: the
parameters, the output file, the timings and the creation time.

Both files are written under temporary names in the output folder and renamed into place
(``os.replace``), so a reader never sees half a file; on any failure the temporaries are
removed and an earlier output of the same name is kept whole (image and sidecar). The
temporary names derive from the output's own name and the writer's process id, never from
the prompt; a later run removes those of writers that died (:mod:`.placing`). Two writers
of the same output put their files in place one after the other (a lock file next to
them), so an image always sits beside its own sidecar. A ``<stem>.json`` that SphereDiff
did not write, and a folder holding a diffusers model, are never written into. Any
failure to write is an :class:`~spherediff_core.errors.OutputError` naming the path.

A video (:func:`write_video_outputs`) is named by the output's stem: a numbered ERP frame
sequence ``<stem>_frames/frame_0001.png``... (1-based, 4 digits: what Blender loads as an
image sequence from its first file and a frame count), an H.264 MP4 preview ``<stem>.mp4``
(encoded by the ffmpeg that the ``imageio-ffmpeg`` package ships) and the sidecar
``<stem>.json``. The frames are written into a temporary folder next to the final one and
renamed into place, the MP4 and the sidecar likewise; a cancel or a failure at any point
leaves none of them behind (and an earlier sequence of the same name in place).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import placing
from .errors import OutputError
from .spherical import inject_spherical_metadata

__all__ = [
    "FRAME_NAME",
    "METADATA_KEY",
    "METADATA_VERSION",
    "OutputPaths",
    "VideoOutputPaths",
    "VideoWriter",
    "build_metadata",
    "image_to_uint8",
    "sidecar_path_for",
    "video_paths_for",
    "write_outputs",
    "write_video_outputs",
]

METADATA_KEY = "spherediff"
METADATA_VERSION = 1
_O_BINARY = getattr(os, "O_BINARY", 0)
FRAME_NAME = "frame_{:04d}.png"
"""A frame's file name in the frames folder, numbered from 1."""
FRAME_PATTERN = "frame_%04d.png"
"""The same as a printf pattern (ffmpeg's, and the sidecar's ``frame_pattern``)."""


@dataclass(frozen=True)
class OutputPaths:
    image: Path
    sidecar: Path
    exr: Path | None = None


@dataclass(frozen=True)
class VideoOutputPaths:
    """What :func:`write_video_outputs` wrote. ``mp4`` is None when no ffmpeg is available."""

    frames_dir: Path
    first_frame: Path
    frame_count: int
    fps: int
    mp4: Path | None
    sidecar: Path


def video_paths_for(output: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """``clip.png`` or ``clip.mp4`` -> (``clip_frames``, ``clip.mp4``, ``clip.json``)."""
    path = placing.output_path(output)
    folder, stem = path.parent, path.stem
    return folder / f"{stem}_frames", folder / f"{stem}.mp4", folder / f"{stem}.json"


def sidecar_path_for(image: str | os.PathLike[str]) -> Path:
    """``pano.png`` -> ``pano.json`` (same folder, same stem)."""
    return Path(image).with_suffix(".json")


def image_to_uint8(image: Any):
    """(3, H, W) float in [0, 1] (display-encoded) -> (H, W, 3) uint8 numpy array.

    The values are already sRGB-encoded (as the VAE decodes them): they are only
    quantised, value * 255 rounded to the nearest integer.
    """
    import numpy as np
    import torch

    t = torch.as_tensor(image).detach().to("cpu", torch.float32)
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(t.shape)}")
    t = torch.nan_to_num(t, nan=0.0).clamp(0.0, 1.0)
    q = (t * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous()
    return np.ascontiguousarray(q.numpy())


def _model_info(model: dict[str, Any]) -> dict[str, Any]:
    info = dict(model)
    source = info.pop("source", None)
    return {"id": source, "revision": info.pop("revision", None), **info}


def build_metadata(
    result: Any,
    *,
    versions: dict[str, str | None] | None = None,
    timings: dict[str, float] | None = None,
    output: str | os.PathLike[str] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The PNG chunk's JSON and the sidecar's JSON for a GenerationResult.

    The first holds every parameter (options with the resolved steps and guidance, less
    the output path), the model, seed, sphere and views, and package versions. The second
    adds the output files, the timings, the creation time and, for a run shared by
    several processes (torchrun), its layout (``distributed``).
    """
    from .runner import package_versions

    options = result.options.to_dict()
    height, width = int(result.image.shape[-2]), int(result.image.shape[-1])
    params = {k: v for k, v in options.items() if k != "output"}
    png_doc: dict[str, Any] = {
        "format": "spherediff",
        "metadata_version": METADATA_VERSION,
        "projection": "equirectangular",
        "width": width,
        "height": height,
        "seed": options["seed"],
        "options": params,
        "model": _model_info(result.model),
        "n_points": int(result.n_points),
        "grid": [int(v) for v in result.grid],
        "views": int(result.n_views),
        # Notes for the user about this image (views far below the model's native size...).
        "warnings": [str(w) for w in getattr(result, "warnings", [])],
        "versions": dict(versions if versions is not None else package_versions()),
    }
    used_timings = dict(result.timings if timings is None else timings)
    image_path = Path(output if output is not None else options["output"]).expanduser()
    sidecar_doc = {
        **png_doc,
        "options": {**options, "output": str(output) if output is not None else options["output"]},
        "image": image_path.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "timings": {k: round(float(v), 4) for k, v in used_timings.items()},
    }
    if getattr(result, "distributed", None):  # how the run was shared (not a parameter)
        sidecar_doc["distributed"] = dict(result.distributed)
    return png_doc, sidecar_doc


def _dumps(doc: dict[str, Any], indent: int | None) -> str:
    return json.dumps(doc, ensure_ascii=False, indent=indent, sort_keys=False, default=str)


def _temp_name(folder: Path, final: Path) -> Path:
    """Create an empty, new temporary file next to ``final``; its mode follows the umask.

    (tempfile.mkstemp would make it private, 0600, and the rename would keep that.)
    """
    for _ in range(100):
        path = placing.temp_path(folder, final)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return path
    raise FileExistsError(f"cannot create a temporary file in {folder}")


def _save_png(array: Any, path: Path, text: str) -> None:
    """Write (H, W, 3) uint8 as an 8-bit RGB PNG with the text and sRGB chunks."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add(b"sRGB", b"\x00")  # sRGB colour space, perceptual rendering intent
    info.add_itxt(METADATA_KEY, text)
    image = Image.fromarray(array, "RGB")
    with open(path, "wb") as fh:
        image.save(fh, format="PNG", pnginfo=info, compress_level=6)
        fh.flush()
        os.fsync(fh.fileno())


def _save_text(text: str, path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _save_exr(image: Any, path: Path) -> None:
    """Write (H, W, 3) float linear values as a half-float RGB OpenEXR (ZIP, scanlines).

    Through the Academy Software Foundation's ``OpenEXR`` bindings (the library Blender
    itself reads with); values are clamped to [0, 65504], half float's range.
    """
    import numpy as np
    import OpenEXR

    from .hdr import HALF_MAX

    rgb = np.ascontiguousarray(np.clip(image, 0.0, HALF_MAX).astype(np.float16))
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"RGB": rgb}) as exr:
        exr.write(str(path))
    with open(path, "rb+") as fh:  # durable before the rename, as the PNG is
        os.fsync(fh.fileno())


def _check_target(image: Path, sidecar: Path) -> None:
    problem = placing.output_problem(image, sidecar)
    if problem:
        raise OutputError(f"output: {problem}")


@contextlib.contextmanager
def _writing(image: Path, sidecar: Path) -> Iterator[list[Path]]:
    """Around one write: the checks, the folder, and the temporaries (the block appends
    them to the yielded list; they are removed when it fails). An OSError becomes an
    OutputError that names the path."""
    _check_target(image, sidecar)
    folder = sidecar.parent
    temps: list[Path] = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        placing.remove_stale_temporaries(folder)
        yield temps
    except BaseException as exc:
        for tmp in temps:
            placing.remove(tmp)
        if isinstance(exc, OSError):
            raise _write_error(exc, folder) from exc
        raise


def _write_error(exc: OSError, folder: Path) -> OutputError:
    """An OSError while writing the outputs, said as an OutputError naming the path."""
    where = os.fspath(exc.filename) if exc.filename else folder
    return OutputError(
        f"output: cannot write {str(where)!r} ({exc.strerror or exc}); choose a folder "
        "you can write to, with enough free space (earlier outputs were kept)"
    )


def _put_in_place(image: Path, sidecar: Path, moves: list[tuple[Path | None, Path]]) -> None:
    """Rename the temporaries into place under the output's lock (checked again there)."""
    folder = sidecar.parent
    with placing.StemLock(folder, sidecar.stem):
        placing.remove_stale_temporaries(folder, tuple(final for _tmp, final in moves))
        _check_target(image, sidecar)
        placing.put_in_place(moves)


def write_outputs(
    result: Any,
    output: str | os.PathLike[str],
    *,
    versions: dict[str, str | None] | None = None,
    timings: dict[str, float] | None = None,
    hdr: Any = None,
) -> OutputPaths:
    """Write ``result`` as ``output`` (.png) and its sidecar (.json); return the paths.

    With ``hdr`` (an :class:`spherediff_core.hdr.HDRResult` of the same panorama) the lifted
    panorama goes to ``<stem>.exr`` as well and the sidecar gets its ``hdr`` block.

    The folder is created when missing. Atomic: every file goes to a temporary name in the
    folder first and they are renamed into place together; any failure removes the
    temporaries and keeps earlier files of the same names as they were.
    """
    image_path = placing.output_path(output)
    if image_path.suffix.lower() != ".png":
        raise ValueError(f"output {str(output)!r} must end in .png")
    sidecar = sidecar_path_for(image_path)
    png_doc, sidecar_doc = build_metadata(
        result, versions=versions, timings=timings, output=image_path
    )
    array = image_to_uint8(result.image)
    exr_path = image_path.with_suffix(".exr") if hdr is not None else None
    if exr_path is not None:
        sidecar_doc["hdr"] = hdr.hdr_block(exr_path.name)
        sidecar_doc["timings"]["lift"] = round(float(hdr.seconds), 4)

    folder = image_path.parent
    with _writing(image_path, sidecar) as temps:
        tmp_image = _temp_name(folder, image_path)
        temps.append(tmp_image)
        _save_png(array, tmp_image, _dumps(png_doc, None))
        moves: list[tuple[Path | None, Path]] = [(tmp_image, image_path)]
        if exr_path is not None:
            tmp_exr = _temp_name(folder, exr_path)
            temps.append(tmp_exr)
            _save_exr(hdr.image, tmp_exr)
            moves.append((tmp_exr, exr_path))
        tmp_sidecar = _temp_name(folder, sidecar)
        temps.append(tmp_sidecar)
        _save_text(_dumps(sidecar_doc, 2) + "\n", tmp_sidecar)
        _put_in_place(image_path, sidecar, [*moves, (tmp_sidecar, sidecar)])
    return OutputPaths(image=image_path, sidecar=sidecar, exr=exr_path)


# --------------------------------------------------------------------------------------
# Video: a frame sequence, an MP4 preview and the sidecar
# --------------------------------------------------------------------------------------


def _temp_dir(folder: Path, final: Path) -> Path:
    """Create a new, empty folder next to ``final`` with a hidden temporary name."""
    for _ in range(100):
        path = placing.temp_path(folder, final)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"cannot create a temporary folder in {folder}")


class _Mp4Encoder:
    """Frames (H, W, 3) uint8 piped to ffmpeg -> H.264 yuv420p MP4 (CRF 18, faststart).

    An odd height is padded by one black row (yuv420p needs even sides). ``close`` waits for
    ffmpeg and raises with its messages when it failed; ``abort`` kills it.
    """

    def __init__(self, exe: str, path: Path, width: int, height: int, fps: int) -> None:
        import subprocess
        import tempfile

        self.path = path
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close() / abort()
        cmd = [
            exe,
            "-hide_banner",
            "-nostdin",
            "-y",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-s",
            f"{width}x{height}",
            "-r",
            str(fps),
            "-i",
            "pipe:0",
            "-an",
            "-vf",
            "pad=ceil(iw/2)*2:ceil(ih/2)*2",
            "-c:v",
            "libx264",
            "-preset",
            "medium",
            "-crf",
            "18",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-v",
            "error",
            "-f",
            "mp4",
            str(path),
        ]
        kwargs: dict[str, Any] = {}
        if os.name == "nt":  # no console window, and no share of the worker's Ctrl-Break
            kwargs["creationflags"] = subprocess.CREATE_NO_WINDOW
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            **kwargs,
        )

    def send(self, frame: Any) -> None:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(frame.tobytes())
        except OSError as exc:
            self._proc.wait()
            messages = self._messages()
            raise RuntimeError(f"ffmpeg stopped while encoding the MP4: {messages}") from exc

    def close(self) -> None:
        assert self._proc.stdin is not None
        # ffmpeg that died already makes closing its pipe fail: its exit code and messages
        # below say why, not the broken pipe.
        with contextlib.suppress(OSError):
            self._proc.stdin.close()
        code = self._proc.wait()
        messages = self._messages()
        self._log.close()
        if code != 0:
            raise RuntimeError(f"ffmpeg failed to encode the MP4 (exit {code}): {messages}")

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for stream in (self._proc.stdin, self._log):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                stream.close()  # type: ignore[union-attr]

    def _messages(self) -> str:
        try:
            self._log.seek(0)
            text = self._log.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            text = ""
        return text[-2000:] or "no messages"


def ffmpeg_exe() -> str | None:
    """The ffmpeg that the imageio-ffmpeg package ships (or points at); None without it."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except RuntimeError:  # the package is there but has no binary for this platform
        return None


class VideoWriter:
    """Writes a video's frame sequence, MP4 preview and sidecar as the frames come.

    Used as the pipeline's ``frame_sink``, it writes each chunk of frames as soon as it is
    made, so a clip is never held whole in memory::

        with VideoWriter(options.output, on_frame=..., should_cancel=...) as writer:
            result = pipe(options, frame_sink=writer)
            paths = writer.finish(result)

    Atomic: the frames go into a temporary folder, the MP4 and the sidecar to temporary
    files, all in the output folder, and ``finish`` renames them into place; leaving the
    block without ``finish`` (a failure, a cancel) removes them, and a sequence of the same
    name written earlier stays as it was. Without ffmpeg (``imageio-ffmpeg`` not installed)
    or with ``mp4=False`` no MP4 is made (and a stale one is removed at ``finish``).

    Every frame PNG carries the parameters (as :func:`write_outputs`) and its frame number;
    the sidecar adds ``video``: frames, fps, loop, the frames folder, the first frame, the
    file-name pattern and the MP4. ``on_frame(i, n)`` is called after each frame
    (1-based); ``should_cancel()`` is polled before each one and True raises
    CancelledError.
    """

    def __init__(
        self,
        output: str | os.PathLike[str],
        *,
        versions: dict[str, str | None] | None = None,
        on_frame: Any = None,
        should_cancel: Any = None,
        mp4: bool = True,
    ) -> None:
        self.output = output
        self.versions = versions
        self.on_frame = on_frame
        self.should_cancel = should_cancel
        self.frames_dir, self.mp4_path, self.sidecar = video_paths_for(output)
        self.folder = self.frames_dir.parent
        self._image_path = self.mp4_path.with_suffix(".png")  # for the checks only
        self._exe = ffmpeg_exe() if mp4 else None
        if mp4 and self._exe is None:
            import logging

            logging.getLogger(__name__).warning(
                "no MP4 preview: ffmpeg is not available (install the imageio-ffmpeg package)"
            )
        self._temps: list[Path] = []
        self._tmp_dir: Path | None = None
        self._tmp_mp4: Path | None = None
        self._encoder: _Mp4Encoder | None = None
        self._png_doc: dict[str, Any] | None = None
        self._written = 0
        self._fps = 0
        self._done = False

    # --- the block ---------------------------------------------------------------------
    def __enter__(self) -> VideoWriter:
        if self.frames_dir.exists() and not self.frames_dir.is_dir():
            raise OutputError(
                f"output: {str(self.frames_dir)!r} exists and is not a folder; move it"
            )
        _check_target(self._image_path, self.sidecar)
        # The folder is made with the first frame: a run that fails before leaves none.
        if self.folder.is_dir():
            with self._os_errors():
                placing.remove_stale_temporaries(self.folder)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if not self._done:
            self.abort()

    def abort(self) -> None:
        """Stop ffmpeg and remove everything written so far."""
        if self._encoder is not None:
            self._encoder.abort()
            self._encoder = None
        for tmp in self._temps:
            placing.remove(tmp)
        self._temps.clear()
        self._done = True

    @contextlib.contextmanager
    def _os_errors(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise _write_error(exc, self.folder) from exc

    # --- frames ------------------------------------------------------------------------
    def __call__(self, chunk: Any) -> None:
        """The pipeline's ``frame_sink``: write a FrameChunk."""
        self.write(chunk.frames, start=chunk.start, total=chunk.total, result=chunk.result)

    def write(self, frames: Any, *, start: int, total: int, result: Any) -> None:
        """Write frames (f, 3, H, W) in [0, 1], the clip's ``start`` .. ``start + f - 1``
        of ``total``, in order. ``result`` gives the parameters the PNGs carry."""
        from .errors import CancelledError

        if self._done:
            raise RuntimeError("this VideoWriter has finished; use a new one")
        if start != self._written:
            raise ValueError(f"frames must come in order: got {start}, expected {self._written}")
        with self._os_errors():
            if self._png_doc is None:
                self._open(frames, total, result)
            assert self._png_doc is not None and self._tmp_dir is not None
            for i in range(int(frames.shape[0])):
                if self.should_cancel is not None and self.should_cancel():
                    raise CancelledError("cancelled while writing the frames")
                n = self._written + 1
                array = image_to_uint8(frames[i])
                video = {**self._png_doc["video"], "frame": n}
                _save_png(
                    array,
                    self._tmp_dir / FRAME_NAME.format(n),
                    _dumps({**self._png_doc, "video": video}, None),
                )
                if self._encoder is not None:
                    self._encoder.send(array)
                self._written = n
                if self.on_frame is not None:
                    self.on_frame(n, total)

    def _open(self, frames: Any, total: int, result: Any) -> None:
        png_doc, _ = build_metadata(result, versions=self.versions, output=self.output)
        self._fps = int(result.fps)
        png_doc["video"] = {"frames": int(total), "fps": self._fps}
        if result.options.loop:
            png_doc["video"]["loop"] = True
        height, width = int(frames.shape[-2]), int(frames.shape[-1])
        self.folder.mkdir(parents=True, exist_ok=True)
        self._tmp_dir = _temp_dir(self.folder, self.frames_dir)
        self._temps.append(self._tmp_dir)
        if self._exe is not None:
            self._tmp_mp4 = _temp_name(self.folder, self.mp4_path)
            self._temps.append(self._tmp_mp4)
            self._encoder = _Mp4Encoder(self._exe, self._tmp_mp4, width, height, self._fps)
        self._png_doc = png_doc

    # --- the end -----------------------------------------------------------------------
    def finish(self, result: Any, *, timings: dict[str, float] | None = None) -> VideoOutputPaths:
        """Close the MP4, write the sidecar and rename everything into place."""
        if self._done:
            raise RuntimeError("this VideoWriter has finished; use a new one")
        n_frames = int(result.n_frames)
        if self._written != n_frames or self._tmp_dir is None:
            raise ValueError(f"{self._written} frames were written of the {n_frames} made")
        frames_dir, mp4_path, sidecar = self.frames_dir, self.mp4_path, self.sidecar
        first_frame = frames_dir / FRAME_NAME.format(1)
        _, sidecar_doc = build_metadata(
            result, versions=self.versions, timings=timings, output=placing.output_path(self.output)
        )
        sidecar_doc["image"] = f"{frames_dir.name}/{first_frame.name}"
        sidecar_doc["video"] = {
            "frames": n_frames,
            "fps": self._fps,
            "loop": bool(result.options.loop),
            "frames_folder": frames_dir.name,
            "first_frame": f"{frames_dir.name}/{first_frame.name}",
            "frame_pattern": FRAME_PATTERN,
            "first_frame_number": 1,
            "mp4": mp4_path.name if self._exe is not None else None,
            # The MP4's projection metadata (spherediff_core.spherical).
            "mp4_spherical": ["v1-xmp", "v2-sv3d"] if self._exe is not None else None,
        }
        with self._os_errors():
            if self._encoder is not None:
                self._encoder.close()  # on failure abort() (leaving the block) reaps it
                self._encoder = None
                # 360° video metadata (Spherical Video V1 XMP + V2 st3d/sv3d): players show
                # the clip as a sphere, not a 2:1 strip.
                assert self._tmp_mp4 is not None
                tagged = _temp_name(self.folder, mp4_path)
                self._temps.append(tagged)
                inject_spherical_metadata(self._tmp_mp4, tagged)
                placing.replace(tagged, self._tmp_mp4)
                self._temps.remove(tagged)
            tmp_sidecar = _temp_name(self.folder, sidecar)
            self._temps.append(tmp_sidecar)
            _save_text(_dumps(sidecar_doc, 2) + "\n", tmp_sidecar)
            # Without an MP4 the earlier one goes too: never a stale preview of another
            # sequence.
            moves = [(self._tmp_dir, frames_dir), (self._tmp_mp4, mp4_path), (tmp_sidecar, sidecar)]
            _put_in_place(self._image_path, sidecar, moves)
        self._temps.clear()
        self._done = True
        return VideoOutputPaths(
            frames_dir=frames_dir,
            first_frame=first_frame,
            frame_count=n_frames,
            fps=self._fps,
            mp4=mp4_path if self._exe is not None else None,
            sidecar=sidecar,
        )


def write_video_outputs(
    result: Any,
    output: str | os.PathLike[str],
    *,
    versions: dict[str, str | None] | None = None,
    timings: dict[str, float] | None = None,
    on_frame: Any = None,
    should_cancel: Any = None,
    mp4: bool = True,
) -> VideoOutputPaths:
    """Write a video result whose frames are in memory (``result.frames``): the frame
    sequence, the MP4 preview and the sidecar, atomically (see :class:`VideoWriter`).

    ``output`` names them by its stem (see :func:`video_paths_for`).
    """
    frames = result.frames
    if frames is None:
        raise ValueError("not a video result held in memory (frames is None)")
    with VideoWriter(
        output, versions=versions, on_frame=on_frame, should_cancel=should_cancel, mp4=mp4
    ) as writer:
        writer.write(frames, start=0, total=int(frames.shape[0]), result=result)
        return writer.finish(result, timings=timings)
