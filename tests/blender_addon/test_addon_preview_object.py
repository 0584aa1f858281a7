"""Live 3D previews in the real bpy module: one object per job, updated in place, gone when the job ends.

Events go through the session's real tick (``session.step``) as the network thread would hand them
over; the GLBs are the real previews of the extraction (spheres of known radius and colour).
The last test runs a tiny job against a real `mpod123 serve --tiny`.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

bpy = pytest.importorskip("bpy")
pytest.importorskip("zmq")

from mpod123.export.preview_mesh import density_surface, preview_glb, srgb_to_linear  # noqa: E402
from tests.addon_backend import JOB_TIMEOUT_S, ServeProcess, enabled_addon, free_port, object_png  # noqa: E402
from tests.addon_live import wm_state  # noqa: E402


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    with enabled_addon(tmp_path_factory.mktemp("addon-user")) as mod:
        assert mod is not None
        from blender_addon import session
        from blender_addon.blender.preferences import prefs

        p = prefs(bpy.context)
        p.address, p.use_local_backend = f"tcp://127.0.0.1:{free_port()}", False  # nothing listens there
        yield session


def _po():
    return sys.modules["blender_addon.blender.preview_object"]


def sphere_glb(radius: float, rgb=(0.9, 0.3, 0.1), res: int = 20) -> tuple[bytes, np.ndarray]:
    """A preview GLB of a sphere of ``radius`` (and its glTF positions)."""
    def density(x):
        return (5.0 * (2.0 - x.norm(dim=-1) / radius)).clamp(min=0.0)

    glb, mesh = preview_glb(density_surface(density, 1.0, res, 5.0), lambda x: torch.tensor(rgb).expand(len(x), 3),
                            2000, 300_000)
    return glb, mesh.vertices


def _job(name: str, state: str = "running", location=(1.0, 2.0, 3.0)):
    st = wm_state()
    job = st.jobs.add()
    job.job_id, job.name, job.state = name * (32 // len(name)), name, state
    job.location = location
    job.rest_on_ground, job.target_height = False, 0.0
    return job


def _event(job, kind: str, buffers=(), seq: int = 1, **content):
    from blender_addon.core.client import Message

    return Message("event", {"kind": kind, **content}, list(buffers), job_id=job.job_id, seq=seq)


def _tick(*messages) -> None:
    session = sys.modules["blender_addon.session"]
    session.current().pending.extend(messages)
    session.step(bpy.context, budget_s=None)


def _reset(session) -> None:
    st = wm_state()
    st.jobs.clear()
    session.fresh()
    session.job_file().save({})
    _po().remove_all()


def test_the_preview_object_appears_and_is_updated_in_place_then_goes_with_the_import(addon, tmp_path):
    session = addon
    _reset(session)
    po = _po()
    other = bpy.data.objects.new("artist's", bpy.data.meshes.new("artist's"))
    bpy.context.scene.collection.objects.link(other)
    other.select_set(True)
    bpy.context.view_layer.objects.active = other
    job = _job("teapot")
    meshes_before = len(bpy.data.meshes)

    seen = []
    for k in range(10):
        radius = 0.3 + 0.05 * k
        glb, positions = sphere_glb(radius)
        _tick(_event(job, "preview_mesh", [glb], seq=k + 1, stage="outline" if k < 5 else "detail", step=k))
        obj = po.find(job.job_id)
        assert obj is not None, wm_state().last_error
        seen.append((obj.as_pointer(), obj.data.as_pointer()))
        assert len(bpy.data.meshes) == meshes_before + 1, "one mesh datablock per job, however many previews"
        mesh = obj.data
        assert len(mesh.vertices) == len(positions) and len(mesh.polygons) > 0
        co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", co)
        co = co.reshape(-1, 3)
        expected = np.stack([positions[:, 0], -positions[:, 2], positions[:, 1]], axis=1)  # Y-up -> Z-up
        assert np.abs(co - expected).max() < 1e-6
        assert np.abs(np.linalg.norm(co, axis=1) - radius).max() < 2.0 / 20, "the sphere sent, at its radius"
        attr = mesh.color_attributes.active_color
        assert attr is not None and attr.domain == "POINT"
        colors = np.empty(len(mesh.vertices) * 4, dtype=np.float32)
        attr.data.foreach_get("color", colors)
        assert np.abs(colors.reshape(-1, 4)[:, :3] - srgb_to_linear(np.array([0.9, 0.3, 0.1]))).max() < 0.01
        assert tuple(obj.location) == (1.0, 2.0, 3.0), "at the job's target location"
        assert [c.name for c in obj.users_collection] == ["Generating"]
        assert not obj.select_get() and obj.hide_select
        assert other.select_get() and bpy.context.view_layer.objects.active == other, "the artist's selection stays"
    assert len(set(seen)) == 1, "the same object and mesh datablock throughout"
    assert job.state == "running" and job.last_seq == 10

    # the job's import options apply to the preview as they will to the result
    job.rest_on_ground, job.target_height = True, 2.0
    _tick(_event(job, "preview_mesh", [sphere_glb(0.5)[0]], seq=11, stage="detail", step=11))
    co = np.array([v.co[:] for v in po.find(job.job_id).data.vertices])
    assert abs(co[:, 2].min()) < 1e-5 and abs(co[:, 2].max() - 2.0) < 1e-5, "resting on the ground, 2 units high"
    job.rest_on_ground, job.target_height = False, 0.0

    # a burst: only the newest preview of the job is built
    glbs = [sphere_glb(r)[0] for r in (0.3, 0.5, 0.7)]
    last_positions = sphere_glb(0.7)[1]
    _tick(*(_event(job, "preview_mesh", [g], seq=12 + i, stage="detail", step=20 + i) for i, g in enumerate(glbs)))
    assert len(po.find(job.job_id).data.vertices) == len(last_positions)

    # the result arrives and is imported: the preview goes, with its mesh and the empty collection
    from mpod123.export.gltf import encode_glb

    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], dtype=np.uint32)
    normals = positions - positions.mean(0)
    session.result_path(job).write_bytes(encode_glb(positions, faces, positions[:, :2], normals, object_png(16)))
    job.state = "done"
    session.current().imports.append(job.job_id)
    _tick()
    assert job.state == "imported", wm_state().last_error
    assert po.find(job.job_id) is None and "Generating" not in bpy.data.collections
    assert len(bpy.data.meshes) == meshes_before + 1, "the preview's mesh was freed; the result's is the new one"
    assert bpy.data.objects.get(job.object_name) is not None
    bpy.data.objects.remove(bpy.data.objects[job.object_name])
    bpy.data.objects.remove(other)
    _reset(session)


def test_cancel_failure_removal_and_the_toggle_remove_previews(addon):
    session = addon
    _reset(session)
    po = _po()
    from blender_addon.blender.preferences import prefs

    glb = sphere_glb(0.4)[0]
    jobs = [_job(n) for n in ("cancelme", "failme", "removeme", "toggleme")]
    ids = [j.job_id for j in jobs]  # rows of a collection property move when one is removed: keep the ids
    _tick(*(_event(j, "preview_mesh", [glb], stage="outline", step=1) for j in jobs))
    assert all(po.find(i) for i in ids)
    assert len(bpy.data.collections["Generating"].objects) == 4

    _tick(_event(jobs[0], "cancelled", seq=2, reason="by the artist"))
    assert jobs[0].state == "cancelled" and po.find(ids[0]) is None
    _tick(_event(jobs[1], "failed", seq=2, ename="Boom", evalue="x"))
    assert po.find(ids[1]) is None
    session.forget_jobs(bpy.context, [ids[2]])
    assert po.find(ids[2]) is None and po.find(ids[3]) is not None

    p = prefs(bpy.context)
    p.show_mesh_previews = False
    try:
        assert po.previews() == [] and "Generating" not in bpy.data.collections
        toggle = wm_state().jobs[-1]
        _tick(_event(toggle, "preview_mesh", [glb], seq=3, stage="detail", step=2))
        assert po.previews() == [], "turned off: no preview object"
    finally:
        p.show_mesh_previews = True
    _reset(session)


def _edited(glb: bytes, edit) -> bytes:
    """The GLB with its JSON changed by ``edit(gltf)`` (the binary chunk as it was)."""
    import json
    import struct

    n = struct.unpack_from("<I", glb, 12)[0]
    gltf = json.loads(glb[20:20 + n])
    edit(gltf)
    text = json.dumps(gltf).encode()
    text += b" " * (-len(text) % 4)
    rest = glb[20 + n:]
    return struct.pack("<III", 0x46546C67, 2, 20 + len(text) + len(rest)) + struct.pack("<II", len(text), 0x4E4F534A) \
        + text + rest


def test_a_damaged_preview_is_reported_and_the_stream_goes_on(addon):
    session = addon
    _reset(session)
    po = _po()
    job = _job("damaged")
    glb = sphere_glb(0.5)[0]
    meshes = len(bpy.data.meshes)
    bad_files = [b"junk", glb[:100], glb[:-8]]
    for edit in (lambda g: g["accessors"][0].update(count=3),  # the indices then point past the vertices
                 lambda g: g["accessors"][2].update(type="VEC3"),
                 lambda g: g["accessors"][3].update(componentType=5126),
                 lambda g: g["bufferViews"][0].update(byteOffset=1 << 30),
                 lambda g: g["accessors"][0].update(count=1 << 40)):
        bad_files.append(_edited(glb, edit))
    for bad in bad_files:
        _tick(_event(job, "preview_mesh", [bad], stage="outline", step=1))
        assert po.find(job.job_id) is None and len(bpy.data.meshes) == meshes
    _tick(_event(job, "preview_mesh", [glb], seq=2, stage="outline", step=2))
    assert po.find(job.job_id) is not None
    _reset(session)


def test_an_undo_never_brings_back_a_finished_jobs_preview(addon):
    session = addon
    _reset(session)
    po = _po()
    assert po.after_undo in bpy.app.handlers.undo_post and po.after_undo in bpy.app.handlers.redo_post
    running, finished = _job("running"), _job("finished")
    glb = sphere_glb(0.5)[0]
    _tick(*(_event(j, "preview_mesh", [glb], stage="outline", step=1) for j in (running, finished)))
    finished.state = "imported"  # as if an undo restored the data of before its import
    po.after_undo()
    assert po.find(finished.job_id) is None and po.find(running.job_id) is not None
    _reset(session)


@pytest.mark.slow
def test_a_real_tiny_job_shows_its_preview_while_it_runs_and_not_after_the_import(addon, tmp_path):
    from blender_addon.blender.preferences import prefs

    session = addon
    _reset(session)
    po = _po()
    server = ServeProcess(tmp_path / "backend")
    server.start()
    try:
        p = prefs(bpy.context)
        p.address, p.use_local_backend, p.timeout_s = server.endpoint, False, 10.0
        p.server_public_key = p.client_public_key = p.client_secret_key = ""
        p.rest_on_ground, p.target_height = False, 0.0
        job_id = session.submit(bpy.context, object_png(), "lamp", {"preset": "draft", "steps": 2}, (4.0, 0.0, 0.0))
        seen = set()

        def done():
            obj = po.find(job_id)
            if obj is not None:
                seen.add((obj.name, len(obj.data.vertices) > 0, tuple(obj.location), obj.select_get()))
            job = next(j for j in wm_state().jobs if j.job_id == job_id)
            return job.state in ("imported", "failed", "cancelled")

        assert session.settle(bpy.context, done, JOB_TIMEOUT_S), server.log()[-2000:]
        job = next(j for j in wm_state().jobs if j.job_id == job_id)
        assert job.state == "imported", (job.message, server.log()[-2000:])
        assert seen == {("lamp (generating)", True, (4.0, 0.0, 0.0), False)}, seen
        assert po.find(job_id) is None and "Generating" not in bpy.data.collections
        assert [o.name for o in bpy.data.objects if o.get(po.JOB_KEY)] == []
        bpy.data.objects.remove(bpy.data.objects[job.object_name])
    finally:
        session.disconnect()
        server.stop()
        _reset(session)
