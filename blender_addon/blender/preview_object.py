"""Live 3D previews in the scene: one object per running job, its mesh replaced in place.

Why: an artist judges a shape by orbiting it. While a job runs, its stages send
``preview_mesh`` events (a small GLB with vertex colours); this module keeps
one object per job at the job's target location, in a "Generating"
collection, and rewrites that object's one mesh datablock on every preview,
so nothing piles up in ``bpy.data`` however many previews arrive.

* The object is never selected (and cannot be clicked into a selection), so
  the artist's selection and active object are never touched.
* Previews make no undo step. Undo restores Blender's whole data, so an undo
  may bring back an older preview; :func:`after_undo` removes any preview
  whose job is no longer running (or done and waiting for its import), and a running job's next preview replaces
  what came back.
* Vertex colours are the mesh's active colour attribute, shown by Solid mode
  with its Attribute colour and by a small material (Color Attribute ->
  Base Color) in Material Preview and Rendered mode; the material's viewport
  colour is the preview's mean colour, so Solid mode's default Material
  colour shows the object's overall tint.
* The object is removed when the result is imported, the job is cancelled,
  fails or is removed, and all of them when the preference is turned off.

Only the session calls this module, from the main thread; the GLB is read by
:func:`..core.preview_glb.read_glb` (no bpy), which checks every bound.
"""

from __future__ import annotations

import bpy
import numpy as np

from ..core.preview_glb import PreviewGLBError, read_glb
from .properties import ACTIVE_STATES, state

COLLECTION = "Generating"
JOB_KEY = "mpod123_preview_job"
"""Custom property on a preview object: the job it shows."""
__all__ = ["PreviewGLBError", "read_glb", "show", "remove", "remove_all", "prune", "superseded", "find", "previews"]


# ------------------------------------------------------------------ the object
def object_name(job) -> str:
    return f"{job.name} (generating)"[:63]


def find(job_id: str):
    """The preview object of a job, or None (found by its custom property, whatever it is called now)."""
    for obj in bpy.data.objects:
        if obj.get(JOB_KEY) == job_id:
            return obj
    return None


def previews() -> list:
    return [obj for obj in bpy.data.objects if obj.get(JOB_KEY)]


def _collection(context):
    coll = bpy.data.collections.get(COLLECTION)
    if coll is None:
        coll = bpy.data.collections.new(COLLECTION)
    scene = context.scene if context is not None and getattr(context, "scene", None) else bpy.context.scene
    if coll not in scene.collection.children_recursive:
        scene.collection.children.link(coll)
    return coll


def _material(name: str):
    mat = bpy.data.materials.get(name)
    if mat is None:
        mat = bpy.data.materials.new(name)
        if mat.node_tree is None:  # Blender 4.x makes node trees on request; 5.x always has one
            mat.use_nodes = True
        nodes = mat.node_tree.nodes
        bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
        if bsdf is not None:
            attr = nodes.new("ShaderNodeVertexColor")  # "Color Attribute": the mesh's active one
            mat.node_tree.links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
            bsdf.inputs["Roughness"].default_value = 1.0
    return mat


def to_blender(positions: np.ndarray, job) -> np.ndarray:
    """glTF Y-up to Blender Z-up (as Blender's importer does), then the job's import options."""
    co = np.empty_like(positions)
    co[:, 0], co[:, 1], co[:, 2] = positions[:, 0], -positions[:, 2], positions[:, 1]
    lo, hi = co.min(0), co.max(0)
    height = float(getattr(job, "target_height", 0.0) or 0.0)
    if height > 0 and hi[2] - lo[2] > 1e-9:
        s = height / float(hi[2] - lo[2])
        co, lo, hi = co * s, lo * s, hi * s
    if getattr(job, "rest_on_ground", False):
        co = co - np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]], dtype=co.dtype)
    return co


def fill_mesh(mesh, co: np.ndarray, faces: np.ndarray, colors: np.ndarray) -> None:
    """Replace the mesh's geometry in place (same datablock), with a point colour attribute."""
    mesh.clear_geometry()
    n, f = co.shape[0], faces.shape[0]
    mesh.vertices.add(n)
    mesh.vertices.foreach_set("co", np.ascontiguousarray(co, dtype=np.float32).ravel())
    mesh.loops.add(3 * f)
    mesh.loops.foreach_set("vertex_index", np.ascontiguousarray(faces, dtype=np.int32).ravel())
    mesh.polygons.add(f)
    mesh.polygons.foreach_set("loop_start", np.arange(0, 3 * f, 3, dtype=np.int32))
    attr = mesh.color_attributes.new("Color", "FLOAT_COLOR", "POINT")  # linear floats: no per-value conversion
    attr.data.foreach_set("color", np.ascontiguousarray(colors, dtype=np.float32).ravel())
    mesh.color_attributes.active_color = attr
    mesh.color_attributes.render_color_index = mesh.color_attributes.find("Color")
    mesh.update(calc_edges=True)
    mesh.validate(clean_customdata=False)


def show(context, job, glb: bytes):
    """Create or update the job's preview object from a preview GLB; returns it."""
    positions, faces, colors = read_glb(glb)
    obj = find(job.job_id)
    if obj is None:
        mesh = bpy.data.meshes.new(object_name(job))
        obj = bpy.data.objects.new(object_name(job), mesh)
        obj[JOB_KEY] = job.job_id
        _collection(context).objects.link(obj)
        obj.data.materials.append(_material("MPOD123 preview"))
    obj.location = tuple(float(v) for v in job.location)
    fill_mesh(obj.data, to_blender(positions, job), faces, colors)
    mat = obj.data.materials[0] if obj.data.materials else None
    if mat is not None:
        mat.diffuse_color = (*colors[:, :3].mean(0).tolist(), 1.0)  # Solid mode's Material colour
    obj.hide_select = True
    try:
        obj.select_set(False)
    except RuntimeError:
        pass  # not in the view layer (its collection excluded)
    return obj


def remove(job_id: str) -> bool:
    """Remove a job's preview object and its mesh (and the collection when it is left empty)."""
    obj = find(job_id)
    if obj is None:
        return False
    mesh = obj.data
    bpy.data.objects.remove(obj, do_unlink=True)
    if mesh is not None and mesh.users == 0:
        bpy.data.meshes.remove(mesh)
    coll = bpy.data.collections.get(COLLECTION)
    if coll is not None and not coll.all_objects:
        bpy.data.collections.remove(coll)
    return True


def remove_all() -> int:
    return sum(remove(obj[JOB_KEY]) for obj in previews())


def prune(active_job_ids) -> int:
    """Remove every preview whose job is not among ``active_job_ids`` (after an undo, a file load)."""
    keep = set(active_job_ids)
    return sum(remove(obj[JOB_KEY]) for obj in previews() if obj[JOB_KEY] not in keep)


def superseded(batch) -> set[int]:
    """Indices of preview_mesh events that a later one of the same job in ``batch`` replaces."""
    seen, skip = set(), set()
    for i in range(len(batch) - 1, -1, -1):
        if batch[i].content.get("kind") == "preview_mesh":
            if batch[i].job_id in seen:
                skip.add(i)
            seen.add(batch[i].job_id)
    return skip


# ------------------------------------------------------------------ undo
def _active_ids() -> list[str]:
    try:
        return [j.job_id for j in state(bpy.context).jobs if j.state in ACTIVE_STATES + ("done",)]
    except (AttributeError, RuntimeError):
        return []


@bpy.app.handlers.persistent
def after_undo(*_args) -> None:
    try:
        prune(_active_ids())
    except (ReferenceError, RuntimeError):
        pass


def register() -> None:
    for handlers in (bpy.app.handlers.undo_post, bpy.app.handlers.redo_post):
        for h in [h for h in handlers if getattr(h, "__name__", "") == "after_undo"
                  and getattr(h, "__module__", "") == __name__]:
            handlers.remove(h)
        handlers.append(after_undo)


def unregister() -> None:
    for handlers in (bpy.app.handlers.undo_post, bpy.app.handlers.redo_post):
        for h in [h for h in handlers if getattr(h, "__name__", "") == "after_undo"
                  and getattr(h, "__module__", "") == __name__]:
            handlers.remove(h)
