"""Operators: thin wrappers that gather input from Blender and call the bridge."""

from __future__ import annotations

import os
import tempfile

import bpy
from bpy.props import EnumProperty, StringProperty

from . import bridge
from .client import read_key_file
from .importer import object_name_for
from .preferences import prefs
from .properties import active_job, find_job, state

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".exr"}


def editor_image(context) -> bpy.types.Image | None:
    """The image of the Image Editor in the context, or else of the first one on the screen."""
    space = getattr(context, "space_data", None)
    if space is not None and space.type == "IMAGE_EDITOR" and space.image is not None:
        return space.image
    screen = getattr(context, "screen", None)
    for area in getattr(screen, "areas", ()):
        if area.type == "IMAGE_EDITOR" and area.spaces.active.image is not None:
            return area.spaces.active.image
    return None


def image_bytes(image: bpy.types.Image) -> bytes:
    """The bytes of an image datablock as an image file (its file, its packed file, or a PNG written now)."""
    if image.packed_file is not None:
        return bytes(image.packed_file.data)
    path = bpy.path.abspath(image.filepath) if image.filepath else ""
    if path and os.path.isfile(path) and not image.is_dirty:
        with open(path, "rb") as f:
            return f.read()
    if not image.has_data and image.size[0] == 0:
        raise bridge.BridgeError(f"the image {image.name!r} has no pixels")
    fd, tmp = tempfile.mkstemp(suffix=".png")
    os.close(fd)
    try:
        image.save_render(tmp)  # writes the pixels as they are shown, whatever the source
        with open(tmp, "rb") as f:
            return f.read()
    finally:
        os.unlink(tmp)


def input_image(context) -> tuple[bytes, str]:
    """(image file bytes, object name) for the panel's chosen input."""
    st = state(context)
    if st.source == "FILE":
        path = bpy.path.abspath(st.filepath)
        if not st.filepath or not os.path.isfile(path):
            raise bridge.BridgeError(f"no image file at {path!r}: choose one in the Input section")
        with open(path, "rb") as f:
            return f.read(), object_name_for(path)
    image = st.image if st.source == "DATABLOCK" else editor_image(context)
    if image is None:
        where = "pick an image in the Input section" if st.source == "DATABLOCK" else "open an image in an Image Editor"
        raise bridge.BridgeError(f"no input image: {where}")
    return image_bytes(image), object_name_for(image.name)


class MPOD123_OT_report(bpy.types.Operator):
    """Show a message in Blender's status bar and Info log (used by the background updates)"""

    bl_idname = "mpod123.report"
    bl_label = "MPOD123 Report"
    bl_options = frozenset({"INTERNAL"})

    level: EnumProperty(items=[(k, k, "") for k in ("INFO", "WARNING", "ERROR")], default="INFO")
    message: StringProperty()

    def execute(self, context):
        self.report({self.level}, self.message)
        return {"FINISHED"}


class _BridgeOperator(bpy.types.Operator):
    def run(self, context):  # pragma: no cover - overridden
        raise NotImplementedError

    def execute(self, context):
        try:
            return self.run(context) or {"FINISHED"}
        except bridge.BridgeError as exc:
            state(context).last_error = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}


class MPOD123_OT_connect(_BridgeOperator):
    """Connect to the backend (starting the local one if set up so) and show its status"""

    bl_idname = "mpod123.connect"
    bl_label = "Connect"

    def run(self, context):
        info = bridge.connect(context)
        state(context).last_error = ""
        self.report({"INFO"}, f"connected to {info.get('server', 'the backend')} at {prefs(context).address}")


class MPOD123_OT_generate(_BridgeOperator):
    """Send the input image to the backend and build a textured mesh from it, imported at the 3D cursor"""

    bl_idname = "mpod123.generate"
    bl_label = "Generate from Image"

    def run(self, context):
        st = state(context)
        data, name = input_image(context)
        options = {"preset": st.preset, "seed": int(st.seed)}
        if st.steps > 0:
            options["steps"] = int(st.steps)
        job_id = bridge.submit(context, data, name, options, tuple(context.scene.cursor.location))
        st.last_error = ""
        self.report({"INFO"}, f"queued {name} as job {job_id[:8]}")


class MPOD123_OT_cancel(_BridgeOperator):
    """Cancel a queued or running job"""

    bl_idname = "mpod123.cancel"
    bl_label = "Cancel"

    job_id: StringProperty(name="Job ID", description="The job to cancel (empty: the active job)")

    def run(self, context):
        job = find_job(context, self.job_id) if self.job_id else active_job(context)
        if job is None:
            raise bridge.BridgeError("no job to cancel")
        new_state = bridge.cancel(context, job.job_id)
        self.report({"INFO"}, f"{job.name}: {new_state}")


class MPOD123_OT_import_result(_BridgeOperator):
    """Import finished results: the active job's, or any of this client's finished jobs not imported yet"""

    bl_idname = "mpod123.import_result"
    bl_label = "Import Result"

    job_id: StringProperty(name="Job ID", description="The job to import (empty: every finished, unimported job)")

    def run(self, context):
        job = find_job(context, self.job_id) if self.job_id else None
        if job is not None:
            obj = bridge.import_result(context, job)
            self.report({"INFO"}, f"imported {obj.name}")
            return
        objs = bridge.import_finished(context, tuple(context.scene.cursor.location))
        self.report({"INFO"}, f"imported {len(objs)} result(s)" if objs else "no finished results left to import")


class MPOD123_OT_remove_job(bpy.types.Operator):
    """Remove a finished job from the list (the backend keeps its result until it expires)"""

    bl_idname = "mpod123.remove_job"
    bl_label = "Remove from List"
    bl_options = frozenset({"INTERNAL"})

    job_id: StringProperty()

    def execute(self, context):
        st = state(context)
        for i, job in enumerate(st.jobs):
            if job.job_id == self.job_id:
                st.jobs.remove(i)
                st.active_job = max(0, min(st.active_job, len(st.jobs) - 1))
                break
        return {"FINISHED"}


class MPOD123_OT_show_preview(bpy.types.Operator):
    """Show this preview in an Image Editor (the first one on the screen)"""

    bl_idname = "mpod123.show_preview"
    bl_label = "Show in Image Editor"

    image_name: StringProperty()

    def execute(self, context):
        image = bpy.data.images.get(self.image_name)
        if image is None:
            self.report({"WARNING"}, "no preview yet")
            return {"CANCELLED"}
        for area in getattr(context.screen, "areas", ()):
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image
                return {"FINISHED"}
        self.report({"INFO"}, f"open an Image Editor and choose {image.name!r} to see it full size")
        return {"FINISHED"}


class MPOD123_OT_start_backend(_BridgeOperator):
    """Start the local backend with the command from the add-on preferences"""

    bl_idname = "mpod123.start_backend"
    bl_label = "Start Local Backend"

    def run(self, context):
        pid = bridge.start_local(context)
        self.report({"INFO"}, f"local backend started (pid {pid})")


class MPOD123_OT_stop_backend(_BridgeOperator):
    """Stop the local backend this add-on started"""

    bl_idname = "mpod123.stop_backend"
    bl_label = "Stop Local Backend"

    def run(self, context):
        bridge.disconnect()
        bridge.stop_local()
        state(context).connection = "not connected"
        self.report({"INFO"}, "local backend stopped")


class MPOD123_OT_load_keys(_BridgeOperator):
    """Copy the keys from the key files into the preferences"""

    bl_idname = "mpod123.load_keys"
    bl_label = "Load Keys"

    def run(self, context):
        p = prefs(context)
        try:
            if p.server_key_file:
                p.server_public_key = read_key_file(bpy.path.abspath(p.server_key_file))[0]
            if p.client_key_file:
                public, secret = read_key_file(bpy.path.abspath(p.client_key_file))
                if not secret:
                    raise bridge.BridgeError(f"{p.client_key_file} holds no secret key: choose the NAME.key_secret file")
                p.client_public_key, p.client_secret_key = public, secret
        except (OSError, ValueError) as exc:
            raise bridge.BridgeError(f"cannot read the key file: {exc}") from None
        self.report({"INFO"}, "keys loaded")


CLASSES = (
    MPOD123_OT_report, MPOD123_OT_connect, MPOD123_OT_generate, MPOD123_OT_cancel, MPOD123_OT_import_result,
    MPOD123_OT_remove_job, MPOD123_OT_show_preview, MPOD123_OT_start_backend, MPOD123_OT_stop_backend,
    MPOD123_OT_load_keys,
)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
