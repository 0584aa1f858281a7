"""The texture target (Texture Selected Mesh): the selected mesh object and the panel's image go to the backend's texture job;
the returned texture comes back onto that object as a new material.

Sending (main thread, quick): the object's mesh data is exported as GLB through a temporary object with
a copy of it (one plain material, so the exporter keeps the UVs) and an identity transform (so the GLB is in the object's own coordinates, whatever its
parents), in Object mode with only that object selected; the artist's mode, selection and active object
are given back. The active scene camera's pose goes with it, relative to the object (the object's
inverse world matrix applied to the camera's), converted to glTF's Y-up like the exporter converts the
mesh, with the vertical field of view from the camera's lens and sensor fit; without a scene camera the
backend uses its front view. The upload and everything after it happen on the network thread
(the session's), so the operator (``ui/texture_ops.py``) returns at once.

Applying (a tick of its own, as one undo step): the result GLB is imported, its image becomes the Base
Color of a new Principled material assigned to the object. When the backend kept the object's own UVs
(the imported UVs are the object's), the object's mesh keeps its data; when it had to unwrap afresh,
the object's mesh data is replaced by the result's (same shape, new UVs). The temporary import is removed
and the artist's selection is given back.

An object with a non-uniform scale is seen through a camera whose pose is mapped into its coordinates;
its field of view is then only approximate.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import bpy
from mathutils import Vector

from ..core.errors import AddonError
from .context import window_override
from .paths import user_dir

SUFFIX_MESH, SUFFIX_CAMERA = ".mesh.glb", ".camera.json"


def target_problem(context) -> str:
    """Why Texture Selected Mesh cannot run now ('' when it can)."""
    obj = getattr(context, "active_object", None)
    if obj is None or obj.type != "MESH":
        return "select a mesh object to texture (make it the active object)"
    if not obj.select_get():
        return f"{obj.name} is active but not selected"
    if len(obj.data.polygons) == 0:
        return f"{obj.name} has no faces to texture"
    return ""


def _yup(v) -> list[float]:
    """Blender Z-up -> glTF Y-up, as the glTF exporter converts positions: (x, y, z) -> (x, z, -y)."""
    return [float(v[0]), float(v[2]), float(-v[1])]


def vertical_fov(scene, camera_data) -> float:
    """The camera's vertical field of view in radians, from its sensor fit and the render's aspect."""
    r = scene.render
    aspect = (r.resolution_x * r.pixel_aspect_x) / max(1e-9, r.resolution_y * r.pixel_aspect_y)
    fit = camera_data.sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if aspect >= 1.0 else "VERTICAL"
        if fit == "VERTICAL":  # AUTO fits the sensor width to the larger side
            return camera_data.angle
        return 2.0 * math.atan(math.tan(camera_data.angle / 2.0) / aspect)
    if fit == "VERTICAL":
        return camera_data.angle_y
    return 2.0 * math.atan(math.tan(camera_data.angle_x / 2.0) / aspect)


def camera_relative(scene, obj, camera) -> dict | None:
    """The camera's pose in the object's own coordinates (glTF Y-up), for the texture job; None: no camera."""
    if camera is None or camera.type != "CAMERA":
        return None
    to_object = obj.matrix_world.inverted()
    cam = camera.matrix_world
    eye = cam.translation
    forward = (cam.to_3x3() @ Vector((0.0, 0.0, -1.0))).normalized()
    up = cam.to_3x3() @ Vector((0.0, 1.0, 0.0))
    distance = max((obj.matrix_world.translation - eye).length, 1e-3)
    position, target = to_object @ eye, to_object @ (eye + forward * distance)
    up_local = (to_object.to_3x3() @ up).normalized()
    return {"position": _yup(position), "look_at": _yup(target), "up": _yup(up_local),
            "fov_y_deg": math.degrees(vertical_fov(scene, camera.data))}


def export_object_glb(context, obj) -> bytes:
    """The object's mesh data as GLB in the object's own coordinates; the artist's state is given back."""
    view_layer = context.view_layer
    mode = obj.mode
    selected = [o for o in view_layer.objects if o.select_get()]
    active = view_layer.objects.active
    if mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")  # writes the edit-mode changes into the mesh data
    # a copy of the mesh data with one plain material: glTF keeps TEXCOORD_0 only on primitives with a
    # material, and the artist's materials (their images) need not travel
    data = obj.data.copy()
    plain = bpy.data.materials.new(f"{obj.name}.mpod123-export")
    data.materials.clear()
    data.materials.append(plain)
    data.polygons.foreach_set("material_index", [0] * len(data.polygons))
    temp = bpy.data.objects.new(f"{obj.name}.mpod123-export", data)
    context.scene.collection.objects.link(temp)
    try:
        for o in selected:
            o.select_set(False)
        temp.select_set(True)
        view_layer.objects.active = temp
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "mesh.glb")
            bpy.ops.export_scene.gltf(filepath=path, export_format="GLB", use_selection=True, export_yup=True,
                                      export_materials="EXPORT", export_apply=False)
            return Path(path).read_bytes()
    finally:
        bpy.data.objects.remove(temp)
        bpy.data.meshes.remove(data)
        bpy.data.materials.remove(plain)
        for o in selected:
            o.select_set(True)
        view_layer.objects.active = active
        if mode != "OBJECT" and active is obj:
            bpy.ops.object.mode_set(mode=mode)


def side_files(job_id: str) -> tuple[Path, Path]:
    folder = user_dir("inputs")
    return folder / f"{job_id}{SUFFIX_MESH}", folder / f"{job_id}{SUFFIX_CAMERA}"


def save_inputs(job_id: str, mesh: bytes, camera: dict | None) -> None:
    mesh_path, camera_path = side_files(job_id)
    mesh_path.write_bytes(mesh)
    camera_path.write_text(json.dumps(camera))


def send(network, job, image: bytes, options: dict) -> bool:
    """Queue the upload of a texture job (photo, then the GLB); False when its mesh copy is gone."""
    mesh_path, camera_path = side_files(job.job_id)
    try:
        mesh = mesh_path.read_bytes()
        camera = json.loads(camera_path.read_text())
    except (OSError, ValueError):
        return False
    options = {**options, "kind": "texture"}
    options.pop("target_faces", None)  # the artist's faces are all kept
    if camera is not None:
        options["camera"] = camera
    network.call("submit", image, options, job.job_id, extra=[mesh], tag=job.job_id)
    return True


def _uv_set(mesh, digits: int = 4) -> set:
    layer = mesh.uv_layers.active
    if layer is None:
        return set()
    return {(round(d.uv[0], digits), round(d.uv[1], digits)) for d in layer.data}


def apply_result(context, job, glb_path: Path):
    """Put the result's texture on the job's object as a new material (one undo step); returns the object."""
    obj = bpy.data.objects.get(job.texture_target)
    if obj is None or obj.type != "MESH":
        raise AddonError(f"the object {job.texture_target!r} is gone: texture it again")
    view_layer = context.view_layer
    selected = [o for o in view_layer.objects if o.select_get()]
    active = view_layer.objects.active
    before = set(bpy.data.objects)
    with bpy.context.temp_override(**window_override()):
        mode = active.mode if active is not None else "OBJECT"  # the artist's mode, whichever object is active
        if bpy.context.mode != "OBJECT":
            bpy.ops.object.mode_set(mode="OBJECT")
        bpy.ops.import_scene.gltf(filepath=str(glb_path))
        new = [o for o in bpy.data.objects if o not in before]
        try:
            source = next((o for o in new if o.type == "MESH"), None)
            if source is None or source.active_material is None:
                raise AddonError(f"{job.name}: the result has no textured mesh")
            material = source.active_material
            material.name = f"MPOD123 {obj.name}"
            kept = _uv_set(source.data) <= _uv_set(obj.data)
            if not kept:  # new UVs: the result's mesh data (the same shape in the object's coordinates)
                old = obj.data
                obj.data = source.data
                obj.data.name = old.name + ".textured"
            obj.data.materials.clear()
            obj.data.materials.append(material)
        finally:
            for o in new:
                bpy.data.objects.remove(o)
            for o in view_layer.objects:
                o.select_set(o in selected)
            view_layer.objects.active = active
            if mode != "OBJECT" and active is not None:
                bpy.ops.object.mode_set(mode=mode)
        try:
            bpy.ops.ed.undo_push(message=f"Texture {obj.name} (MPOD123)")
        except RuntimeError:
            pass  # no undo stack (background scripts)
    job.object_name, job.state, job.activity = obj.name, "imported", ""
    job.message = f"textured {obj.name}" + ("" if kept else " (new UVs: its own were not usable)")
    return obj
