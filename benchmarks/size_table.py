"""The per-family size table of the README and docs/blender.md, computed by the engine.

For every family at its default size (no size or width given): the native view size the
adapter declares, the default ERP size, the decoded side of one view, the sphere points,
the views, and how many times the denoiser sees a view per step and per panorama (views,
times 2 under classifier-free guidance, times the default steps), plus the batched calls
per step at the default view batch size. No model is loaded: the numbers come from the
adapters' class defaults (their released models' VAE factors) and ``plan_config_for``.

    python benchmarks/size_table.py [--markdown] [--all-presets]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "core", ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


def rows(preset: str | None = None) -> list[dict]:
    from spherediff_core.adapters import ADAPTERS

    return [_row(a, model, preset) for a in ADAPTERS for model in a.released_models()]


def _row(adapter, model, preset: str | None) -> dict:
    """One released model's row. A model whose VAE or training size differs from its
    family's class defaults (Wan 2.2 TI2V-5B) is read through a subclass with its values,
    as a loaded adapter replaces them."""
    from spherediff_core.options import GenerationOptions
    from spherediff_core.pipeline import plan_config_for, resolve_size, size_advice

    overrides = {}
    if model.vae_scale_factor is not None:
        overrides["typical_vae_scale_factor"] = model.vae_scale_factor
    if model.native_view_px is not None:
        overrides["native_view_px"] = model.native_view_px
    if overrides:
        adapter = type(adapter.__name__, (adapter,), overrides)
    options = resolve_size(GenerationOptions(prompt="x", size=preset), adapter)
    config = plan_config_for(options, adapter.typical_vae_scale_factor, adapter.grid_multiple)
    views = config.layout().n_views
    per_step = views * (2 if model.cfg else 1)
    advice = size_advice(options, adapter)
    return {
        "family": model.name,
        "native view px": adapter.native_view_px,
        "ERP": f"{options.size or ''} {options.resolved_width} x {options.height}".strip(),
        "view px": advice.view_px,
        "grid": f"{config.grid_size[0]} x {config.grid_size[1]}",
        "sphere points": config.n_points,
        "views": views,
        "CFG": "yes" if model.cfg else "no",
        "view evals / step": per_step,
        "calls / step (batch 8)": math.ceil(views / options.view_batch_size),
        "steps": model.steps,
        "view evals / panorama": per_step * model.steps,
        "note": "far below native"
        if advice.note and "below" in advice.note
        else ("over 2x native" if advice.note else ""),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="a size preset instead of the defaults")
    args = parser.parse_args()
    table = rows(args.preset)
    keys = list(table[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "|".join("---" for _ in keys) + "|")
    for row in table:
        print(
            "| "
            + " | ".join(f"{row[k]:,}" if isinstance(row[k], int) else str(row[k]) for k in keys)
            + " |"
        )


if __name__ == "__main__":
    main()
