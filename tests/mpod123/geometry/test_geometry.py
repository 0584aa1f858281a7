"""Tet grids, marching tetrahedra on analytic SDFs, mesh measures and regularisers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpod123.geometry import (
    DMTet,
    Mesh,
    chamfer_distance,
    laplacian_loss,
    marching_tets_reference,
    normal_consistency_loss,
    tet_grid,
)
from mpod123.geometry.tet_grid import freudenthal_tets


def test_tet_grid_is_positively_oriented_and_fills_the_cube():
    g = tet_grid(4)
    assert g.tets.shape == (6 * 4**3, 4) and g.vertices.shape == (5**3, 3)
    v = g.vertices[g.tets]
    det = torch.linalg.det(torch.stack([v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], v[:, 3] - v[:, 0]], dim=1))
    assert (det > 0).all()
    assert float(det.sum() / 6) == pytest.approx(8.0, rel=1e-5), "the tets tile the 2x2x2 cube exactly"


def test_tet_grid_is_conforming():
    """Every interior triangle is shared by exactly two tets, every boundary one by one."""
    tets = torch.from_numpy(freudenthal_tets(3)).long()
    tris = torch.cat([tets[:, [0, 1, 2]], tets[:, [0, 1, 3]], tets[:, [0, 2, 3]], tets[:, [1, 2, 3]]])
    tris = tris.sort(dim=1).values
    _, counts = torch.unique(tris, dim=0, return_counts=True)
    assert set(counts.tolist()) == {1, 2}
    assert int((counts == 1).sum()) == 6 * 3 * 3 * 2, "two boundary triangles per boundary square"


def test_tet_grid_cache_round_trip(tmp_path):
    from mpod123.geometry.tet_grid import cached_grid

    cached_grid.cache_clear()
    a = tet_grid(5, cache_dir=tmp_path)
    assert (tmp_path / "tets_freudenthal_5.npz").is_file()
    cached_grid.cache_clear()
    b = tet_grid(5, cache_dir=tmp_path)
    assert torch.equal(a.tets, b.tets)
    with pytest.raises(ValueError, match="resolution"):
        tet_grid(1)


def _sphere_sdf(v, r=0.6):
    return v.norm(dim=-1) - r


def _torus_sdf(v, major=0.5, minor=0.2):
    q = torch.stack([torch.sqrt(v[:, 0] ** 2 + v[:, 2] ** 2) - major, v[:, 1]], dim=-1)
    return q.norm(dim=-1) - minor


def _sphere_points(n, g):
    return torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 0.6


def _torus_points(n, g):
    u, v = torch.rand(2, n, generator=g) * 2 * math.pi
    ring = 0.5 + 0.2 * torch.cos(v)
    return torch.stack([ring * torch.cos(u), 0.2 * torch.sin(v), ring * torch.sin(u)], dim=-1)


@pytest.mark.parametrize(
    "sdf, points, euler, volume",
    [
        (_sphere_sdf, _sphere_points, 2, 4 / 3 * math.pi * 0.6**3),
        (_torus_sdf, _torus_points, 0, 2 * math.pi**2 * 0.5 * 0.2**2),
    ],
    ids=["sphere", "torus"],
)
def test_marching_tets_on_analytic_sdfs(sdf, points, euler, volume):
    g = tet_grid(40)
    mesh = marching_tets_reference(g.vertices, sdf(g.vertices), g.tets)
    assert mesh.is_closed(), "every edge has exactly two faces"
    assert mesh.euler_characteristic() == euler
    assert float(mesh.signed_volume()) == pytest.approx(volume, rel=0.03), "outward winding, right size"
    # every face's normal points away from the surface's inside (along the SDF gradient)
    centroid = mesh.vertices[mesh.faces].mean(1).requires_grad_(True)
    (grad,) = torch.autograd.grad(sdf(centroid).sum(), centroid)
    agree = (mesh.face_normals() * grad).sum(-1) > 0
    area = mesh.face_normals(normalize=False).norm(dim=-1)
    sliver = area < 0.05 * area.mean()  # near-degenerate faces have no reliable normal
    assert agree[~sliver].all(), "every non-sliver face winds outwards"
    assert float(area[agree].sum() / area.sum()) > 0.999
    # Chamfer distance to the true surface, with a grid cell of 0.05. Mesh -> surface is
    # exact (these SDFs are true distances); surface -> mesh uses a dense sampling of the mesh.
    # Stated bound: 0.005, a tenth of a cell.
    g2 = torch.Generator().manual_seed(0)
    mesh_to_surface = sdf(mesh.sample_surface(20000, g2)).abs().mean()
    dense = mesh.sample_surface(200000, g2)
    surface_to_mesh = torch.cdist(points(2000, g2), dense).min(dim=1).values.mean()
    chamfer = 0.5 * (mesh_to_surface + surface_to_mesh)
    assert chamfer < 0.005, (float(mesh_to_surface), float(surface_to_mesh))


def test_marching_tets_is_differentiable_in_sdf_and_vertices():
    g = tet_grid(8)
    verts = g.vertices.clone().requires_grad_(True)
    sdf = (g.vertices.norm(dim=-1) - 0.5).requires_grad_(True)
    mesh = marching_tets_reference(verts, sdf, g.tets)
    mesh.signed_volume().backward()
    assert sdf.grad.abs().sum() > 0 and verts.grad.abs().sum() > 0
    # lowering the SDF everywhere grows the surface: d volume / d sdf <= 0
    assert (sdf.grad <= 1e-9).all()


def test_empty_and_full_sdfs_give_empty_meshes():
    g = tet_grid(4)
    assert marching_tets_reference(g.vertices, torch.ones(len(g.vertices)), g.tets).n_faces == 0
    assert marching_tets_reference(g.vertices, -torch.ones(len(g.vertices)), g.tets).n_faces == 0


def test_dmtet_deformation_is_bounded_and_init_matches_the_threshold():
    g = tet_grid(6)
    dm = DMTet(g, deform_scale=0.25)
    with torch.no_grad():
        dm.deform.fill_(100.0)
    offset = (dm.vertices() - g.vertices).abs().max()
    assert offset <= 0.25 * g.cell_size + 1e-6
    density = 10.0 * (1 - g.vertices.norm(dim=-1) / 0.5)
    dm.init_from_density(density, threshold=5.0)
    inside = dm.sdf < 0
    assert torch.equal(inside, density > 5.0)
    assert dm.sdf.min() >= -1 and dm.sdf.max() <= 1


def test_regularisers():
    g = tet_grid(16)
    sphere = marching_tets_reference(g.vertices, g.vertices.norm(dim=-1) - 0.6, g.tets)
    noisy = Mesh(sphere.vertices + 0.02 * torch.randn_like(sphere.vertices), sphere.faces)
    assert laplacian_loss(noisy) > 2 * laplacian_loss(sphere)
    assert normal_consistency_loss(noisy) > 2 * normal_consistency_loss(sphere)
    flat = Mesh(torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]), torch.tensor([[0, 1, 2], [0, 2, 3]]))
    assert float(normal_consistency_loss(flat)) == pytest.approx(0.0, abs=1e-7)


def test_chamfer_distance_of_shifted_point_sets():
    a = torch.from_numpy(np.random.default_rng(0).normal(size=(500, 3))).float()
    assert float(chamfer_distance(a, a)) == 0.0
    assert float(chamfer_distance(a, a + torch.tensor([0.01, 0, 0]))) == pytest.approx(0.01, rel=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="kaolin's marching tets needs CUDA")
def test_kaolin_marching_tets_matches_the_reference():
    from mpod123.runtime.accelerators import probe
    from mpod123.geometry import marching_tets

    if probe("kaolin") is None:
        pytest.skip("kaolin is not installed")
    g = tet_grid(24).to("cuda")
    sdf = _torus_sdf(g.vertices)
    ref = marching_tets(g.vertices, sdf, g.tets, backend="torch")
    acc = marching_tets(g.vertices, sdf, g.tets, backend="kaolin")
    # kaolin's quads split along another diagonal, so compare vertices and winding, not faces
    # (and not a Chamfer distance of two samplings, whose noise exceeds any useful limit)
    assert acc.n_faces == ref.n_faces
    torch.testing.assert_close(acc.vertices, ref.vertices, atol=1e-5, rtol=1e-5)
    assert float(ref.signed_volume()) > 0
    assert float(acc.signed_volume()) == pytest.approx(float(ref.signed_volume()), rel=1e-4), "same winding"
    c = acc.vertices[acc.faces].mean(1)
    ring = torch.nn.functional.normalize(c * torch.tensor([1.0, 0.0, 1.0], device=c.device), dim=-1) * 0.5
    assert bool(((acc.face_normals() * (c - ring)).sum(-1) > 0).all()), "every face faces out"


def _octahedron(centre, radius, offset=0):
    """A closed octahedron (8 faces, outward), vertex indices starting at ``offset``."""
    c = torch.tensor(centre, dtype=torch.float32)
    v = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float32) * radius + c
    f = torch.tensor([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]]) + offset
    return v, f


def test_without_small_parts_drops_floaters_by_area_and_keeps_the_rest_exactly():
    from mpod123.geometry import Mesh

    big_v, big_f = _octahedron([0, 0, 0], 1.0)
    mid_v, mid_f = _octahedron([3, 0, 0], 0.5, offset=6)
    tiny_v, tiny_f = _octahedron([0, 3, 0], 0.1, offset=12)
    # the floater listed first, so that the kept parts must be re-indexed
    mesh = Mesh(torch.cat([tiny_v, big_v, mid_v]), torch.cat([tiny_f - 12, big_f + 6, mid_f + 6]))
    labels = mesh.face_components()
    assert labels.unique().numel() == 3 and (labels[:8] == labels[0]).all() and (labels[8:16] == labels[8]).all()
    areas = {"big": 4 * 3 ** 0.5, "mid": 4 * 3 ** 0.5 * 0.25, "tiny": 4 * 3 ** 0.5 * 0.01}  # 8 faces of side r*sqrt(2)
    total = sum(areas.values())
    assert float(mesh.surface_area()) == pytest.approx(total, rel=1e-5)

    kept = mesh.without_small_parts(0.05)  # tiny is 0.8 % of the area, mid 19.8 %
    assert kept.n_faces == 16 and kept.n_vertices == 12
    assert float(kept.surface_area()) == pytest.approx(areas["big"] + areas["mid"], rel=1e-5)
    assert torch.equal(kept.vertices[kept.faces], mesh.vertices[mesh.faces[8:]]), "the kept triangles are unchanged"
    assert kept.is_closed() and kept.euler_characteristic() == 4
    only_big = mesh.without_small_parts(0.5)
    assert only_big.n_faces == 8 and torch.equal(only_big.vertices[only_big.faces], big_v[big_f])
    assert mesh.without_small_parts(0.0) is mesh and mesh.without_small_parts(0.001) is mesh


def test_face_components_of_a_chain_with_descending_indices_converge():
    """Labels must travel the whole way along a long strip whose vertex order runs against it."""
    from mpod123.geometry import Mesh

    n = 200
    top = torch.stack([torch.arange(n, dtype=torch.float32), torch.ones(n), torch.zeros(n)], 1)
    bottom = torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n), torch.zeros(n)], 1)
    vertices = torch.cat([top, bottom]).flip(0)  # index n*2-1-i
    t, b = lambda i: 2 * n - 1 - i, lambda i: n - 1 - i
    faces = torch.tensor([[t(i), b(i), b(i + 1)] for i in range(n - 1)] + [[t(i), b(i + 1), t(i + 1)] for i in range(n - 1)])
    labels = Mesh(vertices, faces).face_components()
    assert labels.unique().numel() == 1 and int(labels[0]) == 0
