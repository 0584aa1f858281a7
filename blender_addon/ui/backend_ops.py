"""The managed backend in the preferences and the panel: Install (or Reinstall / Repair, Upgrade), Cancel,
Remove and Check, and the status line with a progress bar while installing.

The work is in ``session/backend.py`` and ``core`` (no bpy). Installing downloads torch and the backend's
packages, so it needs Blender's "Allow Online Access"; with it off the operator says so and creates nothing.
Installing over a working backend reinstalls it in place, and asks first.
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty

from ..blender.preferences import prefs
from ..core.errors import EnvError
from ..session import backend
from ..session.state import current

POLL_INTERVAL_S = 0.5


def draw_status(layout) -> None:
    """The status line, and a progress bar while installing (used by the preferences and the panel)."""
    st = backend.status()
    if st.state == "running":
        if hasattr(layout, "progress"):
            layout.progress(factor=st.fraction, type="BAR", text=st.step[:80] or "installing")
        else:
            layout.label(text=st.step[:80])
        layout.operator("mpod123.cancel_backend_install", icon="CANCEL")
    layout.label(text=backend.status_line()[:200], icon="INFO")


def draw_managed_backend(layout, p) -> None:
    """The "Managed Backend" box of the preferences."""
    box = layout.box()
    box.label(text="Managed Backend")
    env = backend.managed_env()
    build = backend.torch_build()
    box.label(text=f"This machine: {build.describe()}"[:200])
    index = backend.torch_index(p)
    box.label(text=f"Torch comes from: {index or 'pip’s default index'}"
                   + (" (set in Torch Index URL)" if p.torch_index_url.strip() else " (chosen for this machine)"),
              icon="INFO")
    draw_status(box)
    if not bpy.app.online_access:
        box.label(text="Installing needs Allow Online Access: Edit > Preferences > System > Network", icon="ERROR")
    row = box.row()
    row.enabled = not backend.installing()
    row.operator("mpod123.install_backend", text=backend.install_label(), icon="IMPORT")
    row.operator("mpod123.remove_backend", icon="TRASH")
    box.operator("mpod123.check_backend", icon="VIEWZOOM")
    for line in backend.check_lines():
        box.label(text=line[:200])
    box.label(text=f"Folder: {env.root}"[:200])
    if env.log.is_file():
        box.label(text=f"Install log: {env.log}"[:200])
    col = box.column()
    col.prop(p, "torch_requirement")
    col.prop(p, "torch_index_url")
    col.prop(p, "pip_args")
    col.prop(p, "backend_python")
    col.prop(p, "serve_args")


def tag_redraw() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", ()):
        for area in getattr(window.screen, "areas", ()):
            if area.type in {"PREFERENCES", "VIEW_3D"}:
                area.tag_redraw()


def install_tick() -> float | None:
    st = backend.poll_install()
    tag_redraw()
    return None if st is None or st.finished else POLL_INTERVAL_S


def check_tick() -> float | None:
    tag_redraw()
    return POLL_INTERVAL_S if backend.checking() else None


def wait_property():
    return BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                        description="Block until it ends (scripts and background mode)")


class InstallOperator:
    """Install and Repair share this (a plain mixin: Blender maps each registered class to one operator)."""

    repair = False

    def invoke(self, context, event):
        """Over a working backend, ask first: it is reinstalled in place (minutes, torch kept)."""
        if backend.managed_env().usable() and not self.repair:
            return context.window_manager.invoke_confirm(
                self, event, title="Reinstall / Repair the backend?",
                message="The backend works. Reinstalling replaces its packages in place (torch is kept); jobs and "
                        "results stay.", confirm_text="Reinstall")
        return self.execute(context)

    def execute(self, context):
        if not bpy.app.online_access:
            self.report({"ERROR"}, "Installing the backend downloads torch and its packages, and Allow Online Access is "
                                   "off: turn it on in Edit > Preferences > System > Network, then click Install "
                                   "Backend again")
            return {"CANCELLED"}
        try:
            backend.start_install(prefs(context), repair=self.repair)
        except (EnvError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if not self.wait:
            bpy.app.timers.register(install_tick, first_interval=POLL_INTERVAL_S)
            self.report({"INFO"}, f"installing the backend ({backend.torch_build().describe()}); log: "
                                  f"{backend.managed_env().log}")
            return {"FINISHED"}
        st = backend.wait_install()
        if st.state != "done":
            self.report({"ERROR"}, f"backend install {st.state}: {st.error} (log: {backend.managed_env().log})")
            return {"CANCELLED"}
        self.report({"INFO"}, backend.status_line())
        return {"FINISHED"}


class MPOD123_OT_install_backend(InstallOperator, bpy.types.Operator):
    """Make the managed backend environment: torch for this machine and the MPOD123 backend; over a working one,
    reinstall it in place (asks first)"""

    bl_idname = "mpod123.install_backend"
    bl_label = "Install Backend"
    bl_options = {"REGISTER", "INTERNAL"}

    wait: wait_property()


class MPOD123_OT_repair_backend(InstallOperator, bpy.types.Operator):
    """Reinstall the backend into its environment (mends a cancelled or broken install)"""

    bl_idname = "mpod123.repair_backend"
    bl_label = "Repair"
    bl_options = {"REGISTER", "INTERNAL"}
    repair = True

    wait: wait_property()


class MPOD123_OT_cancel_backend_install(bpy.types.Operator):
    """Stop the running install; the environment stays marked unusable until an install or repair finishes"""

    bl_idname = "mpod123.cancel_backend_install"
    bl_label = "Cancel Install"
    bl_options = {"INTERNAL"}

    def execute(self, context):
        if not backend.cancel_install():
            self.report({"WARNING"}, "no install is running")
            return {"CANCELLED"}
        self.report({"INFO"}, "backend install cancelled")
        return {"FINISHED"}


class MPOD123_OT_remove_backend(bpy.types.Operator):
    """Delete the managed backend environment (torch and the backend; jobs and results stay)"""

    bl_idname = "mpod123.remove_backend"
    bl_label = "Remove"
    bl_options = {"INTERNAL"}

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event, title="Remove the backend environment?",
                                                     message="Jobs and results stay.", confirm_text="Remove")

    def execute(self, context):
        try:
            folder = backend.remove_environment()
        except (EnvError, OSError) as exc:
            self.report({"ERROR"}, f"could not remove the backend environment: {exc}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"removed the backend environment {folder}")
        return {"FINISHED"}


class MPOD123_OT_check_backend(bpy.types.Operator):
    """Run `mpod123 doctor` in the backend the add-on starts (the managed one, or your own Local Command's):
    torch build, device, accelerators, weights, disk"""

    bl_idname = "mpod123.check_backend"
    bl_label = "Check Backend"
    bl_options = {"INTERNAL"}

    wait: wait_property()

    @classmethod
    def poll(cls, context):
        if backend.checking():
            cls.poll_message_set("a check is already running")
            return False
        return True

    def execute(self, context):
        """Doctor imports torch and probes each accelerator: seconds to minutes, so it runs in a thread.

        The panel says "running" meanwhile and shows the result when the thread ends; ``wait=True``
        blocks instead, for scripts (and background mode, where timers never fire).
        """
        s = current()
        try:
            thread = backend.start_check(prefs(context))
        except EnvError as exc:
            s.check = {"error": str(exc)}
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        if not self.wait:
            if not bpy.app.timers.is_registered(check_tick):
                bpy.app.timers.register(check_tick, first_interval=POLL_INTERVAL_S)
            self.report({"INFO"}, "checking the backend; the result appears in the panel")
            return {"FINISHED"}
        thread.join()
        if "error" in s.check:
            self.report({"ERROR"}, s.check["error"])
            return {"CANCELLED"}
        self.report({"INFO"}, s.check.get("summary", "checked"))
        return {"FINISHED"}


CLASSES = (MPOD123_OT_install_backend, MPOD123_OT_repair_backend, MPOD123_OT_cancel_backend_install,
           MPOD123_OT_remove_backend, MPOD123_OT_check_backend)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    backend.cancel_install(reason="the add-on was disabled")
    for timer in (install_tick, check_tick):
        if bpy.app.timers.is_registered(timer):
            bpy.app.timers.unregister(timer)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
