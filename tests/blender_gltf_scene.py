"""Make GLBs with Blender's own glTF exporter (the real bpy module), for the reader's tests.

Run in a fresh Python process (bpy owns process-wide state):

    python tests/blender_gltf_scene.py scene OUT.glb OUT.json
        two cubes sharing a JPEG-textured material, the second parented to the first and
        rotated; OUT.json holds what the reader must find, in glTF's Y-up world
    python tests/blender_gltf_scene.py two_objects OUT.glb
        two textured cubes (one rotated, scaled and moved) UV'd together into one square without
        overlaps, as Blender's multi-object unwrap lays them out: usable UVs for `mpod123 texture`
    python tests/blender_gltf_scene.py object IN.npz OUT.glb
        the triangle mesh in IN.npz (vertices in Blender's Z-up world, faces) as one object whose
        mesh data is stored rotated and scaled, with the object's transform undoing it
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

# quadrant colours of the texture, in image space (row 0 at the top, glTF's convention)
QUADRANTS = {"top_left": (1.0, 0.0, 0.0), "top_right": (0.0, 0.8, 0.0), "bottom_left": (0.0, 0.0, 1.0), "bottom_right": (1.0, 1.0, 0.0)}
SIZE = 64


def to_gltf(v) -> list[float]:
    """Blender Z-up (x, y, z) -> glTF Y-up (x, z, -y), what the exporter's default +Y up does."""
    return [float(v[0]), float(v[2]), float(-v[1])]


def export(path: str, image_format: str = "AUTO") -> None:
    bpy.ops.export_scene.gltf(filepath=path, export_format="GLB", export_image_format=image_format, export_yup=True)


def make_texture(folder: Path):
    pixels = np.zeros((SIZE, SIZE, 4), np.float32)  # Blender's rows start at the bottom
    half = SIZE // 2
    pixels[half:, :half, :3] = QUADRANTS["top_left"]
    pixels[half:, half:, :3] = QUADRANTS["top_right"]
    pixels[:half, :half, :3] = QUADRANTS["bottom_left"]
    pixels[:half, half:, :3] = QUADRANTS["bottom_right"]
    pixels[..., 3] = 1.0
    img = bpy.data.images.new("quadrants", SIZE, SIZE)
    img.pixels.foreach_set(pixels.ravel())
    img.filepath_raw = str(folder / "quadrants.jpg")
    img.file_format = "JPEG"
    img.save()
    return bpy.data.images.load(str(folder / "quadrants.jpg")), pixels[::-1, :, :3]  # image rows top-down


def make_material(image):
    mat = bpy.data.materials.new("Quadrants")
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    mat.node_tree.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def quadrant_of(normal) -> str:
    """Which quadrant a face's UVs sit in, from its local normal: +Z top-left, -Z bottom-right,
    X faces top-right, Y faces bottom-left."""
    axis = max(range(3), key=lambda k: abs(normal[k]))
    if axis == 2:
        return "top_left" if normal[2] > 0 else "bottom_right"
    return "top_right" if axis == 0 else "bottom_left"


def make_cube(name: str, material) -> bpy.types.Object:
    mesh = bpy.data.meshes.new(name)
    corners = [(x, y, z) for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]  # outward
    mesh.from_pydata(corners, [], faces)
    mesh.update()
    uv = mesh.uv_layers.new(name="UVMap")
    # each face's UVs inside the middle of its quadrant (Blender's v runs upwards)
    centres = {"top_left": (0.25, 0.75), "top_right": (0.75, 0.75), "bottom_left": (0.25, 0.25), "bottom_right": (0.75, 0.25)}
    for poly in mesh.polygons:
        cu, cv = centres[quadrant_of(poly.normal)]
        for k, li in enumerate(poly.loop_indices):
            du, dv = ((-1, -1), (1, -1), (1, 1), (-1, 1))[k]
            uv.data[li].uv = (cu + 0.1 * du, cv + 0.1 * dv)
    mesh.materials.append(material)
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.collection.objects.link(obj)
    return obj


def scene(out_glb: str, out_json: str) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    folder = Path(out_glb).parent
    image, pixels = make_texture(folder)
    material = make_material(image)
    base = make_cube("Base", material)
    base.location = (0.3, -0.2, 0.1)
    child = make_cube("Child", material)
    child.parent = base
    child.location = (0.0, 1.5, 0.5)
    child.rotation_euler = (math.radians(45), 0.0, math.radians(30))
    child.scale = (0.5, 0.5, 0.5)
    bpy.context.view_layer.update()
    expected = {"vertices": [], "faces": [], "texture": pixels.tolist(), "quadrants": QUADRANTS}
    for obj in (base, child):
        mw = obj.matrix_world
        normal_matrix = mw.to_3x3().inverted().transposed()
        expected["vertices"] += [to_gltf(mw @ v.co) for v in obj.data.vertices]
        for poly in obj.data.polygons:
            n = (normal_matrix @ poly.normal).normalized()
            expected["faces"].append({
                "object": obj.name,
                "normal": to_gltf(n),
                "point": to_gltf(mw @ obj.data.vertices[poly.vertices[0]].co),
                "colour": QUADRANTS[quadrant_of(poly.normal)],
            })
    export(out_glb, "JPEG")
    Path(out_json).write_text(json.dumps(expected))


def single_object(in_npz: str, out_glb: str) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    data = np.load(in_npz)
    # store the mesh data rotated and scaled; the object's transform brings it back
    transform = Matrix.Translation((0.1, -0.2, 0.3)) @ Matrix.Rotation(math.radians(90), 4, "Z") @ Matrix.Scale(0.5, 4)
    inverse = transform.inverted()
    verts = [tuple(inverse @ __import__("mathutils").Vector(v)) for v in data["vertices"].tolist()]
    mesh = bpy.data.meshes.new("object")
    mesh.from_pydata(verts, [], data["faces"].tolist())
    mesh.update()
    obj = bpy.data.objects.new("object", mesh)
    bpy.context.collection.objects.link(obj)
    obj.matrix_world = transform
    export(out_glb)


def two_objects(out_glb: str) -> None:
    """Two cubes whose UVs share one square without overlapping: cube k in the half u in [k/2, (k+1)/2],
    each of its six faces in its own cell of a 2 x 3 grid there, with a margin."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    image, _ = make_texture(Path(out_glb).parent)
    material = make_material(image)
    objects = []
    for k, name in enumerate(("Left", "Right")):
        obj = make_cube(name, material)
        uv = obj.data.uv_layers["UVMap"]
        for p, poly in enumerate(obj.data.polygons):
            cu = k * 0.5 + (p % 2 + 0.5) * 0.25
            cv = (p // 2 + 0.5) / 3.0
            for j, li in enumerate(poly.loop_indices):
                du, dv = ((-1, -1), (1, -1), (1, 1), (-1, 1))[j]
                uv.data[li].uv = (cu + 0.1 * du, cv + 0.12 * dv)
        objects.append(obj)
    objects[0].location = (-0.6, 0.0, 0.0)
    objects[1].location = (0.7, 0.2, 0.3)
    objects[1].rotation_euler = (0.0, math.radians(30), math.radians(20))
    objects[1].scale = (0.6, 0.6, 0.6)
    bpy.context.view_layer.update()
    export(out_glb)


if __name__ == "__main__":
    if sys.argv[1] == "scene":
        scene(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "two_objects":
        two_objects(sys.argv[2])
    elif sys.argv[1] == "object":
        single_object(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {sys.argv[1]!r}")
