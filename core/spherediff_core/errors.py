"""Errors with stable codes, shared by the command line, the worker and the add-on.

Each error carries a ``code`` (stable across versions; the worker's ``error`` event sends
it) and an exit code for ``spherediff generate`` and the worker.

Advice that depends on who asks (a model folder is ``--model`` on the command line but the
Model menu in Blender) is kept apart from the message: :meth:`SphereDiffError.message_for`
adds the hint for a client (``cli``, ``worker`` or ``blender``); ``str(error)`` is the
command line's text.
"""

from __future__ import annotations

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CANCELLED",
    "EXIT_INTERNAL",
    "EXIT_MODEL",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_OUT_OF_MEMORY",
    "LOCAL_MODEL_HINTS",
    "BadInputError",
    "BrokenModelError",
    "CancelledError",
    "DistributedError",
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
EXIT_OUTPUT = 5
EXIT_CANCELLED = 130

LOCAL_MODEL_HINTS = {
    "cli": "Or pass a local diffusers model folder: --model /path/to/folder.",
    "worker": 'Or set the job\'s "model" option to a local diffusers model folder.',
    "blender": (
        "Or use a model folder on this computer: choose Custom in the Model menu and pick "
        "the folder (custom_model= in scripts)."
    ),
}
"""How to point at a local model folder, per client (see ModelNotFoundError)."""


class SphereDiffError(Exception):
    """Base class: ``code`` is stable, ``exit_code`` is what the process returns."""

    code = "internal"
    exit_code = EXIT_INTERNAL

    def message_for(self, client: str) -> str:
        """The message as ``client`` should show it (the same for most errors)."""
        return str(self)


class BadInputError(SphereDiffError):
    """An option or job is invalid (raised before any model loads)."""

    code = "bad_input"
    exit_code = EXIT_BAD_INPUT


class ModelNotFoundError(SphereDiffError):
    """The model is neither a local folder nor reachable (Hub offline and not cached).

    With ``local_hint`` the message ends with how to use a local folder instead, in the
    words of the client that asked (LOCAL_MODEL_HINTS).
    """

    code = "model_not_found"
    exit_code = EXIT_MODEL

    def __init__(self, message: str, *, local_hint: bool = False) -> None:
        self.base_message = message
        self.local_hint = local_hint
        super().__init__(self.message_for("cli"))

    def message_for(self, client: str) -> str:
        if not self.local_hint:
            return self.base_message
        hint = LOCAL_MODEL_HINTS.get(client, LOCAL_MODEL_HINTS["worker"])
        return f"{self.base_message} {hint}"


class BrokenModelError(SphereDiffError):
    """The model folder is incomplete or damaged (a component, config or weights file is
    missing, truncated or unreadable); the message names the file and what to do."""

    code = "broken_model"
    exit_code = EXIT_MODEL


class UnsupportedModelError(SphereDiffError):
    """The model is of a family the project cannot drive, or holds what it never loads
    (custom code, pickle-only weights)."""

    code = "unsupported_model"
    exit_code = EXIT_MODEL


class OutOfMemoryError(SphereDiffError):
    """The device ran out of memory."""

    code = "out_of_memory"
    exit_code = EXIT_OUT_OF_MEMORY


class OutputError(SphereDiffError):
    """An output file could not be written (disk full, read-only, no permission, name too
    long, a folder or a file that is not ours in the way); the message names the path and
    the fix. Nothing was left behind, and earlier outputs were kept."""

    code = "output_error"
    exit_code = EXIT_OUTPUT


class CancelledError(SphereDiffError):
    """The user cancelled; partial outputs were removed."""

    code = "cancelled"
    exit_code = EXIT_CANCELLED


class DistributedError(SphereDiffError):
    """Another process of a distributed (torchrun) run failed, stopped or is unreachable."""

    code = "distributed"
    exit_code = EXIT_INTERNAL
