"""Where the engine keeps its caches (standard library only, safe to import anywhere).

``$SPHEREDIFF_CACHE_DIR`` when set, else the platform's user cache folder: ``%LOCALAPPDATA%\\
spherediff\\cache`` on Windows, ``~/Library/Caches/spherediff`` on macOS and
``$XDG_CACHE_HOME/spherediff`` (``~/.cache/spherediff``) elsewhere.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    env = os.environ.get("SPHEREDIFF_CACHE_DIR")
    if env:
        return Path(env)
    if os.name == "nt":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "spherediff" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "spherediff"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spherediff"
