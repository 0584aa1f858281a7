"""Bring a generated GLB into the scene as one tidy, named object.

``import_glb`` is the add-on's only entry into Blender's glTF importer, and
the batch tool calls it too, so its signature stays stable:

    import_glb(path, name, location=(0, 0, 0), collection_name="Generated") -> bpy.types.Object

What it does: it diffs ``bpy.data.objects`` around ``bpy.ops.import_scene.gltf``
to find what the importer made; removes the importer's empty parents (each
child is re-parented to the empty's parent with its world transform kept);
joins several meshes into one if the file had more than one; names the
object, its mesh, its materials and their images after ``name``; makes sure
the material's image texture drives Base Color; moves the object into the
``collection_name`` collection (created and linked to the scene if needed);
and places it at ``location``.

Coordinates: the backend writes Y-up glTF with the object's front facing +Z;
Blender's importer converts that to Z-up with the front facing -Y (Blender's
Front view), so no extra rotation is applied here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import bpy


class ImportGLBError(RuntimeError):
    """The GLB could not be imported as a mesh; the message says why."""


def object_name_for(image_name: str) -> str:
    """The object name for an input image: its file name without folder and extension."""
    base = os.path.basename(str(image_name).replace("\\", "/")) or "Generated"
    stem, ext = os.path.splitext(base)
    return (stem if ext and stem else base)[:60]


def _ensure_object_mode() -> None:
    obj = getattr(bpy.context, "object", None)
    if obj is not None and getattr(obj, "mode", "OBJECT") != "OBJECT":
        try:
            bpy.ops.object.mode_set(mode="OBJECT")
        except RuntimeError:
            pass  # no usable context (background mode): the importer copes


def _collection(name: str, scene: bpy.types.Scene) -> bpy.types.Collection:
    coll = bpy.data.collections.get(name)
    if coll is None:
        coll = bpy.data.collections.new(name)
    if coll not in scene.collection.children_recursive:
        scene.collection.children.link(coll)
    return coll


def _remove_empties(new_objects: Iterable[bpy.types.Object]) -> list[bpy.types.Object]:
    """Delete the importer's empties, re-parenting their children with world transforms kept."""
    empties = [o for o in new_objects if o.type == "EMPTY"]
    others = [o for o in new_objects if o.type != "EMPTY"]
    bpy.context.view_layer.update()
    for empty in empties:
        for child in list(empty.children):
            world = child.matrix_world.copy()
            child.parent = empty.parent
            child.matrix_world = world
    for empty in empties:
        bpy.data.objects.remove(empty, do_unlink=True)
    return others


def _join(meshes: Sequence[bpy.types.Object]) -> bpy.types.Object:
    """Join several imported meshes into the first one."""
    main = meshes[0]
    if len(meshes) == 1:
        return main
    with bpy.context.temp_override(
        active_object=main, object=main, selected_objects=list(meshes), selected_editable_objects=list(meshes)
    ):
        bpy.ops.object.join()
    return main


def _base_color_images(mat: bpy.types.Material) -> list[bpy.types.Image]:
    """Make sure an image texture feeds the Principled BSDF's Base Color; return the images used."""
    tree = mat.node_tree
    if tree is None:
        return []
    tex_nodes = [n for n in tree.nodes if n.type == "TEX_IMAGE" and n.image is not None]
    bsdfs = [n for n in tree.nodes if n.type == "BSDF_PRINCIPLED"]
    if tex_nodes and bsdfs:
        base = bsdfs[0].inputs["Base Color"]
        if not base.is_linked:
            tree.links.new(tex_nodes[0].outputs["Color"], base)
    return [n.image for n in tex_nodes]


def _rename(obj: bpy.types.Object, name: str) -> None:
    obj.name = name
    if obj.data is not None:
        obj.data.name = name
    materials = [m for m in obj.data.materials if m is not None] if obj.data is not None else []
    for i, mat in enumerate(materials):
        mat.name = name if len(materials) == 1 else f"{name}_{i}"
        images = _base_color_images(mat)
        for j, image in enumerate(images):
            image.name = f"{mat.name}_basecolor" if len(images) == 1 else f"{mat.name}_basecolor_{j}"
            if image.packed_file is None and image.filepath:
                try:
                    image.pack()  # keep the .blend self-contained
                except RuntimeError:
                    pass


def import_glb(
    path: str,
    name: str,
    location: Sequence[float] = (0.0, 0.0, 0.0),
    collection_name: str = "Generated",
) -> bpy.types.Object:
    """Import the GLB at ``path`` as one mesh object called ``name`` at ``location``; returns it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImportGLBError(f"no GLB at {path}")
    scene = bpy.context.scene
    _ensure_object_mode()
    before = set(bpy.data.objects)
    try:
        result = bpy.ops.import_scene.gltf(filepath=path)
    except RuntimeError as exc:
        raise ImportGLBError(f"Blender's glTF importer failed on {path}: {exc}") from None
    new = [o for o in bpy.data.objects if o not in before]
    if "FINISHED" not in result or not new:
        raise ImportGLBError(f"Blender's glTF importer made nothing from {path}")
    new = _remove_empties(new)
    meshes = [o for o in new if o.type == "MESH"]
    if not meshes:
        for o in new:
            bpy.data.objects.remove(o, do_unlink=True)
        raise ImportGLBError(f"{path} holds no mesh")
    for o in new:
        if o not in meshes:
            bpy.data.objects.remove(o, do_unlink=True)
    obj = _join(meshes)
    _rename(obj, name)

    coll = _collection(collection_name, scene)
    for c in list(obj.users_collection):
        c.objects.unlink(obj)
    coll.objects.link(obj)
    obj.parent = None
    obj.location = tuple(float(v) for v in location)

    layer = bpy.context.view_layer
    layer.update()
    for o in layer.objects:
        if o is not None:
            o.select_set(False)
    if obj.name in layer.objects:
        obj.select_set(True)
        layer.objects.active = obj
    return obj
