"""UV unwrap, bake, GLB/OBJ writing: files reload elsewhere, with UVs, a bound texture, and our orientation."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mpod123.config import ExportConfig
from mpod123.export import (
    GLBError,
    UnwrapError,
    bake_texture,
    decimate,
    dilate,
    export_mesh,
    parse_glb,
    read_mesh,
    triangle_atlas,
    unwrap,
    validate_glb,
)
from mpod123.geometry import Mesh, marching_tets_reference, tet_grid


def _sphere(res=12):
    g = tet_grid(res)
    return marching_tets_reference(g.vertices, g.vertices.norm(dim=-1) - 0.6, g.tets)


def front_red(points):
    """Red on the front (+Z), blue on the back: shows orientation after a round trip."""
    red = torch.tensor([0.9, 0.1, 0.1])
    blue = torch.tensor([0.1, 0.1, 0.9])
    return torch.where((points[:, 2] > 0)[:, None], red, blue)


def test_triangle_atlas_islands_do_not_overlap():
    uvm = triangle_atlas(_sphere(6), texture_size=256)
    assert uvm.uvs.min() >= 0 and uvm.uvs.max() <= 1
    screen = (uvm.uvs * 256)[None].double()
    from mpod123.rendering import rasterize

    rast = rasterize(screen, torch.ones(1, screen.shape[1], dtype=torch.float64), uvm.faces, 256, 256)
    covered = torch.bincount(rast.tri_id[rast.tri_id >= 0], minlength=uvm.faces.shape[0])
    assert (covered > 0).float().mean() > 0.95, "nearly every face owns texels"


def test_bake_colours_each_texel_from_its_surface_point():
    mesh = _sphere(8)
    uvm = unwrap(mesh, "torch", 256)
    texture, mask = bake_texture(uvm, lambda p: (p * 0.5 + 0.5).clamp(0, 1), size=256, padding=0)
    assert mask.float().mean() > 0.2
    # invert: a texel's colour encodes its 3D point, which must lie on the sphere (radius ~0.6)
    points = texture[mask] * 2 - 1
    assert (points.norm(dim=-1) - 0.6).abs().max() < 0.05


def test_dilation_fills_a_ring_around_islands():
    img = torch.zeros(8, 8, 3)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    img[3:5, 3:5] = torch.tensor([1.0, 0.5, 0.0])
    mask[3:5, 3:5] = True
    out = dilate(img, mask, 1)
    assert torch.allclose(out[2, 2], torch.tensor([1.0, 0.5, 0.0]))
    assert torch.equal(out[0, 0], torch.zeros(3)), "only one ring"


@pytest.mark.parametrize("uv", ["torch", "xatlas"])
def test_exported_glb_reloads_in_trimesh_with_uvs_texture_and_orientation(tmp_path, uv):
    trimesh = pytest.importorskip("trimesh")
    if uv == "xatlas":
        pytest.importorskip("xatlas")
    mesh = _sphere(10)
    result = export_mesh(mesh, front_red, tmp_path / "ball.glb", ExportConfig(texture_size=256, uv_backend=uv))
    assert result.uv_backend == uv and result.glb.is_file() and result.obj.is_file()
    assert (tmp_path / "ball_basecolor.png").is_file() and (tmp_path / "ball.mtl").is_file()
    scene = trimesh.load(result.glb)
    geom = next(iter(scene.geometry.values()))
    clean = mesh.cleaned()
    assert len(geom.faces) == clean.n_faces
    assert clean.is_closed(), "welding slivers away keeps the surface closed"
    assert float(clean.signed_volume()) == pytest.approx(float(mesh.signed_volume()), rel=1e-5)
    assert geom.visual.uv.shape == (len(geom.vertices), 2)
    image = geom.visual.material.baseColorTexture
    assert image is not None and image.size == (256, 256)
    # the front vertex (largest +Z) samples red from the texture, the back one blue
    tex = np.asarray(image.convert("RGB")) / 255.0
    uvs = geom.visual.uv  # trimesh flips v to OpenGL's bottom-left origin
    for idx, colour in ((int(np.argmax(geom.vertices[:, 2])), 0), (int(np.argmin(geom.vertices[:, 2])), 2)):
        u, v = uvs[idx]
        px = tex[min(int((1 - v) * 256), 255), min(int(u * 256), 255)]
        assert px[colour] > 0.7, px
    # the normals we wrote point outwards, in the Y-up frame we wrote
    ours = parse_glb(result.glb.read_bytes())
    assert (np.einsum("ij,ij->i", ours.normals, ours.positions) > 0).all()
    obj = trimesh.load(result.obj, force="mesh")
    assert len(obj.faces) == clean.n_faces and obj.visual.uv is not None


def test_glb_round_trip_through_our_reader(tmp_path):
    mesh = _sphere(6)
    result = export_mesh(mesh, front_red, tmp_path / "a.glb", ExportConfig(texture_size=64, uv_backend="torch", obj=False))
    back = read_mesh(result.glb)
    assert back.n_faces == mesh.cleaned().n_faces
    assert float(back.signed_volume()) == pytest.approx(float(mesh.signed_volume()), rel=1e-5)
    glb = parse_glb(result.glb.read_bytes())
    Image.open(io.BytesIO(glb.texture_png)).verify()


def test_damaged_glbs_fail_validation(tmp_path):
    result = export_mesh(_sphere(5), front_red, tmp_path / "a.glb", ExportConfig(texture_size=32, uv_backend="torch", obj=False))
    data = result.glb.read_bytes()
    with pytest.raises(GLBError, match="magic"):
        validate_glb(b"xxxx" + data[4:])
    with pytest.raises(GLBError, match="length"):
        validate_glb(data[:-4])
    with pytest.raises(GLBError):
        validate_glb(data[:40])


def test_an_empty_mesh_is_refused_and_nothing_is_written(tmp_path):
    empty = Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long))
    target = tmp_path / "out.glb"
    target.write_bytes(b"previous good result")
    with pytest.raises(UnwrapError, match="no faces"):
        export_mesh(empty, front_red, target)
    assert target.read_bytes() == b"previous good result", "an existing result is never clobbered"
    assert [p.name for p in tmp_path.iterdir()] == ["out.glb"], "no temporary files are left behind"


def test_a_failing_xatlas_child_becomes_a_retry_then_a_fallback_or_a_clear_error():
    pytest.importorskip("xatlas")
    # a child that cannot finish in time is killed, like one that crashes; the parent survives
    mesh = _sphere(6)
    with pytest.warns(UserWarning, match="xatlas failed"):
        uvm = unwrap(mesh, "auto", texture_size=64, timeout_s=0.001)
    assert uvm.backend == "torch" and uvm.faces.shape[0] == mesh.n_faces
    with pytest.raises(UnwrapError, match="failed twice"):
        unwrap(mesh, "xatlas", texture_size=64, timeout_s=0.001)
    with pytest.raises(UnwrapError, match="do not exist"):
        unwrap(Mesh(torch.rand(4, 3), torch.tensor([[0, 1, 2], [0, 2, 99]])), "auto")


@pytest.mark.skipif(shutil.which("blender") is None and not __import__("importlib").util.find_spec("bpy"), reason="needs bpy")
def test_glb_imports_in_blender_with_the_texture_on_base_color(tmp_path):
    import bpy

    result = export_mesh(_sphere(8), front_red, tmp_path / "ball.glb", ExportConfig(texture_size=64))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(result.glb))
    obj = next(o for o in bpy.data.objects if o.type == "MESH")
    assert obj.data.uv_layers, "UVs imported"
    bsdf = next(n for n in obj.active_material.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    link = bsdf.inputs["Base Color"].links[0]
    assert link.from_node.type == "TEX_IMAGE"
    # glTF +Z (our front) becomes Blender -Y (its Front view)
    front = max(obj.data.vertices, key=lambda v: -v.co.y)
    assert front.co.y < -0.5


def test_decimation_hits_the_target_and_keeps_the_shape():
    from mpod123.geometry import chamfer_distance

    mesh = _sphere(40).cleaned()
    assert mesh.n_faces > 15000
    small = decimate(mesh, 3000)
    assert 1500 <= small.n_faces <= 3000
    assert float(small.signed_volume()) == pytest.approx(float(mesh.signed_volume()), rel=0.05)
    g = torch.Generator().manual_seed(0)
    assert float(chamfer_distance(small.sample_surface(4000, g), mesh.sample_surface(4000, g))) < 0.03
    assert decimate(mesh, 10**9) is mesh
    with pytest.raises(ValueError):
        decimate(mesh, 2)


def test_export_with_a_face_budget(tmp_path):
    cfg = ExportConfig(texture_size=64, uv_backend="torch", obj=False, target_faces=500)
    result = export_mesh(_sphere(20), front_red, tmp_path / "small.glb", cfg)
    assert result.n_faces <= 500 and "decimate_s" in result.seconds
    assert parse_glb(result.glb.read_bytes()).indices.shape[0] == result.n_faces


def test_fins_left_by_edge_collapses_are_removed_and_every_normal_has_unit_length():
    from mpod123.export.decimate import drop_fins
    from mpod123.export.exporter import unit_normals

    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [5, 5, 5], [6, 5, 5], [5, 6, 5]], dtype=torch.float32)
    tetra = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    extra = torch.tensor([[1, 3, 0], [3, 1, 0],  # one face repeated, then reversed: they cancel to the original
                          [4, 5, 6], [4, 6, 5]])  # a free-standing fin: both go, and their vertices
    mesh = Mesh(v, torch.cat([tetra, extra]))
    assert not mesh.is_closed()
    clean = drop_fins(mesh)
    assert clean.n_faces == 4 and clean.n_vertices == 4 and clean.is_closed()
    assert float(clean.signed_volume()) == pytest.approx(float(Mesh(v, tetra).signed_volume()))
    # normals: a fin's vertices have none by area weighting; the largest face's stands in
    fin = Mesh(v[4:], torch.tensor([[0, 1, 2], [0, 2, 1]]))
    assert (fin.vertex_normals().norm(dim=-1) < 0.5).all(), "the problem: area weighting cancels"
    n = unit_normals(fin)
    assert torch.allclose(n.norm(dim=-1), torch.ones(3, dtype=n.dtype))
    assert torch.allclose(unit_normals(clean).norm(dim=-1), torch.ones(4, dtype=torch.float64))
