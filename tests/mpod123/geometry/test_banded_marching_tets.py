"""The GPU's marching tets (a band of candidate tets, sorted edge de-duplication) and mesh losses
(one sorted corner-edge list, masks) give exactly the reference's meshes and the same loss values."""

from __future__ import annotations

import torch

from mpod123.geometry import laplacian_loss, marching_tets_reference, normal_consistency_loss, tet_grid
from mpod123.geometry.marching_tets import BandedMarchingTets
from mpod123.geometry.mesh import Mesh
from mpod123.runtime.syncs import SyncCounter, gpu_paths


def _sdf(grid, radius=0.55, seed=0):
    g = torch.Generator().manual_seed(seed)
    bumps = 0.05 * torch.sin(7 * grid.vertices[:, 0]) * torch.cos(5 * grid.vertices[:, 1])
    return grid.vertices.norm(dim=-1) - radius + bumps + 0.01 * torch.randn(grid.vertices.shape[0], generator=g)


def _same(a: Mesh, b: Mesh) -> None:
    assert torch.equal(a.faces, b.faces)
    assert torch.equal(a.vertices, b.vertices)


def test_banded_marching_tets_gives_the_reference_mesh_and_reads_back_two_things():
    grid = tet_grid(12)
    sdf = _sdf(grid)
    banded = BandedMarchingTets(grid.tets, band=0.05)
    _same(marching_tets_reference(grid.vertices, sdf, grid.tets), banded(grid.vertices, sdf))
    assert banded.full_passes == 1 and 0 < int(banded.candidate_valid.sum()) < grid.tets.shape[0] // 2
    moved = sdf + 0.02 * torch.randn(sdf.shape, generator=torch.Generator().manual_seed(3)).clamp(-1, 1)
    with gpu_paths(), SyncCounter() as counter:
        mesh = banded(grid.vertices, moved)
    assert counter.total == 2, dict(counter.counts)
    assert banded.full_passes == 1, "moved less than the band: the candidates still hold"
    _same(marching_tets_reference(grid.vertices, moved, grid.tets), mesh)


def test_a_move_past_the_band_finds_the_candidates_again():
    grid = tet_grid(12)
    sdf = _sdf(grid)
    banded = BandedMarchingTets(grid.tets, band=0.02)
    banded(grid.vertices, sdf)
    shrunk = sdf + 0.15  # the surface moves inwards by far more than the band
    _same(marching_tets_reference(grid.vertices, shrunk, grid.tets), banded(grid.vertices, shrunk))
    assert banded.full_passes == 2


def test_banded_gradients_equal_the_references():
    grid = tet_grid(10)
    sdf = _sdf(grid, seed=1)
    grads = []
    banded = BandedMarchingTets(grid.tets)
    for fn in (lambda s: marching_tets_reference(grid.vertices, s, grid.tets), lambda s: banded(grid.vertices, s)):
        s = sdf.clone().requires_grad_(True)
        fn(s).vertices.pow(2).sum().backward()
        grads.append(s.grad)
    assert torch.equal(grads[0], grads[1])


def test_mesh_losses_on_the_gpu_branch_equal_the_old_formulas():
    grid = tet_grid(10)
    mesh = marching_tets_reference(grid.vertices, _sdf(grid, seed=2), grid.tets)
    open_mesh = Mesh(mesh.vertices, mesh.faces[: mesh.n_faces // 2])  # boundary edges too
    for m in (mesh, open_mesh):
        old = (laplacian_loss(m), normal_consistency_loss(m))
        with gpu_paths(), SyncCounter() as counter:
            new = (laplacian_loss(Mesh(m.vertices, m.faces)), normal_consistency_loss(Mesh(m.vertices, m.faces)))
        assert counter.total == 0, dict(counter.counts)
        torch.testing.assert_close(new[0], old[0], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(new[1], old[1], rtol=1e-5, atol=1e-7)


def test_a_full_pass_that_gathers_too_few_candidates_is_caught_and_redone():
    grid = tet_grid(12)
    sdf = _sdf(grid)
    banded = BandedMarchingTets(grid.tets, band=0.02)
    banded.compactor.granule, banded.compactor.headroom = 1, 1.0  # sized exactly by the first pass
    banded(grid.vertices, sdf + 0.3)  # a small sphere: few candidates
    grown = sdf - 0.1  # a larger surface, past the band: the next pass needs more candidates
    _same(marching_tets_reference(grid.vertices, grown, grid.tets), banded(grid.vertices, grown))
    assert banded.compactor.grown == 1 and banded.full_passes == 3
