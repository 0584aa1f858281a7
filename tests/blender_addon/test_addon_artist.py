"""The rough edges an artist hit (issue 27), each in the real bpy module against a real `mpod123 serve --tiny`.

Each test failed on the add-on before the fix: a bad input queued as a job that retried forever, the
presets' face budgets dropped, a killed local backend that left its job frozen, "(generating)" ghosts,
Install Backend that reinstalled a working backend without asking, preferences lost on disable, Texture
Selected Mesh dropping the artist out of Sculpt mode.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")
pytest.importorskip("zmq")
pytest.importorskip("PIL")

from tests.addon_backend import JOB_TIMEOUT_S, free_port, object_png  # noqa: E402
from tests.addon_live import addon_session, connect_addon, reset_jobs, settle, wm_state  # noqa: E402


def _inputs_dir() -> Path:
    return addon_session().user_dir("inputs")


def _no_trace_of_a_job(before: set) -> None:
    st = wm_state()
    assert len(st.jobs) == 0, [j.name for j in st.jobs]
    assert addon_session().job_file().load() == {}, "nothing in the job file"
    assert set(os.listdir(_inputs_dir())) == before, "no input copy kept"


# ------------------------------------------------------------------ 1: bad input refused at Generate
def test_an_image_without_pixels_is_refused_at_generate_and_never_queued(prefs, server, tmp_path):
    reset_jobs()
    connect_addon()
    before = set(os.listdir(_inputs_dir()))
    st = wm_state()
    broken = tmp_path / "broken.png"  # a PNG header that says 0 x 0 pixels, as an empty canvas saves
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + b"\x00" * 8 + b"\x08\x06\x00\x00\x00" + b"\x00" * 4)
    st.source, st.filepath = "FILE", str(broken)
    with pytest.raises(RuntimeError, match="no pixels"):
        bpy.ops.mpod123.generate()
    assert "no pixels" in st.last_error
    _no_trace_of_a_job(before)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    st.filepath = str(empty)
    assert not bpy.ops.mpod123.generate.poll(), "an empty file: Generate is greyed, with the reason"
    assert "empty" in _session_input_problem()
    _no_trace_of_a_job(before)


def _session_input_problem() -> str:
    from blender_addon.blender.inputs import input_problem

    return input_problem(bpy.context, addon_session().current().max_image_bytes)


def test_an_image_over_the_backends_limit_is_refused_before_it_is_read(prefs, server, tmp_path):
    reset_jobs()
    connect_addon()
    limit = addon_session().current().max_image_bytes
    assert limit == 50 << 20, "the limit comes from the backend's hello reply"
    before = set(os.listdir(_inputs_dir()))
    big = tmp_path / "huge.png"
    with open(big, "wb") as f:  # sparse: over the limit without writing 50 MB
        f.write(object_png())
        f.truncate(limit + 1)
    st = wm_state()
    st.source, st.filepath = "FILE", str(big)
    assert not bpy.ops.mpod123.generate.poll()
    assert "over the backend's limit" in _session_input_problem()
    _no_trace_of_a_job(before)


def test_a_submit_the_backend_refuses_fails_once_and_is_not_sent_again(prefs, server, tmp_path):
    """A job the backend's front door refuses (here: a prompt over its 500 characters, sent by a script that
    skipped the panel's check) ends as failed, its input copy deleted; the next Connect does not send it again."""
    reset_jobs()
    prefs.timeout_s = 120.0  # a refusal, not a timeout, even on a loaded machine
    connect_addon()
    session = addon_session()
    job_id = session.submit(bpy.context, b"", "refused", {"prompt": "a kettle " * 70, "candidates": 2,
                                                         "candidates_only": True, "seed": 0})
    settle(lambda: wm_state().jobs[0].state not in ("sending", "queued"), 60, "the refusal")
    job = wm_state().jobs[0]
    assert job.state == "failed" and "refused" in job.message, (job.state, job.message)
    assert not os.path.exists(job.input_path), "the input copy is gone"
    assert session.job_file().load()[job_id]["state"] == "failed"
    _connect_again()
    assert job.state == "failed" and job_id not in session.current().sending, "not sent again"


def _connect_again() -> None:
    wm_state().connection = "not connected"
    connect_addon()


# ------------------------------------------------------------------ 5 (and 4): a killed local backend
@pytest.mark.slow
def test_a_killed_local_backend_is_started_again_and_the_job_continues_with_the_presets_face_budget(prefs, tmp_path):
    """#5: the add-on started the backend, so when it is killed mid-job it starts it again and the job goes on.
    #4: the job asks for no face budget (Face Budget 0), so the draft preset's 5,000 faces apply (not every face)."""
    reset_jobs()
    session = addon_session()
    prefs.address = f"tcp://127.0.0.1:{free_port()}"
    prefs.use_local_backend = True
    prefs.start_timeout_s = 240.0
    prefs.local_command = (f"{sys.executable} -m mpod123.cli.main serve --tiny --bind {{address}} "
                           f"--data {tmp_path / 'data'}")
    prefs.target_faces = 0
    st = wm_state()
    try:
        assert bpy.ops.mpod123.connect() == {"FINISHED"}
        settle(lambda: st.connection == "connected", 240, "the local backend answered")
        first = session.current().local.pid
        photo = tmp_path / "lamp.png"
        photo.write_bytes(object_png())
        st.source, st.filepath, st.preset, st.steps, st.random_seed = "FILE", str(photo), "draft", 2, False
        assert bpy.ops.mpod123.generate() == {"FINISHED"}
        job = st.jobs[-1]
        settle(lambda: job.state == "running", JOB_TIMEOUT_S, "the job running")
        os.kill(first, signal.SIGKILL)
        settle(lambda: session.current().local.running() and session.current().local.pid != first, 30,
                "the local backend started again")
        assert st.local_pid == session.current().local.pid and bpy.ops.mpod123.stop_backend.poll(), \
            "Stop Local stays usable"
        final = session.wait(bpy.context, job.job_id, timeout_s=2 * JOB_TIMEOUT_S)
        assert final == "imported", (final, job.message, session.local_log_tail(2000))
        faces = len(bpy.data.objects[job.object_name].data.polygons)
        assert 0 < faces <= 5000, f"the draft preset's budget is 5,000 faces, got {faces}"
    finally:
        session.disconnect()
        session.stop_local()
        prefs.use_local_backend = False


# ------------------------------------------------------------------ 6: no ghost previews
def _preview_glb() -> bytes:
    import torch

    from mpod123.export.preview_mesh import density_surface, preview_glb

    glb, _ = preview_glb(density_surface(lambda x: (5.0 * (2.0 - x.norm(dim=-1) / 0.5)).clamp(min=0.0), 1.0, 16, 5.0),
                         lambda x: torch.tensor((0.8, 0.2, 0.1)).expand(len(x), 3), 2000, 300_000)
    return glb


def _ghosts() -> list[str]:
    from blender_addon.blender.preview_object import JOB_KEY

    return [o.name for o in bpy.data.objects if o.get(JOB_KEY)]


def _running_job_with_a_preview(name: str):
    from blender_addon.core.client import Message

    session = addon_session()
    st = wm_state()
    job = st.jobs.add()
    job.job_id, job.name, job.state = name * (32 // len(name)), name, "running"
    session.save_jobs(bpy.context, wait=True)
    session.current().pending.append(Message("event", {"kind": "preview_mesh", "stage": "outline"}, [_preview_glb()],
                                              job_id=job.job_id, seq=1))
    session.step(bpy.context, budget_s=None)
    assert _ghosts() == [f"{name} (generating)"]
    return job


def test_a_preview_saved_in_a_file_is_gone_when_the_file_is_opened_after_its_job_ended(prefs, tmp_path):
    reset_jobs()
    job_id = _running_job_with_a_preview("ghost").job_id  # (a row is gone with the next file load: keep its id)
    blend = tmp_path / "mid-job.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    from blender_addon.core.client import Message

    session = addon_session()
    bpy.ops.wm.read_homefile(use_empty=True)  # the artist works on another file while the job ends
    session.current().pending.append(Message("event", {"kind": "failed", "ename": "Error", "evalue": "out of memory"},
                                              job_id=job_id, seq=2))
    session.step(bpy.context, budget_s=None)
    assert wm_state().jobs[0].state == "failed"
    bpy.ops.wm.open_mainfile(filepath=str(blend))
    session.step(bpy.context, budget_s=None)
    assert _ghosts() == [], "the unselectable '(generating)' object of an ended job is removed on load"
    assert wm_state().jobs[0].state == "failed"


def test_disabling_the_add_on_mid_job_leaves_no_preview_object(prefs, tmp_path):
    import addon_utils

    from tests.addon_backend import ADDON

    reset_jobs()
    _running_job_with_a_preview("lamp")
    addon_utils.disable(ADDON, default_set=True)
    try:
        assert _ghosts() == [], "disable removes the preview objects"
    finally:
        addon_utils.enable(ADDON, default_set=True)
    reset_jobs()


# ------------------------------------------------------------------ 7: Install Backend on a working backend
def _usable_environment() -> Path:
    from blender_addon.session import backend

    env = backend.managed_env()
    env.python.parent.mkdir(parents=True, exist_ok=True)
    env.python.write_text("")
    env.marker.write_text(json.dumps({"torch": "2.13.0+cpu", "wheel_version": "0.1.0", "build": {"variant": "cpu"}}))
    assert env.usable()
    return env.marker


def test_install_backend_over_a_working_backend_reads_reinstall_and_asks_first(prefs):
    from blender_addon.session import backend
    from blender_addon.ui.backend_ops import MPOD123_OT_install_backend

    marker = _usable_environment()
    try:
        assert backend.install_label() == "Reinstall / Repair"
        asked = []

        class Popup:  # the confirmation popup (a window manager dialog cannot open without a window)
            def invoke_confirm(self, op, event, **kw):
                asked.append(kw)
                return {"CANCELLED"}  # the artist clicks away

        class Context:
            window_manager = Popup()

        result = MPOD123_OT_install_backend.invoke(MPOD123_OT_install_backend, Context(), None)
        assert result == {"CANCELLED"} and asked and asked[0]["confirm_text"] == "Reinstall"
        assert "jobs and results stay" in asked[0]["message"]
        assert backend.current().installer is None and marker.is_file(), "nothing reinstalled, nothing deleted"
    finally:
        backend.managed_env().remove()
    assert backend.install_label() == "Install Backend"


# ------------------------------------------------------------------ 8: preferences survive disable and enable
def test_preferences_survive_disable_and_enable(prefs, server):
    import addon_utils

    from blender_addon.blender.preferences import prefs as get_prefs
    from tests.addon_backend import ADDON

    p = get_prefs(bpy.context)
    p.local_command, p.serve_args, p.timeout_s = "/opt/my/mpod123 serve --bind {address}", "--workers 2", 42.0
    p.server_public_key = "k" * 40
    addon_utils.disable(ADDON, default_set=True)
    addon_utils.enable(ADDON, default_set=True)
    addon_session().step(bpy.context, budget_s=None)  # the first tick gives the kept preferences back
    p = get_prefs(bpy.context)
    try:
        assert (p.address, p.local_command, p.serve_args, p.timeout_s, p.server_public_key) == (
            server.endpoint, "/opt/my/mpod123 serve --bind {address}", "--workers 2", 42.0, "k" * 40)
    finally:
        p.local_command, p.serve_args, p.server_public_key = "", "", ""


# ------------------------------------------------------------------ 3: Texture Selected Mesh keeps Sculpt mode
def _textured_result(path: Path) -> None:
    """A result as the texture job returns it: the mesh with a material whose Base Color is an image."""
    bpy.ops.mesh.primitive_cube_add()
    cube = bpy.context.object
    image = bpy.data.images.new("tex", 8, 8)
    image.pixels = [0.8, 0.2, 0.1, 1.0] * 64
    image.file_format = "PNG"
    image.filepath_raw = str(path.with_suffix(".png"))
    image.save()
    mat = bpy.data.materials.new("result")
    if mat.node_tree is None:
        mat.use_nodes = True
    tex = mat.node_tree.nodes.new("ShaderNodeTexImage")
    tex.image = image
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    mat.node_tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    cube.data.materials.append(mat)
    bpy.ops.export_scene.gltf(filepath=str(path), export_format="GLB", use_selection=True)
    bpy.data.objects.remove(cube)


def test_a_texture_result_landing_on_another_object_keeps_the_artist_in_sculpt_mode(addon, tmp_path):
    reset_jobs()
    session = addon_session()
    for o in list(bpy.data.objects):
        bpy.data.objects.remove(o)
    bpy.ops.mesh.primitive_cube_add(location=(3.0, 0.0, 0.0))
    crate = bpy.context.object
    crate.name = "Crate"
    job = wm_state().jobs.add()
    job.job_id, job.name, job.state, job.texture_target = "t" * 32, "Crate", "done", "Crate"
    _textured_result(session.result_path(job))
    bpy.ops.mesh.primitive_uv_sphere_add()
    clay = bpy.context.object  # the artist sculpts another object while the crate's texture comes back
    bpy.ops.object.mode_set(mode="SCULPT")
    session.current().imports.append(job.job_id)
    session.step(bpy.context, budget_s=None)
    assert job.state == "imported", job.message
    assert [m.name for m in crate.data.materials] == ["MPOD123 Crate"]
    assert bpy.context.view_layer.objects.active == clay and clay.mode == "SCULPT" and bpy.context.mode == "SCULPT"
    bpy.ops.object.mode_set(mode="OBJECT")


# ------------------------------------------------------------------ also: a mesh over the backend's limit
def test_texture_selected_mesh_refuses_a_mesh_over_the_backends_limit_before_uploading(prefs, server, tmp_path):
    """The backend drops a message over its limit (the client then only sees a timeout): a mesh that would
    not fit is refused at the click, with what to do. The limit here is the one a small backend's hello
    reply gives (the real one, 50 MB, needs a mesh of half a million faces)."""
    reset_jobs()
    connect_addon()
    session = addon_session()
    for o in list(bpy.data.objects):
        bpy.data.objects.remove(o)
    photo = tmp_path / "photo.png"
    photo.write_bytes(object_png(64))
    st = wm_state()
    st.source, st.filepath = "FILE", str(photo)
    bpy.ops.mesh.primitive_uv_sphere_add(segments=128, ring_count=64)
    sphere = bpy.context.object
    before = set(os.listdir(_inputs_dir()))
    session.current().max_image_bytes = 200_000  # as a backend with max_image_bytes = 200 kB says in its hello
    try:
        with pytest.raises(RuntimeError, match=r"over the backend's limit of 0\.2 MB: decimate it"):
            bpy.ops.mpod123.texture_selected()
    finally:
        session.current().max_image_bytes = 50 << 20
    _no_trace_of_a_job(before)
    assert bpy.context.view_layer.objects.active == sphere and sphere.select_get(), "the selection is given back"


# ------------------------------------------------------------------ 8: uninstall keeps the job list and results
UNINSTALL_SCRIPT = r"""
import json, os, sys
import bpy
out = {"install": sorted(bpy.ops.extensions.package_install_files(filepath=sys.argv[1], repo="user_default",
                                                                   enable_on_install=True))}
pkg = "bl_ext.user_default.mpod123"
session = sys.modules[pkg + ".session"]
session.job_file().save({"a" * 32: {"name": "kept", "state": "imported"}})
(session.results_dir() / ("a" * 32 + ".glb")).write_bytes(b"glb")
out["data"] = str(session.user_dir())
blenders = bpy.utils.extension_path_user(pkg, create=True)  # the folder Blender deletes on uninstall
open(os.path.join(blenders, "probe"), "w").close()
index = [r.module for r in bpy.context.preferences.extensions.repos].index("user_default")
out["uninstall"] = sorted(bpy.ops.extensions.package_uninstall(repo_index=index, pkg_id="mpod123"))
out["blenders_folder_left"] = os.path.exists(blenders)
out["jobs"] = json.load(open(os.path.join(out["data"], "jobs.json")))
out["result_left"] = os.path.exists(os.path.join(out["data"], "results", "a" * 32 + ".glb"))
print("RESULT " + json.dumps(out))
"""


def _zip_without_wheels(tmp: Path) -> Path:
    """The add-on as an extension zip, minus the pyzmq wheels (the test's Python has pyzmq already)."""
    import re
    import shutil
    import zipfile

    from tests.addon_backend import ROOT

    src = tmp / "pkg"
    shutil.copytree(ROOT / "blender_addon", src, ignore=shutil.ignore_patterns("__pycache__", "wheels", "backend_wheel"))
    manifest = src / "blender_manifest.toml"
    manifest.write_text(re.sub(r"(?ms)^wheels = \[.*?\]\n", "", manifest.read_text()))
    zpath = tmp / "mpod123.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(src).as_posix())
    return zpath


def test_uninstalling_the_extension_keeps_the_job_list_and_the_results(tmp_path):
    import subprocess

    user = tmp_path / "user"
    env = {**os.environ, "BLENDER_USER_CONFIG": str(user / "config"), "BLENDER_USER_SCRIPTS": str(user / "scripts"),
           "BLENDER_USER_EXTENSIONS": str(user / "extensions"), "BLENDER_USER_DATAFILES": str(user / "datafiles")}
    proc = subprocess.run([sys.executable, "-c", UNINSTALL_SCRIPT, str(_zip_without_wheels(tmp_path))],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(lines[-1][7:])
    assert res["install"] == ["FINISHED"] and res["uninstall"] == ["FINISHED"], res
    assert not res["blenders_folder_left"], "Blender deleted the extension's own user folder"
    assert res["data"] == str(user / "datafiles" / "mpod123"), "the add-on's data lives outside it"
    assert res["jobs"] == {"a" * 32: {"name": "kept", "state": "imported"}} and res["result_left"]


# ------------------------------------------------------------------ also: the Server box after an address change
def test_the_server_box_stops_saying_connected_when_the_address_changes(prefs, server):
    reset_jobs()
    connect_addon()
    session = addon_session()
    assert not session.config_changed(bpy.context), (session.current().net_config, prefs.address)
    prefs.address = f"tcp://127.0.0.1:{free_port()}"
    try:
        assert session.config_changed(bpy.context), "the panel shows 'not connected (the address or keys changed…)'"
    finally:
        prefs.address = server.endpoint
    assert not session.config_changed(bpy.context), (session.current().net_config, prefs.address)
