"""World Properties > SphereDiff, and the progress bar in the status bar."""

from pathlib import Path

import bpy
from bpy.types import Panel

from . import camera_match, history, operators, properties, worker_client
from .preferences import ADDON_PACKAGE, get_preferences, offline_forced, resolve_worker_python


def _settings_values(settings) -> dict:
    return {key: getattr(settings, key) for key in properties.GENERATION_KEYS}


def _model_info(context, settings) -> properties.ModelInfo:
    values = _settings_values(settings)
    model = operators.resolve_model(values, get_preferences(context))
    return properties.model_info(values["model_preset"], model)


def _model_id(context, settings) -> str:
    return operators.resolve_model(_settings_values(settings), get_preferences(context))


def _wrapped_label(layout, text: str, icon: str, width: int = 60) -> None:
    col = layout.column(align=True)
    for i, line in enumerate(operators.wrap(text, width)):
        col.label(text=line, icon=icon if i == 0 else "BLANK1")


class _SphereDiffPanel:
    bl_space_type = "PROPERTIES"
    bl_region_type = "WINDOW"
    bl_context = "world"

    @classmethod
    def poll(cls, context):
        return context.scene is not None and hasattr(context.scene, "spherediff")


class WORLD_PT_spherediff(_SphereDiffPanel, Panel):
    bl_label = "SphereDiff"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.spherediff
        layout.prop(settings, "prompt", text="", icon="WORLD", placeholder="Prompt")


class WORLD_PT_spherediff_directional(_SphereDiffPanel, Panel):
    bl_label = "Directional Prompts"
    bl_parent_id = "WORLD_PT_spherediff"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        settings = context.scene.spherediff
        col = layout.column(align=True)
        col.prop(settings, "sky_prompt", icon="LIGHT_SUN")
        col.prop(settings, "horizon_prompt", icon="VIEW_PERSPECTIVE")
        col.prop(settings, "ground_prompt", icon="MESH_PLANE")
        layout.label(text="Empty fields use the main prompt", icon="INFO")


class WORLD_PT_spherediff_settings(_SphereDiffPanel, Panel):
    bl_label = "Settings"
    bl_parent_id = "WORLD_PT_spherediff"
    bl_options = {"HIDE_HEADER"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        s = context.scene.spherediff

        layout.prop(s, "negative_prompt", text="Negative")
        col = layout.column()
        col.prop(s, "model_preset")
        if s.model_preset == "CUSTOM":
            col.prop(s, "custom_model", text="Hub ID / Folder")
        problem = properties.kind_problem(s.video, _model_info(context, s))
        if problem:
            _wrapped_label(col, problem, "ERROR", 50)
        prefs = get_preferences(context)
        if offline_forced() or (prefs is not None and prefs.offline):
            col.label(text="Offline: only local or already downloaded models", icon="INFO")
        col.prop(s, "size")
        if s.size == "CUSTOM":
            col.prop(s, "width")
        note = properties.size_note(s.model_preset, _model_id(context, s), s.size, s.width)
        if note:
            _wrapped_label(col, note, "INFO", 50)

        col = layout.column(heading="Steps")
        row = col.row(align=True)
        row.prop(s, "auto_steps", text="Auto")
        sub = row.row(align=True)
        sub.active = not s.auto_steps
        sub.prop(s, "steps", text="")

        col = layout.column(heading="Guidance")
        row = col.row(align=True)
        row.prop(s, "auto_guidance", text="Auto")
        sub = row.row(align=True)
        sub.active = not s.auto_guidance
        sub.prop(s, "guidance", text="")

        col = layout.column(heading="Seed")
        row = col.row(align=True)
        row.prop(s, "random_seed", text="Random")
        sub = row.row(align=True)
        sub.active = not s.random_seed
        # A seed beyond the Seed field's 32 bits (from Reuse Seed) is shown as its text.
        sub.prop(s, "exact_seed" if s.exact_seed else "seed", text="")
        row.operator("spherediff.copy_seed", text="", icon="COPYDOWN")
        row.operator("spherediff.reuse_seed", text="", icon="RECOVER_LAST")
        problem = properties.seed_problem(s)
        if problem:
            _wrapped_label(col, problem, "ERROR", 50)

        col = layout.column(heading="Draft")
        row = col.row(align=True)
        row.prop(s, "draft", text="")
        sub = row.row(align=True)
        sub.active = s.draft
        sub.prop(s, "draft_size", text="")
        sub.prop(s, "draft_steps", text="Steps")
        if s.draft:
            problem = properties.draft_problem(s, _model_id(context, s))
            if problem:
                _wrapped_label(col, problem, "ERROR", 50)


class WORLD_PT_spherediff_extend(_SphereDiffPanel, Panel):
    bl_label = "Extend Image"
    bl_parent_id = "WORLD_PT_spherediff"
    bl_options = {"DEFAULT_CLOSED"}

    def draw_header(self, context):
        self.layout.prop(context.scene.spherediff, "extend_image", text="")

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        s = context.scene.spherediff
        layout.active = s.extend_image
        col = layout.column()
        col.prop_search(s, "image_name", bpy.data, "images", text="Image")
        row = col.row()
        row.active = not s.image_name
        row.prop(s, "image_path", text="File")
        col = layout.column()
        col.prop(s, "match_camera")
        if s.match_camera:
            _wrapped_label(col, camera_match.current_camera_text(context.scene), "CAMERA_DATA", 50)
        else:
            sub = col.column(align=True)
            sub.prop(s, "image_yaw")
            sub.prop(s, "image_pitch")
            sub.prop(s, "image_roll")
            sub.prop(s, "image_fov")
        col = layout.column(align=True)
        col.prop(s, "image_feather")
        col.prop(s, "image_strength")
        if s.video:
            layout.label(text="Animated worlds cannot extend an image yet", icon="INFO")


class WORLD_PT_spherediff_output(_SphereDiffPanel, Panel):
    bl_label = "World and Output"
    bl_parent_id = "WORLD_PT_spherediff"

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        s = context.scene.spherediff
        col = layout.column(align=True)
        col.prop(s, "rotation_z")
        col.prop(s, "strength", text="Sky Strength" if s.hdr and s.sun_lamp else "Strength")
        col = layout.column(heading="Lighting")
        row = col.row()
        row.active = not s.video  # animated worlds stay LDR
        row.prop(s, "hdr")
        row = col.row()
        row.active = s.hdr and not s.video
        row.prop(s, "sun_lamp")
        row = col.row()
        row.active = s.hdr and s.sun_lamp and not s.video
        row.prop(s, "sun_strength")
        if s.video and s.hdr:
            col.label(text="Animated worlds stay LDR (no HDR, no Sun Lamp)", icon="INFO")
        col = layout.column()
        col.prop(s, "output_dir", text="Folder")
        row = col.row()
        row.active = not s.video  # Blender cannot pack an image sequence
        row.prop(s, "pack_image")
        if s.video and s.pack_image:
            col.label(text="Animated worlds are not packed: Blender cannot pack", icon="INFO")
            col.label(text="an image sequence; the frames stay in the folder", icon="BLANK1")
        packed = s.pack_image and not s.video
        if not bpy.data.filepath and s.output_dir.startswith("//") and not packed:
            col.label(text="Unsaved file: images go to the temporary folder", icon="INFO")


class WORLD_PT_spherediff_animated(_SphereDiffPanel, Panel):
    bl_label = "Animated"
    bl_parent_id = "WORLD_PT_spherediff"
    bl_options = {"DEFAULT_CLOSED"}

    def draw_header(self, context):
        self.layout.prop(context.scene.spherediff, "video", text="")

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.use_property_decorate = False
        s = context.scene.spherediff
        layout.active = s.video
        info = _model_info(context, s)

        col = layout.column()
        col.prop(s, "frames")
        col = layout.column(heading="FPS")
        row = col.row(align=True)
        row.prop(s, "auto_fps", text="Auto")
        sub = row.row(align=True)
        sub.active = not s.auto_fps
        sub.prop(s, "fps", text="")
        col = layout.column()
        col.prop(s, "loop")
        col.prop(s, "match_scene")

        if not s.video:
            layout.label(text="Turn on Animated for a 360° video world", icon="INFO")
            return
        # (A model of the wrong kind is shown under the model and at the button.)
        problem = properties.frames_problem(s.frames, info)
        if problem:
            _wrapped_label(layout, problem, "ERROR", 50)
        elif info.kind == "video":
            fps = s.fps if not s.auto_fps else info.fps
            layout.label(
                text=f"{info.name}: {info.compression}k+1 frames; "
                f"{s.frames} frames = {s.frames / fps:.1f} s at {fps} fps",
                icon="INFO",
            )


class WORLD_PT_spherediff_generate(_SphereDiffPanel, Panel):
    bl_label = "Generate"
    bl_parent_id = "WORLD_PT_spherediff"
    bl_options = {"HIDE_HEADER"}

    def draw(self, context):
        layout = self.layout
        s = context.scene.spherediff
        gen = operators.active_generation()

        if gen is not None:
            run = gen.run
            layout.progress(factor=run.fraction, type="BAR", text=run.status_text())
            row = layout.row(align=True)
            row.label(text=f"Elapsed {worker_client.format_seconds(run.elapsed_s)}")
            row.operator("spherediff.cancel", icon="CANCEL")
        else:
            _, _, problem = resolve_worker_python(context)
            if problem:
                box = layout.box()
                for i, line in enumerate(operators.wrap(problem, 60)):
                    box.label(text=line, icon="ERROR" if i == 0 else "BLANK1")
                box.operator(
                    "preferences.addon_show", text="Open Preferences", icon="PREFERENCES"
                ).module = ADDON_PACKAGE
            row = layout.row()
            row.scale_y = 1.5
            problem = operators.generate_poll_problem(context)
            row.enabled = bool(s.prompt.strip()) and not problem
            row.operator(
                "spherediff.generate",
                text="Generate Animated World" if s.video else "Generate World",
                icon="RENDER_ANIMATION" if s.video else "WORLD",
            )
            # Several seeds in one go; a draft (Draft on) made again at full size.
            row = layout.row(align=True)
            row.operator("spherediff.variations", icon="DUPLICATE")
            row.prop(s, "variation_count", text="")
            row.operator("spherediff.make_final", icon="RENDER_STILL")
            if problem:
                _wrapped_label(layout, problem, "ERROR")
            elif not s.prompt.strip():
                layout.label(text="Write a prompt to generate", icon="INFO")
            if worker_client.WARM.running():  # issue 15: the warm worker keeps the model
                row = layout.row(align=True)
                row.label(text="Model loaded: the next generation starts at once")
                row.operator("spherediff.unload_model", text="", icon="UNLINKED")

        if s.last_image:
            box = layout.box()
            col = box.column(align=True)
            if s.last_frames:
                col.label(text=Path(s.last_image).parent.name, icon="RENDER_ANIMATION")
                col.label(text=f"{s.last_frames} frames at {s.last_fps} fps")
            else:
                col.label(text=bpy.path.basename(s.last_image), icon="IMAGE_DATA")
            col.label(text=f"Seed {s.last_seed}, {worker_client.format_seconds(s.last_seconds)}")
            if s.last_model:
                col.label(text=s.last_model)
            if s.last_hdr and s.last_sun:
                col.label(
                    text=f"Sun: azimuth {s.last_sun_azimuth:.1f}°, elevation "
                    f"{s.last_sun_elevation:.1f}°, {s.last_sun_energy:.3g} W/m²",
                    icon="LIGHT_SUN",
                )
            elif s.last_hdr:
                col.label(text="HDR: no sun in this panorama", icon="LIGHT_SUN")
        if gen is None:
            layout.operator("spherediff.lift_to_hdr", icon="IMAGE_RGB_ALPHA")
        if s.last_error:
            box = layout.box()
            col = box.column(align=True)
            for i, line in enumerate(operators.wrap(s.last_error, 60)):
                col.label(text=line, icon="ERROR" if i == 0 else "BLANK1")


class WORLD_PT_spherediff_history(_SphereDiffPanel, Panel):
    """The scene's generations (history.py): restore one as the World in one click."""

    bl_label = "History"
    bl_parent_id = "WORLD_PT_spherediff"

    def draw(self, context):
        layout = self.layout
        s = context.scene.spherediff
        row = layout.row()
        row.template_list("SPHEREDIFF_UL_history", "", s, "history", s, "history_index", rows=4)
        col = row.column(align=True)
        col.operator("spherediff.history_restore", text="", icon="LOOP_BACK")
        col.operator("spherediff.history_remove", text="", icon="REMOVE")
        col.separator()
        col.operator("spherediff.copy_seed", text="", icon="COPYDOWN")
        col.operator("spherediff.reuse_seed", text="", icon="RECOVER_LAST")
        entry = history.active_entry(context.scene)
        if entry is None:
            layout.label(text="Generated Worlds are listed here", icon="INFO")
            return
        box = layout.box()
        if entry.thumbnail is not None:
            box.template_icon(icon_value=layout.icon(entry.thumbnail), scale=5.0)
        col = box.column(align=True)
        for i, line in enumerate(operators.wrap(entry.prompt or "(no prompt)", 60)):
            col.label(text=line, icon="WORLD" if i == 0 else "BLANK1")
        kind = f"draft of {history.size_label(entry.final_width)}" if entry.draft else "final"
        steps = f"{entry.steps} steps" if entry.steps else "auto steps"
        col.label(text=f"Seed {entry.seed}, {history.size_label(entry.width)} {kind}, {steps}")
        col.label(text=f"{history.model_label(entry.model)}, {history.time_label(entry.time)}")
        row = box.row(align=True)
        row.operator("spherediff.history_restore", icon="LOOP_BACK")
        if entry.draft:
            row.operator("spherediff.make_final", icon="RENDER_STILL").index = list(
                s.history
            ).index(entry)
        problem = history.restore_problem(entry)
        if problem:
            _wrapped_label(box, problem, "ERROR", 50)


def draw_status_bar(self, context):
    """Progress in the status bar while a generation runs."""
    gen = operators.active_generation()
    if gen is None:
        return
    row = self.layout.row(align=True)
    row.progress(factor=gen.run.fraction, type="BAR", text=f"SphereDiff: {gen.run.status_text()}")
    row.operator("spherediff.cancel", text="", icon="X")


def register_status_bar() -> None:
    bpy.types.STATUSBAR_HT_header.append(draw_status_bar)


def unregister_status_bar() -> None:
    bpy.types.STATUSBAR_HT_header.remove(draw_status_bar)


classes = (
    WORLD_PT_spherediff,
    WORLD_PT_spherediff_directional,
    WORLD_PT_spherediff_settings,
    WORLD_PT_spherediff_animated,
    WORLD_PT_spherediff_extend,
    WORLD_PT_spherediff_output,
    WORLD_PT_spherediff_generate,
    WORLD_PT_spherediff_history,
)
