"""Checks of the model and the device that need no torch and no diffusers.

Importing torch takes seconds and diffusers tens of seconds on a small machine; a request
that cannot work must be refused before that. This module looks only at files (the model
folder's JSON files, its file listing and the safetensors headers), at the Hugging Face
cache, at the Hub with a single request, and at torch's version file:

- :func:`read_model_index` reads model_index.json of a folder or a Hub repo;
- :func:`check_model_folder` says precisely what is wrong with a local folder: a missing
  component or file, pickle-only or truncated weights, custom code;
- :func:`probe_hub` asks the Hub once, without retries, whether it can be reached;
- :func:`check_device` refuses a GPU this computer does not have, importing torch only
  when torch's build could have one.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadInputError, BrokenModelError, ModelNotFoundError, UnsupportedModelError
from .families import supported_families_text

__all__ = [
    "LOADABLE_LIBRARIES",
    "HubState",
    "check_component_classes",
    "check_device",
    "check_model_folder",
    "hub_cache_dir",
    "probe_hub",
    "read_model_index",
    "torch_build_has_gpu",
]

logger = logging.getLogger(__name__)

LOADABLE_LIBRARIES = ("diffusers", "transformers")
"""The libraries a component may come from; any other name is code from the folder."""

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "spiece.model",
    "tokenizer.model",
)
_MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit for the JSON header


# --------------------------------------------------------------------------------------
# model_index.json
# --------------------------------------------------------------------------------------


def hub_cache_dir(cache_dir: str | None) -> str:
    """The Hugging Face cache folder models are looked up in."""
    if cache_dir:
        return cache_dir
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _load_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BrokenModelError(f"{what}: {path} is missing") from exc
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BrokenModelError(
            f"{what}: {path} cannot be read as JSON ({exc}); the file is damaged, so copy or "
            "download the model again"
        ) from exc


def read_model_index(
    model: str, revision: str | None, offline: bool, cache_dir: str | None
) -> dict[str, Any]:
    """model_index.json of a local folder or a Hub repo (from the cache when offline)."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        index_path = folder / "model_index.json"
        if not index_path.is_file():
            raise UnsupportedModelError(
                f"{model} has no model_index.json, so it is not a diffusers pipeline folder; "
                f"SphereDiff drives {supported_families_text()}"
            )
        index = _load_json(index_path, model)
    else:
        index = _read_hub_index(model, revision, offline, cache_dir)
    if not isinstance(index, dict):
        raise BrokenModelError(
            f"{model}: model_index.json holds {type(index).__name__}, not a JSON object; "
            "point at a diffusers pipeline folder (the one saved with save_pretrained)"
        )
    return index


def _not_cached(model: str, cache_dir: str | None, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {model!r} is not in {hub_cache_dir(cache_dir)} and {why}. Fetch it on a "
        f"machine with internet access (`hf download {model}`) and copy the cache.",
        local_hint=True,
    )


def _read_hub_index(model: str, revision: str | None, offline: bool, cache_dir: str | None) -> Any:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = hf_hub_download(
            model,
            "model_index.json",
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as exc:
        why = "offline mode is on" if offline else "the Hugging Face Hub cannot be reached"
        raise _not_cached(model, cache_dir, why) from exc
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise ModelNotFoundError(
            f"model {model!r} (revision {revision or 'main'}) was not found on the Hub: "
            "check the id.",
            local_hint=True,
        ) from exc
    return _load_json(Path(path), model)


# --------------------------------------------------------------------------------------
# The Hub: one request, no retries
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HubState:
    """What :func:`probe_hub` found: ``offline`` is True when the run must not use the Hub
    (it is off, or unreachable with the model in the cache)."""

    offline: bool
    reason: str = ""


def probe_hub(model: str, revision: str | None, cache_dir: str | None) -> HubState:
    """Ask the Hub once (no retries) for the model's model_index.json.

    huggingface_hub retries a failed connection five times with back-off (about 30 s)
    before it falls back to the cache; an unreachable Hub is known after the first
    refusal. Unreachable with the model cached: the run goes on offline. Unreachable
    without it: ModelNotFoundError at once, saying to fetch it or to work offline.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    url = hf_hub_url(model, "model_index.json", revision=revision)
    try:
        get_hf_file_metadata(url, timeout=10, retry_on_errors=False)
        return HubState(offline=False)
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        if isinstance(exc, GatedRepoError):
            return HubState(offline=False)  # the download reports the access problem
        raise ModelNotFoundError(
            f"model {model!r} (revision {revision or 'main'}) was not found on the Hub: "
            "check the id.",
            local_hint=True,
        ) from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", 0) or 0
        if status < 500 and status != 429:
            return HubState(offline=False)  # reachable; the download reports the rest
        failure: Exception = exc
    except Exception as exc:  # noqa: BLE001 - any transport failure means "unreachable"
        failure = exc
    reason = f"{type(failure).__name__}: {failure}"
    cached = try_to_load_from_cache(
        model, "model_index.json", cache_dir=cache_dir, revision=revision
    )
    if isinstance(cached, str):
        logger.warning(
            "the Hugging Face Hub cannot be reached (%s); using the cached copy of %s "
            "(--offline skips this check)",
            reason,
            model,
        )
        return HubState(offline=True, reason=reason)
    raise ModelNotFoundError(
        f"the Hugging Face Hub cannot be reached ({reason}) and model {model!r} is not in "
        f"{hub_cache_dir(cache_dir)}. Fetch it on a machine with internet access "
        f"(`hf download {model}`) and copy the cache; on a computer without internet "
        "access, work offline (--offline, or HF_HUB_OFFLINE=1) so the Hub is never tried.",
        local_hint=True,
    ) from failure


# --------------------------------------------------------------------------------------
# A local model folder
# --------------------------------------------------------------------------------------


def _components(index: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(name, library, class) of every component entry that is set."""
    out = []
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list | tuple) or len(value) != 2:
            continue
        library, class_name = value
        if library is None and class_name is None:
            continue  # an optional component left out (e.g. the safety checker)
        out.append((name, library, class_name))
    return out


def _custom_code_error(model: str, what: str, where: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{model}: {what} ({where}); SphereDiff never runs code from a model folder. Use a "
        "folder whose components are all diffusers or transformers classes (a standard "
        "release of a supported model)"
    )


def _diffusers_pipeline_module(library: str) -> bool | None:
    """Whether ``library`` names a sub-package of diffusers.pipelines (model_index.json says
    "stable_diffusion" for SD's safety checker), found on disk without importing diffusers;
    None when diffusers cannot be located."""
    if not library.isidentifier():
        return False
    try:
        spec = importlib.util.find_spec("diffusers")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        pipelines = Path(location) / "pipelines"
        if (pipelines / library / "__init__.py").is_file():
            return True
        if (pipelines / f"{library}.py").is_file():
            return True
    return False


def check_model_folder(
    folder: str | os.PathLike[str], index: dict[str, Any], skip: tuple[str, ...] = ()
) -> None:
    """Say what is wrong with a local diffusers pipeline folder, before anything loads.

    Every component named in model_index.json must come from diffusers or transformers
    (no code from the folder), have its folder and its config file, and a model's weights
    must be safetensors (pickle files can run code) that are complete. Raises
    UnsupportedModelError (custom code, pickle-only weights) or BrokenModelError (a missing,
    damaged or truncated file), naming the component, the file and what to do. Components
    in ``skip`` are not loaded (the family passes None for them) and not checked.
    """
    root = Path(folder).expanduser()
    model = str(folder)
    if not isinstance(index.get("_class_name"), str):
        raise _custom_code_error(
            model,
            f"model_index.json's _class_name is {index.get('_class_name')!r}",
            "a custom pipeline",
        )
    for name, library, class_name in _components(index):
        if name in skip:
            continue
        if not isinstance(library, str) or not isinstance(class_name, str):
            raise BrokenModelError(
                f"{model}: model_index.json's entry {name!r} is {[library, class_name]!r}; "
                "expected [library, class name]: the file is damaged, copy the model again"
            )
        in_folder = _has_module(root, name, library)
        if library not in LOADABLE_LIBRARIES and (
            in_folder or _diffusers_pipeline_module(library) is False
        ):
            where = f"{library}.py in the folder" if in_folder else ""
            raise _custom_code_error(
                model,
                f"component {name!r} is {library}.{class_name}, not a diffusers or "
                "transformers class",
                where or f"library {library!r}",
            )
        _check_component(root, model, name, class_name)


def _has_module(root: Path, component: str, library: str) -> bool:
    return (root / f"{library}.py").is_file() or (root / component / f"{library}.py").is_file()


def _check_component(root: Path, model: str, name: str, class_name: str) -> None:
    folder = root / name
    if not folder.is_dir():
        raise BrokenModelError(
            f"{model}: component {name!r} ({class_name}) is listed in model_index.json but "
            f"its folder {name}/ is missing; copy the whole model folder again"
        )
    if "Scheduler" in class_name:
        _load_json(folder / "scheduler_config.json", f"{model}: component {name!r}")
        return
    if "Tokenizer" in class_name:
        if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
            raise BrokenModelError(
                f"{model}: component {name!r} ({class_name}) has no tokenizer files in "
                f"{name}/ (expected one of {', '.join(_TOKENIZER_FILES)}); copy the model again"
            )
        return
    if "Processor" in class_name or "FeatureExtractor" in class_name:
        _load_json(folder / "preprocessor_config.json", f"{model}: component {name!r}")
        return
    if class_name.endswith("Guidance"):  # a diffusers guider (diffusers.guiders): no weights
        _load_json(folder / "guider_config.json", f"{model}: component {name!r}")
        return
    config = _load_json(folder / "config.json", f"{model}: component {name!r}")
    if isinstance(config, dict) and "auto_map" in config:
        raise _custom_code_error(
            model, f"component {name!r} asks for custom code", f"auto_map in {name}/config.json"
        )
    _check_weights(folder, model, name)


def _check_weights(folder: Path, model: str, name: str) -> None:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    shards: list[Path] = []
    for index_file in (p for p in files if p.name.endswith(".safetensors.index.json")):
        data = _load_json(index_file, f"{model}: component {name!r}")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise BrokenModelError(
                f"{model}: {name}/{index_file.name} has no weight_map; copy the model again"
            )
        for shard in sorted(set(map(str, weight_map.values()))):
            if not (folder / shard).is_file():
                raise BrokenModelError(
                    f"{model}: component {name!r} is missing the weights file {name}/{shard} "
                    f"(listed in {index_file.name}); copy or download the model again"
                )
            shards.append(folder / shard)
    weights = shards or [p for p in files if p.suffix == ".safetensors"]
    if not weights:
        pickles = [p.name for p in files if p.suffix in _PICKLE_SUFFIXES]
        if pickles:
            raise UnsupportedModelError(
                f"{model}: component {name!r} has only pickle weights ({name}/{pickles[0]}); "
                "SphereDiff loads safetensors only, because pickle files can run code. Use "
                "a safetensors release of the model, or convert the folder to safetensors "
                "with a trusted tool (save_pretrained(..., safe_serialization=True))"
            )
        raise BrokenModelError(
            f"{model}: component {name!r} has no weights file in {name}/ (expected "
            "*.safetensors); copy or download the model again"
        )
    for path in dict.fromkeys(weights):
        _check_safetensors(path, model, name)


def _check_safetensors(path: Path, model: str, name: str) -> None:
    """The header must parse and the file must hold every byte the header describes."""
    where = f"{name}/{path.name}"
    damaged = f"{model}: the weights file {where} of component {name!r}"
    fix = "copy or download the model again"
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise BrokenModelError(f"{damaged} is empty or truncated ({size} bytes); {fix}")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER_BYTES or 8 + n > size:
                raise BrokenModelError(f"{damaged} is damaged (bad header); {fix}")
            header = json.loads(fh.read(n).decode("utf-8"))
    except OSError as exc:
        raise BrokenModelError(f"{damaged} cannot be read ({exc}); check its permissions") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BrokenModelError(f"{damaged} is damaged (its header is not JSON); {fix}") from exc
    if not isinstance(header, dict):
        raise BrokenModelError(f"{damaged} is damaged (bad header); {fix}")
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not isinstance(offsets, list) or len(offsets) != 2:
            raise BrokenModelError(f"{damaged} is damaged (tensor {key!r}); {fix}")
        end = max(end, int(offsets[1]))
    expected = 8 + n + end
    if size < expected:
        raise BrokenModelError(
            f"{damaged} is truncated ({size} of {expected} bytes); an interrupted copy or "
            f"download? {fix[0].upper()}{fix[1:]}"
        )


# Components transformers builds only with an optional module installed (its @requires
# backends): class name -> the module's import name. FLUX.2 [dev]'s tokenizer is one.
_COMPONENT_MODULES = {"PixtralProcessor": "torchvision"}


def check_component_modules(index: dict[str, Any], model: str) -> None:
    """Refuse, before anything loads, a component this Python cannot build for want of an
    optional module (transformers would fail deep in the load with a bare ImportError)."""
    import importlib.util

    for name, _library, class_name in _components(index):
        module = _COMPONENT_MODULES.get(class_name) if isinstance(class_name, str) else None
        if module is not None and importlib.util.find_spec(module) is None:
            raise UnsupportedModelError(
                f"{model}: component {name!r} is a {class_name}, which needs {module}, and "
                f"{module} is not installed in the engine's Python; install it "
                f"(`{sys.executable} -m pip install {module}`, the build that matches the "
                "installed torch) and try again"
            )


def check_component_classes(index: dict[str, Any], model: str, libraries: dict[str, Any]) -> None:
    """Every component's class must exist in its (imported) library; otherwise diffusers
    would look for code in the folder (and ask for trust_remote_code, which SphereDiff never
    passes). ``libraries`` maps "diffusers"/"transformers" to the imported modules."""
    for name, library, class_name in _components(index):
        module = libraries.get(library)
        if module is None or not isinstance(class_name, str):
            continue  # check_model_folder refused these for a folder; a Hub repo: diffusers
        try:
            found = getattr(module, class_name, None) is not None
        except Exception:  # noqa: BLE001 - a lazy import that fails means "not usable"
            found = False
        if not found:
            raise _custom_code_error(
                model,
                f"component {name!r} is {library}.{class_name}, which this {library} "
                f"{_version_of(module)} does not have",
                "a custom class, or a newer library",
            )


def _version_of(module: Any) -> str:
    return str(getattr(module, "__version__", "")).strip() or "version"


# --------------------------------------------------------------------------------------
# The device
# --------------------------------------------------------------------------------------


def _torch_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "not installed"


def torch_build_has_gpu() -> bool | None:
    """Whether the installed torch was built with CUDA or ROCm, read from torch/version.py
    without importing torch; None when that cannot be told (then torch must be asked)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        version_file = Path(location) / "version.py"
        try:
            text = version_file.read_text(encoding="utf-8")
        except OSError:
            continue
        found = {}
        for key in ("cuda", "hip"):
            match = re.search(rf"^{key}\s*(?::[^=\n]*)?=\s*(.+?)\s*$", text, re.MULTILINE)
            if match is None:
                return None
            found[key] = match.group(1) != "None"
        return found["cuda"] or found["hip"]
    return None


def check_device(device: str) -> None:
    """Refuse a device this computer cannot use (BadInputError), cheaply.

    'auto' and 'cpu' always work. 'mps' needs macOS; CUDA needs a CUDA (or ROCm) build of
    torch, read from torch's version file; only then is torch imported (never diffusers)
    to ask whether a GPU is present.
    """
    if device in ("auto", "cpu"):
        return
    if device == "mps":
        if sys.platform != "darwin":
            raise BadInputError(
                "device: 'mps' (Apple Metal) exists only on macOS; use device 'auto' or 'cpu'"
            )
        import torch

        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise BadInputError(
                "device: 'mps' was asked for but Metal is not available on this Mac (it needs "
                "macOS 12.3 or later and an Apple silicon or AMD GPU); use device 'auto' or 'cpu'"
            )
        return
    if not device.startswith("cuda"):
        return  # options.validate() refused anything else
    version = _torch_version()
    if torch_build_has_gpu() is False:
        raise BadInputError(
            f"device: {device!r} was asked for, but the installed PyTorch ({version}) is a "
            "CPU-only build; use device 'auto' or 'cpu', or install a CUDA build of PyTorch"
        )
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise BadInputError(
            f"device: {device!r} was asked for, but PyTorch ({version}) sees no CUDA GPU here "
            "(no GPU, or its driver is missing); use device 'auto' or 'cpu'"
        )
    index = int(device[5:]) if device.startswith("cuda:") else 0
    if index >= count:
        raise BadInputError(
            f"device: {device!r} does not exist; this computer has {count} CUDA GPU(s): "
            f"use cuda:0 to cuda:{count - 1}, or 'auto'"
        )
