"""SphereDiff for Blender: the add-on's Blender side (bpy only; never torch or diffusers).

Modules by role:

* ``properties``: the generation settings (``scene.spherediff``),
* ``preferences``: worker Python, models, device; where the worker's environment lives,
* ``operators``: Generate World, Cancel, Check Worker, Install Dependencies,
* ``panels``: World Properties > SphereDiff and the status-bar progress,
* ``worker_client``: the worker subprocess and its JSON-lines events (no bpy),
* ``world``: the World's node chain, the image files and the Sun lamp,
* ``camera_match``: where a plate seen through the scene camera sits (Extend Image),
* ``history``: the scene's generations (restore, seeds, variations, drafts to finals),
* ``installer``: the worker's virtual environment (no bpy).
"""

if "bpy" in locals():  # re-enabling the add-on after an edit: reload in dependency order
    import importlib

    worker_client = importlib.reload(worker_client)  # noqa: F821
    installer = importlib.reload(installer)  # noqa: F821
    world = importlib.reload(world)  # noqa: F821
    history = importlib.reload(history)  # noqa: F821 - before properties: its PropertyGroup
    properties = importlib.reload(properties)  # noqa: F821
    camera_match = importlib.reload(camera_match)  # noqa: F821
    preferences = importlib.reload(preferences)  # noqa: F821
    operators = importlib.reload(operators)  # noqa: F821
    panels = importlib.reload(panels)  # noqa: F821
else:
    from . import (
        camera_match,
        history,
        installer,
        operators,
        panels,
        preferences,
        properties,
        worker_client,
        world,
    )

import bpy

classes = (
    *properties.classes,
    *preferences.classes,
    *operators.classes,
    *history.classes,
    *panels.classes,
)

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register() -> None:
    _register_classes()
    properties.register_properties()
    panels.register_status_bar()
    operators.register_handlers()


def unregister() -> None:
    operators.unregister_handlers()  # stops a running generation first
    panels.unregister_status_bar()
    properties.unregister_properties()
    _unregister_classes()


__all__ = [
    "camera_match",
    "history",
    "installer",
    "operators",
    "panels",
    "preferences",
    "properties",
    "register",
    "unregister",
    "worker_client",
    "world",
]
