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

An HDR world (an OpenEXR lifted by ``spherediff_core.hdr``) loads in linear Rec.709. With
a Sun Lamp (:func:`apply_sun`) the sun's disc is masked in the tree, so the lamp alone
carries it and it is not counted twice; the chain then reads::

    Mapping -> Normalize -> Dot (the sun's direction in the texture) -> Greater Than
        (the disc's cone) -> Mix (Factor; A: Environment, B: the sky around the disc)
        -> Background

Being taken after the Mapping, the mask turns with the World; the lamp's direction
follows the World's rotation (a Mapping rotation of +a about Z shows the texture's
longitude l at world longitude l - a).

An animated world is the same chain with an image *sequence* (``source = 'SEQUENCE'``) in
the Environment Texture: its image user plays ``frame_duration`` frames from the scene's
start frame, cyclic when looping, refreshed on every frame change (viewport and renders).
"""

import math
import re
import tempfile
from array import array
from pathlib import Path

import bpy

TAG = "spherediff"  # custom property on our nodes and images
NODE_NAMES = {
    "texcoord": "SphereDiff Texture Coordinate",
    "mapping": "SphereDiff Mapping",
    "environment": "SphereDiff Environment",
    "background": "SphereDiff Background",
    "output": "SphereDiff World Output",
    "sun_normalize": "SphereDiff Sun Direction",
    "sun_dot": "SphereDiff Sun Cosine",
    "sun_cone": "SphereDiff Sun Disc",
    "sun_mask": "SphereDiff Sun Mask",
}
NODE_TYPES = {
    "texcoord": "ShaderNodeTexCoord",
    "mapping": "ShaderNodeMapping",
    "environment": "ShaderNodeTexEnvironment",
    "background": "ShaderNodeBackground",
    "output": "ShaderNodeOutputWorld",
    "sun_normalize": "ShaderNodeVectorMath",
    "sun_dot": "ShaderNodeVectorMath",
    "sun_cone": "ShaderNodeMath",
    "sun_mask": "ShaderNodeMix",
}
WORLD_NAME = "SphereDiff World"
SUN_NAME = "SphereDiff Sun"
SUN_TAG = "spherediff_sun"  # custom property on our Sun lamp object
MASK_OFF = 2.0  # a cosine threshold no direction reaches: the mask lets everything through
MASK_MARGIN_PX = 1.5  # the disc's anti-aliased edge and the texture's linear interpolation
LINEAR_COLORSPACES = ("Linear Rec.709", "Linear")  # 4.0+ name, older name


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


def sequence_paths(path: Path) -> tuple[Path, Path, Path, Path, Path]:
    """The files of one result named by ``path``'s stem (the engine's layout): the still
    PNG, the sidecar, the frames folder ``<stem>_frames``, the MP4 preview and the HDR
    OpenEXR."""
    return (
        path.with_suffix(".png"),
        path.with_suffix(".json"),
        path.with_name(f"{path.stem}_frames"),
        path.with_suffix(".mp4"),
        path.with_suffix(".exr"),
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

    mask = _ensure_sun_mask(tree, mapping, environment, background)

    _link_if_free(tree, texcoord.outputs["Generated"], mapping.inputs["Vector"])
    _link_if_free(tree, mapping.outputs["Vector"], environment.inputs["Vector"])
    _link_if_free(tree, environment.outputs["Color"], _socket(mask.inputs, "A_Color"))
    _link_if_free(tree, _socket(mask.outputs, "Result_Color"), background.inputs["Color"])
    if not background.outputs["Background"].is_linked:
        # Replaces whatever fed the output before (the default grey background stays in
        # the tree, unconnected, so nothing of the user's is deleted).
        tree.links.new(background.outputs["Background"], out.inputs["Surface"])
    return world


def _socket(sockets, identifier: str):
    """A socket by identifier (the Mix node has several sockets named "A")."""
    return next(sock for sock in sockets if sock.identifier == identifier)


def _ensure_sun_mask(tree, mapping, environment, background):
    """The sun-disc mask between the Environment and the Background (off until
    :func:`apply_sun` sets it): Mapping -> Normalize -> Dot -> Greater Than -> Mix."""
    x, y = environment.location.x, environment.location.y
    normalize = _ensure_node(tree, "sun_normalize", (x, y - 320))
    normalize.operation = "NORMALIZE"
    dot = _ensure_node(tree, "sun_dot", (x + 180, y - 320))
    dot.operation = "DOT_PRODUCT"
    cone = _ensure_node(tree, "sun_cone", (x + 360, y - 320))
    cone.operation = "GREATER_THAN"
    mask = find_node(tree, "sun_mask")
    if mask is None:
        mask = _ensure_node(tree, "sun_mask", (x + 300, y))
        mask.data_type = "RGBA"
        mask.blend_type = "MIX"
        cone.inputs[1].default_value = MASK_OFF
        # A World made before the mask: Environment -> Background goes through it now.
        for link in list(background.inputs["Color"].links):
            if link.from_node == environment:
                tree.links.remove(link)
    else:
        _ensure_node(tree, "sun_mask", (x + 300, y))
    _link_if_free(tree, mapping.outputs["Vector"], normalize.inputs[0])
    _link_if_free(tree, normalize.outputs["Vector"], dot.inputs[0])
    _link_if_free(tree, dot.outputs["Value"], cone.inputs[0])
    _link_if_free(tree, cone.outputs["Value"], _socket(mask.inputs, "Factor_Float"))
    return mask


def set_sun_mask(tree, sun: dict | None, height_px: int) -> bool:
    """Mask the sun's disc (``sun``: the sidecar's ``hdr.sun`` block) with the sky around
    it, or with ``sun`` None let the whole texture through. Returns whether it masks."""
    dot, cone, mask = (find_node(tree, role) for role in ("sun_dot", "sun_cone", "sun_mask"))
    if dot is None or cone is None or mask is None:
        return False
    if not sun or not sun.get("visible"):
        cone.inputs[1].default_value = MASK_OFF
        return False
    direction = sun["direction"]
    dot.inputs[1].default_value = [float(c) for c in direction]
    # (An image of unknown size gets a 2-degree margin, the margin of a 135-pixel-high one.)
    px_deg = 180.0 / height_px if height_px > 0 else 2.0 / MASK_MARGIN_PX
    half_deg = float(sun["angle_deg"]) / 2.0 + MASK_MARGIN_PX * px_deg
    cone.inputs[1].default_value = math.cos(math.radians(half_deg))
    fill = sun.get("surround") or (0.0, 0.0, 0.0)
    _socket(mask.inputs, "B_Color").default_value = (*[float(c) for c in fill], 1.0)
    return True


def sun_rotation(azimuth_deg: float, elevation_deg: float, rotation_z: float):
    """A Sun lamp's Euler rotation (XYZ, radians) shining from the sun's direction: its
    local +Z points at the sun, seen in a World turned by ``rotation_z`` (radians)."""
    azimuth = math.radians(azimuth_deg) - rotation_z
    return (0.0, math.radians(90.0 - elevation_deg), azimuth)


def find_sun_lamp(scene: bpy.types.Scene):
    """Our Sun lamp in this scene (tagged; renaming it keeps it ours), or None."""
    for ob in scene.objects:
        if ob.get(SUN_TAG) and ob.type == "LIGHT" and ob.data.type == "SUN":
            return ob
    return None


def apply_sun(
    scene: bpy.types.Scene,
    sun: dict | None,
    *,
    height_px: int,
    rotation_z: float,
    sun_strength: float,
    lamp: bool,
):
    """Add or update the scene's ``SphereDiff Sun`` from the estimate, masking the disc in
    the World; or (no lamp wanted, no sun found) hide it and unmask. Returns the lamp
    object when it shines, else None. Call after :func:`apply_environment`."""
    world = scene.world
    tree = world.node_tree if world is not None else None
    visible = bool(sun and sun.get("visible")) and lamp
    if tree is not None:
        set_sun_mask(tree, sun if visible else None, height_px)
    ob = find_sun_lamp(scene)
    if not visible:
        if ob is not None:
            ob.hide_render = True
            ob.hide_viewport = True
        return None
    if ob is None:
        data = bpy.data.lights.new(SUN_NAME, "SUN")
        ob = bpy.data.objects.new(SUN_NAME, data)
        scene.collection.objects.link(ob)
        ob.location = (0.0, 0.0, 10.0)
        ob[SUN_TAG] = True
    ob.hide_render = False
    ob.hide_viewport = False
    ob[f"{SUN_TAG}_azimuth_deg"] = float(sun["azimuth_deg"])
    ob[f"{SUN_TAG}_elevation_deg"] = float(sun["elevation_deg"])
    ob[f"{SUN_TAG}_strength"] = float(sun["strength"])  # the estimate, W/m^2
    ob.rotation_mode = "XYZ"
    ob.rotation_euler = sun_rotation(sun["azimuth_deg"], sun["elevation_deg"], rotation_z)
    light = ob.data
    light.color = [float(c) for c in sun["color"]]
    light.energy = float(sun["strength"]) * sun_strength
    light.angle = math.radians(float(sun["angle_deg"]))
    return ob


def update_sun_lamp(scene: bpy.types.Scene, rotation_z: float, sun_strength: float) -> None:
    """Follow the World's rotation and the Sun Strength setting (live update)."""
    ob = find_sun_lamp(scene)
    if ob is None or f"{SUN_TAG}_azimuth_deg" not in ob:
        return
    rotation = sun_rotation(
        ob[f"{SUN_TAG}_azimuth_deg"], ob[f"{SUN_TAG}_elevation_deg"], rotation_z
    )
    if tuple(ob.rotation_euler) != tuple(rotation):
        ob.rotation_euler = rotation
    energy = float(ob[f"{SUN_TAG}_strength"]) * sun_strength
    if ob.data.energy != energy:
        ob.data.energy = energy


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


def set_linear(image) -> None:
    """Linear Rec.709 (an HDR image's colour space), by its name in this Blender."""
    names = {
        item.identifier for item in image.colorspace_settings.bl_rna.properties["name"].enum_items
    }
    for name in LINEAR_COLORSPACES:
        if name in names:
            image.colorspace_settings.name = name
            return


def load_image(
    path: Path, name: str, pack: bool, metadata: dict, sequence: bool = False
) -> bpy.types.Image:
    """Load the panorama as a new image datablock (relative path; packed on request), or
    with ``sequence`` the frame sequence whose first frame is ``path`` (never packed:
    Blender cannot pack an image sequence). An OpenEXR loads in linear Rec.709, a PNG in
    sRGB."""
    image = bpy.data.images.load(str(path), check_existing=False)
    image.name = name
    image.filepath = blend_relative(path)
    if sequence:
        image.source = "SEQUENCE"
    if path.suffix.lower() == ".exr":
        set_linear(image)
    else:
        image.colorspace_settings.name = "sRGB"
    image[TAG] = True
    for key, value in metadata.items():
        if isinstance(value, int) and not -(2**31) <= value < 2**31:
            value = str(value)  # an ID property's int is 32-bit; seeds go up to 2**63 - 1
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
    name = "SphereDiff " + path.stem.removeprefix("spherediff_")
    image = load_image(
        path, name + (" HDR" if path.suffix.lower() == ".exr" else ""), pack, metadata
    )
    apply_environment(scene, image, rotation_z, strength)
    if previous is not None and previous != image:
        remove_unused_image(previous)
    return image


def lift_source(scene: bpy.types.Scene):
    """The World's current panorama for Lift to HDR: the image of our Environment Texture,
    else of the first Environment Texture in the World's tree; None when there is none."""
    world = scene.world
    if world is None or world.node_tree is None:
        return None
    node = find_node(world.node_tree, "environment")
    if node is not None and node.image is not None:
        return node.image
    for node in world.node_tree.nodes:
        if node.bl_idname == "ShaderNodeTexEnvironment" and node.image is not None:
            return node.image
    return None


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


# --------------------------------------------------------------------------- live preview
PREVIEW_IMAGE_NAME = "SphereDiff Preview"
PREVIEW_WORLD_NAME = "SphereDiff Preview World"
PREVIEW_TAG = "spherediff_preview"  # custom property on the preview's World and image


def _alive(block) -> bool:
    """Whether a data-block held in Python still exists (a removed one raises)."""
    if block is None:
        return False
    try:
        block.name  # noqa: B018 - touching it is the test
    except ReferenceError:
        return False
    return True


def read_pixels(path: Path) -> tuple[array, tuple[int, int]] | None:
    """An image file's RGBA pixels (as ``Image.pixels`` holds them) and its size, read
    at once through a temporary image that is removed again; None if it cannot be read."""
    try:
        loaded = bpy.data.images.load(str(path), check_existing=False)
    except RuntimeError:
        return None
    try:
        width, height = (int(v) for v in loaded.size)
        if width <= 0 or height <= 0 or loaded.channels != 4:
            return None
        pixels = array("f", [0.0]) * (width * height * 4)
        loaded.pixels.foreach_get(pixels)
        return pixels, (width, height)
    finally:
        bpy.data.images.remove(loaded)


class LivePreview:
    """A running job's previews shown as the scene's World, and the way back.

    The scene's World is never edited: the first preview swaps in a World of its own,
    ``SphereDiff Preview World`` (the node chain of :func:`apply_environment` with the
    in-memory image ``SphereDiff Preview`` and the generation's rotation and strength);
    later previews only replace the image's pixels. :meth:`end` puts the scene's World
    back and removes both, so a cancelled or failed job leaves the World exactly as it was
    (the data-block, its nodes, image, mapping and strength), and a finished one is loaded
    into that World as before. While the swap lasts the previous World has a fake user:
    a World without users would not be saved with the file.
    """

    def __init__(self, scene: bpy.types.Scene) -> None:
        self.scene_name = scene.name
        self.previous = scene.world
        self.world = None
        self.image = None
        self.shown = 0  # previews shown
        self.swapped = False  # the preview's World was put in (once)
        self._fake_user = False  # whether we gave the previous World its fake user

    def show(self, scene: bpy.types.Scene, path: Path, *, rotation_z: float, strength: float):
        """Show the preview PNG at ``path``; False when it cannot be read (skipped)."""
        read = read_pixels(path)
        if read is None:
            return False
        pixels, (width, height) = read
        image = self.image if _alive(self.image) else None
        if image is None:
            image = bpy.data.images.new(PREVIEW_IMAGE_NAME, width, height, alpha=False)
            image[PREVIEW_TAG] = True
            image.colorspace_settings.name = "sRGB"  # the preview is an 8-bit sRGB PNG
            self.image = image
        elif tuple(image.size) != (width, height):
            image.scale(width, height)
        image.pixels.foreach_set(pixels)
        image.update()
        image.update_tag()  # Cycles' rendered viewport syncs the new pixels
        if not self.swapped:
            self._swap_in(scene, image, rotation_z, strength)
        self.shown += 1
        return True

    def _swap_in(self, scene, image, rotation_z: float, strength: float) -> None:
        previous = scene.world
        if previous is not None and previous.library is None and not previous.use_fake_user:
            previous.use_fake_user = True
            self._fake_user = True
        self.previous = previous
        world = bpy.data.worlds.new(PREVIEW_WORLD_NAME)
        world[PREVIEW_TAG] = True
        self.world = world
        self.swapped = True
        scene.world = world
        apply_environment(scene, image, rotation_z, strength)

    def hide_for_save(self) -> None:
        """Before the file is saved (save_pre): the scene's own World in the file, never
        the preview's (whose in-memory image would be saved without its pixels)."""
        scene = bpy.data.scenes.get(self.scene_name)
        if self.swapped and _alive(self.world) and scene is not None and scene.world == self.world:
            scene.world = self.previous if _alive(self.previous) else None
            # The image loses its one user too, so the file holds neither of them.
            node = find_node(self.world.node_tree, "environment")
            if node is not None:
                node.image = None

    def show_after_save(self) -> None:
        """After the file is saved (save_post): the preview back in the viewport."""
        scene = bpy.data.scenes.get(self.scene_name)
        if self.swapped and _alive(self.world) and scene is not None:
            node = find_node(self.world.node_tree, "environment")
            if node is not None and _alive(self.image):
                node.image = self.image
            scene.world = self.world

    def end(self) -> None:
        """The scene's own World back; the preview's World and image removed."""
        world, image, previous = self.world, self.image, self.previous
        self.world = self.image = None
        if _alive(world):
            scene = bpy.data.scenes.get(self.scene_name)
            if scene is not None and scene.world == world:
                scene.world = previous if _alive(previous) else None
            bpy.data.worlds.remove(world)
        if self._fake_user and _alive(previous):
            previous.use_fake_user = False
        self._fake_user = False
        if _alive(image):
            bpy.data.images.remove(image)
