"""The managed backend in Blender: Install, Repair, Remove, Cancel and Check, and what the UI shows of it.

The work is done by :mod:`backend_env` (no bpy); this module turns the
preferences into an install plan, keeps the one running installer, polls it
from a timer (interactive Blender) or waits for it (``wait=True``, scripts and
background mode, where timers never fire), and says where things stand in one
status line for the preferences and the panel.

Installing downloads torch and the backend's packages, so it needs Blender's
"Allow Online Access"; with it off the operator says so and creates nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import bpy
from bpy.props import BoolProperty

from ..core import backend_env as be
from ..blender.preferences import prefs

POLL_INTERVAL_S = 0.5
CHECK_TIMEOUT_S = 300.0

_installer: be.Installer | None = None
_last: be.Status | None = None
_check: dict | None = None
_check_thread: threading.Thread | None = None
_build: be.TorchBuild | None = None


# ------------------------------------------------------------------ where things are
def _package() -> str:
    return __package__.rpartition(".")[0] or "mpod123"


def addon_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def backend_root(create: bool = False) -> Path:
    """The extension's user folder ``backend`` (the temp folder when not installed as an extension)."""
    try:
        return Path(bpy.utils.extension_path_user(_package(), path="backend", create=create))
    except (ValueError, RuntimeError, TypeError):
        import tempfile

        path = Path(tempfile.gettempdir()) / "mpod123-blender" / "backend"
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path


def managed_env() -> be.ManagedEnv:
    return be.ManagedEnv(backend_root(create=False))


def online_access() -> bool:
    """Blender's "Allow Online Access" (Preferences > System > Network, or --online-mode)."""
    return bool(getattr(bpy.app, "online_access", True))


def torch_build() -> be.TorchBuild:
    """The torch build for this machine (detected once per Blender run, before anything is installed)."""
    global _build
    if _build is None:
        _build = be.detect_torch_build()
    return _build


def installing() -> bool:
    return _installer is not None and not _installer.poll().finished


# ------------------------------------------------------------------ starting the backend
LEGACY_LOCAL_COMMAND = "mpod123 serve --bind {address} --data {data}"
"""The default of earlier versions: treated like an empty Local Command (the managed environment)."""


def local_command(p, data: str) -> list[str]:
    """The argument list that starts the local backend.

    Empty Local Command: the managed environment's ``python -m mpod123 serve``
    plus Serve Arguments. Otherwise the expert's command, split without a shell
    and then filled in, with ``{python}`` naming the managed environment's Python.
    """
    env = managed_env()
    template = (p.local_command or "").strip()
    if not template or template == LEGACY_LOCAL_COMMAND:
        if not env.usable():
            raise be.EnvError(
                "the backend is not installed: Edit > Preferences > Add-ons > MPOD123 > Install Backend "
                "(or set Local Command to a backend you installed yourself)"
            )
        return be.serve_command(env.python, p.address, data, be.split_command(getattr(p, "serve_args", "") or ""))
    return be.expand_command(template, {"address": p.address, "data": data, "python": str(env.python)})


# ------------------------------------------------------------------ status for drawing
def status() -> be.Status:
    if _installer is not None:
        return _installer.poll()
    return _last or be.Status("idle")


def status_line() -> str:
    """One line for the preferences and the panel."""
    st = status()
    env = managed_env()
    if st.state == "running":
        return f"Installing: {st.step} ({st.fraction * 100:.0f}%)"
    if st.state in ("failed", "cancelled") and not env.usable():
        return f"Backend not usable: {st.state}: {st.error}"[:300]
    info = env.info()
    if info is None:
        return "Backend not installed: click Install Backend in the add-on preferences"
    line = f"Backend ready: torch {info.get('torch')} ({info.get('build', {}).get('variant', '?')}), mpod123 {info.get('wheel_version')}"
    if env.needs_upgrade(be.bundled_wheel(addon_dir())):
        line += f"; the add-on carries {be.wheel_version(be.bundled_wheel(addon_dir()))}: click Upgrade"
    return line


def draw_status(layout) -> None:
    """The status line, and a progress bar while installing (used by the preferences and the panel)."""
    st = status()
    if st.state == "running":
        if hasattr(layout, "progress"):
            layout.progress(factor=st.fraction, type="BAR", text=st.step[:80] or "installing")
        else:
            layout.label(text=st.step[:80])
        layout.operator("mpod123.cancel_backend_install", icon="CANCEL")
    layout.label(text=status_line()[:200], icon="INFO")


def draw_managed_backend(layout, p) -> None:
    """The "Managed Backend" box of the preferences."""
    box = layout.box()
    box.label(text="Managed Backend")
    env = managed_env()
    build = torch_build()
    box.label(text=f"This machine: {build.describe()}"[:200])
    if build.index_hint and not p.torch_index_url:
        box.label(text=f"For this build set Torch Index URL to {build.index_hint}"[:200], icon="ERROR")
    draw_status(box)
    if not online_access():
        box.label(text="Installing needs Allow Online Access: Edit > Preferences > System > Network", icon="ERROR")
    row = box.row()
    row.enabled = not installing()
    usable = env.usable()
    row.operator("mpod123.install_backend", text="Upgrade Backend" if usable and env.needs_upgrade(
        be.bundled_wheel(addon_dir())) else "Install Backend", icon="IMPORT")
    row.operator("mpod123.repair_backend", icon="TOOL_SETTINGS")
    row.operator("mpod123.remove_backend", icon="TRASH")
    box.operator("mpod123.check_backend", icon="VIEWZOOM")
    for line in check_lines():
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


def check_lines() -> list[str]:
    """The last Check Backend result, as short lines."""
    if checking():
        return ["Check: running mpod123 doctor in the backend environment..."]
    if _check is None:
        return []
    if "error" in _check:
        return [f"Check: {_check['error']}"]
    return [f"Check: {line}" for line in _check.get("summary_lines", [])] or [f"Check: {_check.get('summary', '')}"]


def _tag_redraw() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", ()):
        for area in getattr(window.screen, "areas", ()):
            if area.type in {"PREFERENCES", "VIEW_3D"}:
                area.tag_redraw()


def _tick() -> float | None:
    global _installer, _last
    if _installer is None:
        return None
    st = _installer.poll()
    _tag_redraw()
    if st.finished:
        _last, _installer = st, None
        print(f"MPOD123: backend install {st.state}: {st.error or st.step}")
        return None
    return POLL_INTERVAL_S


# ------------------------------------------------------------------ operators
def _wait_property():
    return BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                        description="Block until the install ends (scripts and background mode)")


class _InstallOperator:
    """Install and Repair share this (a plain mixin: Blender maps each registered class to one operator)."""

    repair = False

    def execute(self, context):
        global _installer, _last
        if installing():
            self.report({"ERROR"}, "an install is already running; wait for it or click Cancel")
            return {"CANCELLED"}
        if not online_access():
            self.report({"ERROR"}, "Installing the backend downloads torch and its packages, and Allow Online Access is "
                                   "off: turn it on in Edit > Preferences > System > Network, then click Install "
                                   "Backend again")
            return {"CANCELLED"}
        p = prefs(context)
        wheel = be.bundled_wheel(addon_dir())
        if wheel is None:
            self.report({"ERROR"}, f"this add-on carries no backend wheel ({addon_dir() / be.WHEEL_DIR}); install the "
                                   "extension zip built by build_addon.py")
            return {"CANCELLED"}
        try:
            plan = be.InstallPlan(
                root=str(backend_root(create=True)), python=bpy.path.abspath(p.backend_python) if p.backend_python else sys.executable,
                wheel=str(wheel), torch_requirement=p.torch_requirement.strip() or "torch",
                torch_index_url=p.torch_index_url.strip(), pip_args=be.split_command(p.pip_args or ""),
                # an upgrade (the add-on carries a newer wheel) reinstalls in place, like Repair: torch stays
                repair=(self.repair or managed_env().needs_upgrade(wheel)) and managed_env().python.is_file(),
                build=asdict(torch_build()),
            )
            _installer = be.Installer(plan).start()
        except (be.EnvError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        _last = None
        if not self.wait:
            bpy.app.timers.register(_tick, first_interval=POLL_INTERVAL_S)
            self.report({"INFO"}, f"installing the backend ({torch_build().describe()}); log: {managed_env().log}")
            return {"FINISHED"}
        st = _installer.wait()
        _last, _installer = st, None
        if st.state != "done":
            self.report({"ERROR"}, f"backend install {st.state}: {st.error} (log: {managed_env().log})")
            return {"CANCELLED"}
        self.report({"INFO"}, status_line())
        return {"FINISHED"}


class MPOD123_OT_install_backend(_InstallOperator, bpy.types.Operator):
    """Make the managed backend environment: torch for this machine and the MPOD123 backend (downloads several GB)"""

    bl_idname = "mpod123.install_backend"
    bl_label = "Install Backend"
    bl_options = {"REGISTER", "INTERNAL"}

    wait: _wait_property()


class MPOD123_OT_repair_backend(_InstallOperator, bpy.types.Operator):
    """Reinstall the backend into its environment (mends a cancelled or broken install)"""

    bl_idname = "mpod123.repair_backend"
    bl_label = "Repair"
    bl_options = {"REGISTER", "INTERNAL"}
    repair = True

    wait: _wait_property()


class MPOD123_OT_cancel_backend_install(bpy.types.Operator):
    """Stop the running install; the environment stays marked unusable until an install or repair finishes"""

    bl_idname = "mpod123.cancel_backend_install"
    bl_label = "Cancel Install"
    bl_options = {"INTERNAL"}

    def execute(self, context):
        global _installer, _last
        if _installer is None:
            self.report({"WARNING"}, "no install is running")
            return {"CANCELLED"}
        _last, _installer = _installer.cancel(reason="cancelled by the user"), None
        self.report({"INFO"}, "backend install cancelled")
        return {"FINISHED"}


class MPOD123_OT_remove_backend(bpy.types.Operator):
    """Delete the managed backend environment (torch and the backend; jobs and results stay)"""

    bl_idname = "mpod123.remove_backend"
    bl_label = "Remove"
    bl_options = {"INTERNAL"}

    def execute(self, context):
        global _last, _check
        if installing():
            self.report({"ERROR"}, "an install is running: cancel it first")
            return {"CANCELLED"}
        from ..session import bridge

        bridge.stop_local()  # a backend running from the environment would hold its files
        env = managed_env()
        try:
            env.remove()
        except OSError as exc:
            self.report({"ERROR"}, f"could not remove {env.dir}: {exc}")
            return {"CANCELLED"}
        _last, _check = None, None
        self.report({"INFO"}, f"removed the backend environment {env.dir}")
        return {"FINISHED"}


def run_check(timeout_s: float = CHECK_TIMEOUT_S) -> dict:
    """``mpod123 doctor --json`` in the managed environment."""
    env = managed_env()
    if not env.usable():
        raise be.EnvError("the backend is not installed: click Install Backend first")
    proc = subprocess.run([str(env.python), "-m", "mpod123", "doctor", "--json"], capture_output=True, text=True,
                          timeout=timeout_s, check=False, env=be.backend_environment(), stdin=subprocess.DEVNULL)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise be.EnvError(f"mpod123 doctor failed (code {proc.returncode}): {(proc.stderr or proc.stdout)[-400:]}") from None


def checking() -> bool:
    return _check_thread is not None and _check_thread.is_alive()


def _check_into_state(timeout_s: float) -> None:
    """Run the check and keep its result (or its error) for :func:`check_lines`; a thread's body."""
    global _check
    try:
        result = run_check(timeout_s)
    except (be.EnvError, OSError, subprocess.TimeoutExpired) as exc:
        result = {"error": str(exc)}
    _check = result
    print(f"MPOD123: backend check: {result.get('error') or result.get('summary', 'done')}")


def _check_tick() -> float | None:
    _tag_redraw()
    return POLL_INTERVAL_S if checking() else None


class MPOD123_OT_check_backend(bpy.types.Operator):
    """Run `mpod123 doctor` in the managed environment: torch build, device, accelerators, weights, disk"""

    bl_idname = "mpod123.check_backend"
    bl_label = "Check Backend"
    bl_options = {"INTERNAL"}

    wait: BoolProperty(name="Wait", default=False, options={"SKIP_SAVE"},
                       description="Block until the check ends (scripts and background mode)")

    @classmethod
    def poll(cls, context):
        if checking():
            cls.poll_message_set("a check is already running")
            return False
        return True

    def execute(self, context):
        """Doctor imports torch and probes each accelerator: seconds to minutes, so it runs in a thread.

        The panel says "running" meanwhile and shows the result when the thread ends; ``wait=True``
        blocks instead, for scripts (and background mode, where timers never fire).
        """
        global _check, _check_thread
        if not managed_env().usable():
            _check = {"error": "the backend is not installed: click Install Backend first"}
            self.report({"ERROR"}, _check["error"])
            return {"CANCELLED"}
        _check = None
        _check_thread = threading.Thread(target=_check_into_state, args=(CHECK_TIMEOUT_S,), name="mpod123-check",
                                         daemon=True)
        _check_thread.start()
        if not self.wait:
            if not bpy.app.timers.is_registered(_check_tick):
                bpy.app.timers.register(_check_tick, first_interval=POLL_INTERVAL_S)
            self.report({"INFO"}, "checking the backend; the result appears in the panel")
            return {"FINISHED"}
        _check_thread.join()
        if "error" in _check:
            self.report({"ERROR"}, _check["error"])
            return {"CANCELLED"}
        self.report({"INFO"}, _check.get("summary", "checked"))
        return {"FINISHED"}


CLASSES = (MPOD123_OT_install_backend, MPOD123_OT_repair_backend, MPOD123_OT_cancel_backend_install,
           MPOD123_OT_remove_backend, MPOD123_OT_check_backend)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    global _installer
    if _installer is not None:
        _installer.cancel(reason="the add-on was disabled")
        _installer = None
    for timer in (_tick, _check_tick):
        if bpy.app.timers.is_registered(timer):
            bpy.app.timers.unregister(timer)
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
