"""The managed backend from Blender: the install plan from the preferences, the running install and check,
the local backend's command, and one status line. The work is done by ``core`` (no bpy); the operators and
the drawing are in ``ui/backend_ops.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import bpy

from ..blender.paths import ADDON_DIR, user_dir
from ..core import backend_env as be
from ..core.errors import EnvError
from .state import current

CHECK_TIMEOUT_S = 300.0
LEGACY_LOCAL_COMMAND = "mpod123 serve --bind {address} --data {data}"
"""The default of earlier versions: treated like an empty Local Command (the managed environment)."""


def backend_root(create: bool = False) -> Path:
    """The extension's user folder ``backend`` (the temp folder when not installed as an extension)."""
    return user_dir("backend", create=create)


def managed_env() -> be.ManagedEnv:
    return be.ManagedEnv(backend_root(create=False))


def online_access() -> bool:
    """Blender's "Allow Online Access" (Preferences > System > Network, or --online-mode)."""
    return bool(getattr(bpy.app, "online_access", True))


def torch_build() -> be.TorchBuild:
    """The torch build for this machine (detected once per session, before anything is installed)."""
    s = current()
    if s.torch_build is None:
        s.torch_build = be.detect_torch_build()
    return s.torch_build


def torch_index(p) -> str:
    """Where torch comes from: the preferences' Torch Index URL when set, else the detected build's index."""
    return be.choose_index(p.torch_index_url, torch_build())


def installing() -> bool:
    s = current()
    return s.installer is not None and not s.installer.poll().finished


def uses_managed(p) -> bool:
    """Whether Start Local runs the managed environment (an empty Local Command) or the artist's own command."""
    template = (p.local_command or "").strip()
    return not template or template == LEGACY_LOCAL_COMMAND


def local_command(p, data: str) -> list[str]:
    """The argument list that starts the local backend.

    Empty Local Command: the managed environment's ``python -m mpod123 serve`` plus Serve Arguments.
    Otherwise the expert's command, split without a shell and then filled in, with ``{python}`` naming the
    managed environment's Python.
    """
    env = managed_env()
    if uses_managed(p):
        if not env.usable():
            raise EnvError(
                "the backend is not installed: Edit > Preferences > Add-ons > MPOD123 > Install Backend "
                "(or set Local Command to a backend you installed yourself)"
            )
        return be.serve_command(env.python, p.address, data, be.split_command(getattr(p, "serve_args", "") or ""))
    return be.expand_command(p.local_command.strip(), {"address": p.address, "data": data, "python": str(env.python)})


# ------------------------------------------------------------------ status
def status() -> be.Status:
    s = current()
    if s.installer is not None:
        return s.installer.poll()
    return s.install_status or be.Status("idle")


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
    if env.needs_upgrade(be.bundled_wheel(ADDON_DIR)):
        line += f"; the add-on carries {be.wheel_version(be.bundled_wheel(ADDON_DIR))}: click Upgrade"
    return line


def install_label() -> str:
    """The install button's words: Install on a fresh machine, Upgrade when the add-on carries a newer backend,
    Reinstall / Repair over a working one (which asks first)."""
    env = managed_env()
    if env.usable():
        return "Upgrade Backend" if env.needs_upgrade(be.bundled_wheel(ADDON_DIR)) else "Reinstall / Repair"
    return "Install Backend"


# ------------------------------------------------------------------ install
def start_install(p, repair: bool = False) -> be.Installer:
    """Start installing (or repairing) in a child process; raises EnvError or OSError with the reason."""
    s = current()
    if installing():
        raise EnvError("an install is already running; wait for it or click Cancel")
    wheel = be.bundled_wheel(ADDON_DIR)
    if wheel is None:
        raise EnvError(f"this add-on carries no backend wheel ({ADDON_DIR / be.WHEEL_DIR}); install the "
                       "extension zip built by build_addon.py")
    env = managed_env()
    plan = be.InstallPlan(
        root=str(backend_root(create=True)),
        python=bpy.path.abspath(p.backend_python) if p.backend_python else sys.executable,
        wheel=str(wheel), torch_requirement=p.torch_requirement.strip() or "torch",
        torch_index_url=torch_index(p), pip_args=be.split_command(p.pip_args or ""),
        # over a working environment (Reinstall / Repair, Upgrade), reinstall in place: torch stays
        repair=(repair or env.usable()) and env.python.is_file(),
        build=asdict(torch_build()),
    )
    s.installer = be.Installer(plan).start()
    s.install_status = None
    return s.installer


def poll_install() -> be.Status | None:
    """The running install's status, and its end noted when it finished (None: none is running)."""
    s = current()
    if s.installer is None:
        return None
    st = s.installer.poll()
    if st.finished:
        s.install_status, s.installer = st, None
        print(f"MPOD123: backend install {st.state}: {st.error or st.step}")
    return st


def wait_install() -> be.Status:
    s = current()
    st = s.installer.wait()
    s.install_status, s.installer = st, None
    return st


def cancel_install(reason: str = "cancelled by the user") -> bool:
    s = current()
    if s.installer is None:
        return False
    s.install_status, s.installer = s.installer.cancel(reason=reason), None
    return True


def remove_environment() -> Path:
    """Delete the managed environment only (jobs, results and inputs stay); returns its folder."""
    s = current()
    if installing():
        raise EnvError("an install is running: cancel it first")
    s.local.stop()  # a backend running from the environment would hold its files
    env = managed_env()
    env.remove()
    s.install_status, s.check = None, None
    return env.dir


# ------------------------------------------------------------------ check
def run_check(python: str, timeout_s: float = CHECK_TIMEOUT_S) -> dict:
    """``mpod123 doctor --json`` with ``python`` (see :func:`check_python`); no bpy, so a thread may run it."""
    proc = subprocess.run([python, "-m", "mpod123", "doctor", "--json"], capture_output=True, text=True,
                          timeout=timeout_s, check=False, env=be.backend_environment(), stdin=subprocess.DEVNULL)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise EnvError(f"mpod123 doctor failed (code {proc.returncode}): {(proc.stderr or proc.stdout)[-400:]}") from None


def check_python(p=None) -> str:
    """The Python whose backend Check Backend asks: the managed one, or the artist's own command's."""
    env = managed_env()
    if p is not None and not uses_managed(p):
        args = local_command(p, "")
        exe = Path(args[0])
        if "python" in exe.name.lower():
            return str(exe)
        sibling = exe.with_name("python.exe" if exe.suffix == ".exe" else "python")
        if sibling.is_file():  # .../venv/bin/mpod123 -> .../venv/bin/python
            return str(sibling)
        raise EnvError(f"cannot tell which Python runs {exe.name}: check your own backend with `mpod123 doctor`")
    if not env.usable():
        raise EnvError("the backend is not installed: click Install Backend first")
    return str(env.python)


def checking() -> bool:
    t = current().check_thread
    return t is not None and t.is_alive()


def start_check(p) -> threading.Thread:
    """Run the check on a thread of its own (doctor imports torch: seconds to minutes)."""
    s = current()
    python = check_python(p)  # raises before a thread starts when there is nothing to check
    s.check = None

    def body() -> None:
        try:
            result = run_check(python)
        except (EnvError, OSError, subprocess.TimeoutExpired) as exc:
            result = {"error": str(exc)}
        result.setdefault("python", python)
        s.check = result
        print(f"MPOD123: backend check: {result.get('error') or result.get('summary', 'done')}")

    s.check_thread = threading.Thread(target=body, name="mpod123-check", daemon=True)
    s.check_thread.start()
    return s.check_thread


def check_lines() -> list[str]:
    """The last Check Backend result, as short lines."""
    s = current()
    if checking():
        return ["Check: running mpod123 doctor in the backend environment..."]
    if s.check is None:
        return []
    if "error" in s.check:
        return [f"Check: {s.check['error']}"]
    return [f"Check: {line}" for line in s.check.get("summary_lines", [])] or [f"Check: {s.check.get('summary', '')}"]
