"""Bring a generated GLB into the scene as one tidy, named object.

``import_glb`` is the add-on's only entry into Blender's glTF importer, and
the batch tool calls it too, so its signature stays stable:

    import_glb(path, name, location=(0, 0, 0), collection_name="Generated", options=None) -> bpy.types.Object

What it does: it diffs ``bpy.data.objects`` around ``bpy.ops.import_scene.gltf``
to find what the importer made; removes the importer's empty parents (each
child is re-parented to the empty's parent with its world transform kept);
joins several meshes into one if the file had more than one; names the
object, its mesh, its materials and their images after ``name``; makes sure
the material's image texture drives Base Color; moves the object into the
``collection_name`` collection (created and linked to the scene if needed);
finishes it as ``options`` say (:class:`ImportOptions`: rest on the ground,
target height, shading, custom normals) and places it at ``location``.

It never takes the artist out of their mode: Blender's importer switches to
Object mode, so the mode, the active object and the selection are captured
before and given back after (in Object mode the new object is selected and
made active, as after any import). Undo is the caller's business: the add-on
imports inside an operator with an undo step of its own.

Coordinates: the backend writes Y-up glTF with the object's front facing +Z;
Blender's importer converts that to Z-up with the front facing -Y (Blender's
Front view), so no extra rotation is applied here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import bpy
from mathutils import Matrix, Vector


class ImportGLBError(RuntimeError):
    """The GLB could not be imported as a mesh; the message says why."""


def object_name_for(image_name: str) -> str:
    """The object name for an input image: its file name without folder and extension."""
    base = os.path.basename(str(image_name).replace("\\", "/")) or "Generated"
    stem, ext = os.path.splitext(base)
    return (stem if ext and stem else base)[:60]


@dataclass(frozen=True)
class ImportOptions:
    """How a result is placed and finished (all off: the object as exported, origin at ``location``)."""

    rest_on_ground: bool = False
    """Origin at the bottom centre of the object, the bottom at ``location`` (else the exported origin there)."""
    target_height: float = 0.0
    """Scale uniformly to this height (Z extent) in scene units; 0 keeps the exported size."""
    shading: str = "KEEP"
    """"SMOOTH", "FLAT" or "KEEP" (the exported normals)."""
    clear_custom_normals: bool = False
    """Remove the exported custom split normals so that Blender computes them."""


@dataclass
class _ArtistState:
    """The mode, the active object and the selection before the import, to give them back afterwards."""

    mode: str
    active: bpy.types.Object | None
    selected: list

    @classmethod
    def capture(cls) -> _ArtistState:
        active = bpy.context.view_layer.objects.active
        mode = getattr(active, "mode", "OBJECT") if active is not None else "OBJECT"
        selected = [o for o in bpy.context.view_layer.objects if o.select_get()]
        return cls(mode, active, selected)

    def restore(self, new: bpy.types.Object) -> None:
        """In Object mode the new object becomes the selection; in any other mode nothing changes."""
        layer = bpy.context.view_layer
        if self.mode == "OBJECT":
            for o in layer.objects:
                o.select_set(o == new)
            if new.name in layer.objects:
                layer.objects.active = new
            return
        for o in layer.objects:
            o.select_set(o in self.selected)
        layer.objects.active = self.active
        if self.active is not None and self.active.mode != self.mode:
            try:
                with bpy.context.temp_override(active_object=self.active, object=self.active):
                    bpy.ops.object.mode_set(mode=self.mode)
            except (RuntimeError, TypeError):
                pass  # the mode cannot be entered in this context; the selection is still the artist's

    def restore_selection_only(self) -> None:
        """After a failed import: the selection and mode as they were."""
        layer = bpy.context.view_layer
        for o in layer.objects:
            try:
                o.select_set(o in self.selected)
            except RuntimeError:
                pass
        if self.active is not None and self.active.name in layer.objects:
            layer.objects.active = self.active
            if self.mode != "OBJECT":
                try:
                    with bpy.context.temp_override(active_object=self.active, object=self.active):
                        bpy.ops.object.mode_set(mode=self.mode)
                except (RuntimeError, TypeError):
                    pass


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


def _finish(obj: bpy.types.Object, location: Sequence[float], options: ImportOptions) -> None:
    """Scale to the target height, rest on the ground, set the shading; the transform ends up at ``location``."""
    if options.rest_on_ground or options.target_height > 0:
        mesh = obj.data
        mesh.transform(obj.matrix_world)  # bake the importer's transform so the bounds are in scene units
        obj.matrix_world = Matrix.Identity(4)
        lo, hi = _bounds(mesh)
        if options.target_height > 0 and hi[2] - lo[2] > 1e-9:
            s = options.target_height / (hi[2] - lo[2])
            mesh.transform(Matrix.Scale(s, 4))
            lo, hi = [v * s for v in lo], [v * s for v in hi]
        if options.rest_on_ground:
            pivot = Vector(((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]))
            mesh.transform(Matrix.Translation(-pivot))
        mesh.update()
    obj.location = tuple(float(v) for v in location)
    if obj.type != "MESH":
        return
    if options.clear_custom_normals and obj.data.has_custom_normals:
        try:
            with bpy.context.temp_override(object=obj, active_object=obj, selected_editable_objects=[obj]):
                bpy.ops.mesh.customdata_custom_splitnormals_clear()
        except RuntimeError:
            pass
    if options.shading == "SMOOTH":
        obj.data.shade_smooth()
    elif options.shading == "FLAT":
        obj.data.shade_flat()


def _bounds(mesh: bpy.types.Mesh) -> tuple[list[float], list[float]]:
    import numpy as np

    co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
    mesh.vertices.foreach_get("co", co)
    co = co.reshape(-1, 3)
    if not len(co):
        return [0.0] * 3, [0.0] * 3
    return co.min(0).tolist(), co.max(0).tolist()


def import_glb(
    path: str,
    name: str,
    location: Sequence[float] = (0.0, 0.0, 0.0),
    collection_name: str = "Generated",
    options: ImportOptions | None = None,
) -> bpy.types.Object:
    """Import the GLB at ``path`` as one mesh object called ``name`` at ``location``; returns it.

    The artist's mode, active object and selection are given back when not in Object mode (in Object mode
    the new object is selected and active, as after any import).
    """
    path = os.fspath(path)
    options = options or ImportOptions()
    if not os.path.isfile(path):
        raise ImportGLBError(f"no GLB at {path}")
    scene = bpy.context.scene
    artist = _ArtistState.capture()
    before = set(bpy.data.objects)
    try:
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
        bpy.context.view_layer.update()
        _finish(obj, location, options)
        bpy.context.view_layer.update()
    except BaseException:
        artist.restore_selection_only()
        raise
    artist.restore(obj)
    return obj
