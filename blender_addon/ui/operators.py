"""Operators: thin wrappers that gather input from Blender and call the session."""

from __future__ import annotations

import os
import random

import bpy
from bpy.props import EnumProperty, StringProperty

from .. import session
from ..blender import extra_views
from ..blender.candidates import is_candidates
from ..blender.inputs import input_image, input_problem
from ..blender.preferences import prefs
from ..blender.properties import ACTIVE_STATES, IMPORT_OPTION_NAMES, PRESETS, active_job, find_job, state
from ..core.client import is_loopback, read_key_file
from ..core.errors import AddonError
from .common import (AddonOperator, JobOperator, address_problem, has_jobs, max_image_bytes, poll_reason, run_options,
                     submit_at_cursor)

GUIDE_URL = ""
"""Where the add-on guide (docs/blender.md) is published; the Help button opens it. Empty until the project has a
public address (then also set ``website`` in blender_manifest.toml)."""

class MPOD123_OT_report(bpy.types.Operator):
    """Show a message in Blender's status bar and Info log (used by the background updates)"""

    bl_idname = "mpod123.report"
    bl_label = "MPOD123 Report"
    bl_options = frozenset({"INTERNAL"})

    level: EnumProperty(items=[(k, k, "") for k in ("INFO", "WARNING", "ERROR")], default="INFO")
    message: StringProperty()

    @classmethod
    def poll(cls, context):
        return poll_reason(cls, "" if context.window_manager is not None else "no window manager")

    def execute(self, context):
        self.report({self.level}, self.message)
        return {"FINISHED"}


class MPOD123_OT_connect(AddonOperator):
    """Connect to the backend (starting the local one if set up so); the answer shows in the Server section"""

    bl_idname = "mpod123.connect"
    bl_label = "Connect"

    @classmethod
    def poll(cls, context):
        return poll_reason(cls, address_problem(context) or ("already connecting" if session.current().connecting else ""))

    def run(self, context):
        state(context).last_error = ""
        session.connect(context)
        self.report({"INFO"}, f"connecting to {prefs(context).address}")


class MPOD123_OT_generate(AddonOperator):
    """Send the input image to the backend and build a textured mesh from it, placed at the 3D cursor"""

    bl_idname = "mpod123.generate"
    bl_label = "Generate from Image"

    @classmethod
    def poll(cls, context):
        return poll_reason(cls, input_problem(context, max_image_bytes()) or extra_views.problem(context) or address_problem(context))

    def run(self, context):
        st = state(context)
        data, name, label = input_image(context, max_image_bytes())
        views = extra_views.collect(context)  # optional photos from other sides, with their angles
        if st.random_seed:
            st.seed = random.randrange(0, 2**31 - 1)
        job_id = submit_at_cursor(context, data, name, run_options(context), label, views)
        self.report({"INFO"}, f"sending {name} as job {job_id[:8]}")


class MPOD123_OT_generate_from_editor(AddonOperator):
    """Generate from the image of this Image Editor (placed at the 3D cursor)"""

    bl_idname = "mpod123.generate_from_editor"
    bl_label = "Generate from This Image"

    @classmethod
    def poll(cls, context):
        space = getattr(context, "space_data", None)
        if space is None or space.type != "IMAGE_EDITOR" or space.image is None:
            return poll_reason(cls, "show an image in this Image Editor first")
        return poll_reason(cls, address_problem(context))

    def run(self, context):
        st = state(context)
        st.source, st.image = "DATABLOCK", context.space_data.image
        return bpy.ops.mpod123.generate()


class MPOD123_OT_cancel(JobOperator):
    """Cancel a queued or running job"""

    bl_idname = "mpod123.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        running = any(j.state in ACTIVE_STATES + ("unsent",) for j in state(context).jobs)
        return poll_reason(cls, "" if running else "no job is queued or running")

    def run(self, context):
        job = self.job(context)
        session.cancel(context, job.job_id)
        self.report({"INFO"}, f"{job.name}: cancelling")


class MPOD123_OT_import_result(JobOperator):
    """Import a finished job's result (again), as one undo step, where the job was asked for"""

    bl_idname = "mpod123.import_result"
    bl_label = "Import Result"
    bl_options = frozenset({"REGISTER"})

    @classmethod
    def poll(cls, context):
        ready = any(j.state in ("done", "imported") for j in state(context).jobs)
        return poll_reason(cls, "" if ready else "no finished job in the list")

    def run(self, context):
        job = self.job(context)
        session.request_import(context, job)
        self.report({"INFO"}, f"importing {job.name}")


class MPOD123_OT_import_finished(AddonOperator):
    """Ask the backend for this installation's finished jobs that were never imported and import them"""

    bl_idname = "mpod123.import_finished"
    bl_label = "Import Finished Results"

    @classmethod
    def poll(cls, context):
        return poll_reason(cls, address_problem(context))

    def run(self, context):
        session.import_finished(context, tuple(context.scene.cursor.location))
        self.report({"INFO"}, "looking for finished results")


class MPOD123_OT_remove_job(bpy.types.Operator):
    """Remove a job from the list (the backend keeps its result until it expires)"""

    bl_idname = "mpod123.remove_job"
    bl_label = "Remove from List"
    bl_options = frozenset({"INTERNAL"})

    job_id: StringProperty()

    @classmethod
    def poll(cls, context):
        return poll_reason(cls, has_jobs(context))

    def execute(self, context):
        job = find_job(context, self.job_id) if self.job_id else active_job(context)
        if job is None:
            return {"CANCELLED"}
        if job.state in ACTIVE_STATES:
            self.report({"WARNING"}, f"{job.name} is still {job.state}: cancel it first")
            return {"CANCELLED"}
        session.forget_jobs(context, [job.job_id])
        return {"FINISHED"}


def finished(job) -> bool:
    """Nothing more will happen to it: imported, failed, cancelled, or a candidates job whose images are here."""
    return job.state in ("imported", "failed", "cancelled") or (job.state == "done" and is_candidates(job))


class MPOD123_OT_clear_finished(bpy.types.Operator):
    """Remove every finished, failed and cancelled job from the list"""

    bl_idname = "mpod123.clear_finished"
    bl_label = "Clear Finished"

    @classmethod
    def poll(cls, context):
        done = any(finished(j) for j in state(context).jobs)
        return poll_reason(cls, "" if done else "no finished jobs in the list")

    def execute(self, context):
        ids = [j.job_id for j in state(context).jobs if finished(j)]
        session.forget_jobs(context, ids)
        self.report({"INFO"}, f"removed {len(ids)} job(s) from the list")
        return {"FINISHED"}


class MPOD123_OT_recall(JobOperator):
    """Put this job's preset, seed, steps, collection and import options back into the panel"""

    bl_idname = "mpod123.recall"
    bl_label = "Recall Settings"

    @classmethod
    def poll(cls, context):
        return poll_reason(cls, has_jobs(context))

    def run(self, context):
        job = self.job(context)
        st = state(context)
        if job.preset in {p[0] for p in PRESETS}:
            st.preset = job.preset
        st.seed, st.steps, st.random_seed = job.seed, job.steps, False
        st.collection = job.collection or "Generated"
        for k in IMPORT_OPTION_NAMES:
            setattr(st, k, getattr(job, k))
        st.override_import = True
        if job.input_path and os.path.isfile(job.input_path):
            st.source, st.filepath = "FILE", job.input_path
        self.report({"INFO"}, f"settings of {job.name} recalled (seed {job.seed})")


class MPOD123_OT_show_preview(bpy.types.Operator):
    """Show this preview in an Image Editor (the first one on the screen)"""

    bl_idname = "mpod123.show_preview"
    bl_label = "Show in Image Editor"

    image_name: StringProperty()

    @classmethod
    def poll(cls, context):
        return poll_reason(cls, "" if any(im.name.startswith("MPOD123 ") for im in bpy.data.images) else "no preview yet")

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


class MPOD123_OT_help(bpy.types.Operator):
    """Open the MPOD123 add-on guide"""

    bl_idname = "mpod123.help"
    bl_label = "MPOD123 Guide"

    @classmethod
    def poll(cls, context):
        return poll_reason(cls, "" if guide_url() else "the guide is docs/blender.md in the MPOD123 sources")

    def execute(self, context):
        bpy.ops.wm.url_open(url=guide_url())
        return {"FINISHED"}


def guide_url() -> str:
    """GUIDE_URL, or the guide of the checkout the add-on runs from."""
    if GUIDE_URL:
        return GUIDE_URL
    local = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "blender.md")
    return "file://" + local.replace(os.sep, "/") if os.path.isfile(local) else ""


class MPOD123_OT_start_backend(AddonOperator):
    """Start the local backend with the command from the add-on preferences"""

    bl_idname = "mpod123.start_backend"
    bl_label = "Start Local Backend"

    @classmethod
    def poll(cls, context):
        p = prefs(context)
        if session.local_running():
            return poll_reason(cls, "the local backend is running")
        return poll_reason(cls, "" if is_loopback(p.address) else "the server address is not on this computer")

    def run(self, context):
        pid = session.start_local(context)
        self.report({"INFO"}, f"local backend started (pid {pid})")


class MPOD123_OT_stop_backend(AddonOperator):
    """Stop the local backend this add-on started"""

    bl_idname = "mpod123.stop_backend"
    bl_label = "Stop Local Backend"

    @classmethod
    def poll(cls, context):
        return poll_reason(cls, "" if session.local_running() else "no local backend was started here")

    def run(self, context):
        session.disconnect()
        session.stop_local()
        state(context).connection = "not connected"
        self.report({"INFO"}, "local backend stopped")


class MPOD123_OT_load_keys(AddonOperator):
    """Copy the keys from the key files into the preferences"""

    bl_idname = "mpod123.load_keys"
    bl_label = "Load Keys"

    @classmethod
    def poll(cls, context):
        p = prefs(context)
        return poll_reason(cls, "" if p.server_key_file or p.client_key_file else "choose the key files first")

    def run(self, context):
        p = prefs(context)
        try:
            if p.server_key_file:
                p.server_public_key = read_key_file(bpy.path.abspath(p.server_key_file))[0]
            if p.client_key_file:
                public, secret = read_key_file(bpy.path.abspath(p.client_key_file))
                if not secret:
                    raise AddonError(f"{p.client_key_file} holds no secret key: choose the NAME.key_secret file")
                p.client_public_key, p.client_secret_key = public, secret
        except (OSError, ValueError) as exc:
            raise AddonError(f"cannot read the key file: {exc}") from None
        self.report({"INFO"}, "keys loaded")


CLASSES = (
    MPOD123_OT_report, MPOD123_OT_connect, MPOD123_OT_generate, MPOD123_OT_generate_from_editor, MPOD123_OT_cancel,
    MPOD123_OT_import_result, MPOD123_OT_import_finished, MPOD123_OT_remove_job, MPOD123_OT_clear_finished,
    MPOD123_OT_recall, MPOD123_OT_show_preview, MPOD123_OT_help, MPOD123_OT_start_backend, MPOD123_OT_stop_backend,
    MPOD123_OT_load_keys,
)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
