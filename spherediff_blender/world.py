"""Loading a panorama into the scene's World.

The node chain (each node tagged with the custom property ``spherediff`` and named
``SphereDiff <role>``, so re-running finds and updates the same nodes)::

    Texture Coordinate (Generated) -> Mapping (Z rotation) -> Environment Texture
        (equirectangular) -> Background (strength) -> World Output

Other nodes are left alone: a link into one of our nodes is only made where that socket is
free, so a node the user put between ours stays there. The Background goes to the World's
active output when it has no output links of its own.

The panorama's convention is Blender's own Environment Texture mapping (see
``spherediff_core.geometry``), so no flip or offset is needed: with zero rotation the image
centre faces +X and the top row is straight up.

An animated world is the same chain with an image *sequence* (``source = 'SEQUENCE'``) in
the Environment Texture: its image user plays ``frame_duration`` frames from the scene's
start frame, cyclic when looping, refreshed on every frame change (viewport and renders).
"""

import re
import tempfile
from pathlib import Path

import bpy

TAG = "spherediff"  # custom property on our nodes and images
NODE_NAMES = {
    "texcoord": "SphereDiff Texture Coordinate",
    "mapping": "SphereDiff Mapping",
    "environment": "SphereDiff Environment",
    "background": "SphereDiff Background",
    "output": "SphereDiff World Output",
}
NODE_TYPES = {
    "texcoord": "ShaderNodeTexCoord",
    "mapping": "ShaderNodeMapping",
    "environment": "ShaderNodeTexEnvironment",
    "background": "ShaderNodeBackground",
    "output": "ShaderNodeOutputWorld",
}
WORLD_NAME = "SphereDiff World"


# --------------------------------------------------------------------------- files
def output_folder(output_dir: str) -> Path:
    """The folder for finished panoramas.

    ``//`` is the .blend file's folder; while the file is unsaved, a blend-relative folder
    lands in Blender's temporary folder (Preferences > File Paths > Temporary Files, else
    the system's) instead.
    """
    text = (output_dir or "//spherediff/").strip()
    if text.startswith("//") and not bpy.data.filepath:
        base = bpy.context.preferences.filepaths.temporary_directory or tempfile.gettempdir()
        return Path(base) / text[2:].strip("/\\")
    return Path(bpy.path.abspath(text))


def unique_image_path(folder: Path, seed: int) -> Path:
    """A new file name: the time and the seed, never the prompt."""
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"spherediff_{stamp}_seed{seed}"
    path = folder / f"{base}.png"
    n = 1
    while any(p.exists() for p in sequence_paths(path)):
        n += 1
        path = folder / f"{base}_{n}.png"
    return path


def sequence_paths(path: Path) -> tuple[Path, Path, Path, Path]:
    """The files of one result named by ``path``'s stem (the engine's layout): the still
    PNG, the sidecar, the frames folder ``<stem>_frames`` and the MP4 preview."""
    return (
        path.with_suffix(".png"),
        path.with_suffix(".json"),
        path.with_name(f"{path.stem}_frames"),
        path.with_suffix(".mp4"),
    )


_FRAME_NAME = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)(?P<suffix>\.[A-Za-z0-9]+)$")


def sequence_files(first_frame: Path) -> list[Path]:
    """The frames of the sequence that starts with ``first_frame`` (``frame_0001.png``):
    the files of its folder with the same name but another number, consecutive from
    the first one's, in order."""
    match = _FRAME_NAME.match(first_frame.name)
    if match is None:
        return [first_frame] if first_frame.is_file() else []
    prefix, suffix = match["prefix"], match["suffix"]
    numbers = {}
    for path in first_frame.parent.iterdir():
        other = _FRAME_NAME.match(path.name)
        if other and other["prefix"] == prefix and other["suffix"] == suffix and path.is_file():
            numbers[int(other["number"])] = path
    frames, n = [], int(match["number"])
    while n in numbers:
        frames.append(numbers[n])
        n += 1
    return frames


def frame_number(path: Path) -> int:
    """The number in a frame's file name (1 for ``frame_0001.png``; 1 without one)."""
    match = _FRAME_NAME.match(path.name)
    return int(match["number"]) if match else 1


def blend_relative(path: Path) -> str:
    """``//...`` for a saved .blend (when possible), else the absolute path."""
    if bpy.data.filepath:
        try:
            return bpy.path.relpath(str(path))
        except ValueError:  # another drive on Windows
            pass
    return str(path)


# --------------------------------------------------------------------------- world
def ensure_world(scene: bpy.types.Scene) -> bpy.types.World:
    world = scene.world
    if world is None:
        world = bpy.data.worlds.new(WORLD_NAME)
        scene.world = world
    # 4.2 needs use_nodes; 5.0 deprecates it (a world's node tree always exists there).
    if bpy.app.version < (5, 0, 0) or world.node_tree is None:
        world.use_nodes = True
    return world


def find_node(tree, role: str):
    for node in tree.nodes:
        if node.get(TAG) == role:
            return node
    node = tree.nodes.get(NODE_NAMES[role])
    if node is not None and node.bl_idname == NODE_TYPES[role]:
        return node
    return None


def _ensure_node(tree, role: str, location: tuple[float, float]):
    node = find_node(tree, role)
    if node is None:
        node = tree.nodes.new(NODE_TYPES[role])
        node.location = location
    node.name = NODE_NAMES[role]
    node.label = NODE_NAMES[role].removeprefix("SphereDiff ")
    node[TAG] = role
    return node


def _active_output(tree):
    outputs = [n for n in tree.nodes if n.bl_idname == "ShaderNodeOutputWorld"]
    for node in outputs:
        if getattr(node, "is_active_output", False):
            return node
    return outputs[0] if outputs else None


def _link_if_free(tree, from_socket, to_socket) -> None:
    """Link unless ``to_socket`` is already fed (by us or by a node the user put there)."""
    if not to_socket.is_linked:
        tree.links.new(from_socket, to_socket)


def apply_environment(
    scene: bpy.types.Scene,
    image: bpy.types.Image,
    rotation_z: float,
    strength: float,
) -> bpy.types.World:
    """Show ``image`` as the scene's World environment (creating or updating our nodes)."""
    world = ensure_world(scene)
    tree = world.node_tree
    out = find_node(tree, "output") or _active_output(tree)
    x0, y0 = (out.location.x, out.location.y) if out is not None else (300.0, 300.0)
    background = _ensure_node(tree, "background", (x0 - 220, y0))
    environment = _ensure_node(tree, "environment", (x0 - 540, y0))
    mapping = _ensure_node(tree, "mapping", (x0 - 760, y0))
    texcoord = _ensure_node(tree, "texcoord", (x0 - 960, y0))
    if out is None:
        out = _ensure_node(tree, "output", (x0, y0))

    environment.image = image
    environment.projection = "EQUIRECTANGULAR"
    environment.interpolation = "Linear"
    mapping.vector_type = "POINT"
    _set_rotation(mapping, rotation_z)
    background.inputs["Strength"].default_value = strength

    _link_if_free(tree, texcoord.outputs["Generated"], mapping.inputs["Vector"])
    _link_if_free(tree, mapping.outputs["Vector"], environment.inputs["Vector"])
    _link_if_free(tree, environment.outputs["Color"], background.inputs["Color"])
    if not background.outputs["Background"].is_linked:
        # Replaces whatever fed the output before (the default grey background stays in
        # the tree, unconnected, so nothing of the user's is deleted).
        tree.links.new(background.outputs["Background"], out.inputs["Surface"])
    return world


def _set_rotation(mapping, rotation_z: float) -> None:
    socket = mapping.inputs.get("Rotation")
    if socket is not None and not socket.is_linked:
        value = list(socket.default_value)
        value[2] = rotation_z
        socket.default_value = value


def update_live_settings(
    scene: bpy.types.Scene, rotation_z: float, strength: float, loop: bool | None = None
) -> None:
    """Apply rotation, strength (and loop, to a sequence) to our nodes, if the scene's
    World has them."""
    world = scene.world
    if world is None or world.node_tree is None:
        return
    mapping = find_node(world.node_tree, "mapping")
    if mapping is not None:
        _set_rotation(mapping, rotation_z)
    background = find_node(world.node_tree, "background")
    if background is not None:
        background.inputs["Strength"].default_value = strength
    environment = find_node(world.node_tree, "environment")
    if (
        loop is not None
        and environment is not None
        and environment.image is not None
        and environment.image.source == "SEQUENCE"
        and environment.image_user.use_cyclic != loop
    ):
        environment.image_user.use_cyclic = loop


def load_image(
    path: Path, name: str, pack: bool, metadata: dict, sequence: bool = False
) -> bpy.types.Image:
    """Load the panorama as a new image datablock (relative path; packed on request), or
    with ``sequence`` the frame sequence whose first frame is ``path`` (never packed:
    Blender cannot pack an image sequence)."""
    image = bpy.data.images.load(str(path), check_existing=False)
    image.name = name
    image.filepath = blend_relative(path)
    if sequence:
        image.source = "SEQUENCE"
    image.colorspace_settings.name = "sRGB"
    image[TAG] = True
    for key, value in metadata.items():
        if value is not None:
            image[f"{TAG}_{key}"] = value
    if pack and not sequence:
        image.pack()
    return image


def remove_unused_image(image) -> None:
    """Remove one of our previous panoramas once nothing uses it any more."""
    if image is not None and image.get(TAG) and image.users == 0:
        bpy.data.images.remove(image)


def environment_image(scene: bpy.types.Scene):
    world = scene.world
    if world is None or world.node_tree is None:
        return None
    node = find_node(world.node_tree, "environment")
    return node.image if node is not None else None


def set_from_file(
    scene: bpy.types.Scene,
    path: Path,
    *,
    rotation_z: float,
    strength: float,
    pack: bool,
    metadata: dict,
) -> bpy.types.Image:
    """Load ``path`` and make it the World's environment: the operator's last step."""
    previous = environment_image(scene)
    image = load_image(path, "SphereDiff " + path.stem.removeprefix("spherediff_"), pack, metadata)
    apply_environment(scene, image, rotation_z, strength)
    if previous is not None and previous != image:
        remove_unused_image(previous)
    return image


def set_sequence_user(node, frame_count: int, first_number: int, start: int, loop: bool) -> None:
    """Play ``frame_count`` frames from scene frame ``start`` (the file numbered
    ``first_number`` first), cyclic when ``loop``; refreshed on every frame change."""
    user = node.image_user
    user.frame_duration = frame_count
    user.frame_start = start
    user.frame_offset = first_number - 1  # scene frame ``start`` shows file number 1 + offset
    user.use_cyclic = loop
    user.use_auto_refresh = True


def match_scene(scene: bpy.types.Scene, frame_count: int, fps: int) -> None:
    """The scene plays the sequence once: start .. start + count - 1, at its frame rate."""
    scene.frame_end = scene.frame_start + frame_count - 1
    scene.render.fps = fps
    scene.render.fps_base = 1.0


def set_from_sequence(
    scene: bpy.types.Scene,
    first_frame: Path,
    *,
    frame_count: int,
    fps: int,
    loop: bool,
    match_scene_range: bool,
    rotation_z: float,
    strength: float,
    metadata: dict,
) -> bpy.types.Image:
    """Load the frame sequence that starts with ``first_frame`` into the World's
    Environment Texture (the same nodes as a still), playing from the scene's start
    frame; with ``match_scene_range`` the scene's frame range and rate follow it."""
    previous = environment_image(scene)
    name = "SphereDiff " + first_frame.parent.name.removeprefix("spherediff_").removesuffix(
        "_frames"
    )
    image = load_image(first_frame, name, False, metadata, sequence=True)
    world = apply_environment(scene, image, rotation_z, strength)
    environment = find_node(world.node_tree, "environment")
    set_sequence_user(environment, frame_count, frame_number(first_frame), scene.frame_start, loop)
    if match_scene_range:
        match_scene(scene, frame_count, fps)
    if previous is not None and previous != image:
        remove_unused_image(previous)
    return image
