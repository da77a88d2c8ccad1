"""World Properties > SphereDiff, and the progress bar in the status bar."""

import bpy
from bpy.types import Panel

from . import operators, worker_client
from .preferences import ADDON_PACKAGE, get_preferences, offline_forced, resolve_worker_python


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
        prefs = get_preferences(context)
        if offline_forced() or (prefs is not None and prefs.offline):
            col.label(text="Offline: only local or already downloaded models", icon="INFO")
        col.prop(s, "size")
        if s.size == "CUSTOM":
            col.prop(s, "width")

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
        sub.prop(s, "seed", text="")


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
        col.prop(s, "strength")
        col = layout.column()
        col.prop(s, "output_dir", text="Folder")
        col.prop(s, "pack_image")
        if not bpy.data.filepath and s.output_dir.startswith("//") and not s.pack_image:
            col.label(text="Unsaved file: images go to the temporary folder", icon="INFO")


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
            row.enabled = bool(s.prompt.strip())
            row.operator("spherediff.generate", icon="WORLD")
            if not s.prompt.strip():
                layout.label(text="Write a prompt to generate", icon="INFO")

        if s.last_image:
            box = layout.box()
            col = box.column(align=True)
            col.label(text=bpy.path.basename(s.last_image), icon="IMAGE_DATA")
            col.label(text=f"Seed {s.last_seed}, {worker_client.format_seconds(s.last_seconds)}")
            if s.last_model:
                col.label(text=s.last_model)
        if s.last_error:
            box = layout.box()
            col = box.column(align=True)
            for i, line in enumerate(operators.wrap(s.last_error, 60)):
                col.label(text=line, icon="ERROR" if i == 0 else "BLANK1")


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
    WORLD_PT_spherediff_output,
    WORLD_PT_spherediff_generate,
)
