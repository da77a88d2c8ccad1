"""SphereDiff for Blender: the extension's entry point.

Blender loads this file as the extension's package (``bl_ext.<repository>.spherediff``);
everything lives in the ``spherediff_blender`` sub-package.

The sub-package is imported here, at import time, like Blender's bundled add-ons do
(importing it only inside register() makes bpy 4.2 crash at exit). Outside Blender there
is no bpy and nothing is imported: pytest collects the repository root as a package
because of this file.
"""

try:
    import bpy  # noqa: F401
except ImportError:  # not inside Blender
    spherediff_blender = None
else:
    from . import spherediff_blender


def register() -> None:
    spherediff_blender.register()


def unregister() -> None:
    spherediff_blender.unregister()
