"""Saving a finished generation from the staging folder into the output folder.

The staging folder (the system's temporary folder) and the output folder may be on
different file systems, where a move is a copy that a full disk can cut short. So every
file or folder is first made under a hidden temporary name in the output folder (a rename
when the file systems are the same, else a copy, flushed to disk) and only then renamed
to its final name; a failure removes the temporary and everything already saved for this
result. The sidecar is rewritten on the way to describe the files where they end up, not
in the staging folder. The same steps serve stills and frame sequences. No bpy here.
"""

import contextlib
import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

Fill = Callable[[Path], None]
"""Makes the temporary (a file or a folder) at the path it is given."""

MODEL_INDEX = "model_index.json"


def folder_problem(folder: Path) -> str:
    """Why finished files cannot be saved in ``folder`` (empty when they can).

    A real file is created and removed in it (or in its nearest existing parent, when it
    does not exist yet): some folders pass ``os.access`` yet cannot hold a file.
    """
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"the output folder {str(folder)!r} cannot be created ({str(probe)!r} is a file)"
    if (probe / MODEL_INDEX).exists():
        return f"the output folder {str(folder)!r} holds a diffusers model; choose another folder"
    try:
        path = _temp_path(probe / "probe")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return f"the output folder {str(folder)!r} is not writable ({reason})"
    return ""


def _temp_path(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _copy_file(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1024 * 1024)
        fout.flush()
        os.fsync(fout.fileno())


def _move_file(src: Path, dst: Path) -> None:
    """A rename on one file system; a full copy (the source kept) across two."""
    try:
        os.replace(src, dst)
    except OSError:
        _copy_file(src, dst)


def file_from(src: Path) -> Fill:
    return lambda tmp: _move_file(src, tmp)


def folder_from(files: list[Path]) -> Fill:
    def fill(tmp: Path) -> None:
        tmp.mkdir()
        for path in files:
            _move_file(path, tmp / path.name)

    return fill


def text_of(text: str) -> Fill:
    def fill(tmp: Path) -> None:
        with open(tmp, "x", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())

    return fill


def save_all(steps: list[tuple[Path, Fill]]) -> None:
    """Make each final path from its fill, through a temporary next to it; all or none."""
    saved: list[Path] = []
    try:
        for final, fill in steps:
            tmp = _temp_path(final)
            try:
                fill(tmp)
                if os.path.lexists(final):  # never replace what someone else put there
                    raise FileExistsError(errno.EEXIST, "already exists", str(final))
                os.replace(tmp, final)
            except BaseException:
                _remove(tmp)
                raise
            saved.append(final)
    except BaseException:
        for path in saved:  # never half a result in the output folder
            _remove(path)
        raise


def save_result(
    steps: list[tuple[Path, Fill]],
    sidecar: object,
    dest_sidecar: Path,
    image: Path,
    **where,
) -> None:
    """:func:`save_all` of ``steps`` and the worker's ``sidecar`` (its path, when it sent
    one) as ``dest_sidecar``, rewritten by :func:`relocated_sidecar` (``image``, ``where``)
    to describe the saved files."""
    if isinstance(sidecar, str) and Path(sidecar).is_file():
        text = relocated_sidecar(Path(sidecar), image, **where)
        steps = [*steps, (dest_sidecar, text_of(text))]
    save_all(steps)


def relocated_sidecar(
    sidecar: Path,
    image: Path,
    *,
    frames_dir: Path | None = None,
    first_frame: str = "",
    mp4: Path | None = None,
    exr: Path | None = None,
) -> str:
    """The worker's sidecar (JSON) describing the files saved as ``image`` (a still; for
    a video the path naming its stem), a still's ``exr`` (its hdr block) and, for a
    video, ``frames_dir`` and ``mp4``.

    Raises ValueError when the sidecar is not a JSON object.
    """
    doc = json.loads(sidecar.read_text(encoding="utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"the worker's sidecar {str(sidecar)!r} is not a JSON object")
    if isinstance(doc.get("options"), dict):
        doc["options"]["output"] = str(image)
    hdr = doc.get("hdr")
    if isinstance(hdr, dict) and exr is not None:
        hdr["exr"] = exr.name
    if frames_dir is None:
        doc["image"] = image.name
    else:
        first = f"{frames_dir.name}/{first_frame}"
        doc["image"] = first
        video = doc.get("video")
        if isinstance(video, dict):
            video.update(frames_folder=frames_dir.name, first_frame=first)
            video["mp4"] = mp4.name if mp4 is not None else None
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
