"""Helpers for the add-on's live tests in the real bpy module (shared by tests/blender_addon/test_addon_*.py).

Timers never fire in background mode, so ``settle`` ticks the session's drain where Blender would.
Import only where bpy is importable (the test modules skip first).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.addon_backend import JOB_TIMEOUT_S, ROOT

BAD_DRAW = re.compile(r"property not found|unknown operator|Traceback|Error(?!.*no icon for icon ID)")
"""What Blender prints when a panel draws a property or operator that does not exist."""


def wm_state():
    """The add-on's window-manager state (``bpy.context.window_manager.mpod123``)."""
    import bpy

    return bpy.context.window_manager.mpod123


def addon_session():
    """The enabled add-on's ``session`` package."""
    return sys.modules["blender_addon.session"]


def settle(done, timeout_s: float = JOB_TIMEOUT_S, what: str = "") -> None:
    """Tick (as Blender's timer would) until ``done()``; fails with ``what`` and the panel's error otherwise."""
    import bpy

    assert addon_session().settle(bpy.context, done, timeout_s), f"{what or 'condition'} not reached: {wm_state().last_error}"


def reset_jobs() -> None:
    """An empty job list and job file, nothing in flight."""
    session = addon_session()
    st = wm_state()
    st.jobs.clear()
    st.active_job = 0
    session.fresh()
    session.job_file().save({})
    st.last_error = ""


def connect_addon() -> None:
    """Press Connect and wait until the panel says connected."""
    import bpy

    assert bpy.ops.mpod123.connect() == {"FINISHED"}
    settle(lambda: wm_state().connection == "connected", 30, "connected")


def base_color_image(obj):
    """The image feeding the Principled BSDF's Base Color of ``obj``'s first material."""
    mat = obj.data.materials[0]
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    link = bsdf.inputs["Base Color"].links[0]
    assert link.from_node.type == "TEX_IMAGE"
    return link.from_node.image


def draw_panels(*extra: str) -> tuple[dict, str]:
    """Every panel drawn into a real layout in a fresh Blender process (tests/addon_draw_panels.py):
    (its result, the lines Blender printed about properties or operators that do not exist)."""
    proc = subprocess.run([sys.executable, str(Path(ROOT) / "tests" / "addon_draw_panels.py"), str(ROOT), *extra],
                          capture_output=True, text=True, check=False, timeout=120)
    out = proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, out[-3000:]
    problems = "\n".join(ln for ln in out.splitlines() if BAD_DRAW.search(ln) and "no icon for icon ID" not in ln)
    return json.loads(lines[-1][7:]), problems
