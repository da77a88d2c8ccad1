"""Build the installable Blender extension: dist/spherediff-<version>.zip.

    python3.11 scripts/build_extension.py [--output-dir DIR] [--blender-ext PATH | --blender EXE]

Needs only Python 3.11+ with pip, from a fresh clone:

1. Builds the engine's wheel from pyproject.toml into wheels/ (``pip wheel --no-deps``; the
   add-on and its worker share this one ``spherediff_core``) and checks that its file name
   is the one blender_manifest.toml lists under ``wheels``. When the building Python has
   the build requirements of pyproject.toml (setuptools >= 68 that can make wheels) it
   builds with them, offline; otherwise pip builds in an isolated environment and fetches
   them from the package index.
2. Runs Blender's own extension tool: ``build`` (the manifest's ``paths_exclude_pattern``
   is an allow-list: ``__init__.py``, ``spherediff_blender/*.py``, the manifest and the
   listed wheels), then ``validate`` on the .zip, and checks that the .zip holds exactly
   what the allow-list lets in.

Blender's tool is ``blender_ext.py`` (standard library only, Python 3.11+), found at, in
this order: ``--blender-ext``, ``$BLENDER_EXT``, ``--blender EXE`` / ``$BLENDER`` (runs
``EXE --command extension``), a ``.venv-bpy*`` of this repository (as make_world.sh and
test.sh make them), a ``bpy`` module of the running Python, a ``blender`` on the PATH.
With none of them it installs Blender 5.0 as a Python module (``bpy``, about 1 GB, once)
into ``.venv-bpy50`` with Python 3.11 (``--no-blender-setup``: stop and say so instead).

Install the result with Blender's Edit > Preferences > Get Extensions > Install from Disk,
or ``blender --command extension install-file -r user_default dist/spherediff-0.1.0.zip``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "blender_manifest.toml"
PYPROJECT = ROOT / "pyproject.toml"
WHEELS = ROOT / "wheels"
BPY_VENV = ".venv-bpy50"
BPY_REQUIREMENT = "bpy==5.0.1"  # as scripts/make_world.sh installs it
TOOL_IN_BPY = "scripts/addons_core/bl_pkg/cli/blender_ext.py"  # under bpy/<version>/


def run(cmd: list[str], **kwargs) -> None:
    print("+", subprocess.list2cmdline(cmd), flush=True)
    code = subprocess.run(cmd, **kwargs).returncode
    if code != 0:
        sys.exit(f"failed (exit code {code}): {subprocess.list2cmdline(cmd)}")


# --------------------------------------------------------------------------- the wheel
def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


# Run in the building Python: the installed versions of the build requirements.
_PROBE = """
import importlib.metadata as m, json, sys
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = m.version(name)
    except m.PackageNotFoundError:
        out[name] = None
print(json.dumps(out))
"""


def build_requirements_met(python: str) -> tuple[bool, str]:
    """Whether ``python`` has pyproject.toml's build requirements, and why not.

    Only plain ``name>=version`` requirements are understood; anything else counts as
    not met (pip then builds in an isolated environment, which always works online).
    """
    import json

    requires = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["build-system"]["requires"]
    wanted = {}
    for req in requires:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(?:>=\s*([0-9.]+))?\s*", req)
        if match is None:
            return False, f"the build requirement {req!r} is not a plain name>=version"
        wanted[match.group(1).lower()] = match.group(2) or "0"
    names = [*wanted, "wheel"]
    proc = subprocess.run([python, "-c", _PROBE, *names], capture_output=True, text=True)
    if proc.returncode != 0:
        return False, f"{python} could not be asked for its packages"
    have = json.loads(proc.stdout)
    for name, minimum in wanted.items():
        if have.get(name) is None:
            return False, f"{name} is not installed in {python}"
        if _version_tuple(have[name]) < _version_tuple(minimum):
            return False, f"{python} has {name} {have[name]}, pyproject.toml asks for >= {minimum}"
    # setuptools makes wheels by itself only from 70.1 on; before, bdist_wheel is the
    # `wheel` package's ("invalid command 'bdist_wheel'" without it).
    setuptools = have.get("setuptools")
    if setuptools and _version_tuple(setuptools) < (70, 1) and have.get("wheel") is None:
        return False, f"{python} has setuptools {setuptools} without the wheel package"
    return True, ""


def build_wheel(python: str) -> Path:
    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    listed = [Path(w).name for w in manifest.get("wheels", [])]
    WHEELS.mkdir(exist_ok=True)
    for old in WHEELS.glob("spherediff-*.whl"):
        old.unlink()
    cmd = [python, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check"]
    met, why = build_requirements_met(python)
    if met:
        cmd.append("--no-build-isolation")  # offline and faster: this Python can build it
    else:
        print(f"building the wheel in an isolated environment ({why})", flush=True)
    cmd += ["-w", str(WHEELS), str(ROOT)]
    print("+", subprocess.list2cmdline(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        hint = (
            ""
            if met
            else (
                "\nThe isolated build fetches the build requirements "
                f"({', '.join(tomllib.loads(PYPROJECT.read_text())['build-system']['requires'])})"
                " from the package index. Offline, install them into the building Python "
                "first: python -m pip install 'setuptools>=70.1'"
            )
        )
        sys.exit(f"building the engine's wheel failed: {subprocess.list2cmdline(cmd)}{hint}")
    built = sorted(WHEELS.glob("spherediff-*.whl"))
    if len(built) != 1:
        sys.exit(f"expected one spherediff wheel in {WHEELS}, found {[p.name for p in built]}")
    if built[0].name not in listed:
        sys.exit(
            f"built {built[0].name}, but blender_manifest.toml lists wheels {listed}: update "
            "the manifest's wheels (and version) to match pyproject.toml"
        )
    return built[0]


# --------------------------------------------------------------------------- Blender's tool
def _tools_in_venv(venv: Path) -> list[Path]:
    found = []
    for site in ("lib/python*/site-packages", "Lib/site-packages"):  # POSIX, Windows
        found += venv.glob(f"{site}/bpy/*/{TOOL_IN_BPY}")
    return sorted(found)


def find_blender_ext() -> Path | None:
    """blender_ext.py of a .venv-bpy* here (newest Blender first), or of this Python's bpy."""
    for venv in sorted(ROOT.glob(".venv-bpy*"), reverse=True):
        found = _tools_in_venv(venv)
        if found:
            return found[-1]
    spec = importlib.util.find_spec("bpy")  # finds without importing (no Blender start)
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            found = sorted(Path(location).glob(f"*/{TOOL_IN_BPY}"))
            if found:
                return found[-1]
    return None


def _python311() -> list[str] | None:
    """A Python 3.11 (what Blender 5.0's bpy module needs)."""
    if sys.version_info[:2] == (3, 11):
        return [sys.executable]
    found = shutil.which("python3.11")
    if found:
        return [found]
    if os.name == "nt" and shutil.which("py"):
        return ["py", "-3.11"]
    return None


def setup_blender_ext() -> Path:
    """Install Blender 5.0 as a Python module into .venv-bpy50 and return its tool."""
    venv = ROOT / BPY_VENV
    python = _python311()
    if python is None:
        sys.exit(
            "Blender's extension tool (blender_ext.py) was not found, and installing Blender "
            f"as a Python module ({BPY_REQUIREMENT}) needs Python 3.11: run this script with "
            "python3.11, or pass --blender EXE (a Blender 4.2+), --blender-ext PATH or set "
            "BLENDER_EXT"
        )
    print(
        f"== Blender's extension tool not found: installing Blender 5.0 as a Python module "
        f"({BPY_REQUIREMENT}, about 1 GB, once) into {venv}",
        flush=True,
    )
    venv_python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not venv_python.exists():
        run([*python, "-m", "venv", str(venv)])
    pip = [str(venv_python), "-m", "pip", "install", "--disable-pip-version-check"]
    run([*pip, "-q", BPY_REQUIREMENT])
    found = _tools_in_venv(venv)
    if not found:
        sys.exit(f"{BPY_REQUIREMENT} installed into {venv}, but it has no {TOOL_IN_BPY}")
    return found[-1]


def blender_tool(args) -> list[str]:
    """The command that runs Blender's extension tool (``build``/``validate`` follow)."""
    if args.blender_ext:
        ext = Path(args.blender_ext)
    elif os.environ.get("BLENDER_EXT"):
        ext = Path(os.environ["BLENDER_EXT"])
    else:
        blender = args.blender or os.environ.get("BLENDER")
        if blender:
            return [blender, "--factory-startup", "--command", "extension"]
        ext = find_blender_ext()
        if ext is None and shutil.which("blender"):
            return [shutil.which("blender"), "--factory-startup", "--command", "extension"]
        if ext is None:
            if args.no_blender_setup:
                sys.exit(
                    "Blender's blender_ext.py was not found: pass --blender-ext PATH or "
                    "--blender EXE (or set BLENDER_EXT), or drop --no-blender-setup to "
                    f"install {BPY_REQUIREMENT} into {BPY_VENV}"
                )
            ext = setup_blender_ext()
    if not ext.is_file():
        sys.exit(f"Blender's extension tool {str(ext)!r} does not exist")
    return [sys.executable, str(ext)]


# --------------------------------------------------------------------------- the package
def package_allows(name: str, wheels: set[str]) -> bool:
    """Whether the allow-list of blender_manifest.toml's [build] lets ``name`` in."""
    if name in wheels or name in ("blender_manifest.toml", "__init__.py", "LICENSE"):
        return True
    folder, _, rest = name.partition("/")
    return (
        folder == "spherediff_blender"
        and "/" not in rest
        and rest.endswith(".py")
        and not rest.startswith(".")
    )


def package_problems(package: Path, manifest: dict) -> list[str]:
    """Files in the .zip that the allow-list does not let in, and required ones missing."""
    wheels = {w.removeprefix("./") for w in manifest.get("wheels", [])}
    with zipfile.ZipFile(package) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
    problems = [
        f"{n} is not in the allow-list" for n in sorted(names) if not package_allows(n, wheels)
    ]
    required = {"blender_manifest.toml", "__init__.py", *wheels}
    problems += [f"{n} is missing" for n in sorted(required - set(names))]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default=str(ROOT / "dist"), help="where the .zip goes")
    parser.add_argument("--blender-ext", help="path to Blender's blender_ext.py")
    parser.add_argument("--blender", help="a Blender executable (uses its --command extension)")
    parser.add_argument(
        "--python", default=sys.executable, help="Python that builds the wheel (needs pip)"
    )
    parser.add_argument(
        "--no-blender-setup",
        action="store_true",
        help=f"without Blender's tool, stop instead of installing {BPY_REQUIREMENT}",
    )
    args = parser.parse_args(argv)

    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    tool = blender_tool(args)  # first: a missing tool is said before the wheel is built
    wheel = build_wheel(args.python)
    print(f"engine wheel: {wheel}")

    out_dir = Path(args.output_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    package = out_dir / f"{manifest['id']}-{manifest['version']}.zip"
    if package.exists():
        package.unlink()

    run([*tool, "build", "--source-dir", str(ROOT), "--output-filepath", str(package)])
    run([*tool, "validate", str(package)])
    if not package.is_file():
        sys.exit(f"Blender's tool did not write {package}")
    problems = package_problems(package, manifest)
    if problems:
        package.unlink()
        sys.exit(
            f"the package held files outside the allow-list of {MANIFEST.name} (removed "
            f"{package.name}): " + "; ".join(problems)
        )
    print(f"extension: {package}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
