"""Decimation to a target face count by vertex clustering, in torch.

Vertices are snapped to a uniform grid and each occupied cell becomes one
vertex at the mean of its members; faces whose corners fall into fewer than
three cells disappear, and duplicates are removed. The cell size is found by
bisection so that the result has as many faces as possible without exceeding
the target. It is simple and fast rather than shape-optimal (no quadric
error), which suits preview-weight assets; keep ``target_faces`` unset for the
full mesh.
"""

from __future__ import annotations

import torch

from ..geometry.mesh import Mesh, collapsed


def _cluster(mesh: Mesh, cell: float) -> Mesh:
    v = mesh.vertices.detach()
    key = torch.floor((v - v.min(dim=0).values) / cell).long()
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    n = int(inverse.max()) + 1
    sums = torch.zeros(n, 3, dtype=v.dtype, device=v.device).index_add(0, inverse, v)
    counts = torch.bincount(inverse, minlength=n).to(v.dtype)
    faces = inverse[mesh.faces]
    faces = faces[~collapsed(faces)]
    # drop duplicate faces (same corners, any rotation), keeping one winding
    canonical = torch.sort(faces, dim=1).values
    _, first = torch.unique(canonical, dim=0, return_inverse=True)
    order = torch.arange(faces.shape[0], device=faces.device)
    keep_idx = torch.full((int(first.max()) + 1 if first.numel() else 0,), faces.shape[0], device=faces.device)
    keep_idx = keep_idx.scatter_reduce(0, first, order, reduce="amin")
    faces = faces[keep_idx]
    # drop clusters no face uses
    used, remap = torch.unique(faces, return_inverse=True)
    return Mesh((sums / counts[:, None])[used], remap.view(-1, 3))


def decimate(mesh: Mesh, target_faces: int, iterations: int = 24) -> Mesh:
    """A mesh with at most ``target_faces`` faces (the input itself if it already has no more)."""
    if target_faces < 4:
        raise ValueError(f"target_faces must be at least 4, got {target_faces}")
    if mesh.n_faces <= target_faces:
        return mesh
    extent = float((mesh.vertices.max(0).values - mesh.vertices.min(0).values).max())
    lo, hi = extent * 1e-6, extent  # lo: nearly every vertex its own cell; hi: everything in a few cells
    best = _cluster(mesh, hi)
    for _ in range(iterations):
        mid = (lo * hi) ** 0.5
        candidate = _cluster(mesh, mid)
        if candidate.n_faces > target_faces:
            lo = mid
        else:
            best, hi = candidate, mid
    return best
