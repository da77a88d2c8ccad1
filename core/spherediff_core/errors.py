"""Errors with stable codes, shared by the command line, the worker and the add-on.

Each error carries a ``code`` (stable across versions; the worker's ``error`` event sends
it) and an exit code for ``spherediff generate`` and the worker.
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CANCELLED",
    "EXIT_INTERNAL",
    "EXIT_MODEL",
    "EXIT_OK",
    "EXIT_OUT_OF_MEMORY",
    "BadInputError",
    "CancelledError",
    "ModelNotFoundError",
    "OutOfMemoryError",
    "OutputError",
    "SphereDiffError",
    "UnsupportedModelError",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_MODEL = 3
EXIT_OUT_OF_MEMORY = 4
EXIT_CANCELLED = 130


class SphereDiffError(Exception):
    """Base class: ``code`` is stable, ``exit_code`` is what the process returns."""

    code = "internal"
    exit_code = EXIT_INTERNAL


class BadInputError(SphereDiffError):
    """An option or job is invalid (raised before any model loads)."""

    code = "bad_input"
    exit_code = EXIT_BAD_INPUT


class OutputError(SphereDiffError):
    """The outputs cannot be written where asked (not writable, disk full, a file that is
    not ours in the way); nothing was left behind and earlier outputs were kept."""

    code = "output_error"
    exit_code = EXIT_BAD_INPUT


class ModelNotFoundError(SphereDiffError):
    """The model is neither a local folder nor reachable (Hub offline and not cached)."""

    code = "model_not_found"
    exit_code = EXIT_MODEL


class UnsupportedModelError(SphereDiffError):
    """The model folder is of a family the project cannot drive."""

    code = "unsupported_model"
    exit_code = EXIT_MODEL


class OutOfMemoryError(SphereDiffError):
    """The device ran out of memory."""

    code = "out_of_memory"
    exit_code = EXIT_OUT_OF_MEMORY


class CancelledError(SphereDiffError):
    """The user cancelled; partial outputs were removed."""

    code = "cancelled"
    exit_code = EXIT_CANCELLED
