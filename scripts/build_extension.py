"""Build the installable Blender extension: dist/spherediff-<version>.zip.

    python scripts/build_extension.py [--output-dir DIR] [--blender-ext PATH | --blender EXE]

1. Builds the engine's wheel from pyproject.toml into wheels/ (``pip wheel --no-deps``; the
   add-on and its worker share this one ``spherediff_core``) and checks that its file name
   is the one blender_manifest.toml lists under ``wheels``.
2. Runs Blender's own extension tool: ``build`` (the manifest's ``paths_exclude_pattern``
   keeps core/, tests/, docs/, ... out of the package), then ``validate`` on the .zip.

Blender's tool is ``blender_ext.py`` (standard library only, Python 3.11+), found at
``--blender-ext``, ``$BLENDER_EXT``, or inside a ``.venv-bpy*`` bpy installation of this
repository; ``--blender EXE`` runs ``EXE --command extension build/validate`` instead.

Install the result with Blender's Edit > Preferences > Get Extensions > Install from Disk,
or ``blender --command extension install-file -r user_default dist/spherediff-0.1.0.zip``.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "blender_manifest.toml"
WHEELS = ROOT / "wheels"


def find_blender_ext() -> Path | None:
    pattern = "lib/python*/site-packages/bpy/*/scripts/addons_core/bl_pkg/cli/blender_ext.py"
    for venv in sorted(ROOT.glob(".venv-bpy*"), reverse=True):  # newest Blender first
        found = sorted(venv.glob(pattern))
        if found:
            return found[-1]
    return None


def run(cmd: list[str]) -> None:
    print("+", subprocess.list2cmdline(cmd), flush=True)
    code = subprocess.run(cmd).returncode
    if code != 0:
        sys.exit(f"failed (exit code {code}): {subprocess.list2cmdline(cmd)}")


def build_wheel(python: str) -> Path:
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    listed = [Path(w).name for w in manifest.get("wheels", [])]
    WHEELS.mkdir(exist_ok=True)
    for old in WHEELS.glob("spherediff-*.whl"):
        old.unlink()
    cmd = [python, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check"]
    if importlib.util.find_spec("setuptools") is not None and python == sys.executable:
        cmd.append("--no-build-isolation")  # offline and faster: this Python has setuptools
    run([*cmd, "-w", str(WHEELS), str(ROOT)])
    built = sorted(WHEELS.glob("spherediff-*.whl"))
    if len(built) != 1:
        sys.exit(f"expected one spherediff wheel in {WHEELS}, found {[p.name for p in built]}")
    if built[0].name not in listed:
        sys.exit(
            f"built {built[0].name}, but blender_manifest.toml lists wheels {listed}: update "
            "the manifest's wheels (and version) to match pyproject.toml"
        )
    return built[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=str(ROOT / "dist"), help="where the .zip goes")
    parser.add_argument("--blender-ext", help="path to Blender's blender_ext.py")
    parser.add_argument("--blender", help="a Blender executable (uses its --command extension)")
    parser.add_argument(
        "--python", default=sys.executable, help="Python that builds the wheel (needs pip)"
    )
    args = parser.parse_args(argv)

    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    wheel = build_wheel(args.python)
    print(f"engine wheel: {wheel}")

    out_dir = Path(args.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    package = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    if package.exists():
        package.unlink()

    if args.blender:
        tool = [args.blender, "--factory-startup", "--command", "extension"]
    else:
        ext = Path(args.blender_ext) if args.blender_ext else None
        if ext is None:
            import os

            env_path = os.environ.get("BLENDER_EXT")
            ext = Path(env_path) if env_path else find_blender_ext()
        if ext is None or not ext.is_file():
            sys.exit(
                "Blender's blender_ext.py was not found: pass --blender-ext PATH or "
                "--blender EXE (or set BLENDER_EXT)"
            )
        tool = [sys.executable, str(ext)]

    run([*tool, "build", "--source-dir", str(ROOT), "--output-filepath", str(package)])
    run([*tool, "validate", str(package)])
    if not package.is_file():
        sys.exit(f"Blender's tool did not write {package}")
    print(f"extension: {package}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
