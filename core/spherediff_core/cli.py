"""The ``spherediff`` command: generate a panorama, run the worker, print the version.

    spherediff generate --prompt "a misty pine forest at dawn" --size 2K --out forest.png
    spherediff generate --model Lightricks/LTX-Video --video --frames 49 --fps 24 \
        --prompt "waves rolling onto a beach" --out beach.mp4
    spherediff generate --prompt "a harbour at dusk" --image plate.jpg --image-fov-deg 50 \
        --out harbour.png
    spherediff hdr panorama.png --out panorama.exr
    spherediff worker [--job JOB.json] [--hello]
    spherediff --version

Every option is checked before any model loads. Progress goes to standard error (a
redrawn bar on a terminal, a plain line now and then otherwise); the one-line summary
goes to standard output. Ctrl-C cancels at the next view batch and leaves no partial
file (a second Ctrl-C stops at once, also cleanly).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import MISSING, fields
from typing import IO, Any

from .errors import (
    EXIT_BAD_INPUT,
    EXIT_CANCELLED,
    EXIT_INTERNAL,
    EXIT_MODEL,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_OUTPUT,
    BadInputError,
)
from .options import (
    DEFAULT_MODEL,
    DEVICES,
    PRECISIONS,
    SAMPLING_METHODS,
    SIZE_PRESETS,
    GenerationOptions,
)

__all__ = ["EXIT_CODES_HELP", "CliPreview", "ProgressPrinter", "build_parser", "main"]

EXIT_CODES_HELP = f"""\
exit codes:
  {EXIT_OK:<4} success: the PNG (or a video's frames and MP4; with --hdr also the EXR)
       and the .json sidecar were written
  {EXIT_INTERNAL:<4} internal error (a bug; run with --verbose for the traceback)
  {EXIT_BAD_INPUT:<4} bad input: an option is invalid; nothing was loaded or written
  {EXIT_MODEL:<4} model not found (not a local folder, not cached, Hub unreachable), a
       model family SphereDiff cannot drive, or a model folder that is damaged or holds
       custom code or pickle weights (the message names the file)
  {EXIT_OUT_OF_MEMORY:<4} out of memory: lower --view-batch-size, add --cpu-offload and
       --vae-tiling, or choose a smaller --size
  {EXIT_OUTPUT:<4} the output could not be written (disk full, read-only folder, no
       permission, name too long); the message names the path
  {EXIT_CANCELLED:<4} cancelled (Ctrl-C, SIGTERM); partial outputs were removed
"""

# (field, flags, argparse keyword arguments); every GenerationOptions field appears once.
_OPTION_SPECS: list[tuple[str, tuple[str, ...], dict[str, Any]]] = [
    ("prompt", ("--prompt", "-p"), {"required": True, "help": "what the panorama shows"}),
    ("sky_prompt", ("--sky-prompt",), {"help": "prompt of the views above the horizon"}),
    ("horizon_prompt", ("--horizon-prompt",), {"help": "prompt of the views on the horizon"}),
    ("ground_prompt", ("--ground-prompt",), {"help": "prompt of the views below the horizon"}),
    ("negative_prompt", ("--negative-prompt",), {"help": "what to steer away from"}),
    (
        "model",
        ("--model", "-m"),
        {"help": f"a local diffusers model folder or a Hub id (default: {DEFAULT_MODEL})"},
    ),
    ("revision", ("--revision",), {"help": "Hub revision (branch, tag or commit)"}),
    ("steps", ("--steps",), {"type": int, "help": "denoising steps (default: the model's)"}),
    (
        "guidance",
        ("--guidance",),
        {"type": float, "help": "guidance scale (default: the model's)"},
    ),
    (
        "true_cfg_scale",
        ("--true-cfg-scale",),
        {"type": float, "help": "FLUX.1: true CFG with --negative-prompt when > 1 (default: 1)"},
    ),
    (
        "guidance_2",
        ("--guidance-2",),
        {
            "type": float,
            "help": "Wan 2.2 A14B: the low-noise expert's guidance (default: --guidance)",
        },
    ),
    ("seed", ("--seed",), {"type": int, "help": "random seed (default: 0)"}),
    (
        "size",
        ("--size",),
        {"choices": list(SIZE_PRESETS), "help": "width preset; overrides --width"},
    ),
    (
        "width",
        ("--width",),
        {
            "type": int,
            "help": "ERP width in pixels, even (default: the model's size, 2K or 4K, which "
            "keeps its views near their training size)",
        },
    ),
    (
        "final_width",
        ("--final-width",),
        {
            "type": int,
            "help": "make a draft of a final this wide: the draft starts from the final's "
            "noise pooled onto its smaller sphere, so --width FINAL_WIDTH with the same seed "
            "later makes the same world, sharper",
        },
    ),
    (
        "n_points",
        ("--n-points",),
        {"type": int, "help": "sphere points (default: from the width)"},
    ),
    ("fov_deg", ("--fov-deg",), {"type": float, "help": "view field of view (default: 80)"}),
    ("overlap", ("--overlap",), {"type": float, "help": "view overlap 0..0.9 (default: 0.6)"}),
    (
        "temperature",
        ("--temperature",),
        {"type": float, "help": "blend temperature (default: 0.1)"},
    ),
    (
        "sampling",
        ("--sampling",),
        {"choices": list(SAMPLING_METHODS), "help": "view sampling (default: dynamic)"},
    ),
    (
        "view_batch_size",
        ("--view-batch-size",),
        {"type": int, "help": "views per denoiser call (default: 8); lower it to save memory"},
    ),
    (
        "device",
        ("--device",),
        {"help": f"{', '.join(DEVICES)} or cuda:N (default: auto)"},
    ),
    (
        "precision",
        ("--precision",),
        {"choices": list(PRECISIONS), "help": "weights' precision (default: auto)"},
    ),
    ("cpu_offload", ("--cpu-offload",), {"help": "keep idle model parts in RAM"}),
    ("vae_tiling", ("--vae-tiling",), {"help": "decode in tiles (less memory)"}),
    ("vae_slicing", ("--vae-slicing",), {"help": "decode one view at a time"}),
    ("offline", ("--offline",), {"help": "never contact the Hugging Face Hub"}),
    ("cache_dir", ("--cache-dir",), {"help": "Hugging Face cache folder"}),
    (
        "video",
        ("--video",),
        {
            "help": "a 360-degree video (video models: LTX-Video, Wan): ERP frames "
            "<stem>_frames/frame_0001.png..., an MP4 preview <stem>.mp4 and <stem>.json"
        },
    ),
    (
        "frames",
        ("--frames",),
        {
            "type": int,
            "help": "video frames (default: the model's, 121 for LTX-Video, 81 for Wan); "
            "LTX-Video takes 8k+1, Wan 4k+1",
        },
    ),
    (
        "fps",
        ("--fps",),
        {"type": int, "help": "video frame rate (default: the model's, 24 LTX-Video, 16 Wan)"},
    ),
    (
        "loop",
        ("--loop",),
        {
            "help": "a seamless loop (video): --frames counts the frame that closes it, so "
            "one frame fewer is written and the last leads into the first"
        },
    ),
    (
        "hdr",
        ("--hdr",),
        {
            "help": "also write <stem>.exr: the panorama lifted to linear HDR with its sun "
            "(stills only; the sidecar gets the hdr block)"
        },
    ),
    (
        "image",
        ("--image",),
        {
            "metavar": "PHOTO",
            "help": "a known image (PNG/JPEG) the panorama is generated around, placed by "
            "the --image-* options (image models only)",
        },
    ),
    (
        "image_yaw_deg",
        ("--image-yaw-deg",),
        {"type": float, "help": "azimuth of the image's centre: 0 = +X, 90 = +Y (default 0)"},
    ),
    (
        "image_pitch_deg",
        ("--image-pitch-deg",),
        {"type": float, "help": "elevation of the image's centre, -90..90 (default 0)"},
    ),
    (
        "image_roll_deg",
        ("--image-roll-deg",),
        {"type": float, "help": "roll of the image's camera, -180..180 (default 0)"},
    ),
    (
        "image_fov_deg",
        ("--image-fov-deg",),
        {"type": float, "help": "horizontal field of view of the image, 1..170 (default 60)"},
    ),
    (
        "image_feather_deg",
        ("--image-feather-deg",),
        {"type": float, "help": "width of the blend inside the image's border (default 4)"},
    ),
    (
        "image_strength",
        ("--image-strength",),
        {
            "type": float,
            "help": "fraction of the steps the image is held, 0.05..1 (default 1: exactly)",
        },
    ),
    (
        "preview_every",
        ("--preview-every",),
        {
            "type": int,
            "metavar": "STEPS",
            "help": "while denoising, every STEPS steps (and after the last) write the "
            "panorama so far to <stem>.preview.png beside the output, replaced each time "
            "and removed at the end: open it in a viewer that reloads (default 0: none)",
        },
    ),
    (
        "preview_width",
        ("--preview-width",),
        {"type": int, "help": "the preview's ERP width in pixels, even, 64..2048 (default 512)"},
    ),
    (
        "output",
        ("--out", "--output", "-o"),
        {
            "help": "the PNG to write; its .json sidecar goes next to it (default: "
            "panorama.png). With --video its stem (.png or .mp4) names the outputs"
        },
    ),
]


class ProgressPrinter:
    """Progress on standard error: a redrawn bar on a terminal, plain lines otherwise."""

    BAR = 24

    def __init__(self, stream: IO[str], tty: bool | None = None, quiet: bool = False) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.quiet = quiet
        self._phase = ""
        self._last = 0.0
        self._last_fraction = -1.0
        self._width = 0

    def __call__(self, p: Any) -> None:
        if self.quiet:
            return
        now = time.monotonic()
        new_phase = p.phase != self._phase
        done = p.total > 0 and p.step >= p.total
        fraction = p.step / p.total if p.total else 0.0
        if self.tty:
            if not (new_phase or done or now - self._last >= 0.1):
                return
            if new_phase and self._phase:
                self._newline()
            line = self._bar_line(p, fraction)
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            # A line at each phase change and end, else every 10 % or 15 s.
            if not (
                new_phase or done or fraction - self._last_fraction >= 0.1 or now - self._last >= 15
            ):
                return
            self.stream.write(self._plain_line(p, fraction) + "\n")
            self._last_fraction = fraction
        self.stream.flush()
        self._phase = p.phase
        self._last = now

    def close(self) -> None:
        if self.tty and self._width:
            self._newline()

    def _newline(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
        self._width = 0

    def _bar_line(self, p: Any, fraction: float) -> str:
        filled = round(self.BAR * min(1.0, fraction))
        bar = "#" * filled + "-" * (self.BAR - filled)
        eta = f"  ETA {_clock(p.eta_s)}" if p.eta_s is not None else ""
        msg = f"  {p.message}" if p.message else ""
        return f"{p.phase:<7} [{bar}] {p.step}/{p.total} {fraction:4.0%}{eta}{msg}"

    def _plain_line(self, p: Any, fraction: float) -> str:
        eta = f", ETA {_clock(p.eta_s)}" if p.eta_s is not None else ""
        msg = f" ({p.message})" if p.message else ""
        return f"spherediff: {p.phase} {p.step}/{p.total} {fraction:.0%}{eta}{msg}"


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _version_text() -> str:
    from .runner import package_versions

    v = package_versions()
    return (
        f"spherediff {v['spherediff']} (python {v['python']}, torch {v['torch']}, "
        f"diffusers {v['diffusers']}, transformers {v['transformers']})"
    )


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="spherediff",
        description="SphereDiff: seamless 360-degree panoramas from stock diffusion models.",
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="store_true", help="print the versions and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        help="generate an equirectangular panorama PNG (+ .json sidecar)",
        description=(
            "Generate a 360-degree equirectangular panorama (width x width/2) and write it as "
            "an 8-bit sRGB PNG with its parameters in a .json sidecar next to it."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    known = {f.name for f in fields(GenerationOptions)}
    covered = {name for name, _, _ in _OPTION_SPECS}
    assert known == covered, f"CLI options out of sync with GenerationOptions: {known ^ covered}"
    defaults = {f.name: f.default for f in fields(GenerationOptions) if f.default is not MISSING}
    for name, flags, kwargs in _OPTION_SPECS:
        extra: dict[str, Any] = {"dest": name}
        if isinstance(defaults.get(name), bool):
            extra["action"] = argparse.BooleanOptionalAction
        extra.setdefault("default", None)  # None = not given: the dataclass default applies
        gen.add_argument(*flags, **kwargs, **extra)
    gen.add_argument(
        "--plan-cache-dir",
        metavar="DIR",
        help="where sampling plans are cached (default: $SPHEREDIFF_CACHE_DIR/plans or the "
        "user cache folder)",
    )
    gen.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    gen.add_argument(
        "--verbose", "-v", action="store_true", help="library logs and tracebacks on errors"
    )

    hdr = sub.add_parser(
        "hdr",
        help="lift an LDR panorama (PNG/JPEG) to a linear HDR OpenEXR with its sun (+ .json)",
        description=(
            "Lift an 8- or 16-bit sRGB equirectangular panorama (2:1, from this project or "
            "any other tool) to scene-referred linear HDR: writes OUTPUT.exr (half float, "
            "sun included) and OUTPUT.json (the hdr block: exposure, method, sun)."
        ),
        epilog=EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    hdr.add_argument("input", metavar="INPUT", help="the LDR panorama (PNG or JPEG, RGB, 2:1)")
    hdr.add_argument(
        "--out", "--output", "-o", dest="output", help="the EXR to write (default: INPUT.exr)"
    )
    hdr.add_argument(
        "--exposure",
        type=float,
        default=1.0,
        help="scale of the linear values (default 1: unclipped pixels keep their display value)",
    )
    hdr.add_argument("--quiet", "-q", action="store_true", help="no summary line")

    wrk = sub.add_parser(
        "worker",
        help="run the engine worker (JSON-lines protocol, used by the Blender add-on)",
        description="Same as python -m spherediff_core.worker; see docs/worker-protocol.md.",
    )
    wrk.add_argument("--job", metavar="FILE", help="read the job from FILE (default: stdin)")
    wrk.add_argument("--hello", action="store_true", help="print the hello event and exit")
    return parser


class CliPreview:
    """``--preview-every``: each live preview copied onto one visible name,
    ``<stem>.preview.png`` beside the output (a viewer that reloads shows the world
    forming), replaced atomically each time and removed when the command ends."""

    def __init__(self, output: str) -> None:
        from .placing import output_path

        final = output_path(output)
        self.path = final.with_name(f"{final.stem}.preview.png")
        self.written = False

    def __call__(self, path: str, step: int, total: int) -> None:
        import shutil
        from pathlib import Path

        from .placing import remove, replace, temp_path

        tmp = temp_path(self.path.parent, self.path)
        try:
            shutil.copyfile(path, tmp)
            replace(tmp, self.path)
            self.written = True
        except OSError as exc:  # a preview must never cost the generation
            remove(Path(tmp))
            logging.getLogger(__name__).warning("could not update %s (%s)", self.path, exc)

    def close(self) -> None:
        if self.written:
            from .placing import remove

            remove(self.path)
            self.written = False


def _options_from_args(args: argparse.Namespace) -> GenerationOptions:
    given = {
        f.name: getattr(args, f.name)
        for f in fields(GenerationOptions)
        if getattr(args, f.name) is not None
    }
    return GenerationOptions(**given)


def _generate(args: argparse.Namespace) -> int:
    from .runner import (
        CancelToken,
        check_options,
        describe_error,
        generate,
        install_cancel_signals,
        prepare_environment,
    )

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if args.verbose else logging.WARNING,
        format="spherediff: %(levelname)s: %(message)s",
    )
    err = sys.stderr
    token = CancelToken()
    try:
        options = check_options(_options_from_args(args))
    except Exception as exc:  # noqa: BLE001 - every failure is reported by describe_error
        report = describe_error(exc)
        err.write(f"spherediff: error: {report.message}\n")
        return report.exit_code

    def on_signal(name: str) -> None:
        err.write(f"\nspherediff: {name}: cancelling (press Ctrl-C again to stop at once)\n")
        err.flush()

    install_cancel_signals(token, on_first=on_signal)
    prepare_environment(options.offline)
    progress = ProgressPrinter(err, quiet=args.quiet)
    preview = CliPreview(options.output) if options.preview_every > 0 else None
    dist = None
    who = "spherediff"
    try:
        from .distributed import init_from_env, launched

        if launched():  # one rank of a torchrun job: share the generation
            dist = init_from_env(options.device)
            if dist is not None and not dist.is_root:
                who = f"spherediff (rank {dist.rank})"
                progress = ProgressPrinter(err, quiet=True)
                logging.getLogger().setLevel(logging.ERROR)  # rank 0 gives the warnings
        # (generate() applies the thread setting once the request passed its checks:
        # torch is not imported before, so a refusal comes in well under 2 s.)
        outcome = generate(
            options,
            on_progress=progress,
            should_cancel=token,
            plan_cache_dir=args.plan_cache_dir,
            dist=dist,
            on_preview=preview,
        )
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        progress.close()
        report = describe_error(exc, token.reason)
        if dist is not None and not dist.is_root and report.code == "cancelled":
            return EXIT_OK  # rank 0 reports the cancel; torchrun must not tear it down
        if args.verbose or report.code == "internal":
            err.write(report.traceback)
        err.write(f"{who}: {'' if report.code == 'cancelled' else 'error: '}")
        err.write(f"{report.message}\n")
        return report.exit_code
    finally:
        if preview is not None:
            preview.close()
        if dist is not None:
            dist.close()
    progress.close()
    if outcome is None:  # a rank other than 0: rank 0 wrote the files and says so
        return EXIT_OK
    if outcome.video:
        mp4 = f", preview {outcome.mp4.name}" if outcome.mp4 is not None else ""
        print(
            f"wrote {outcome.frames} frames ({outcome.width}x{outcome.height}, {outcome.fps} fps) "
            f"from {outcome.image}{mp4} in {outcome.seconds:.1f} s, seed {outcome.seed}; "
            f"parameters in {outcome.sidecar.name}",
            flush=True,
        )
        return EXIT_OK
    hdr = ""
    if outcome.exr is not None:
        hdr = f", HDR {outcome.exr.name} ({_sun_text(outcome.sun)})"
    print(
        f"wrote {outcome.image} ({outcome.width}x{outcome.height}){hdr} in "
        f"{outcome.seconds:.1f} s, seed {outcome.seed}; parameters in {outcome.sidecar.name}",
        flush=True,
    )
    return EXIT_OK


def _sun_text(sun: dict[str, Any] | None) -> str:
    if not sun or not sun.get("visible"):
        return "no sun"
    return (
        f"sun at azimuth {sun['azimuth_deg']:.1f} deg, elevation {sun['elevation_deg']:.1f} deg, "
        f"{sun['strength']:.3g} W/m^2"
    )


def _hdr(args: argparse.Namespace) -> int:
    """``spherediff hdr``: everything is checked before anything is written."""
    from pathlib import Path

    from .errors import SphereDiffError
    from .exr import read_ldr_panorama, write_hdr_outputs
    from .hdr import lift_to_hdr

    out = Path(args.output) if args.output else Path(args.input).with_suffix(".exr")
    try:
        if out.suffix.lower() != ".exr":
            raise BadInputError(f"--out {str(out)!r} must end in .exr")
        if Path(args.input).expanduser().absolute() == out.expanduser().absolute():
            raise BadInputError(f"--out {str(out)!r} would overwrite the input")
        result = lift_to_hdr(read_ldr_panorama(args.input), exposure=args.exposure)
        paths = write_hdr_outputs(result, out, source=args.input)
    except SphereDiffError as exc:
        where = "" if args.input in str(exc) else f"input {args.input!r}: "
        sys.stderr.write(f"spherediff: error: {where}{exc}\n")
        return exc.exit_code
    except OSError as exc:
        from .runner import describe_os_error

        sys.stderr.write(f"spherediff: error: {describe_os_error(exc, 'cannot write', str(out))}\n")
        return EXIT_OUTPUT
    if not args.quiet:
        what = _sun_text(result.sun.to_dict())
        print(f"wrote {paths.exr} ({what}); {paths.sidecar.name}", flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """``spherediff``'s entry point; returns the exit code.

    Called without ``argv`` (as the program), it also prepares a quick interpreter exit.
    """
    code = _main(list(sys.argv[1:] if argv is None else argv))
    if argv is None:
        from .runner import prepare_exit

        prepare_exit()
    return code


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "worker":
        from .worker import main as worker_main

        return worker_main(argv[1:], prog="spherediff worker")
    parser = build_parser()
    args = parser.parse_args(argv)  # bad syntax: argparse exits with 2 (bad input)
    if args.version:
        print(_version_text())
        return EXIT_OK
    if args.command == "generate":
        return _generate(args)
    if args.command == "hdr":
        return _hdr(args)
    parser.print_help(sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
