"""The add-on in the real bpy module against a real `mpod123 serve --tiny` on loopback.

Timers never fire in background mode, so the tests call the session's drain
(through ``session.wait``) where Blender would tick. Jobs run the backend's
``--tiny`` job with very few steps; no test depends on the number of events
or the mesh size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")
pytest.importorskip("zmq")
pytest.importorskip("PIL")

from tests.addon_backend import ADDON, JOB_TIMEOUT_S, ROOT, ServeProcess, free_port, object_png, raise_addon_error  # noqa: E402
from tests.addon_live import addon_session, base_color_image, connect_addon, reset_jobs, settle, wm_state  # noqa: E402


def _write_png(path: Path, **kw) -> Path:
    path.write_bytes(object_png(**kw))
    return path


def _blender_pixels(image) -> list[tuple[int, int, int]]:
    """Rows top to bottom as 8-bit RGB (Blender stores them bottom-up, as floats)."""
    w, h = image.size
    px = list(image.pixels)
    rows = [px[(h - 1 - y) * w * 4:(h - y) * w * 4] for y in range(h)]
    return [tuple(round(row[x * 4 + c] * 255) for c in range(3)) for row in rows for x in range(w)]


def _png_pixels(data: bytes) -> list[tuple[int, int, int]]:
    import io

    from PIL import Image

    raw = Image.open(io.BytesIO(data)).convert("RGB").tobytes()
    return [tuple(raw[i:i + 3]) for i in range(0, len(raw), 3)]


def _events_from_server(endpoint: str, owner: str, job_id: str) -> list:
    """Every event of a job, straight from the backend (an independent client resuming from seq 0)."""
    from blender_addon.core.client import AddonClient

    c = AddonClient(endpoint, session=owner, timeout_s=10)
    try:
        c.resume(job_id, 0)
        events, deadline = [], time.monotonic() + 30
        while time.monotonic() < deadline:
            events += c.drain()
            if events and events[-1].content["kind"] in ("done", "failed", "cancelled"):
                return events
            c.client.sock.poll(100)
        raise AssertionError(f"the event stream of {job_id} did not end")
    finally:
        c.close()


def _backend_status(endpoint: str, job_id: str) -> dict:
    """The backend's own view of a job, asked by an independent client under the add-on's owner identity."""
    from blender_addon.core.client import AddonClient

    c = AddonClient(endpoint, session=addon_session().owner_id(), timeout_s=10)
    try:
        return c.status(job_id)
    finally:
        c.close()


def test_generate_two_queued_jobs_streams_previews_and_imports_at_the_cursor(prefs, server, tmp_path):
    session = addon_session()
    reset_jobs()
    st = wm_state()
    objects_before = set(bpy.data.objects)
    prefs.rest_on_ground, prefs.target_height, prefs.target_faces = True, 0.0, 0
    st.override_import = False

    # job 1: an image file
    st.source, st.filepath = "FILE", str(_write_png(tmp_path / "teapot.png"))
    st.preset, st.seed, st.steps, st.random_seed = "draft", 0, 2, False
    bpy.context.scene.cursor.location = (1.0, 2.0, 3.0)
    assert bpy.ops.mpod123.generate() == {"FINISHED"}
    # job 2, queued behind it: an image datablock, a random seed, a face budget and a target height
    image = bpy.data.images.load(str(_write_png(tmp_path / "vase.png", colour=(60, 200, 90))))
    st.source, st.image, st.steps, st.random_seed = "DATABLOCK", image, 1, True
    st.override_import, st.rest_on_ground, st.target_height, st.target_faces = True, True, 2.0, 40
    st.shading, st.clear_custom_normals = "FLAT", True
    bpy.context.scene.cursor.location = (-2.0, 0.0, 0.5)
    assert bpy.ops.mpod123.generate() == {"FINISHED"}
    st.override_import, st.random_seed = False, False
    assert [j.name for j in st.jobs] == ["teapot", "vase"]
    assert [j.state for j in st.jobs] == ["sending", "sending"], "Generate returns before the upload"
    jobs = {j.name: j.job_id for j in st.jobs}
    vase_seed = st.jobs[1].seed
    assert st.jobs[0].seed == 0 and st.jobs[1].preset == "draft" and st.jobs[1].target_faces == 40

    t0 = time.monotonic()
    for job_id in jobs.values():
        final = session.wait(bpy.context, job_id, timeout_s=JOB_TIMEOUT_S)
        job = next(j for j in st.jobs if j.job_id == job_id)
        assert final == "imported", (final, job.message, server.log()[-2000:])
    elapsed = time.monotonic() - t0
    assert st.connection == "connected" and st.server_name == "mpod123-backend"

    teapot, vase = (next(j for j in st.jobs if j.job_id == jobs[n]) for n in ("teapot", "vase"))
    for job in (teapot, vase):
        stages = {s.stage: s for s in job.stages}
        for stage in ("outline", "detail"):
            assert stages[stage].done and stages[stage].step == stages[stage].total >= 1, (job.name, stage)
        assert job.preview_matte and job.preview_outline and job.preview_detail
    assert teapot.preview_outline != vase.preview_outline, "each job keeps its own previews"
    assert teapot.last_seq > 0 and vase.last_seq > 0

    # the matte comes first, before any stage-1 preview; then the previews are Blender images of the PNGs sent
    events = _events_from_server(server.endpoint, session.owner_id(), teapot.job_id)
    assert [m.seq for m in events] == list(range(1, len(events) + 1))
    previews = [m.content["stage"] for m in events if m.content["kind"] == "preview"]
    assert previews[0] == "matte" and previews.index("matte") < previews.index("outline")
    first_progress = next(i for i, m in enumerate(events) if m.content["kind"] == "progress")
    first_matte = next(i for i, m in enumerate(events) if m.content.get("stage") == "matte")
    assert first_matte < first_progress, "the matte arrives before stage 1 starts"
    for stage, image_name in (("matte", teapot.preview_matte), ("outline", teapot.preview_outline),
                              ("detail", teapot.preview_detail)):
        png = [m for m in events if m.content["kind"] == "preview" and m.content["stage"] == stage][-1].buffers[0]
        img = bpy.data.images[image_name]
        expected = _png_pixels(png)
        assert img.size[0] * img.size[1] == len(expected) and img.size[0] > 0
        got = _blender_pixels(img)
        assert max(abs(a - b) for pa, pb in zip(got, expected) for a, b in zip(pa, pb)) <= 1, stage

    # each result: one mesh object named after its image, UVs, a textured Base Color, at the cursor of its Generate
    new = [o for o in bpy.data.objects if o not in objects_before]
    assert sorted(o.name for o in new) == ["teapot", "vase"], "one object per job, no stray empties"
    coll = bpy.data.collections["Generated"]
    for obj, location in ((bpy.data.objects["teapot"], (1.0, 2.0, 3.0)), (bpy.data.objects["vase"], (-2.0, 0.0, 0.5))):
        assert obj.type == "MESH" and obj.parent is None
        assert tuple(round(v, 5) for v in obj.location) == location
        assert list(obj.users_collection) == [coll]
        assert obj.data.name == obj.name and len(obj.data.polygons) > 0
        assert len(obj.data.uv_layers) >= 1
        tex = base_color_image(obj)
        assert tex.size[0] > 0 and tex.size[1] > 0 and tex.name.startswith(obj.name)
        assert max(tex.pixels[:4000]) > 0.0, "the texture has pixels"
        lowest = min((obj.matrix_world @ v.co).z for v in obj.data.vertices)
        assert abs(lowest - location[2]) < 1e-4, "rests on the ground: the lowest vertex at the cursor's height"
    vase_obj = bpy.data.objects["vase"]
    zs = [(vase_obj.matrix_world @ v.co).z for v in vase_obj.data.vertices]
    assert abs(max(zs) - min(zs) - 2.0) < 1e-4, "the target height"
    assert len(vase_obj.data.polygons) <= 40 < len(bpy.data.objects["teapot"].data.polygons), "the face budget"
    assert not vase_obj.data.has_custom_normals and not any(p.use_smooth for p in vase_obj.data.polygons)
    assert vase.seed == vase_seed and session.job_file().load()[vase.job_id]["seed"] == vase_seed
    assert coll.name in bpy.context.scene.collection.children
    print(f"two tiny jobs (2 and 1 steps) generated and imported in {elapsed:.1f} s")


def test_imported_front_faces_blender_minus_y(addon, tmp_path):
    """The backend's front (+Z in glTF) lands on Blender's -Y: the Front view shows it."""
    import numpy as np

    from blender_addon.blender.importer import import_glb
    from mpod123.export.gltf import encode_glb

    # a square base at z=0 with a "nose" vertex pointing to +Z (the front) and one to +Y (up), in glTF coordinates
    positions = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0], [0, 0, 1.5], [0, 1.2, 0]],
                         dtype=np.float32)
    faces = np.array([[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4], [0, 2, 1], [0, 3, 2], [2, 3, 5]], dtype=np.uint32)
    uvs = np.clip(positions[:, :2] + 0.5, 0, 1).astype(np.float32)
    normals = positions / np.maximum(np.linalg.norm(positions, axis=1, keepdims=True), 1e-6)
    path = tmp_path / "arrow.glb"
    path.write_bytes(encode_glb(positions, faces, uvs, normals, object_png(16), name="arrow"))

    obj = import_glb(str(path), "arrow", location=(10.0, 0.0, 0.0))
    world = [obj.matrix_world @ v.co for v in obj.data.vertices]
    nose = min(world, key=lambda v: v.y)
    top = max(world, key=lambda v: v.z)
    assert (round(nose.x, 4), round(nose.y, 4), round(nose.z, 4)) == (10.0, -1.5, 0.0), "glTF +Z -> Blender -Y"
    assert (round(top.x, 4), round(top.y, 4), round(top.z, 4)) == (10.0, 0.0, 1.2), "glTF +Y -> Blender +Z"
    assert base_color_image(obj).name == "arrow_basecolor"
    bpy.data.objects.remove(obj)


def test_importer_removes_the_empty_parents_and_keeps_world_transforms(addon, tmp_path):
    from blender_addon.blender.importer import import_glb

    scene = bpy.data.scenes.new("export-src")
    mesh = bpy.data.meshes.new("m")
    mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    child = bpy.data.objects.new("Child", mesh)
    root = bpy.data.objects.new("Root", None)
    scene.collection.objects.link(root)
    scene.collection.objects.link(child)
    root.location, root.scale = (1.0, 2.0, 3.0), (2.0, 2.0, 2.0)
    child.parent = root
    path = tmp_path / "parented.glb"
    window_scene = bpy.context.window.scene
    bpy.context.window.scene = scene
    try:
        bpy.ops.export_scene.gltf(filepath=str(path))
    finally:
        bpy.context.window.scene = window_scene
        bpy.data.scenes.remove(scene)
        for o in (child, root):
            bpy.data.objects.remove(o)
    before = set(bpy.data.objects)
    obj = import_glb(str(path), "parented.png", location=(0.0, 0.0, 0.0))
    new = [o for o in bpy.data.objects if o not in before]
    assert new == [obj] and obj.parent is None and obj.name.startswith("parented.png")
    assert tuple(round(s, 4) for s in obj.scale) == (2.0, 2.0, 2.0), "the empty's scale is kept"
    bpy.data.objects.remove(obj)


def test_cancel_a_running_and_a_queued_job(prefs, server, tmp_path):
    session = addon_session()
    reset_jobs()
    st = wm_state()
    st.source, st.filepath, st.preset, st.steps = "FILE", str(_write_png(tmp_path / "long.png")), "draft", 200
    assert bpy.ops.mpod123.generate() == {"FINISHED"}
    running = st.jobs[0].job_id
    st.steps = 1
    assert bpy.ops.mpod123.generate() == {"FINISHED"}
    queued = st.jobs[1].job_id
    assert session.wait(bpy.context, running, until=("running",), timeout_s=JOB_TIMEOUT_S) == "running"
    settle(lambda: st.jobs[1].state == "queued", 30, "the second job queued")

    assert bpy.ops.mpod123.cancel(job_id=queued) == {"FINISHED"}
    settle(lambda: st.jobs[1].state == "cancelled", 30, "a queued job cancelled at once")
    assert bpy.ops.mpod123.cancel(job_id=running) == {"FINISHED"}
    t0 = time.monotonic()
    assert session.wait(bpy.context, running, timeout_s=60) == "cancelled"
    assert time.monotonic() - t0 < 60
    assert not bpy.data.objects.get("long")
    assert session.job_file().load()[running]["state"] == "cancelled", "the job file follows"


@pytest.mark.slow
def test_connect_and_generate_against_a_dead_address_return_at_once_and_the_job_is_kept(prefs, server, tmp_path):
    """Nothing waits on the network on Blender's thread; the error comes through the tick; the job is not lost."""
    session = addon_session()
    reset_jobs()
    st = wm_state()
    prefs.address = f"tcp://127.0.0.1:{free_port()}"
    prefs.timeout_s = 1.0
    t0 = time.perf_counter()
    assert bpy.ops.mpod123.connect() == {"FINISHED"}
    connect_s = time.perf_counter() - t0
    st.source, st.filepath, st.preset, st.steps = "FILE", str(_write_png(tmp_path / "ghost.png")), "draft", 1
    t0 = time.perf_counter()
    assert bpy.ops.mpod123.generate() == {"FINISHED"}
    generate_s = time.perf_counter() - t0
    print(f"against a dead address: Connect returned in {connect_s * 1e3:.1f} ms, Generate in {generate_s * 1e3:.1f} ms")
    assert connect_s < 0.1 and generate_s < 0.1
    assert st.last_error == "" and st.jobs[0].state == "sending"
    settle(lambda: "not running or not reachable at tcp://127.0.0.1" in st.last_error, 10, "the hello error")
    assert st.connection == "lost"
    job = st.jobs[0]
    settle(lambda: job.state == "unsent", 15, "the submit error")
    assert "not running or not reachable" in job.message and "sent again" in job.message
    assert session.job_file().load()[job.job_id]["state"] == "unsent", "the job is kept in the job file"

    # the backend is there again: Connect sends the kept job (same id, from the add-on's copy of the input)
    prefs.address, prefs.timeout_s = server.endpoint, 10.0
    connect_addon()
    settle(lambda: job.state in ("queued", "running"), 30, "the kept job sent")
    assert _backend_status(server.endpoint, job.job_id)["state"] in ("queued", "running", "done")
    assert bpy.ops.mpod123.cancel(job_id=job.job_id) == {"FINISHED"}
    assert session.wait(bpy.context, job.job_id, timeout_s=60) in ("cancelled", "imported")


def test_a_remote_address_respects_blender_online_access(prefs):
    assert bpy.app.online_access is False  # the bpy module's default
    prefs.address = "tcp://192.0.2.10:5555"
    assert not bpy.ops.mpod123.connect.poll()
    with pytest.raises(RuntimeError, match="Allow Online Access is off"):
        bpy.ops.mpod123.connect()
    with pytest.raises(RuntimeError, match="Allow Online Access is off"):
        addon_session().connect(bpy.context)


def test_wrong_keys_give_a_clear_error(prefs, tmp_path):
    import zmq

    from backend.security import init_keys

    st = wm_state()
    keys = tmp_path / "keys"
    made = init_keys(keys, "blender")
    curve = ServeProcess(tmp_path / "curve-data", extra=("--keys", str(keys)))
    curve.start()
    try:
        public, secret = zmq.auth.load_certificate(made["client_secret"])
        wrong_server_public, _ = zmq.curve_keypair()
        prefs.address, prefs.timeout_s = curve.endpoint, 2.0
        prefs.client_public_key, prefs.client_secret_key = public.decode(), secret.decode()
        prefs.server_public_key = wrong_server_public.decode()
        assert bpy.ops.mpod123.connect() == {"FINISHED"}
        settle(lambda: "server public key is wrong" in st.last_error, 15, "the wrong-key error")
        prefs.server_public_key = "not-a-key"
        with pytest.raises(RuntimeError, match="40 Z85 characters"):
            bpy.ops.mpod123.connect()
        # the right keys, loaded from the files `mpod123 keys init` wrote
        prefs.server_key_file, prefs.client_key_file = str(keys / "server.key"), str(made["client_secret"])
        assert bpy.ops.mpod123.load_keys() == {"FINISHED"}
        connect_addon()
    finally:
        addon_session().disconnect()
        curve.stop()


def test_reconnects_after_a_backend_restart_and_imports_the_result(prefs, server, tmp_path):
    session = addon_session()
    reset_jobs()
    st = wm_state()
    st.source, st.filepath, st.preset, st.steps = "FILE", str(_write_png(tmp_path / "phoenix.png")), "draft", 2
    bpy.context.scene.cursor.location = (0.0, 5.0, 0.0)
    assert bpy.ops.mpod123.generate() == {"FINISHED"}
    job = st.jobs[0]
    assert session.wait(bpy.context, job.job_id, until=("running",), timeout_s=JOB_TIMEOUT_S) == "running"
    seq_before = job.last_seq

    server.kill()
    settle(lambda: st.connection == "lost", 20, "the connection seen lost")
    assert "lost the connection" in st.server_message
    server.start()
    assert session.wait(bpy.context, job.job_id, timeout_s=JOB_TIMEOUT_S) == "imported", (job.message, server.log()[-2000:])
    assert st.connection == "connected"
    status = _backend_status(server.endpoint, job.job_id)
    assert status["attempts"] == 2 and status["last_seq"] == job.last_seq > seq_before
    obj = bpy.data.objects[job.object_name]
    assert obj.name == "phoenix" and tuple(obj.location) == (0.0, 5.0, 0.0)


CLIENT_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from blender_addon.core.client import AddonClient
endpoint, session, image, dest = sys.argv[2:6]
c = AddonClient(endpoint, session=session, timeout_s=10)
info = c.hello()
job_id = c.submit(open(image, "rb").read(), {"preset": "draft", "steps": 1})
t0 = time.monotonic()
kinds, deadline = [], time.monotonic() + float(sys.argv[6])
while time.monotonic() < deadline and (not kinds or kinds[-1] not in ("done", "failed", "cancelled")):
    kinds += [m.content["kind"] for m in c.drain()]
    c.client.sock.poll(100)
path = c.fetch(job_id, dest) if kinds and kinds[-1] == "done" else None
c.close()
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("bpy", "torch", "diffusers", "mpod123", "backend"))
print(json.dumps({"server": info["server"], "job_id": job_id, "kinds": kinds, "bad": bad,
                  "size": path.stat().st_size if path else 0, "job_s": time.monotonic() - t0}))
"""


def test_the_bpy_free_client_runs_a_job_and_import_result_picks_it_up(prefs, server, tmp_path):
    """A job submitted outside Blender (or by an earlier session) is imported later with Import Result."""
    image = _write_png(tmp_path / "lamp.png")
    out = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, str(ROOT), server.endpoint, addon_session().owner_id(), str(image),
         str(tmp_path / "lamp.glb"), str(JOB_TIMEOUT_S)],
        capture_output=True, text=True, check=False, timeout=JOB_TIMEOUT_S + 60,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"bpy-free client: a 1-step tiny job took {res['job_s']:.1f} s")
    assert res["bad"] == [], "blender_addon.core.client loads no bpy, torch, mpod123 or backend"
    assert res["server"] == "mpod123-backend"
    assert res["kinds"][-1] == "done" and "progress" in res["kinds"] and "preview" in res["kinds"]
    assert res["size"] > 0 and (tmp_path / "lamp.glb").read_bytes()[:4] == b"glTF"

    reset_jobs()
    st = wm_state()
    bpy.context.scene.cursor.location = (0.0, 0.0, 4.0)
    assert bpy.ops.mpod123.import_finished() == {"FINISHED"}
    settle(lambda: any(j.job_id == res["job_id"] and j.state == "imported" for j in st.jobs), 60, "imported")
    job = next(j for j in st.jobs if j.job_id == res["job_id"])
    obj = bpy.data.objects[job.object_name]
    assert obj.name.startswith("MPOD123_") and tuple(obj.location) == (0.0, 0.0, 4.0)
    # a second Import Finished Results finds nothing new
    objects = len(bpy.data.objects)
    assert bpy.ops.mpod123.import_finished() == {"FINISHED"}
    settle(lambda: not addon_session().busy(bpy.context), 30, "idle")
    assert sum(1 for j in st.jobs if j.job_id == res["job_id"]) == 1 and len(bpy.data.objects) == objects


def test_connect_starts_the_local_backend_and_stop_ends_it(prefs, tmp_path):
    session = addon_session()
    st = wm_state()
    prefs.address = f"tcp://127.0.0.1:{free_port()}"
    prefs.use_local_backend = True
    prefs.local_command = f"{sys.executable} -m mpod123.cli.main serve --tiny --bind {{address}} --data {{data}}"
    prefs.local_data = str(tmp_path / "local-data")
    try:
        assert bpy.ops.mpod123.connect() == {"FINISHED"}
        pid = st.local_pid
        assert pid > 0 and session.local_running()
        settle(lambda: st.connection == "connected", 60, "connected to the local backend")
        assert (tmp_path / "local-data" / "jobs.sqlite").is_file(), "the backend uses the data folder from the preferences"
        assert bpy.ops.mpod123.stop_backend() == {"FINISHED"}
        assert st.local_pid == 0 and not session.local_running()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        # a command that cannot start gives a clear error
        prefs.local_command = "no-such-mpod123-command serve --bind {address}"
        session.disconnect()
        with pytest.raises(RuntimeError, match="cannot start the local backend"):
            bpy.ops.mpod123.connect()
    finally:
        session.stop_local()
        session.disconnect()
        prefs.use_local_backend = False
        prefs.local_command = "mpod123 serve --bind {address} --data {data}"


def _tick_until(done, timeout_s: float) -> list[tuple[float, bool, float]]:
    """Call the real timer callback as Blender would (after the interval it asks for, capped at 50 ms) until
    ``done()``; returns (main-thread seconds, whether that tick imported a result, main-thread CPU seconds)
    per tick."""
    session = addon_session()
    st = wm_state()
    ticks = []
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"not done after {timeout_s} s: {[j.state for j in st.jobs]} {st.last_error}"
        imported = sum(j.state == "imported" for j in st.jobs)
        t0, c0 = time.perf_counter(), time.thread_time()
        interval = session.tick()
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        ticks.append((wall, sum(j.state == "imported" for j in st.jobs) > imported, cpu))
        time.sleep(min(interval or 0.05, 0.05))
    return ticks


@pytest.mark.slow
def test_a_running_job_survives_file_new_and_an_add_on_restart_and_ticks_stay_short(prefs, server, tmp_path):
    """File > New, then disable/enable the add-on, while a job runs: it comes back by itself and is imported."""
    import addon_utils

    session = addon_session()
    reset_jobs()
    st = wm_state()
    st.source, st.filepath, st.preset, st.steps = "FILE", str(_write_png(tmp_path / "owl.png")), "draft", 4
    bpy.context.scene.cursor.location = (0.0, 0.0, 1.5)
    assert bpy.ops.mpod123.generate() == {"FINISHED"}
    job_id = st.jobs[0].job_id
    _tick_until(lambda: st.jobs[0].state == "running", JOB_TIMEOUT_S)

    bpy.ops.wm.read_homefile(use_empty=True)  # File > New: the WindowManager's job list is emptied
    st = wm_state()
    session.tick()
    assert [j.job_id for j in st.jobs] == [job_id], "back in the list after one tick"
    job = st.jobs[0]
    assert job.name == "owl" and tuple(job.location) == (0.0, 0.0, 1.5) and job.preset == "draft"

    def ours(handlers):
        return [h for h in handlers if getattr(h, "__module__", "") == "blender_addon.session.loop"]

    addon_utils.disable(ADDON, default_set=True, handle_error=raise_addon_error)
    assert ours(bpy.app.handlers.load_post) == [] and ours(bpy.app.handlers.load_pre) == []
    addon_utils.enable(ADDON, default_set=True, handle_error=raise_addon_error)
    assert len(ours(bpy.app.handlers.load_post)) == 1 and len(ours(bpy.app.handlers.load_pre)) == 1
    from blender_addon.blender.preferences import prefs as get_prefs

    p = get_prefs(bpy.context)  # a disabled add-on loses its preferences: as a fresh install would have them
    p.address, p.use_local_backend = server.endpoint, False
    session = addon_session()
    st = wm_state()
    st.jobs.clear()  # the WindowManager may keep the rows over a disable/enable; a Blender restart does not
    assert session.current().net is None, "disabling stopped the network thread"
    ticks = _tick_until(lambda: len(st.jobs) == 1 and st.jobs[0].state == "imported", JOB_TIMEOUT_S)
    job = st.jobs[0]
    assert job.job_id == job_id and job.stages and job.last_seq > 0, "it streamed again without a click"
    obj = bpy.data.objects[job.object_name]
    assert obj.name == "owl" and tuple(round(v, 5) for v in obj.location) == (0.0, 0.0, 1.5)
    assert obj.name in bpy.context.scene.objects, "imported into the new file's scene"

    import statistics

    plain = [t for t, imported, _c in ticks if not imported]
    cpu = [c for _t, imported, c in ticks if not imported]
    imports = [t for t, imported, _c in ticks if imported]
    print(f"main-thread time per tick over {len(ticks)} ticks while a job streamed and imported: median "
          f"{statistics.median(plain) * 1e3:.2f} ms, max {max(plain) * 1e3:.2f} ms (CPU {max(cpu) * 1e3:.2f} ms) "
          f"without the import; the import tick {imports[0] * 1e3:.1f} ms")
    assert len(imports) == 1
    assert statistics.median(plain) < 0.020


def _arrow_glb(path: Path) -> Path:
    """A small GLB (a square base with a nose to the front and a tip up), as the backend writes them."""
    import numpy as np

    from mpod123.export.gltf import encode_glb

    positions = np.array([[-0.5, -0.5, 0], [0.5, -0.5, 0], [0.5, 0.5, 0], [-0.5, 0.5, 0], [0, 0, 1.5], [0, 1.2, 0]],
                         dtype=np.float32)
    faces = np.array([[0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4], [0, 2, 1], [0, 3, 2], [2, 3, 5]], dtype=np.uint32)
    uvs = np.clip(positions[:, :2] + 0.5, 0, 1).astype(np.float32)
    normals = positions / np.maximum(np.linalg.norm(positions, axis=1, keepdims=True), 1e-6)
    path.write_bytes(encode_glb(positions, faces, uvs, normals, object_png(16), name="arrow"))
    return path


def test_import_keeps_the_artists_mode_and_selection_is_one_undo_step_and_can_be_redone(addon, tmp_path):
    import shutil

    session = addon_session()
    reset_jobs()
    st = wm_state()
    # a finished job whose result is already downloaded
    job = st.jobs.add()
    job.job_id, job.name, job.state = "f" * 32, "arrow", "done"
    job.location, job.collection = (3.0, -1.0, 0.25), "Results"
    job.rest_on_ground, job.target_height, job.shading, job.clear_custom_normals = True, 2.5, "SMOOTH", True
    shutil.copy(_arrow_glb(tmp_path / "a.glb"), session.results_dir() / f"{job.job_id}.glb")

    # the artist sculpts a cube, with a second object selected
    bpy.ops.mesh.primitive_cube_add(location=(0, 0, 0))
    cube = bpy.context.object
    bpy.ops.mesh.primitive_uv_sphere_add(location=(4, 0, 0))
    sphere = bpy.context.object
    cube.select_set(True)
    bpy.context.view_layer.objects.active = cube
    bpy.ops.object.mode_set(mode="SCULPT")
    bpy.ops.ed.undo_push(message="artist's last action")
    assert cube.mode == "SCULPT"

    assert bpy.ops.mpod123.import_result(job_id=job.job_id) == {"FINISHED"}
    settle(lambda: job.state == "imported", 10, "imported")
    obj = bpy.data.objects[job.object_name]
    assert cube.mode == "SCULPT" and bpy.context.view_layer.objects.active == cube, "the mode is the artist's"
    assert {o.name for o in bpy.context.view_layer.objects if o.select_get()} == {cube.name, sphere.name}
    world = [obj.matrix_world @ v.co for v in obj.data.vertices]
    assert abs(min(v.z for v in world) - 0.25) < 1e-5, "the lowest vertex at the cursor's height"
    assert abs(max(v.z for v in world) - min(v.z for v in world) - 2.5) < 1e-5, "the target height"
    assert tuple(round(v, 5) for v in obj.location) == (3.0, -1.0, 0.25)
    assert list(obj.users_collection) == [bpy.data.collections["Results"]]
    assert all(p.use_smooth for p in obj.data.polygons) and not obj.data.has_custom_normals

    # Ctrl+Z takes back the import only; the job can be imported again from its row
    cube_name, sphere_name = cube.name, sphere.name
    bpy.ops.ed.undo()
    cube, sphere = bpy.data.objects[cube_name], bpy.data.objects[sphere_name]  # undo reloads the data
    assert "arrow" not in bpy.data.objects
    assert cube.mode == "SCULPT", "back to the artist's state before the import, mode included"
    assert job.state == "imported"
    assert bpy.ops.mpod123.import_result(job_id=job.job_id) == {"FINISHED"}
    settle(lambda: "arrow" in bpy.data.objects, 10, "imported again")

    # in Object mode, the new object becomes the selection, as after any import
    bpy.ops.object.mode_set(mode="OBJECT")
    before = set(bpy.data.objects)
    assert bpy.ops.mpod123.import_result(job_id=job.job_id) == {"FINISHED"}
    settle(lambda: len(bpy.data.objects) == len(before) + 1, 10, "a third import")
    (new,) = set(bpy.data.objects) - before
    assert [o for o in bpy.context.view_layer.objects if o.select_get()] == [new]
    assert bpy.context.view_layer.objects.active == new
    for name in ("Cube", "Sphere", *[o.name for o in bpy.data.objects if o.name.startswith("arrow")]):
        bpy.data.objects.remove(bpy.data.objects[name])


@pytest.mark.slow
def test_a_render_result_is_accepted_and_generate_says_why_it_cannot_run(prefs, server, tmp_path):
    session = addon_session()
    reset_jobs()
    st = wm_state()
    st.source, st.filepath = "FILE", ""
    assert not bpy.ops.mpod123.generate.poll()
    with pytest.raises(RuntimeError, match="choose an image file in the Input section"):
        bpy.ops.mpod123.generate()
    st.source, st.image = "DATABLOCK", None
    with pytest.raises(RuntimeError, match="pick an image in the Input section"):
        bpy.ops.mpod123.generate()
    for image in [im for im in bpy.data.images if im.type == "RENDER_RESULT"]:
        bpy.data.images.remove(image)
    st.source = "RENDER"
    with pytest.raises(RuntimeError, match=r"render an image first \(F12\)"):
        bpy.ops.mpod123.generate()

    # render a small lit object on a transparent film, and generate from the Render Result
    scene = bpy.context.scene
    scene.render.engine, scene.cycles.samples, scene.cycles.device = "CYCLES", 1, "CPU"
    scene.render.resolution_x = scene.render.resolution_y = 48
    scene.render.film_transparent = True
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0.0, -4.0, 0.0), (1.5708, 0.0, 0.0)
    scene.camera = cam
    bpy.ops.mesh.primitive_ico_sphere_add(location=(0, 0, 0))
    ball = bpy.context.object
    bpy.ops.render.render()
    assert bpy.ops.mpod123.generate.poll()
    st.steps, st.preset = 1, "draft"
    assert bpy.ops.mpod123.generate() == {"FINISHED"}
    job = st.jobs[0]
    assert job.name == "Render Result" and job.input_label == "Render Result"
    sent = Path(job.input_path).read_bytes()
    assert sent[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    im = Image.open(Path(job.input_path))
    assert im.size == (48, 48) and im.mode == "RGBA" and im.getextrema()[3][1] > 0, "the render's pixels and alpha"
    settle(lambda: job.state in ("queued", "running"), 30, "accepted by the backend")
    assert bpy.ops.mpod123.cancel(job_id=job.job_id) == {"FINISHED"}
    assert session.wait(bpy.context, job.job_id, timeout_s=60) in ("cancelled", "imported")
    for o in (cam, ball):
        bpy.data.objects.remove(o)


def test_the_job_list_recall_remove_and_clear_finished(addon, tmp_path):
    session = addon_session()
    reset_jobs()
    st = wm_state()
    image = _write_png(tmp_path / "kept.png")
    for i, state in enumerate(("imported", "failed", "running", "done")):
        job = st.jobs.add()
        job.job_id, job.name, job.state = f"{i}" * 32, f"job{i}", state
        job.preset, job.seed, job.steps, job.collection = "draft", 100 + i, 3, f"Coll{i}"
        job.target_height, job.target_faces, job.shading = 1.5 + i, 1000 * i, "FLAT"
        job.input_path = str(image)
    session.save_jobs(bpy.context, wait=True)

    st.active_job = 3
    st.preset, st.seed, st.steps, st.random_seed, st.override_import = "paper", 0, 0, True, False
    assert bpy.ops.mpod123.recall() == {"FINISHED"}
    assert (st.preset, st.seed, st.steps, st.random_seed, st.collection) == ("draft", 103, 3, False, "Coll3")
    assert st.override_import and st.target_height == 4.5 and st.target_faces == 3000 and st.shading == "FLAT"
    assert st.source == "FILE" and st.filepath == str(image), "the input it was made from"

    assert bpy.ops.mpod123.remove_job(job_id="2" * 32) == {"CANCELLED"}, "a running job is cancelled first"
    assert bpy.ops.mpod123.clear_finished() == {"FINISHED"}
    assert [j.name for j in st.jobs] == ["job2", "job3"], "imported, failed and cancelled jobs go"
    assert not bpy.ops.mpod123.clear_finished.poll()
    assert bpy.ops.mpod123.remove_job(job_id="3" * 32) == {"FINISHED"}
    assert [j.name for j in st.jobs] == ["job2"]
    # they stay gone when the list is rebuilt from the job file (File > New, a restart)
    st.jobs.clear()
    assert session.restore_jobs(bpy.context) == 1 and [j.name for j in st.jobs] == ["job2"]
    records = session.job_file().load()
    assert records["0" * 32]["hidden"] and records["3" * 32]["hidden"] and not records["2" * 32].get("hidden")
    reset_jobs()


def test_import_in_edit_mode_keeps_edit_mode_and_the_unsaved_edit(addon, tmp_path):
    import bmesh

    from blender_addon.blender.importer import ImportOptions, import_glb

    bpy.ops.mesh.primitive_cube_add(location=(0, 0, 0))
    cube = bpy.context.object
    bpy.ops.object.mode_set(mode="EDIT")
    bm = bmesh.from_edit_mesh(cube.data)
    bm.verts.ensure_lookup_table()
    bm.verts[0].co.z = 7.0  # an edit not yet written to the mesh
    bmesh.update_edit_mesh(cube.data)

    obj = import_glb(str(_arrow_glb(tmp_path / "e.glb")), "edited", (0.0, 0.0, 0.0), options=ImportOptions(rest_on_ground=True))
    assert cube.mode == "EDIT" and bpy.context.view_layer.objects.active == cube
    assert not obj.select_get() and cube.select_get()
    bpy.ops.object.mode_set(mode="OBJECT")
    assert max(v.co.z for v in cube.data.vertices) == pytest.approx(7.0), "the edit survived the importer's mode switch"
    for o in (cube, obj):
        bpy.data.objects.remove(o)
