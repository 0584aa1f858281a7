"""Run by tests/test_backend_install_e2e.py in a fresh process with fresh BLENDER_USER_* folders.

    python addon_install_backend.py ZIP IMAGE PORT TORCH_REQUIREMENT OUT.json

What an artist does, in the real bpy module: install and enable the built
zip; Install Backend with Allow Online Access off (refused, nothing made);
turn it on; Install Backend and cancel it while torch is installing; Repair
(wait=True); Connect, which starts the local backend from the managed
environment (with tiny models); Generate; wait for the imported mesh.
Everything measured goes into OUT.json; the test asserts on it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import bpy

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this script's folder: tests/
from addon_backend import group_alive  # noqa: E402

zip_path, image_path, port, torch_requirement, out_path = sys.argv[1:6]
out: dict = {}


def save() -> None:
    Path(out_path).write_text(json.dumps(out, indent=1, default=str))


try:
    t0 = time.monotonic()
    res = bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default", enable_on_install=True)
    pkg = "bl_ext.user_default.mpod123"
    out["installed"] = sorted(res)
    ob = sys.modules[pkg + ".session.backend"]
    be = sys.modules[pkg + ".core.backend_env"]
    session = sys.modules[pkg + ".session"]
    p = bpy.context.preferences.addons[pkg].preferences
    p.torch_requirement = torch_requirement
    root = ob.backend_root(create=False)
    out["root"] = str(root)
    out["wheel"] = str(be.bundled_wheel(ob.ADDON_DIR))
    out["build"] = ob.torch_build().describe()

    # 1. Allow Online Access is off (the default in background mode): refused, nothing created
    out["online_before"] = bpy.app.online_access
    try:
        bpy.ops.mpod123.install_backend(wait=True)
        out["offline_error"] = None
    except RuntimeError as exc:
        out["offline_error"] = str(exc)
    out["offline_root_exists"] = root.exists()
    bpy.context.preferences.system.use_online_access = True  # what the artist clicks
    out["online_after"] = bpy.app.online_access

    # 2. Install, cancelled while torch installs
    t_click = time.monotonic()
    assert bpy.ops.mpod123.install_backend() == {"FINISHED"}
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        st = ob.status()
        seen.append((round(st.fraction, 3), st.step))
        if st.finished or (st.step.startswith("torch:") and st.fraction > 0.06):
            break
        time.sleep(0.1)
    pgid = ob.current().installer.proc.pid
    out["before_cancel"] = seen[-1]
    out["status_line_while_installing"] = ob.status_line()
    assert bpy.ops.mpod123.cancel_backend_install() == {"FINISHED"}
    env = ob.managed_env()
    # a SIGKILLed grandchild (pip) may take a moment to leave the process table on a loaded machine
    gone_by = time.monotonic() + 10.0
    while group_alive(pgid) and time.monotonic() < gone_by:
        time.sleep(0.1)
    out["cancel"] = {"state": ob.status().state, "usable": env.usable(), "marker": env.marker.exists(),
                     "venv_exists": env.dir.exists(), "group_alive": group_alive(pgid),
                     "status_line": ob.status_line()}

    # 3. Repair mends it, blocking (scripts, background mode)
    t_repair = time.monotonic()
    out["repair_result"] = sorted(bpy.ops.mpod123.repair_backend(wait=True))
    out["repair_s"] = time.monotonic() - t_repair
    out["click_to_usable_s"] = time.monotonic() - t_click
    out["env_info"] = env.info()
    out["status_line"] = ob.status_line()
    out["log_kept"] = env.log.is_file() and "CANCELLED" in env.log.read_text() and "usable:" in env.log.read_text()
    out["check_result"] = sorted(bpy.ops.mpod123.check_backend(wait=True))
    out["check_lines"] = ob.check_lines()
    progress = [f for f, _ in seen]
    out["progress_monotone"] = progress == sorted(progress) and len(set(progress)) > 2

    # 4. Start Local from the managed environment (tiny models), then Generate
    p.address = f"tcp://127.0.0.1:{port}"
    p.use_local_backend = True
    p.local_command = ""
    p.serve_args = "--tiny"
    p.start_timeout_s = 120.0
    p.timeout_s = 30.0
    out["local_command"] = session.local_command()
    assert bpy.ops.mpod123.connect() == {"FINISHED"}
    st = bpy.context.window_manager.mpod123
    # Connect returns at once; the hello (and the local start) complete through the ticks
    session.settle(bpy.context, lambda: st.connection in ("connected", "lost", "refused"), timeout_s=150)
    out["local_pid"] = st.local_pid
    out["connection"] = st.connection
    out["server_gpu"] = st.server_gpu
    st.source, st.filepath = "FILE", image_path
    st.preset, st.seed, st.steps = "draft", 0, 1
    objects_before = {o.name for o in bpy.data.objects}
    t_job = time.monotonic()
    assert bpy.ops.mpod123.generate() == {"FINISHED"}
    job = st.jobs[-1]
    out["final"] = session.wait(bpy.context, job.job_id, timeout_s=180)
    out["job_s"] = time.monotonic() - t_job
    out["job_message"] = job.message
    new = [o for o in bpy.data.objects if o.name not in objects_before]
    out["new_objects"] = [(o.name, o.type, len(o.data.polygons) if o.type == "MESH" else 0,
                           len(o.data.uv_layers) if o.type == "MESH" else 0) for o in new]
    tex = None
    for o in new:
        for slot in o.material_slots:
            for node in slot.material.node_tree.nodes if slot.material and slot.material.node_tree else ():
                if node.type == "TEX_IMAGE" and node.image is not None:
                    tex = node.image
    out["texture"] = None if tex is None else {"size": list(tex.size), "max": max(tex.pixels[:4000])}
    out["backend_log_tail"] = session.local_log_tail(800)
    out["total_s"] = time.monotonic() - t0
except BaseException as exc:  # noqa: BLE001  the test shows it
    import traceback

    out["error"] = "".join(traceback.format_exception(exc))
    raise
finally:
    try:
        session.stop_local()
        out["stopped_pid_gone"] = not group_alive(out.get("local_pid") or 0) if out.get("local_pid") else None
    except Exception as exc:  # noqa: BLE001  reported, the test asserts on it
        out["stop_error"] = repr(exc)
    save()
