"""Putting outputs in place without losing anything: the checks, the lock and the renames.

Used by :mod:`spherediff_core.outputs` (stills and videos alike) and, for the checks made
before anything loads, by :mod:`spherediff_core.options`. Standard library only.

* :func:`output_path` normalises an output path (``sub/../../x.png`` is ``x.png``: no
  folder is created on the way to it).
* :func:`output_problem` refuses what must never be overwritten: a folder holding a
  diffusers model (``model_index.json``) and a ``<stem>.json`` that SphereDiff did not
  write (its ``"format"`` is not ``"spherediff"``).
* :func:`probe_folder` creates and removes a real file in the output folder (``os.access``
  says yes to folders that cannot hold one, such as those under ``/proc``).
* :class:`StemLock` serialises the put-in-place of two writers of the same output: a lock
  file ``.<stem>.lock`` created with ``O_EXCL`` holding the writer's process id; the lock
  of a dead process is taken over.
* Temporary names carry the writer's process id (``.<name>.<pid>-<token>.tmp``);
  :func:`remove_stale_temporaries` removes those of dead processes (a ``kill -9`` in the
  middle of a write), never those of a live one.
* :func:`put_in_place` renames temporaries onto their final names, all or none: the
  earlier files are moved aside first and moved back when any step fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
from pathlib import Path

__all__ = [
    "StemLock",
    "output_path",
    "output_problem",
    "pid_alive",
    "probe_folder",
    "put_in_place",
    "remove",
    "remove_stale_temporaries",
    "temp_path",
]

SIDECAR_FORMAT = "spherediff"
MODEL_INDEX = "model_index.json"
MAX_SIDECAR_BYTES = 4 * 1024 * 1024
LOCK_WAIT_S = 120.0
"""How long a writer waits for another live writer of the same output (placing takes ms)."""
UNREADABLE_LOCK_STALE_S = 10.0
"""A lock file without a process id (its writer died between create and write) is stale
after this long."""

_TEMP = re.compile(r"^\.(?P<final>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.(?P<kind>tmp|old)$")


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def output_path(output: str | os.PathLike[str]) -> Path:
    """The absolute, normalised path (``~`` expanded, ``..`` resolved by name)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(output))))


def _sidecar_problem(sidecar: Path) -> str:
    if not os.path.lexists(sidecar):
        return ""
    fix = "move or rename it, or choose another output name"
    if sidecar.is_dir():
        return f"{str(sidecar)!r} (the sidecar's name) is a folder; {fix}"
    try:
        if sidecar.stat().st_size > MAX_SIDECAR_BYTES:  # ours are a few KB
            raise ValueError("too large for a sidecar")
        doc = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        # Another writer moved it aside between lexists and the read: nothing to protect
        # now, and the check is made again under the output's lock.
        return ""
    except (OSError, ValueError, RecursionError):  # RecursionError: hostile nesting
        return f"{str(sidecar)!r} exists and is not a SphereDiff sidecar (unreadable); {fix}"
    if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT:
        return f"{str(sidecar)!r} exists and was not written by SphereDiff; {fix}"
    return ""


def output_problem(image: Path, sidecar: Path) -> str:
    """Why writing ``image`` and ``sidecar`` (normalised paths) would destroy a file that
    is not ours; empty when it would not."""
    folder = image.parent
    if (folder / MODEL_INDEX).exists():
        return (
            f"{str(folder)!r} holds a diffusers model ({MODEL_INDEX}); write the outputs "
            "to another folder"
        )
    return _sidecar_problem(sidecar)


def nearest_existing_folder(folder: Path) -> Path:
    probe = folder
    while not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    return probe


def probe_folder(folder: Path) -> str:
    """Create and remove a file in ``folder`` (or its nearest existing ancestor, when it
    does not exist yet); the reason it cannot be written, or an empty string."""
    probe = nearest_existing_folder(folder)
    if not probe.is_dir():
        return (
            f"{str(folder)!r} cannot be created: {str(probe)!r} is a file, not a folder; "
            "choose another folder"
        )
    try:
        path = temp_path(probe, Path("probe"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(path)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return f"{str(folder)!r} is not writable ({reason}); choose a folder you can write to"
    return ""


# --------------------------------------------------------------------------------------
# Processes and temporary names
# --------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs (unknown counts as alive)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the check (POSIX)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def _pid_alive_windows(pid: int) -> bool:
    # os.kill would terminate it on Windows: ask for its exit code instead.
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() == 5  # ERROR_ACCESS_DENIED: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def temp_path(folder: Path, final: Path, kind: str = "tmp") -> Path:
    """A new hidden name next to ``final`` (not created): ``.<name>.<pid>-<token>.<kind>``.

    The process id lets a later run tell a dead writer's leftovers from a live one's.
    """
    for _ in range(100):
        path = folder / f".{final.name}.{os.getpid()}-{secrets.token_hex(4)}.{kind}"
        if not os.path.lexists(path):
            return path
    raise FileExistsError(f"cannot find a free temporary name in {folder}")


def remove(path: Path) -> None:
    """Remove a file or a folder tree; a missing one is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temporaries(folder: Path, finals: tuple[Path, ...] = ()) -> list[str]:
    """Remove the temporaries that dead writers left in ``folder``; return their names.

    A ``.tmp`` is a half-written file or frames folder: removed. An ``.old`` is an earlier
    output moved aside by a writer that died while putting its files in place: it is put
    back when its name is one of ``finals`` (the caller holds that output's lock) and free,
    removed when that name is taken (the new output was placed), else left for the writer
    of that output.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    final_names = {f.name for f in finals}
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or pid_alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        if match["kind"] == "old":
            if match["final"] not in final_names:
                continue
            final = folder / match["final"]
            if not os.path.lexists(final):
                with contextlib.suppress(OSError):  # else it stays for the next run
                    os.replace(path, final)
                continue
        remove(path)
        removed.append(entry.name)
    return removed


# --------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------


class LockTimeout(OSError):
    """Another live process kept the output's lock for too long."""


class StemLock:
    """An exclusive lock on one output stem in one folder, across processes and threads.

    ``.<stem>.lock`` is created with ``O_EXCL`` (atomic on every platform and on network
    file systems) and holds the owner's process id; it is removed on release. A lock
    whose owner is dead is broken, under a second lock (``.<stem>.lock.break``) so that
    two waiters never both break it and remove a live one's lock by mistake.
    """

    def __init__(self, folder: Path, stem: str, timeout: float = LOCK_WAIT_S) -> None:
        self.path = folder / f".{stem}.lock"
        self._break = folder / f".{stem}.lock.break"
        self.timeout = timeout
        self._held = False

    def __enter__(self) -> StemLock:
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        while not _create_pid_file(self.path):
            if self._owner_dead(self.path):
                self._break_stale()
                continue
            if time.monotonic() > deadline:
                raise LockTimeout(
                    f"another SphereDiff run is writing the same output (lock {self.path}); "
                    "wait for it, or delete the lock file if no run is writing there"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        self._held = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held:
            self._held = False
            unlink(self.path)

    @staticmethod
    def _owner_dead(path: Path) -> bool:
        try:
            text = path.read_text(encoding="ascii").strip()
            age = time.time() - path.stat().st_mtime
        except (OSError, ValueError):
            return False  # gone meanwhile (try again) or unreadable (wait)
        if not text.isdigit():
            return age > UNREADABLE_LOCK_STALE_S
        return not pid_alive(int(text))

    def _break_stale(self) -> None:
        if not _create_pid_file(self._break):
            if self._owner_dead(self._break):
                unlink(self._break)
            else:
                time.sleep(0.005)
            return
        try:
            if self._owner_dead(self.path):  # still the dead one's, not a new owner's
                unlink(self.path)
        finally:
            unlink(self._break)


def unlink(path: Path) -> None:
    """Remove a file (gone already is fine); retried briefly on Windows, where a waiter
    reading the lock file holds it open for a moment."""
    for attempt in range(10):
        try:
            path.unlink()
            return
        except FileNotFoundError:
            return
        except PermissionError:
            if os.name != "nt" or attempt == 9:
                raise
            time.sleep(0.05 * (attempt + 1))


def _create_pid_file(path: Path) -> bool:
    """Create ``path`` holding this process's id; False when it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, str(os.getpid()).encode("ascii"))
    except BaseException:
        os.close(fd)
        unlink(path)  # a full disk must not leave an empty lock behind
        raise
    os.close(fd)
    return True


# --------------------------------------------------------------------------------------
# Renames
# --------------------------------------------------------------------------------------


def replace(src: Path, dst: Path) -> None:
    """os.replace, retried briefly on Windows where a reader may hold the target open."""
    for attempt in range(10):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if os.name != "nt" or attempt == 9:
                raise
            time.sleep(0.1 * (attempt + 1))


def put_in_place(moves: list[tuple[Path | None, Path]]) -> None:
    """Rename each temporary onto its final name (``None``: the final is to go), all or none.

    Every existing final is first moved aside (``.<name>.<pid>-<token>.old``); when any
    rename fails the new files are removed and the earlier ones moved back, so a failure
    never loses the earlier output. The last final (the sidecar) is moved aside first and
    placed last. Call it holding the output's :class:`StemLock`.
    """
    asides: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for _tmp, final in reversed(moves):
            if os.path.lexists(final):
                aside = temp_path(final.parent, final, "old")
                replace(final, aside)
                asides.append((aside, final))
        for tmp, final in moves:
            if tmp is not None:
                replace(tmp, final)
                placed.append(final)
    except BaseException:
        for final in placed:
            remove(final)
        for aside, final in reversed(asides):
            with contextlib.suppress(OSError):  # else a later run puts it back
                replace(aside, final)
        raise
    for aside, _final in asides:
        remove(aside)
