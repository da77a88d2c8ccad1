"""One generation from options to files, shared by ``spherediff generate`` and the worker.

Everything here is import-light: torch, diffusers and transformers are imported inside the
functions, after :func:`prepare_environment` has set the Hugging Face switches (offline
mode, no progress bars) that those libraries read once at import time.

The flow of :func:`generate`: check the model folder's family (no heavy import), load the
pipeline (phase ``load``), run it (phases ``denoise`` and ``decode``, reported by the
pipeline), write the PNG and its sidecar atomically (phase ``write``; for a video the frame
sequence, the MP4 preview and the sidecar, reported frame by frame). A cancel request
(``should_cancel`` returning True) is honoured between phases and, inside the pipeline,
before every view batch (and before every frame written).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import platform
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import (
    EXIT_BAD_INPUT,
    EXIT_CANCELLED,
    EXIT_INTERNAL,
    EXIT_OUT_OF_MEMORY,
    EXIT_OUTPUT,
    BadInputError,
    CancelledError,
    OutputError,
    SphereDiffError,
    UnsupportedModelError,
)
from .options import GenerationOptions, OptionsError
from .progress import Progress

__all__ = [
    "THREADS_ENV",
    "CancelToken",
    "ErrorReport",
    "ModelCache",
    "ModelCheck",
    "Outcome",
    "ProgressEvent",
    "apply_thread_setting",
    "check_options",
    "check_request",
    "describe_error",
    "describe_os_error",
    "device_summary",
    "generate",
    "install_cancel_signals",
    "package_versions",
    "precheck_model",
    "prepare_environment",
    "prepare_exit",
    "spherediff_version",
]

logger = logging.getLogger(__name__)

THREADS_ENV = "SPHEREDIFF_TORCH_THREADS"
"""Environment variable: torch.set_num_threads(value) before any work."""


# --------------------------------------------------------------------------------------
# Versions and devices
# --------------------------------------------------------------------------------------


def prepare_exit() -> None:
    """Make the interpreter's exit quick: flush the streams and freeze the GC.

    With torch, diffusers and transformers imported, the final garbage collection of the
    interpreter's shutdown takes ~2 s on a small CPU; the add-on waits for the worker to
    exit after a cancel, so that time is skipped (nothing needs finalising by then).
    """
    import gc

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            stream.flush()
    gc.freeze()


def spherediff_version() -> str:
    from . import __version__

    return __version__


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - broken metadata must not break hello
        return None


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that matter, from their metadata (nothing is imported).

    A package that is not installed shows as None.
    """
    return {
        "spherediff": spherediff_version(),
        "python": platform.python_version(),
        "torch": _dist_version("torch"),
        "diffusers": _dist_version("diffusers"),
        "transformers": _dist_version("transformers"),
        "huggingface_hub": _dist_version("huggingface_hub"),
        "pillow": _dist_version("pillow"),
        "numpy": _dist_version("numpy"),
    }


def apply_thread_setting() -> None:
    """torch.set_num_threads($SPHEREDIFF_TORCH_THREADS) when that variable is set."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return
    try:
        threads = int(value)
        if threads < 1:
            raise ValueError(value)
    except ValueError:
        logger.warning("ignoring %s=%r: expected a whole number >= 1", THREADS_ENV, value)
        return
    import torch

    torch.set_num_threads(threads)


def device_summary() -> tuple[str | None, list[str]]:
    """The device 'auto' picks and the devices this PyTorch sees; (None, []) without torch.

    A CPU-only build of torch (read from its version file) off macOS sees only the CPU:
    torch is then not imported, so the worker's hello and a refusal stay quick.
    """
    from .modelcheck import torch_build_has_gpu

    if sys.platform != "darwin" and torch_build_has_gpu() is False:
        return "cpu", ["cpu"]
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - hello must report, not crash
        logger.warning("torch cannot be imported (%s)", exc)
        return None, []
    apply_thread_setting()
    devices: list[str] = []
    best = "cpu"
    try:
        if torch.cuda.is_available():
            best = "cuda"
            for i in range(torch.cuda.device_count()):
                devices.append(f"cuda:{i} {torch.cuda.get_device_name(i)}")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            best = "mps" if best == "cpu" else best
            devices.append("mps")
    except Exception as exc:  # noqa: BLE001 - a broken driver must not break hello
        logger.warning("could not list GPUs (%s)", exc)
    devices.append("cpu")
    return best, devices


# --------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------


def prepare_environment(offline: bool) -> None:
    """Set the Hugging Face switches; call before huggingface_hub/diffusers are imported.

    ``offline`` sets HF_HUB_OFFLINE=1 (an already set HF_HUB_OFFLINE=1 is honoured too,
    by huggingface_hub itself). Progress bars of the libraries are turned off: they would
    garble the command's own progress line, and the worker reports progress as events.
    """
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
        if "huggingface_hub" in sys.modules:
            # Too late for the import-time constant; the pipeline also gets offline=True.
            logger.debug("huggingface_hub was imported before offline mode was set")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "warning")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Importing diffusers makes torch's compile cache folder (torchinductor_<user>) in the
    # temporary folder and leaves it there; keep it with the engine's other caches.
    from .cachedirs import cache_root

    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "torchinductor"))


def _quiet_libraries() -> None:
    """Turn the libraries' own tqdm bars off (they honour this besides the env vars)."""
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            mod = __import__(module, fromlist=["disable_progress_bar"])
            mod.disable_progress_bar()
        except Exception as exc:  # noqa: BLE001 - cosmetic only
            logger.debug("could not disable progress bars of %s (%s)", module, exc)


# --------------------------------------------------------------------------------------
# Cancelling
# --------------------------------------------------------------------------------------


class CancelToken:
    """A thread- and signal-safe cancel flag with the reason of the first request.

    Inside :meth:`interruptible` (model loading, which has no view batches to poll
    between) a cancel also interrupts the main thread at once with KeyboardInterrupt.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self.interrupt_now = False

    def cancel(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()
        if self.interrupt_now and threading.current_thread() is not threading.main_thread():
            import _thread

            _thread.interrupt_main()  # runs the SIGINT handler, which raises (see below)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        self.interrupt_now = True
        try:
            self.check()
            yield
        finally:
            self.interrupt_now = False

    def is_set(self) -> bool:
        return self._event.is_set()

    def reset(self) -> None:
        """Clear the flag for the next job of a serving worker (same signal handlers)."""
        self._event.clear()
        self.reason = ""

    __call__ = is_set

    def check(self) -> None:
        """Raise CancelledError when cancelled."""
        if self.is_set():
            raise CancelledError(f"cancelled ({self.reason})")


def install_cancel_signals(
    token: CancelToken, on_first: Callable[[str], None] | None = None
) -> list[str]:
    """SIGINT, SIGTERM and (Windows) SIGBREAK request a cancel at the next view batch.

    While the model loads (``token.interruptible()``), and on a second signal, the
    handler raises KeyboardInterrupt at once; callers report that as a cancel too.
    Returns the names of the signals handled.
    """
    import signal

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if token.is_set():  # a second request, or interrupt_main() from token.cancel
            raise KeyboardInterrupt(name)
        token.cancel(name)
        if on_first is not None:
            on_first(name)
        if token.interrupt_now:
            raise KeyboardInterrupt(name)

    handled = []
    for name in ("SIGINT", "SIGTERM", "SIGBREAK"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            signal.signal(sig, handler)
            handled.append(name)
        except (OSError, ValueError, RuntimeError) as exc:  # not the main thread, say
            logger.debug("cannot handle %s (%s)", name, exc)
    return handled


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


@dataclass
class ErrorReport:
    """An exception as the worker and the command report it."""

    code: str
    exit_code: int
    message: str
    traceback: str = ""


def _is_torch_oom(exc: BaseException) -> bool:
    for cls in type(exc).__mro__:
        if cls.__name__ == "OutOfMemoryError" and cls.__module__.startswith("torch"):
            return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


_OS_ERROR_FIXES = {
    getattr(errno, name): fix
    for name, fix in (
        ("ENOSPC", "the disk is full: free some space or choose another folder"),
        ("EDQUOT", "the disk quota is used up: free some space or choose another folder"),
        ("EROFS", "the file system is read-only: choose a folder you can write to"),
        ("EACCES", "permission denied: choose a folder you can write to"),
        ("EPERM", "not permitted: choose a folder you can write to"),
        ("ENAMETOOLONG", "the name is too long for the file system: choose a shorter name"),
        ("EIO", "the disk reported an input/output error: check it or choose another folder"),
        ("EMFILE", "too many open files: close other programs and try again"),
        ("EISDIR", "a folder is in the way: remove it or choose another name"),
        ("ENOTDIR", "a file is in the way where a folder is needed: choose another path"),
        ("ENOENT", "the folder vanished or cannot hold files: choose another folder"),
        ("EEXIST", "something is in the way: remove it or choose another name"),
    )
    if hasattr(errno, name)
}
"""What the user can do about an OSError, by errno."""

_ENVIRONMENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENAMETOOLONG", "EIO", "EMFILE")
    if hasattr(errno, name)
)
"""OSErrors that are the computer's state, not a bug, wherever they happen."""


def describe_os_error(exc: OSError, action: str = "could not write", path: str = "") -> str:
    """A plain message for an OSError: what failed, the path, why, and the fix.

    ``path`` is used when the error names no file.
    """
    paths = [p for p in (exc.filename, exc.filename2) if p]
    where = str(paths[-1]) if paths else path
    fix = _OS_ERROR_FIXES.get(exc.errno or 0, "check the folder and try again")
    why = exc.strerror or str(exc) or type(exc).__name__
    return f"{action} {where!r}: {why}; {fix}" if where else f"{action}: {why}; {fix}"


def describe_error(exc: BaseException, cancel_reason: str = "", client: str = "cli") -> ErrorReport:
    """Map an exception to its stable code, exit code and an actionable message
    (worded for ``client``: cli, worker or blender)."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, OptionsError):
        return ErrorReport("bad_input", EXIT_BAD_INPUT, str(exc), tb)
    if isinstance(exc, CancelledError | KeyboardInterrupt):
        how = f" ({cancel_reason})" if cancel_reason else ""
        msg = f"cancelled by the user{how}; partial outputs were removed"
        return ErrorReport("cancelled", EXIT_CANCELLED, msg, tb)
    if isinstance(exc, SphereDiffError):
        return ErrorReport(exc.code, exc.exit_code, exc.message_for(client), tb)
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        msg = describe_os_error(exc, "file system error at")
        return ErrorReport("output_error", EXIT_OUTPUT, msg, tb)
    if _is_torch_oom(exc):
        msg = (
            "the device ran out of memory; lower the view batch size, turn on model CPU "
            "offload and VAE tiling, or choose a smaller size"
        )
        return ErrorReport("out_of_memory", EXIT_OUT_OF_MEMORY, msg, tb)
    if isinstance(exc, MemoryError):
        msg = (
            "the computer ran out of memory (RAM); close other programs, lower the view "
            "batch size or choose a smaller size"
        )
        return ErrorReport("out_of_memory", EXIT_OUT_OF_MEMORY, msg, tb)
    if isinstance(exc, ImportError):
        name = getattr(exc, "name", None) or str(exc)
        msg = (
            f"a required package is missing or broken ({name}): install the engine with "
            f"its model extras (pip install 'spherediff[models]') into {sys.executable}"
        )
        return ErrorReport("internal", EXIT_INTERNAL, msg, tb)
    msg = f"internal error: {type(exc).__name__}: {exc} (please report this with the traceback)"
    return ErrorReport("internal", EXIT_INTERNAL, msg, tb)


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


ProgressEvent = Progress
"""Progress of a generation (the pipeline's own reports pass through unchanged)."""


@dataclass
class Outcome:
    """What :func:`generate` wrote.

    For a video, ``image`` is the first frame of the sequence and the ``video`` fields are
    set: the frame count, the frame rate, the frames folder and the MP4 (None without
    ffmpeg).
    """

    image: Path
    sidecar: Path
    width: int
    height: int
    seconds: float
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    video: bool = False
    frames: int = 1
    fps: int | None = None
    frames_dir: Path | None = None
    mp4: Path | None = None
    warnings: list[str] = field(default_factory=list)
    """Notes for the user, e.g. views far below the model's native size."""
    exr: Path | None = None
    """With ``hdr``: the lifted panorama, linear half-float OpenEXR, sun included."""
    sun: dict[str, Any] | None = None
    """With ``hdr``: the sun found in the panorama (the sidecar's ``hdr.sun`` block)."""
    loaded: bool = True
    """False when a serving worker's already loaded model was used (nothing loaded)."""


def check_options(options: GenerationOptions) -> GenerationOptions:
    """validate(), with anything unexpected it raises reported as bad input too."""
    try:
        return options.validate()
    except OptionsError:
        raise
    except Exception as exc:
        raise BadInputError(f"options: could not be checked ({type(exc).__name__}: {exc})") from exc


@dataclass(frozen=True)
class ModelCheck:
    """What :func:`precheck_model` found: the model's family and whether the run must stay
    off the Hub (offline mode, or the Hub unreachable with the model cached)."""

    family: Any
    offline: bool = False
    index: dict[str, Any] = field(default_factory=dict)
    """The model's model_index.json, as read."""


def check_request(options: GenerationOptions, check: ModelCheck) -> None:
    """Refuse what the model's family cannot make (a video from an image model, a still
    from a video model, a frame count its VAE cannot take, too few steps, guidance_2 for a
    model with one denoiser)."""
    from .families import check_guidance_2, check_steps, check_video_request

    check_steps(options, check.family)
    check_video_request(options, check.family)
    check_guidance_2(options, check.family, check.index)


def precheck_model(model: str, options: GenerationOptions | None = None) -> ModelCheck:
    """Refuse what cannot work before torch or diffusers is imported (well under 2 s).

    Reads model_index.json (a local folder, the Hugging Face cache, or the Hub with one
    request and no retries: see modelcheck.probe_hub), refuses a family SphereDiff cannot
    drive and, for a local folder, says what is wrong with it (modelcheck.check_model_folder).
    With ``options``, also refuses what the family cannot make (a video from an image
    model, a still from a video model, a frame count its VAE cannot take, too few steps).
    """
    from . import modelcheck

    _route_hub_logs()
    revision = options.revision if options is not None else None
    cache_dir = options.cache_dir if options is not None else None
    offline = bool(options is not None and options.offline) or _hub_offline()
    folder = Path(model).expanduser()
    hub_offline = False
    if not folder.is_dir() and not offline:
        hub_offline = modelcheck.probe_hub(model, revision, cache_dir).offline
    index = modelcheck.read_model_index(model, revision, offline or hub_offline, cache_dir)
    family = _family_of(index, model)
    modelcheck.check_component_modules(index, model)
    if folder.is_dir():
        modelcheck.check_model_folder(model, index, family.skipped_components)
    check = ModelCheck(family, offline=hub_offline, index=index)
    if options is not None:
        check_request(options, check)
    return check


def _route_hub_logs() -> None:
    """huggingface_hub gives its logger a handler of its own and lets records propagate
    too, so with the root logger configured (the command, the worker) every warning is
    printed twice: keep only the root's."""
    if not logging.getLogger().handlers:
        return
    from huggingface_hub.utils import logging as hub_logging

    hub_root = hub_logging.get_logger()
    for handler in list(hub_root.handlers):
        if type(handler) is logging.StreamHandler:
            hub_root.removeHandler(handler)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _family_of(index: dict[str, Any], model: str) -> Any:
    from .families import facts_for_class, supported_families_text

    class_name = index.get("_class_name")
    if isinstance(class_name, list | tuple):
        raise UnsupportedModelError(
            f"{model}: model_index.json asks for a custom pipeline ({class_name!r}); "
            "SphereDiff never runs code from a model folder. Use a standard diffusers "
            f"pipeline folder of {supported_families_text()}"
        )
    family = facts_for_class(class_name)
    if family is None:
        raise UnsupportedModelError(
            f"{model} is a {class_name or 'model of unknown type'}, which SphereDiff cannot "
            f"drive; it drives {supported_families_text()}"
        )
    return family


class ModelCache:
    """The loaded model a serving worker keeps between jobs (one at a time).

    A job whose model, revision, device, precision, memory options, cache folder and
    offline switch are those of the loaded one reuses it (and its pre-checks: no Hub
    request, no folder scan); anything else unloads it first, then loads the new one, so
    two models never share the memory. The pipeline keeps its encoded prompts and
    sampling plans (SphereDiffPipeline), so a repeated prompt is not encoded again.
    """

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.pipe: Any = None
        self.check: ModelCheck | None = None

    @staticmethod
    def key_for(options: GenerationOptions, plan_cache_dir: str | Path | None) -> tuple[Any, ...]:
        return (
            options.model,
            options.revision,
            options.device,
            options.precision,
            options.cpu_offload,
            options.vae_tiling,
            options.vae_slicing,
            options.cache_dir,
            options.offline,
            None if plan_cache_dir is None else str(plan_cache_dir),
        )

    def get(self, options: GenerationOptions, plan_cache_dir: str | Path | None) -> Any:
        """The loaded pipeline for these options, or None: then the job checks its model
        (a refused one leaves the loaded model loaded), :meth:`unload` s the old one and
        :meth:`keep` s the new one."""
        if self.pipe is not None and self.key == self.key_for(options, plan_cache_dir):
            return self.pipe
        return None

    def keep(self, options: GenerationOptions, plan_cache_dir: Any, pipe: Any, check: Any) -> None:
        self.key, self.pipe, self.check = self.key_for(options, plan_cache_dir), pipe, check

    def unload(self) -> None:
        """Drop the loaded model and give its memory back (device caches included)."""
        if self.pipe is None:
            return
        device = getattr(getattr(self.pipe, "adapter", None), "device", None)
        self.key = self.pipe = self.check = None
        import gc

        gc.collect()
        if device is not None and getattr(device, "type", "") == "cuda":
            import torch

            torch.cuda.empty_cache()


@contextlib.contextmanager
def _output_errors(output: str) -> Iterator[None]:
    """OSErrors while writing the outputs are the computer's state (a full disk, a
    read-only folder, a name too long): report them as output errors, naming the path."""
    try:
        yield
    except OSError as exc:
        raise OutputError(describe_os_error(exc, "could not write", output)) from exc


def generate(
    options: GenerationOptions,
    *,
    on_progress: Callable[[ProgressEvent], None] | None = None,
    should_cancel: CancelToken | None = None,
    plan_cache_dir: str | Path | None = None,
    dist: Any = None,
    models: ModelCache | None = None,
    on_preview: Callable[[str, int, int], None] | None = None,
) -> Outcome | None:
    """Load the model, generate, write the PNG and sidecar; raise a SphereDiffError.

    ``dist``: this process is one rank of a torchrun job
    (:class:`spherediff_core.distributed.DistContext`). Every rank loads the model and
    shares the views; rank 0 alone reports progress, writes the files and returns the
    Outcome, the others return None.

    ``models``: a serving worker's :class:`ModelCache`. When it holds this job's model,
    nothing is loaded (and no ``load`` progress is reported); ``Outcome.loaded`` says
    which happened.

    ``on_preview(path, step, total)``: with ``options.preview_every`` > 0, called while
    denoising with each live preview (:mod:`spherediff_core.preview`): an 8-bit sRGB ERP
    PNG of ``preview_width`` x ``preview_width / 2`` in the output's folder, under a
    hidden name, after ``step`` of ``total`` steps. Only the latest two are kept and all
    are removed before this returns or raises: read the file at once.
    """
    t_start = time.perf_counter()
    token = should_cancel or CancelToken()
    root = dist is None or dist.is_root
    report = (on_progress if root else None) or (lambda p: None)
    check_options(options)
    prepare_environment(options.offline)
    token.check()

    # Load (nothing to clean up yet, so a cancel interrupts it at once); a serving
    # worker's loaded model is used as it is
    pipe = None if models is None else models.get(options, plan_cache_dir)
    load_s = 0.0
    loaded = pipe is None
    if pipe is not None:
        assert models is not None and models.check is not None
        check_request(options, models.check)
        if models.check.offline:
            prepare_environment(offline=True)
    else:
        pipe, load_s = _load(options, plan_cache_dir, dist, report, token, models)
    token.check()

    # A video: denoise, then decode and write a chunk of frames at a time
    if not root:  # another rank: its share of the views, nothing written here
        pipe(options, should_cancel=token)
        return None
    if pipe.adapter.is_video:
        outcome = _generate_video(pipe, options, load_s, t_start, report, token, on_preview)
        outcome.loaded = loaded
        return outcome

    # Denoise and decode (the pipeline reports those phases itself)
    with _previews(options, on_preview) as preview:
        result = pipe(options, callback=report, should_cancel=token, preview=preview)
    token.check()

    # Write
    timings = {"load": load_s, **result.timings}
    from .outputs import write_outputs

    lifted = None
    if options.hdr:
        from .hdr import lift_to_hdr

        report(ProgressEvent("hdr", 0, 1, None, "lifting the panorama to HDR"))
        lifted = lift_to_hdr(result.image)  # the decoded float ERP, finer than the PNG
        token.check()
        sun = lifted.sun
        found = f"sun at elevation {sun.elevation_deg:.1f} deg" if sun.visible else "no sun"
        report(ProgressEvent("hdr", 1, 1, None, found))
    report(ProgressEvent("write", 0, 1, None, "writing the PNG and its sidecar"))
    with _output_errors(options.output):
        paths = write_outputs(result, options.output, timings=timings, hdr=lifted)
    seconds = time.perf_counter() - t_start
    report(ProgressEvent("write", 1, 1, None, f"wrote {paths.image.name}"))
    return Outcome(
        image=paths.image,
        sidecar=paths.sidecar,
        width=int(result.image.shape[-1]),
        height=int(result.image.shape[-2]),
        seconds=seconds,
        seed=result.options.seed,
        timings=timings,
        model=dict(result.model),
        warnings=list(getattr(result, "warnings", [])),
        exr=paths.exr,
        sun=lifted.sun.to_dict() if lifted is not None else None,
        loaded=loaded,
    )


@contextlib.contextmanager
def _previews(
    options: GenerationOptions, on_preview: Callable[[str, int, int], None] | None
) -> Iterator[Any]:
    """The job's live preview sink around the pipeline call (None when no previews are
    asked for or nobody listens); its files are gone when the call ends, however."""
    if on_preview is None or options.preview_every <= 0:
        yield None
        return
    from .preview import PreviewSink

    with PreviewSink(
        options.preview_every, options.preview_width, options.output, on_preview
    ) as sink:
        yield sink


def _load(
    options: GenerationOptions,
    plan_cache_dir: str | Path | None,
    dist: Any,
    report: Callable[[ProgressEvent], None],
    token: CancelToken,
    models: ModelCache | None,
) -> tuple[Any, float]:
    """Check and load the model (phase ``load``); returns the pipeline and the seconds."""
    report(ProgressEvent("load", 0, 1, None, f"loading {options.model}"))
    check = precheck_model(options.model, options)
    from .modelcheck import check_device

    check_device(options.device)
    if check.offline:  # the Hub is unreachable and the model cached: no retries later
        prepare_environment(offline=True)
    if models is not None:
        models.unload()  # the model checked: now the old one makes room for it
    t0 = time.perf_counter()
    with token.interruptible():
        import diffusers  # noqa: F401 - imported here so its progress bars can be turned off

        _quiet_libraries()
        apply_thread_setting()
        from .pipeline import SphereDiffPipeline

        pipe = SphereDiffPipeline.from_pretrained(
            options.model,
            revision=options.revision,
            device=options.device,
            precision=options.precision,
            offline=options.offline or check.offline,
            cache_dir=options.cache_dir,
            cpu_offload=options.cpu_offload,
            vae_tiling=options.vae_tiling,
            vae_slicing=options.vae_slicing,
            plan_cache_dir=plan_cache_dir,
            dist=dist,
        )
    load_s = time.perf_counter() - t0
    if models is not None:
        models.keep(options, plan_cache_dir, pipe, check)
    report(ProgressEvent("load", 1, 1, None, "model loaded"))
    return pipe, load_s


def _generate_video(
    pipe: Any,
    options: GenerationOptions,
    load_s: float,
    t_start: float,
    report: Callable[[ProgressEvent], None],
    token: CancelToken,
    on_preview: Callable[[str, int, int], None] | None = None,
) -> Outcome:
    """Generate a video straight to disk: the pipeline hands each chunk of ERP frames to
    a VideoWriter as it is blended, so the clip is never held whole. Progress keeps the
    phases in order: ``decode`` counts the views of every chunk (its frames are written
    as the chunk completes), then ``write`` reports all F frames written (step F) and the
    files put in place (step F + 1). A cancel or failure leaves none of its files."""
    from .outputs import VideoWriter

    # The writer turns its own OSErrors into OutputErrors naming the path.
    with VideoWriter(options.output, should_cancel=token) as writer:
        with _previews(options, on_preview) as preview:
            result = pipe(
                options, callback=report, should_cancel=token, frame_sink=writer, preview=preview
            )
        token.check()
        n = result.n_frames
        report(ProgressEvent("write", n, n + 1, None, f"wrote {n} frames; placing them"))
        timings = {"load": load_s, **result.timings}
        paths = writer.finish(result, timings=timings)
    seconds = time.perf_counter() - t_start
    done = f"wrote {paths.frames_dir.name} ({n} frames)"
    report(ProgressEvent("write", n + 1, n + 1, None, done))
    return Outcome(
        image=paths.first_frame,
        sidecar=paths.sidecar,
        width=int(result.image.shape[-1]),
        height=int(result.image.shape[-2]),
        seconds=seconds,
        seed=result.options.seed,
        timings=timings,
        model=dict(result.model),
        warnings=list(getattr(result, "warnings", [])),
        video=True,
        frames=n,
        fps=paths.fps,
        frames_dir=paths.frames_dir,
        mp4=paths.mp4,
    )
