"""The sidebar panels (3D View > Sidebar > MPOD123). Drawing only: no state changes, no sockets."""

from __future__ import annotations

import bpy

from .. import session
from ..blender.inputs import editor_image, input_problem, render_result
from ..blender.preferences import prefs
from ..blender.properties import ACTIVE_STATES, active_job, state
from .backend_ops import draw_status
from .common import max_image_bytes
from .text_ops import draw_input

PREVIEW_SCALE = 10.0


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

    def draw_header_preset(self, context):
        self.layout.operator("mpod123.help", text="", icon="HELP", emboss=False)

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
        if draw_input(layout, context):  # Text mode: the prompt and its candidates instead
            return
        layout.prop(st, "source", expand=True)
        if st.source == "FILE":
            layout.prop(st, "filepath", text="")
        elif st.source == "DATABLOCK":
            layout.template_ID(st, "image", open="image.open")
        elif st.source == "RENDER":
            image = render_result()
            layout.label(text="the last render" if image else "render an image first (F12)",
                         icon="RENDER_RESULT" if image else "INFO")
        else:
            image = editor_image(context)
            if image is not None:
                layout.label(text=image.name, icon="IMAGE_DATA")
        problem = input_problem(context, max_image_bytes())
        for line in _wrap(problem, 48):
            layout.label(text=line, icon="INFO")


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
        row = col.row(align=True)
        sub = row.row(align=True)
        sub.enabled = not st.random_seed
        sub.prop(st, "seed")
        row.prop(st, "random_seed", text="", icon="FILE_REFRESH", toggle=True)
        col.prop(st, "steps")
        layout.prop(st, "collection", icon="OUTLINER_COLLECTION")
        row = layout.row()
        row.scale_y = 1.5
        row.operator("mpod123.generate", icon="MESH_MONKEY")
        layout.operator("mpod123.texture_selected", icon="TEXTURE")


class MPOD123_PT_import(_Sidebar, bpy.types.Panel):
    bl_idname = "MPOD123_PT_import"
    bl_label = "Import Options"
    bl_parent_id = "MPOD123_PT_job"
    bl_options = {"DEFAULT_CLOSED"}

    def draw_header(self, context):
        self.layout.prop(state(context), "override_import", text="")

    def draw(self, context):
        st = state(context)
        src = st if st.override_import else prefs(context)
        col = self.layout.column()
        col.enabled = st.override_import
        if not st.override_import:
            col.label(text="from the preferences (tick to override)", icon="PREFERENCES")
        draw_import_options(col, src)


def draw_import_options(layout, src) -> None:
    layout.prop(src, "rest_on_ground")
    layout.prop(src, "target_height")
    layout.prop(src, "target_faces")
    layout.prop(src, "shading")
    layout.prop(src, "clear_custom_normals")


class MPOD123_PT_server(_Sidebar, bpy.types.Panel):
    bl_idname = "MPOD123_PT_server"
    bl_label = "Server"
    bl_parent_id = "MPOD123_PT_main"

    def draw(self, context):
        st = state(context)
        p = prefs(context)
        layout = self.layout
        col = layout.column(align=True)
        moved = st.connection == "connected" and session.config_changed(context)
        connected = st.connection == "connected" and not moved
        status = "not connected (the address or keys changed: click Connect)" if moved else st.connection
        col.label(text=f"{p.address}: {status}", icon="CHECKMARK" if connected else "UNLINKED")
        if connected:
            col.label(text=f"{st.server_name or 'backend'}, protocol {st.server_version}")
            col.label(text=f"GPU: {st.server_gpu or 'not reported'}")
        blocked = session.online_blocker(p.address)
        for line in _wrap(blocked or st.server_message, 48):
            col.label(text=line, icon="ERROR" if line else "NONE")
        if p.use_local_backend and not (p.local_command or "").strip():
            draw_status(layout.column(align=True))  # the managed backend: one line (and a bar while installing)
        row = layout.row(align=True)
        row.operator("mpod123.connect", icon="LINKED")
        if st.local_pid:
            row.operator("mpod123.stop_backend", icon="CANCEL", text="Stop Local")
        elif p.use_local_backend:
            row.operator("mpod123.start_backend", icon="PLAY", text="Start Local")


class MPOD123_UL_jobs(bpy.types.UIList):
    """One row per job: name, state and overall progress."""

    bl_idname = "MPOD123_UL_jobs"

    def draw_item(self, context, layout, data, job, icon, active_data, active_propname, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.label(text=job.name, icon=STATE_ICONS.get(job.state, "DOT"))
        row.label(text=job.activity or _row_status(job))


STATE_ICONS = {
    "sending": "EXPORT", "unsent": "ERROR", "queued": "TIME", "running": "PLAY", "cancelling": "PAUSE",
    "downloading": "IMPORT", "done": "CHECKMARK", "imported": "OBJECT_DATA", "failed": "CANCEL",
    "cancelled": "X",
}


def _row_status(job) -> str:
    if job.state == "running" and job.stages:
        s = job.stages[-1]
        return f"{s.stage} {s.step}/{s.total}"
    return job.state


class MPOD123_PT_progress(_Sidebar, bpy.types.Panel):
    bl_idname = "MPOD123_PT_progress"
    bl_label = "Jobs"
    bl_parent_id = "MPOD123_PT_main"

    def draw(self, context):
        st = state(context)
        layout = self.layout
        row = layout.row()
        row.template_list("MPOD123_UL_jobs", "", st, "jobs", st, "active_job", rows=3)
        col = row.column(align=True)
        col.operator("mpod123.remove_job", icon="REMOVE", text="").job_id = ""
        col.operator("mpod123.clear_finished", icon="TRASH", text="")
        col.operator("mpod123.import_finished", icon="IMPORT", text="")
        job = active_job(context)
        if job is None:
            layout.label(text="no jobs yet")
            return
        box = layout.box()
        box.label(text=f"{job.name} ({job.job_id[:8]}): {job.state}")
        box.label(text=f"preset {job.preset or '?'}, seed {job.seed}" + (f", {job.steps} steps" if job.steps else ""))
        if job.activity:
            box.label(text=job.activity, icon="SORTTIME")
        for stage in job.stages:
            factor = 1.0 if stage.done else (stage.step / stage.total if stage.total else 0.0)
            text = f"{stage.stage}: {stage.step}/{stage.total}" + ("" if stage.done else _eta(stage.eta_s))
            box.progress(factor=factor, type="BAR", text=text)
        for line in _wrap(job.message, 48)[:3]:
            box.label(text=line)
        row = box.row(align=True)
        if job.state in ACTIVE_STATES or job.state == "unsent":
            row.operator("mpod123.cancel", icon="CANCEL").job_id = job.job_id
        if job.state in ("done", "imported"):
            text = "Import Again" if job.state == "imported" else "Import Result"
            row.operator("mpod123.import_result", icon="IMPORT", text=text).job_id = job.job_id
        row.operator("mpod123.recall", icon="RECOVER_LAST", text="Recall").job_id = job.job_id


class MPOD123_PT_previews(_Sidebar, bpy.types.Panel):
    bl_idname = "MPOD123_PT_previews"
    bl_label = "Previews"
    bl_parent_id = "MPOD123_PT_main"

    def draw(self, context):
        layout = self.layout
        layout.prop(prefs(context), "show_mesh_previews")
        job = active_job(context)
        if job is None:
            layout.label(text="previews appear while a job runs")
            return
        layout.label(text=f"{job.name}", icon="IMAGE_DATA")
        for label, name in (("Matte (what the model sees)", job.preview_matte), ("Stage 1: outline", job.preview_outline),
                            ("Stage 2: detail", job.preview_detail)):
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


class MPOD123_PT_image_editor(bpy.types.Panel):
    """Generate from the image shown in this Image Editor: an explicit choice when several editors are open."""

    bl_idname = "MPOD123_PT_image_editor"
    bl_label = "MPOD123"
    bl_space_type = "IMAGE_EDITOR"
    bl_region_type = "UI"
    bl_category = "MPOD123"

    def draw(self, context):
        self.layout.operator("mpod123.generate_from_editor", icon="MESH_MONKEY")


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


CLASSES = (MPOD123_UL_jobs, MPOD123_PT_main, MPOD123_PT_input, MPOD123_PT_job, MPOD123_PT_import, MPOD123_PT_server,
           MPOD123_PT_progress, MPOD123_PT_previews, MPOD123_PT_image_editor)
PANELS = tuple(c for c in CLASSES if issubclass(c, bpy.types.Panel))


register, unregister = bpy.utils.register_classes_factory(CLASSES)
