"""Extra views: add and remove photo slots, and their panel (the slots themselves are ``blender/extra_views.py``)."""

from __future__ import annotations

import bpy
from bpy.props import IntProperty

from ..blender.extra_views import MAX_VIEWS, SUGGESTED_AZIMUTHS, problem, slots

class MPOD123_OT_add_view(bpy.types.Operator):
    """Add a slot for another photo of the object, taken from another side"""

    bl_idname = "mpod123.add_view"
    bl_label = "Add Extra View"
    bl_options = {"REGISTER", "INTERNAL"}

    @classmethod
    def poll(cls, context):
        if len(slots(context)) >= MAX_VIEWS:
            cls.poll_message_set(f"at most {MAX_VIEWS} extra views")
            return False
        return True

    def execute(self, context):
        views = slots(context)
        used = {round(v.azimuth) % 360 for v in views}
        view = views.add()
        view.azimuth = next((a for a in SUGGESTED_AZIMUTHS if round(a) % 360 not in used), 180.0)
        return {"FINISHED"}


class MPOD123_OT_remove_view(bpy.types.Operator):
    """Remove this extra view"""

    bl_idname = "mpod123.remove_view"
    bl_label = "Remove Extra View"
    bl_options = {"REGISTER", "INTERNAL"}

    index: IntProperty(name="Index", min=0)

    @classmethod
    def poll(cls, context):
        if not slots(context):
            cls.poll_message_set("no extra views")
            return False
        return True

    def execute(self, context):
        views = slots(context)
        if self.index >= len(views):
            self.report({"ERROR"}, f"no extra view {self.index + 1}")
            return {"CANCELLED"}
        views.remove(self.index)
        return {"FINISHED"}


class MPOD123_PT_extra_views(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MPOD123"
    bl_idname = "MPOD123_PT_extra_views"
    bl_label = "Extra Views"
    bl_parent_id = "MPOD123_PT_input"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        for i, view in enumerate(slots(context)):
            box = layout.box()
            row = box.row(align=True)
            row.template_ID(view, "image", open="image.open")
            row.operator("mpod123.remove_view", text="", icon="X").index = i
            row = box.row(align=True)
            row.prop(view, "azimuth")
            row.prop(view, "polar")
        layout.operator("mpod123.add_view", icon="ADD")
        reason = problem(context)
        if reason:
            layout.label(text=reason, icon="INFO")


CLASSES = (MPOD123_OT_add_view, MPOD123_OT_remove_view, MPOD123_PT_extra_views)
register, unregister = bpy.utils.register_classes_factory(CLASSES)
