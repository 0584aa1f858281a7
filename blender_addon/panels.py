"""The sidebar panels (3D View > Sidebar > MPOD123). Drawing only: no state changes, no sockets."""

from __future__ import annotations

import bpy

from . import bridge, operators_backend
from .preferences import prefs
from .properties import active_job, state

ACTIVE_STATES = ("queued", "running", "cancelling")
PREVIEW_SCALE = 8.0


def _eta(seconds: float) -> str:
    if seconds < 0:
        return ""
    if seconds < 90:
        return f", {seconds:.0f} s left"
    return f", {seconds / 60:.0f} min left"


class _Sidebar:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "MPOD123"


class MPOD123_PT_main(_Sidebar, bpy.types.Panel):
    bl_idname = "MPOD123_PT_main"
    bl_label = "MPOD123"

    def draw(self, context):
        st = state(context)
        layout = self.layout
        if st.last_error:
            box = layout.box()
            for i, line in enumerate(_wrap(st.last_error, 48)):
                box.label(text=line, icon="ERROR" if i == 0 else "BLANK1")


class MPOD123_PT_input(_Sidebar, bpy.types.Panel):
    bl_idname = "MPOD123_PT_input"
    bl_label = "Input"
    bl_parent_id = "MPOD123_PT_main"

    def draw(self, context):
        st = state(context)
        layout = self.layout
        layout.prop(st, "source", expand=True)
        if st.source == "FILE":
            layout.prop(st, "filepath", text="")
        elif st.source == "DATABLOCK":
            layout.template_ID(st, "image", open="image.open")
        else:
            from .operators import editor_image

            image = editor_image(context)
            layout.label(text=image.name if image else "open an image in an Image Editor",
                         icon="IMAGE_DATA" if image else "INFO")


class MPOD123_PT_job(_Sidebar, bpy.types.Panel):
    bl_idname = "MPOD123_PT_job"
    bl_label = "Job"
    bl_parent_id = "MPOD123_PT_main"

    def draw(self, context):
        st = state(context)
        layout = self.layout
        row = layout.row()
        row.prop(st, "preset", expand=True)
        col = layout.column(align=True)
        col.prop(st, "seed")
        col.prop(st, "steps")
        row = layout.row()
        row.scale_y = 1.5
        row.operator("mpod123.generate", icon="MESH_MONKEY")


class MPOD123_PT_server(_Sidebar, bpy.types.Panel):
    bl_idname = "MPOD123_PT_server"
    bl_label = "Server"
    bl_parent_id = "MPOD123_PT_main"

    def draw(self, context):
        st = state(context)
        p = prefs(context)
        layout = self.layout
        col = layout.column(align=True)
        connected = st.connection == "connected"
        col.label(text=f"{p.address}: {st.connection}", icon="CHECKMARK" if connected else "UNLINKED")
        if connected:
            col.label(text=f"{st.server_name or 'backend'}, protocol {st.server_version}")
            col.label(text=f"GPU: {st.server_gpu or 'not reported'}")
        blocked = bridge.online_blocker(p.address)
        for line in _wrap(blocked or st.server_message, 48):
            col.label(text=line, icon="ERROR" if line else "NONE")
        if p.use_local_backend and not (p.local_command or "").strip():
            operators_backend.draw_status(layout.column(align=True))  # the managed backend: one line (and a bar while installing)
        row = layout.row(align=True)
        row.operator("mpod123.connect", icon="LINKED")
        if st.local_pid:
            row.operator("mpod123.stop_backend", icon="CANCEL", text="Stop Local")
        elif p.use_local_backend:
            row.operator("mpod123.start_backend", icon="PLAY", text="Start Local")


class MPOD123_PT_progress(_Sidebar, bpy.types.Panel):
    bl_idname = "MPOD123_PT_progress"
    bl_label = "Progress"
    bl_parent_id = "MPOD123_PT_main"

    def draw(self, context):
        st = state(context)
        layout = self.layout
        if not st.jobs:
            layout.label(text="no jobs yet")
        for i, job in enumerate(st.jobs):
            box = layout.box()
            row = box.row()
            icon = "RADIOBUT_ON" if i == st.active_job else "RADIOBUT_OFF"
            row.label(text="", icon=icon)
            row.label(text=f"{job.name} ({job.job_id[:8]})")
            row.label(text=job.state)
            for stage in job.stages:
                factor = 1.0 if stage.done else (stage.step / stage.total if stage.total else 0.0)
                text = f"{stage.stage}: {stage.step}/{stage.total}" + ("" if stage.done else _eta(stage.eta_s))
                box.progress(factor=factor, type="BAR", text=text)
            for line in _wrap(job.message, 48)[:3]:
                box.label(text=line)
            row = box.row(align=True)
            if job.state in ACTIVE_STATES:
                op = row.operator("mpod123.cancel", icon="CANCEL")
                op.job_id = job.job_id
            elif job.state == "done":
                op = row.operator("mpod123.import_result", icon="IMPORT")
                op.job_id = job.job_id
            if job.state not in ACTIVE_STATES:
                op = row.operator("mpod123.remove_job", icon="X", text="")
                op.job_id = job.job_id
        layout.operator("mpod123.import_result", text="Import Finished Results", icon="IMPORT").job_id = ""


class MPOD123_PT_previews(_Sidebar, bpy.types.Panel):
    bl_idname = "MPOD123_PT_previews"
    bl_label = "Previews"
    bl_parent_id = "MPOD123_PT_main"

    def draw(self, context):
        layout = self.layout
        job = active_job(context)
        if job is None:
            layout.label(text="previews appear while a job runs")
            return
        for label, name in (("Stage 1: outline", job.preview_outline), ("Stage 2: detail", job.preview_detail)):
            image = bpy.data.images.get(name) if name else None
            layout.label(text=label)
            if image is None:
                layout.label(text="not yet", icon="TIME")
                continue
            preview = image.preview_ensure()
            layout.template_icon(icon_value=preview.icon_id, scale=PREVIEW_SCALE)
            row = layout.row()
            row.label(text=f"{image.size[0]} x {image.size[1]}")
            row.operator("mpod123.show_preview", text="", icon="IMAGE").image_name = image.name


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` characters (labels do not wrap by themselves)."""
    lines: list[str] = []
    for para in (text or "").splitlines():
        line = ""
        for word in para.split():
            if line and len(line) + 1 + len(word) > width:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        if line:
            lines.append(line)
    return lines


CLASSES = (MPOD123_PT_main, MPOD123_PT_input, MPOD123_PT_job, MPOD123_PT_server, MPOD123_PT_progress, MPOD123_PT_previews)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
