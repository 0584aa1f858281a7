"""Texture Selected Mesh in the real bpy module against a real `mpod123 serve --tiny` on loopback."""

from __future__ import annotations

import math

import pytest

bpy = pytest.importorskip("bpy")
pytest.importorskip("zmq")

from tests.addon_backend import JOB_TIMEOUT_S, object_png  # noqa: E402
from tests.addon_live import addon_session, base_color_image, connect_addon, reset_jobs, wm_state  # noqa: E402


def _clear_scene() -> None:
    """No objects (not read_factory_settings: that would drop the enabled add-on's preferences)."""
    if bpy.context.object is not None and bpy.context.object.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    for o in list(bpy.data.objects):
        bpy.data.objects.remove(o)


def _uvs(mesh) -> list[tuple[float, float]]:
    return [tuple(round(c, 5) for c in d.uv) for d in mesh.uv_layers.active.data]


def test_camera_pose_is_taken_relative_to_the_object_in_gltf_axes(addon):
    from blender_addon.blender.texture_target import camera_relative, target_problem

    _clear_scene()
    bpy.ops.mesh.primitive_cube_add(location=(5.0, 0.0, 0.0))
    cube = bpy.context.object
    cube.rotation_euler = (0.0, 0.0, math.radians(90))
    assert target_problem(bpy.context) == ""
    bpy.ops.object.camera_add(location=(5.0, -4.0, 0.0), rotation=(math.radians(90), 0.0, 0.0))  # looks along +Y
    cam = bpy.context.object
    bpy.context.scene.render.resolution_x = bpy.context.scene.render.resolution_y = 100
    cam.data.angle = math.radians(50)
    bpy.context.view_layer.update()
    pose = camera_relative(bpy.context.scene, cube, cam)
    # in the cube's frame (turned 90 degrees about Z) the camera sits at local -X... in glTF axes (x, z, -y)
    assert pose["position"] == pytest.approx([-4.0, 0.0, 0.0], abs=1e-5)
    assert pose["look_at"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-5)
    assert pose["up"] == pytest.approx([0.0, 1.0, 0.0], abs=1e-5)
    assert pose["fov_y_deg"] == pytest.approx(50.0, abs=1e-4)
    cube.select_set(False)
    bpy.context.view_layer.objects.active = cam
    assert "select a mesh" in target_problem(bpy.context)


@pytest.mark.slow
def test_texture_selected_mesh_assigns_a_new_material_with_the_returned_image(prefs, server, tmp_path):
    session = addon_session()
    reset_jobs()
    _clear_scene()
    connect_addon()
    st = wm_state()
    photo = tmp_path / "photo.png"
    photo.write_bytes(object_png(64))
    st.source, st.filepath = "FILE", str(photo)
    st.preset, st.seed, st.steps, st.random_seed = "draft", 0, 2, False
    # the artist's mesh: a cube (its default UVs do not overlap) moved, turned and scaled, and a camera on it
    bpy.ops.mesh.primitive_cube_add(location=(2.0, 1.0, 0.5), rotation=(0.0, 0.0, math.radians(30)), scale=(0.5, 0.5, 0.5))
    cube = bpy.context.object
    cube.name = "Crate"
    uvs_before = _uvs(cube.data)
    mesh_name, n_vertices = cube.data.name, len(cube.data.vertices)
    bpy.ops.object.camera_add(location=(2.0, -4.0, 1.5), rotation=(math.radians(80), 0.0, 0.0))
    bpy.context.scene.camera = bpy.context.object
    for o in bpy.context.view_layer.objects:
        o.select_set(o is cube)
    bpy.context.view_layer.objects.active = cube
    bpy.ops.ed.undo_push(message="the artist's last action")
    objects_before = set(bpy.data.objects)

    assert bpy.ops.mpod123.texture_selected() == {"FINISHED"}
    job = st.jobs[-1]
    assert job.texture_target == "Crate" and job.state == "sending", "the operator returns before the upload"
    assert bpy.context.view_layer.objects.active == cube and cube.select_get(), "the selection is given back"
    final = session.wait(bpy.context, job.job_id, timeout_s=JOB_TIMEOUT_S)
    assert final == "imported", (final, job.message, server.log()[-3000:])

    assert set(bpy.data.objects) == objects_before, "no object added: the texture went onto the crate"
    assert [m.name for m in cube.data.materials] == ["MPOD123 Crate"]
    image = base_color_image(cube)
    assert image.size[0] > 0 and max(image.pixels[:4000]) > 0.0
    assert cube.data.name == mesh_name and len(cube.data.vertices) == n_vertices and _uvs(cube.data) == uvs_before, \
        "its own UVs were usable: the mesh data is kept"
    assert "textured Crate" in job.message
    # one undo step takes it back
    bpy.ops.ed.undo()
    cube = bpy.data.objects["Crate"]
    assert "MPOD123 Crate" not in [m.name for m in cube.data.materials if m is not None]


def test_texture_selected_mesh_says_why_it_cannot_run(addon):
    from blender_addon.ui.texture_ops import MPOD123_OT_texture_selected

    _clear_scene()
    assert not MPOD123_OT_texture_selected.poll(bpy.context)
    bpy.ops.object.camera_add()
    assert not bpy.ops.mpod123.texture_selected.poll()
