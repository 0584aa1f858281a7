"""Reading glTF written by other tools (Blender's exporter, trimesh, hand-built spec cases) and by ours;
our GLBs through the Khronos validator; the face budget and the texture size on the command line."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.gltf_validator import validate, validator_missing
from mpod123.config import ExportConfig, pipeline_preset
from mpod123.evaluation.textured_mesh import CLAMP_TO_EDGE, MIRRORED_REPEAT, REPEAT, load_mesh_file, sample_texture, shade
from mpod123.export import MeshReadError, export_mesh, parse_glb, read_mesh, read_mesh_file

HERE = Path(__file__).resolve().parents[2]  # tests/, where the Blender scene script lives
needs_bpy = pytest.mark.skipif(__import__("importlib").util.find_spec("bpy") is None, reason="needs the bpy module")


def run_blender(*args: str) -> None:
    out = subprocess.run([sys.executable, str(HERE / "blender_gltf_scene.py"), *args], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]


def gltf_json(path: Path) -> dict:
    data = path.read_bytes()
    return json.loads(data[20 : 20 + struct.unpack_from("<I", data, 12)[0]])


def face_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    return n / np.linalg.norm(n, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- Blender's exporter
@needs_bpy
def test_a_glb_from_blenders_exporter_reads_in_world_space_with_its_jpeg_texture(tmp_path):
    glb, expected_path = tmp_path / "scene.glb", tmp_path / "expected.json"
    run_blender("scene", str(glb), str(expected_path))
    expected = json.loads(expected_path.read_text())
    # what makes this file unlike ours: a hierarchy with a rotation, uint16 indices, a JPEG, REPEAT wrapping
    header = gltf_json(glb)
    child = next(n for n in header["nodes"] if n["name"] == "Child")
    parent = next(n for n in header["nodes"] if n["name"] == "Base")
    assert header["nodes"].index(child) in parent["children"] and "rotation" in child
    assert {header["accessors"][p["indices"]]["componentType"] for m in header["meshes"] for p in m["primitives"]} == {5123}
    assert header["images"][0]["mimeType"] == "image/jpeg"

    asset = read_mesh_file(glb)
    want = np.asarray(expected["vertices"])
    dist = np.linalg.norm(asset.positions[:, None] - want[None], axis=-1)
    assert dist.min(axis=1).max() < 1e-5, "every vertex read lies on a vertex Blender placed in the world"
    assert dist.min(axis=0).max() < 1e-5, "and every world vertex of both objects was read"
    assert asset.faces.shape == (24, 3)  # two cubes, 6 quads each, triangulated

    # each triangle: outward normal in the world, and its texture colour is its face's quadrant
    mesh = load_mesh_file(glb)
    normals = face_normals(asset.positions, asset.faces)
    centres = asset.positions[asset.faces].mean(axis=1)
    colours = shade(mesh, torch.arange(len(asset.faces)), mesh.uvs[mesh.faces].mean(dim=1)).numpy()
    for i in range(len(asset.faces)):
        match = [f for f in expected["faces"] if np.dot(f["normal"], normals[i]) > 0.999
                 and abs(np.dot(f["normal"], centres[i] - np.asarray(f["point"]))) < 1e-5]
        assert len(match) == 1, f"triangle {i} lies on one face of the scene, facing outwards"
        assert np.abs(colours[i] - match[0]["colour"]).max() < 0.1, (i, colours[i], match[0]["colour"])

    # the texture round trip: the JPEG decodes to the image Blender was given (to JPEG's accuracy)
    texture = asset.materials[asset.face_material[0]].texture
    original = np.asarray(expected["texture"], np.float32)
    assert texture.shape == original.shape
    assert np.abs(texture - original).mean() < 0.02
    assert asset.materials[0].wrap == (REPEAT, REPEAT), "Blender's sampler omits wrap modes: glTF's default"


@pytest.mark.slow
@needs_bpy
def test_bench_reconstruct_scores_chamfer_against_a_blender_exported_glb(tmp_path):
    """The dataset's true mesh is a GLB from Blender's exporter, whose node transform undoes a rotated
    and scaled copy of the mesh data: only a reader that applies it finds the object."""
    from mpod123.camera.conventions import BLENDER_TO_WORLD
    from mpod123.cli.main import main
    from mpod123.bench.dataset import read_dataset_mesh
    from mpod123.geometry import chamfer_distance
    from mpod123.bench.synthetic import object_mesh

    data, out = tmp_path / "data", tmp_path / "out"
    assert main(["bench", "make-dataset", str(data), "--views", "8", "--res", "24"]) == 0
    truth = object_mesh()
    blender_verts = truth.vertices.double() @ BLENDER_TO_WORLD[:3, :3].double()  # ours -> Blender Z-up
    np.savez(tmp_path / "object.npz", vertices=blender_verts.numpy(), faces=truth.faces.numpy())
    (data / "mesh.obj").unlink()
    run_blender("object", str(tmp_path / "object.npz"), str(data / "mesh.glb"))
    header = gltf_json(data / "mesh.glb")
    assert any("rotation" in n and "scale" in n for n in header["nodes"]), "the transform is on the node"

    read = read_dataset_mesh(data)
    picks = torch.randperm(read.n_vertices, generator=torch.Generator().manual_seed(1))[:2000]
    assert float(torch.cdist(read.vertices[picks].double(), truth.vertices.double()).min(1).values.max()) < 1e-5
    picks = torch.randperm(truth.n_vertices, generator=torch.Generator().manual_seed(1))[:2000]
    assert float(torch.cdist(truth.vertices[picks].double(), read.vertices.double()).min(1).values.max()) < 1e-5
    g = torch.Generator().manual_seed(0)

    assert main(["bench", "reconstruct", str(data), "--stage", "detail", "--holdout", "2", "--out", str(out),
                 "--steps", "20", "--res", "16", "--eval-res", "16", "--detail-steps", "2", "--tet-res", "12",
                 "--texture-size", "32", "--uv", "torch", "--device", "cpu"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    reported = m["detail"]["chamfer"]
    # the reported distance is to the true object: recompute it from the exported mesh
    ours = read_mesh(out / "mesh.glb")
    again = float(chamfer_distance(ours.sample_surface(20000, g), truth.sample_surface(20000, g)))
    assert 0 < reported < 0.5 and reported == pytest.approx(again, rel=0.15, abs=3e-3), (reported, again)


# ----------------------------------------------------------------------------- trimesh's exporter
def test_a_glb_from_trimesh_reads_with_its_transforms_uvs_and_texture(tmp_path):
    import trimesh

    g = np.random.default_rng(0)
    image = Image.fromarray(g.integers(0, 256, (16, 32, 3), dtype=np.uint8))
    box = trimesh.creation.box(extents=(1.0, 2.0, 3.0))
    uv = g.random((len(box.vertices), 2))
    box.visual = trimesh.visual.TextureVisuals(uv=uv, material=trimesh.visual.material.PBRMaterial(baseColorTexture=image))
    ball = trimesh.creation.icosphere(subdivisions=1, radius=0.5)
    scene = trimesh.Scene()
    turn = trimesh.transformations.rotation_matrix(np.pi / 3, [0, 1, 0])
    turn[:3, 3] = [2.0, 0.0, -1.0]
    scene.add_geometry(box, node_name="box", transform=turn)
    scene.add_geometry(ball, node_name="ball", transform=trimesh.transformations.translation_matrix([0, 3, 0]))
    path = tmp_path / "trimesh.glb"
    path.write_bytes(scene.export(file_type="glb"))

    asset = read_mesh_file(path)
    world = np.concatenate([trimesh.transform_points(box.vertices, turn), ball.vertices + [0, 3, 0]])
    assert len(asset.positions) == len(world)
    dist = np.linalg.norm(asset.positions[:, None] - world[None], axis=-1)
    assert dist.min(axis=1).max() < 1e-5 and dist.min(axis=0).max() < 1e-5
    # the box's UVs come back in glTF's convention (v down), its texture pixel for pixel (PNG)
    textured = [m for m in asset.materials if m.texture is not None]
    assert len(textured) == 1 and np.array_equal(np.round(textured[0].texture * 255).astype(np.uint8), np.asarray(image))
    box_rows = np.nonzero(np.linalg.norm(asset.positions - [0, 3, 0], axis=1) > 0.6)[0]
    got = asset.uvs[box_rows]
    want = np.stack([uv[:, 0], 1 - uv[:, 1]], -1)
    assert len(box_rows) == len(box.vertices)
    # the same scene as .gltf JSON with its buffer and image in files beside it
    for name, blob in scene.export(file_type="gltf").items():
        (tmp_path / name).write_bytes(blob)
    as_gltf = read_mesh_file(tmp_path / "model.gltf")
    assert np.array_equal(as_gltf.positions, asset.positions) and np.array_equal(as_gltf.uvs, asset.uvs)
    assert np.abs(got - want).max() < 1e-6, "the box's vertices keep their order and their UVs"


# ----------------------------------------------------------------------------- our writer
def test_our_glb_reads_back_exactly(tmp_path):
    from mpod123.bench.synthetic import object_albedo, object_mesh

    result = export_mesh(object_mesh(16), object_albedo, tmp_path / "ours.glb", ExportConfig(texture_size=64, uv_backend="torch", obj=True))
    ours = parse_glb(result.glb.read_bytes())
    asset = read_mesh_file(result.glb)
    assert np.array_equal(asset.positions, ours.positions) and np.array_equal(asset.faces, ours.indices.astype(np.int64))
    assert np.abs(asset.uvs - ours.uvs).max() < 1.2e-7  # trimesh flips v in float32: one rounding near 1
    png = np.asarray(Image.open(io.BytesIO(ours.texture_png)).convert("RGB"))
    assert np.array_equal(np.round(asset.materials[0].texture * 255).astype(np.uint8), png)
    assert asset.materials[0].wrap == (CLAMP_TO_EDGE, CLAMP_TO_EDGE)
    # the OBJ + MTL + PNG beside it: same surface, same texture, same UVs per corner
    obj = read_mesh_file(result.obj)
    assert np.abs(obj.positions[obj.faces] - asset.positions[asset.faces]).max() < 1e-6
    assert np.abs(obj.uvs[obj.faces] - asset.uvs[asset.faces]).max() < 1e-6
    assert np.array_equal(obj.materials[0].texture, asset.materials[0].texture)


# ----------------------------------------------------------------------------- spec cases, built by hand
def build_glb(gltf: dict, blobs: list[bytes]) -> bytes:
    """A GLB from a JSON dict and byte blobs, one bufferView per blob (in order)."""
    views, binary = [], b""
    for blob in blobs:
        views.append({"buffer": 0, "byteOffset": len(binary), "byteLength": len(blob)})
        binary += blob + b"\x00" * (-len(blob) % 4)
    gltf = {"asset": {"version": "2.0"}, **gltf, "bufferViews": views, "buffers": [{"byteLength": len(binary)}]}
    text = json.dumps(gltf).encode()
    text += b" " * (-len(text) % 4)
    return (struct.pack("<III", 0x46546C67, 2, 28 + len(text) + len(binary)) + struct.pack("<II", len(text), 0x4E4F534A)
            + text + struct.pack("<II", len(binary), 0x004E4942) + binary)


def spec_case() -> tuple[dict, list[bytes]]:
    tri = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)  # normal +Z
    quad = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    quad_uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32)
    png = io.BytesIO()
    Image.fromarray(np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)).save(png, "PNG")
    blobs = [quad.tobytes(), quad_uv.tobytes(), np.array([0, 1, 2, 0, 2, 3], np.uint8).tobytes(), tri.tobytes(), png.getvalue()]
    acc = lambda view, ctype, count, kind, **kw: {"bufferView": view, "componentType": ctype, "count": count, "type": kind, **kw}  # noqa: E731
    gltf = {
        "extensionsUsed": ["KHR_texture_transform"],
        "scene": 0,
        "scenes": [{"nodes": [0, 2]}],
        "nodes": [
            {"mesh": 0, "matrix": [-1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 5, 0, 0, 1]},  # mirrored in x, moved to x=5
            {"mesh": 1, "rotation": [0, np.sin(np.pi / 4), 0, np.cos(np.pi / 4)]},  # 90 degrees about +Y
            {"children": [1], "translation": [0, 0, 7]},
        ],
        "meshes": [
            {"primitives": [
                {"attributes": {"POSITION": 0, "TEXCOORD_0": 1}, "indices": 2, "material": 0},  # uint8 indices
                {"attributes": {"POSITION": 3}, "material": 1},  # not indexed
            ]},
            {"primitives": [{"attributes": {"POSITION": 3}}]},  # no material: glTF's default
        ],
        "accessors": [
            acc(0, 5126, 4, "VEC3", min=[0, 0, 0], max=[1, 1, 0]), acc(1, 5126, 4, "VEC2"),
            acc(2, 5121, 6, "SCALAR"), acc(3, 5126, 3, "VEC3", min=[0, 0, 0], max=[1, 1, 0]),
        ],
        "materials": [
            {"name": "checker", "pbrMetallicRoughness": {"baseColorTexture": {
                "index": 0, "extensions": {"KHR_texture_transform": {"offset": [0.5, 0.0], "scale": [0.5, 2.0]}}}}},
            {"name": "flat", "pbrMetallicRoughness": {"baseColorFactor": [0.2, 0.4, 0.6, 1.0]}},
        ],
        "textures": [{"source": 0, "sampler": 0}],
        "samplers": [{"wrapS": MIRRORED_REPEAT, "wrapT": REPEAT}],
        "images": [{"bufferView": 4, "mimeType": "image/png"}],
    }
    return gltf, blobs


def test_spec_cases_other_tools_write(tmp_path):
    gltf, blobs = spec_case()
    path = tmp_path / "spec.glb"
    path.write_bytes(build_glb(gltf, blobs))
    if validator_missing() is None:
        issues = validate(path)["issues"]
        assert issues["numErrors"] == 0, issues["messages"]  # the hand-built file is itself valid glTF
    asset = read_mesh_file(path)
    assert asset.faces.shape == (4, 3)  # quad (uint8 indices) + triangle (no indices) + the child's triangle
    mesh = load_mesh_file(path)
    names = [m.name for m in asset.materials]
    quad = asset.face_material == names.index("checker")
    flat = asset.face_material == names.index("flat")
    default = asset.face_material == names.index("default")
    assert quad.sum() == 2 and flat.sum() == 1 and default.sum() == 1
    # mirrored node: positions mirrored, winding reversed so the normal is still +Z (the spec's rule)
    quad_v = asset.positions[asset.faces[quad]].reshape(-1, 3)
    assert set(np.round(quad_v[:, 0], 6)) == {4.0, 5.0}
    assert np.allclose(face_normals(asset.positions, asset.faces[quad]), [0, 0, 1], atol=1e-6)
    # child of a translated parent, rotated 90 degrees about +Y: (1, 0, 0) -> (0, 0, -1), then z + 7
    child = asset.positions[asset.faces[default][0]]
    assert np.allclose(child, [[0, 0, 7], [0, 0, 6], [0, 1, 7]], atol=1e-6)
    assert np.allclose(face_normals(asset.positions, asset.faces[default]), [1, 0, 0], atol=1e-6)
    # texture transform: uv' = (0.5 u + 0.5, 2 v); mirrored repeat in u, repeat in v
    quad_uv = asset.uvs[np.unique(asset.faces[quad])]
    assert {tuple(np.round(t, 6)) for t in quad_uv} == {(0.5, 0.0), (1.0, 0.0), (1.0, 2.0), (0.5, 2.0)}
    assert asset.materials[names.index("checker")].wrap == (MIRRORED_REPEAT, REPEAT)
    flat_colour = shade(mesh, torch.tensor(np.nonzero(flat)[0]), torch.zeros(1, 2))
    assert torch.allclose(flat_colour, torch.tensor([[0.2, 0.4, 0.6]]))
    assert torch.allclose(shade(mesh, torch.tensor(np.nonzero(default)[0]), torch.zeros(1, 2)), torch.ones(1, 3))


def test_wrap_modes_sample_as_the_spec_says():
    tex = torch.tensor([[[0.0], [1.0], [2.0], [3.0]]])  # one row, four texels
    u = torch.tensor([0.125, 1.125, -0.875, 1.375, 1.875])
    uv = torch.stack([u, torch.full_like(u, 0.5)], -1)
    assert sample_texture(tex, uv, (REPEAT, REPEAT))[:, 0].tolist() == pytest.approx([0, 0, 0, 1, 3])
    # mirrored: 1.125 is the mirror image of 0.875 (texel 3); 1.375 of 0.625 (texel 2); 1.875 of 0.125 (texel 0)
    assert sample_texture(tex, uv, (MIRRORED_REPEAT, REPEAT))[:, 0].tolist() == pytest.approx([0, 3, 3, 2, 0])
    assert sample_texture(tex, uv, (CLAMP_TO_EDGE, CLAMP_TO_EDGE))[:, 0].tolist() == pytest.approx([0, 3, 0, 3, 3])
    # between texels 3 and 0 across the seam, REPEAT blends them; CLAMP does not
    seam = torch.tensor([[1.0, 0.5]])
    assert float(sample_texture(tex, seam, (REPEAT, REPEAT))[0, 0]) == pytest.approx(1.5)
    assert float(sample_texture(tex, seam, (CLAMP_TO_EDGE, CLAMP_TO_EDGE))[0, 0]) == pytest.approx(3.0)


def test_files_the_reader_cannot_use_get_a_clear_error(tmp_path):
    gltf, blobs = spec_case()
    cases = {
        "draco.glb": (build_glb({**gltf, "extensionsRequired": ["KHR_draco_mesh_compression"]}, blobs), "without compression"),
        "points.glb": (build_glb({**gltf, "meshes": [{"primitives": [{"attributes": {"POSITION": 3}, "mode": 0}]}] * 2}, blobs),
                       "no triangles"),
        "short.glb": (build_glb(gltf, blobs)[:-40], "truncated"),
        "index.glb": (build_glb(gltf, [*blobs[:2], np.array([0, 1, 2, 0, 2, 9], np.uint8).tobytes(), *blobs[3:]]),
                      "indices past"),
        "count.glb": (build_glb({**gltf, "accessors": [{**gltf["accessors"][0], "count": 10**6}, *gltf["accessors"][1:]]},
                                blobs), "does not decode|buffer view holds"),  # bounded before decoding (glb_bounds)
        "text.glb": (b"solid not a glb at all, but long enough", "bad magic"),
        "gltf1.glb": (build_glb({**gltf, "asset": {"version": "1.0"}}, blobs)[:8].replace(b"\x02", b"\x01", 1)
                      + build_glb(gltf, blobs)[8:], "glTF 1"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(MeshReadError, match=message):
            read_mesh_file(tmp_path / name)
    with pytest.raises(MeshReadError, match="use .glb, .gltf or .obj"):
        read_mesh_file(Path(__file__))


# ----------------------------------------------------------------------------- the Khronos validator
@pytest.mark.slow
@pytest.mark.parametrize("preset", ["fast", "paper"])
def test_our_glbs_pass_the_khronos_validator_at_the_presets_face_budgets(tmp_path, preset):
    """The preset's face budget on a mesh above it (decimation, then the unwrap), the real writer. To keep
    the test short the bake runs at 256 px and the 50k-face paper mesh takes the torch atlas (xatlas
    unwraps the fast one); the export benchmark validates full-size xatlas files of both."""
    missing = validator_missing()
    if missing:
        pytest.skip(missing)
    import trimesh

    from mpod123.geometry import Mesh

    cfg = pipeline_preset(preset).export
    ball = trimesh.creation.icosphere(subdivisions=6 if cfg.target_faces > 20_000 else 5, radius=0.8)
    noise = np.random.default_rng(0).normal(scale=2e-3, size=ball.vertices.shape)  # xatlas dislikes perfect regularity
    mesh = Mesh(torch.tensor(ball.vertices + noise, dtype=torch.float32), torch.tensor(ball.faces, dtype=torch.int64))
    assert mesh.n_faces > cfg.target_faces
    cfg.texture_size, cfg.obj = 256, False
    cfg.uv_backend = "torch" if preset == "paper" else "xatlas"
    result = export_mesh(mesh, lambda p: (p * 0.5 + 0.5).clamp(0, 1), tmp_path / f"{preset}.glb", cfg)
    assert cfg.target_faces * 0.9 <= result.n_faces <= cfg.target_faces
    report = validate(result.glb)
    issues = report["issues"]
    assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, issues["messages"]
    assert report["info"]["drawCallCount"] == 1 and report["info"]["totalTriangleCount"] == result.n_faces


# ----------------------------------------------------------------------------- the command line
def test_generate_takes_a_face_budget_and_a_texture_size():
    from mpod123.cli.generate import generate_config
    from mpod123.cli.main import build_parser

    parse = build_parser().parse_args
    assert generate_config(parse(["generate", "a.png", "-o", "a.glb", "--preset", "paper"])).export.target_faces == 50_000
    assert generate_config(parse(["generate", "a.png", "-o", "a.glb", "--preset", "paper"])).export.texture_size == 2048
    cfg = generate_config(parse(["generate", "a.png", "-o", "a.glb", "--faces", "1234", "--texture-size", "512"]))
    assert (cfg.export.target_faces, cfg.export.texture_size) == (1234, 512)
    assert generate_config(parse(["generate", "a.png", "-o", "a.glb", "--faces", "0"])).export.target_faces is None
    with pytest.raises(ValueError, match="--faces"):
        generate_config(parse(["generate", "a.png", "-o", "a.glb", "--faces", "2"]))
    with pytest.raises(ValueError, match="--texture-size"):
        generate_config(parse(["generate", "a.png", "-o", "a.glb", "--texture-size", "100000"]))
