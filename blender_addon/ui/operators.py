"""Operators: thin wrappers that gather input from Blender and call the bridge."""

from __future__ import annotations

import os
import random
import tempfile

import bpy
from bpy.props import EnumProperty, StringProperty

from ..session import bridge
from ..core.client import is_loopback, read_key_file
from ..blender.importer import object_name_for
from ..blender.preferences import prefs
from ..blender.properties import ACTIVE_STATES, IMPORT_OPTION_NAMES, PRESETS, active_job, find_job, state

GUIDE_URL = ""
"""Where the add-on guide (docs/blender.md) is published; the Help button opens it. Empty until the project has a
public address (then also set ``website`` in blender_manifest.toml)."""

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".exr"}


def editor_images(context) -> list[bpy.types.Image]:
    """The distinct images shown in the Image Editors of the screen (the one in the context first)."""
    found: list[bpy.types.Image] = []
    space = getattr(context, "space_data", None)
    if space is not None and space.type == "IMAGE_EDITOR" and space.image is not None:
        found.append(space.image)
    screen = getattr(context, "screen", None)
    for area in getattr(screen, "areas", ()):
        if area.type == "IMAGE_EDITOR" and area.spaces.active.image is not None:
            if area.spaces.active.image not in found:
                found.append(area.spaces.active.image)
    return found


def editor_image(context) -> bpy.types.Image | None:
    """The Image Editor's image: the one in the context, else the only one shown (None when several differ)."""
    space = getattr(context, "space_data", None)
    if space is not None and space.type == "IMAGE_EDITOR" and space.image is not None:
        return space.image
    images = editor_images(context)
    return images[0] if len(images) == 1 else None


def render_result() -> bpy.types.Image | None:
    return next((im for im in bpy.data.images if im.type == "RENDER_RESULT"), None)


def image_bytes(image: bpy.types.Image) -> bytes:
    """The bytes of an image datablock as an image file (its file, its packed file, or a PNG written now).

    The Render Result and generated or edited images are written with ``save_render``, which takes the
    pixels as Blender shows them whatever their source.
    """
    if image.type != "RENDER_RESULT":
        if image.packed_file is not None:
            return bytes(image.packed_file.data)
        path = bpy.path.abspath(image.filepath) if image.filepath else ""
        if path and os.path.isfile(path) and not image.is_dirty:
            with open(path, "rb") as f:
                return f.read()
    fd, tmp = tempfile.mkstemp(suffix=".png")
    os.close(fd)
    try:
        try:
            image.save_render(tmp)  # writes the pixels as they are shown, whatever the source
        except RuntimeError as exc:
            what = "render an image first (F12)" if image.type == "RENDER_RESULT" else "it has no pixels"
            raise bridge.BridgeError(f"cannot use the image {image.name!r}: {what} ({exc})") from None
        with open(tmp, "rb") as f:
            data = f.read()
        if not data:
            raise bridge.BridgeError(f"the image {image.name!r} has no pixels")
        return data
    finally:
        os.unlink(tmp)


def input_problem(context) -> str:
    """Why Generate cannot run now ('' when it can); cheap enough for poll()."""
    st = state(context)
    if st.source == "FILE":
        path = bpy.path.abspath(st.filepath)
        if not st.filepath:
            return "choose an image file in the Input section"
        if not os.path.isfile(path):
            return f"no image file at {path}"
        return ""
    if st.source == "DATABLOCK":
        return "" if st.image is not None else "pick an image in the Input section"
    if st.source == "RENDER":
        return "" if render_result() is not None else "render an image first (F12), or choose another input"
    images = editor_images(context)
    if not images:
        return "open an image in an Image Editor, or choose another input"
    if editor_image(context) is None:
        return (f"{len(images)} Image Editors show different images: choose one as Image, or use Generate in "
                "that Image Editor's sidebar")
    return ""


def input_image(context) -> tuple[bytes, str, str]:
    """(image file bytes, object name, where it came from) for the panel's chosen input."""
    st = state(context)
    problem = input_problem(context)
    if problem:
        raise bridge.BridgeError(f"no input image: {problem}")
    if st.source == "FILE":
        path = bpy.path.abspath(st.filepath)
        with open(path, "rb") as f:
            return f.read(), object_name_for(path), path
    image = {"DATABLOCK": lambda: st.image, "RENDER": render_result}.get(st.source, lambda: editor_image(context))()
    return image_bytes(image), object_name_for(image.name), image.name


def _poll(cls, reason: str) -> bool:
    """poll(): False with ``reason`` shown in the button's tooltip, or True when ``reason`` is empty."""
    if reason:
        cls.poll_message_set(reason)
        return False
    return True


def _has_jobs(context) -> str:
    return "" if state(context).jobs else "no jobs in the list"


def _address_problem(context) -> str:
    p = prefs(context)
    return bridge.online_blocker(p.address)


def _job_import_options(context) -> dict:
    """The import options for a new job: the panel's override, else the preferences."""
    src = state(context) if state(context).override_import else prefs(context)
    return {k: getattr(src, k) for k in IMPORT_OPTION_NAMES}


class MPOD123_OT_report(bpy.types.Operator):
    """Show a message in Blender's status bar and Info log (used by the background updates)"""

    bl_idname = "mpod123.report"
    bl_label = "MPOD123 Report"
    bl_options = frozenset({"INTERNAL"})

    level: EnumProperty(items=[(k, k, "") for k in ("INFO", "WARNING", "ERROR")], default="INFO")
    message: StringProperty()

    @classmethod
    def poll(cls, context):
        return _poll(cls, "" if context.window_manager is not None else "no window manager")

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
    """Connect to the backend (starting the local one if set up so); the answer shows in the Server section"""

    bl_idname = "mpod123.connect"
    bl_label = "Connect"

    @classmethod
    def poll(cls, context):
        return _poll(cls, _address_problem(context) or ("already connecting" if bridge._connecting else ""))

    def run(self, context):
        state(context).last_error = ""
        bridge.connect(context)
        self.report({"INFO"}, f"connecting to {prefs(context).address}")


class MPOD123_OT_generate(_BridgeOperator):
    """Send the input image to the backend and build a textured mesh from it, placed at the 3D cursor"""

    bl_idname = "mpod123.generate"
    bl_label = "Generate from Image"

    @classmethod
    def poll(cls, context):
        from ..blender import extra_views

        return _poll(cls, input_problem(context) or extra_views.problem(context) or _address_problem(context))

    def run(self, context):
        from ..blender import extra_views

        st = state(context)
        data, name, label = input_image(context)
        views = extra_views.collect(context)  # optional photos from other sides, with their angles
        if st.random_seed:
            st.seed = random.randrange(0, 2**31 - 1)
        options = {"preset": st.preset, "seed": int(st.seed)}
        if st.steps > 0:
            options["steps"] = int(st.steps)
        job_id = bridge.submit(context, data, name, options, tuple(context.scene.cursor.location),
                               collection=st.collection, import_options=_job_import_options(context),
                               input_label=label, views=views)
        st.last_error = ""
        self.report({"INFO"}, f"sending {name} as job {job_id[:8]}")


class MPOD123_OT_generate_from_editor(_BridgeOperator):
    """Generate from the image of this Image Editor (placed at the 3D cursor)"""

    bl_idname = "mpod123.generate_from_editor"
    bl_label = "Generate from This Image"

    @classmethod
    def poll(cls, context):
        space = getattr(context, "space_data", None)
        if space is None or space.type != "IMAGE_EDITOR" or space.image is None:
            return _poll(cls, "show an image in this Image Editor first")
        return _poll(cls, _address_problem(context))

    def run(self, context):
        st = state(context)
        st.source, st.image = "DATABLOCK", context.space_data.image
        return bpy.ops.mpod123.generate()


class _JobOperator(_BridgeOperator):
    job_id: StringProperty(name="Job ID", description="The job (empty: the selected job in the list)")

    def job(self, context):
        job = find_job(context, self.job_id) if self.job_id else active_job(context)
        if job is None:
            raise bridge.BridgeError("no such job in the list")
        return job


class MPOD123_OT_cancel(_JobOperator):
    """Cancel a queued or running job"""

    bl_idname = "mpod123.cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        running = any(j.state in ACTIVE_STATES + ("unsent",) for j in state(context).jobs)
        return _poll(cls, "" if running else "no job is queued or running")

    def run(self, context):
        job = self.job(context)
        bridge.cancel(context, job.job_id)
        self.report({"INFO"}, f"{job.name}: cancelling")


class MPOD123_OT_import_result(_JobOperator):
    """Import a finished job's result (again), as one undo step, where the job was asked for"""

    bl_idname = "mpod123.import_result"
    bl_label = "Import Result"
    bl_options = frozenset({"REGISTER"})

    @classmethod
    def poll(cls, context):
        ready = any(j.state in ("done", "imported") for j in state(context).jobs)
        return _poll(cls, "" if ready else "no finished job in the list")

    def run(self, context):
        job = self.job(context)
        bridge.request_import(context, job)
        self.report({"INFO"}, f"importing {job.name}")


class MPOD123_OT_import_finished(_BridgeOperator):
    """Ask the backend for this installation's finished jobs that were never imported and import them"""

    bl_idname = "mpod123.import_finished"
    bl_label = "Import Finished Results"

    @classmethod
    def poll(cls, context):
        return _poll(cls, _address_problem(context))

    def run(self, context):
        bridge.import_finished(context, tuple(context.scene.cursor.location))
        self.report({"INFO"}, "looking for finished results")


class MPOD123_OT_remove_job(bpy.types.Operator):
    """Remove a job from the list (the backend keeps its result until it expires)"""

    bl_idname = "mpod123.remove_job"
    bl_label = "Remove from List"
    bl_options = frozenset({"INTERNAL"})

    job_id: StringProperty()

    @classmethod
    def poll(cls, context):
        return _poll(cls, _has_jobs(context))

    def execute(self, context):
        job = find_job(context, self.job_id) if self.job_id else active_job(context)
        if job is None:
            return {"CANCELLED"}
        if job.state in ACTIVE_STATES:
            self.report({"WARNING"}, f"{job.name} is still {job.state}: cancel it first")
            return {"CANCELLED"}
        bridge.forget_jobs(context, [job.job_id])
        return {"FINISHED"}


class MPOD123_OT_clear_finished(bpy.types.Operator):
    """Remove every finished, failed and cancelled job from the list"""

    bl_idname = "mpod123.clear_finished"
    bl_label = "Clear Finished"

    @classmethod
    def poll(cls, context):
        done = any(j.state in ("imported", "failed", "cancelled") for j in state(context).jobs)
        return _poll(cls, "" if done else "no finished jobs in the list")

    def execute(self, context):
        ids = [j.job_id for j in state(context).jobs if j.state in ("imported", "failed", "cancelled")]
        bridge.forget_jobs(context, ids)
        self.report({"INFO"}, f"removed {len(ids)} job(s) from the list")
        return {"FINISHED"}


class MPOD123_OT_recall(_JobOperator):
    """Put this job's preset, seed, steps, collection and import options back into the panel"""

    bl_idname = "mpod123.recall"
    bl_label = "Recall Settings"

    @classmethod
    def poll(cls, context):
        return _poll(cls, _has_jobs(context))

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
        return _poll(cls, "" if any(im.name.startswith("MPOD123 ") for im in bpy.data.images) else "no preview yet")

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
        return _poll(cls, "" if guide_url() else "the guide is docs/blender.md in the MPOD123 sources")

    def execute(self, context):
        bpy.ops.wm.url_open(url=guide_url())
        return {"FINISHED"}


def guide_url() -> str:
    """GUIDE_URL, or the guide of the checkout the add-on runs from."""
    if GUIDE_URL:
        return GUIDE_URL
    local = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "blender.md")
    return "file://" + local.replace(os.sep, "/") if os.path.isfile(local) else ""


class MPOD123_OT_start_backend(_BridgeOperator):
    """Start the local backend with the command from the add-on preferences"""

    bl_idname = "mpod123.start_backend"
    bl_label = "Start Local Backend"

    @classmethod
    def poll(cls, context):
        p = prefs(context)
        if bridge.local_running():
            return _poll(cls, "the local backend is running")
        return _poll(cls, "" if is_loopback(p.address) else "the server address is not on this computer")

    def run(self, context):
        pid = bridge.start_local(context)
        self.report({"INFO"}, f"local backend started (pid {pid})")


class MPOD123_OT_stop_backend(_BridgeOperator):
    """Stop the local backend this add-on started"""

    bl_idname = "mpod123.stop_backend"
    bl_label = "Stop Local Backend"

    @classmethod
    def poll(cls, context):
        return _poll(cls, "" if bridge.local_running() else "no local backend was started here")

    def run(self, context):
        bridge.disconnect()
        bridge.stop_local()
        state(context).connection = "not connected"
        self.report({"INFO"}, "local backend stopped")


class MPOD123_OT_load_keys(_BridgeOperator):
    """Copy the keys from the key files into the preferences"""

    bl_idname = "mpod123.load_keys"
    bl_label = "Load Keys"

    @classmethod
    def poll(cls, context):
        p = prefs(context)
        return _poll(cls, "" if p.server_key_file or p.client_key_file else "choose the key files first")

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
    MPOD123_OT_report, MPOD123_OT_connect, MPOD123_OT_generate, MPOD123_OT_generate_from_editor, MPOD123_OT_cancel,
    MPOD123_OT_import_result, MPOD123_OT_import_finished, MPOD123_OT_remove_job, MPOD123_OT_clear_finished,
    MPOD123_OT_recall, MPOD123_OT_show_preview, MPOD123_OT_help, MPOD123_OT_start_backend, MPOD123_OT_stop_backend,
    MPOD123_OT_load_keys,
)


register, unregister = bpy.utils.register_classes_factory(CLASSES)
