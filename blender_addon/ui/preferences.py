"""The add-on's preferences as Blender registers them: the fields (``blender/preferences.py``) and their drawing."""

from __future__ import annotations

import bpy

from ..blender.paths import ADDON_PACKAGE
from ..blender.preferences import PreferenceFields
from .backend_ops import draw_managed_backend


class MPOD123_Preferences(PreferenceFields, bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    def draw(self, context):
        draw_preferences(self.layout, self)


def draw_preferences(layout, p) -> None:
    """The preferences' layout (a function, so tests can draw it into any layout)."""
    col = layout.column()
    col.prop(p, "address")
    if not bpy.app.online_access:
        col.label(text="Allow Online Access is off: only addresses on this computer are used", icon="INFO")
    box = layout.box()
    box.prop(p, "use_local_backend")
    sub = box.column()
    sub.active = p.use_local_backend
    sub.prop(p, "local_command")
    sub.prop(p, "local_data")
    sub.prop(p, "start_timeout_s")
    draw_managed_backend(layout, p)
    box = layout.box()
    box.label(text="Keys (from `mpod123 keys init`)")
    box.prop(p, "server_key_file")
    box.prop(p, "client_key_file")
    box.operator("mpod123.load_keys", icon="FILE_REFRESH")
    box.prop(p, "server_public_key")
    box.prop(p, "client_public_key")
    box.prop(p, "client_secret_key")
    col = layout.column()
    col.prop(p, "timeout_s")
    col.prop(p, "events_per_tick")
    col.prop(p, "auto_import")
    col.prop(p, "show_mesh_previews")
    draw_import_preferences(layout, p)

def draw_import_preferences(layout, p) -> None:
    """Import options and cache limits (their own block of the preferences)."""
    box = layout.box()
    box.label(text="Import (defaults for every job)")
    col = box.column()
    col.prop(p, "rest_on_ground")
    col.prop(p, "target_height")
    col.prop(p, "target_faces")
    col.prop(p, "shading")
    col.prop(p, "clear_custom_normals")
    box = layout.box()
    box.label(text="Cached results and previews")
    row = box.row()
    row.prop(p, "cache_limit_mb")
    row.prop(p, "cache_max_days")

def register() -> None:
    bpy.utils.register_class(MPOD123_Preferences)


def unregister() -> None:
    bpy.utils.unregister_class(MPOD123_Preferences)
