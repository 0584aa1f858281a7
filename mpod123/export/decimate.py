"""Decimation to a face budget by quadric error (Garland-Heckbert), via fast-simplification.

fast-simplification wraps Sven Forstmann's Fast-Quadric-Mesh-Simplification:
each edge collapse is chosen by the sum of squared distances to the planes of
the faces around it, so flat regions lose triangles first and creases and
silhouettes keep theirs. It runs in C++ on a 110k-face mesh in a fraction of a
second. The exporter decimates *before* the UV unwrap, so xatlas only ever
sees the budgeted mesh (its time grows faster than linearly with faces).

Vertex clustering (our earlier, hand-written method) is gone: on the
benchmark object it was both slower and further from the full mesh at every
budget (see docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry.mesh import Mesh


def drop_fins(mesh: Mesh) -> Mesh:
    """Remove faces that repeat another face's three vertices.

    Edge collapses can leave a zero-volume "fin": two faces on the same three
    vertices with opposite windings. Their normals cancel, so the vertices get
    no normal (the Khronos validator rejects a zero NORMAL) and the surface is
    no longer a manifold there. Opposite copies cancel in pairs and what is left
    keeps one face (repeats with the same winding are one face), so the
    surrounding faces stay paired as before.
    """
    if mesh.n_faces == 0:
        return mesh
    key = torch.sort(mesh.faces, dim=1).values
    _, group, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
    if bool((counts == 1).all()):
        return mesh
    # a face's winding parity relative to its sorted key: even permutations keep the orientation
    parity = (mesh.faces[:, 0] == key[:, 0]) & (mesh.faces[:, 1] == key[:, 1]) | \
             (mesh.faces[:, 1] == key[:, 0]) & (mesh.faces[:, 2] == key[:, 1]) | \
             (mesh.faces[:, 2] == key[:, 0]) & (mesh.faces[:, 0] == key[:, 1])
    n = counts.shape[0]
    forward = torch.zeros(n, dtype=torch.long).index_add(0, group, parity.long())
    net = 2 * forward - counts  # forward minus backward copies: opposite pairs cancel
    order = torch.arange(mesh.n_faces)
    none = torch.full((n,), mesh.n_faces, dtype=torch.long)
    first_fwd = none.scatter_reduce(0, group[parity], order[parity], reduce="amin")
    first_bwd = none.scatter_reduce(0, group[~parity], order[~parity], reduce="amin")
    keep = ((net[group] > 0) & (first_fwd[group] == order)) | ((net[group] < 0) & (first_bwd[group] == order))
    used, faces = torch.unique(mesh.faces[keep], return_inverse=True)  # and the vertices only a fin used
    return Mesh(mesh.vertices[used], faces.view(-1, 3))


def decimate(mesh: Mesh, target_faces: int) -> Mesh:
    """A mesh with at most ``target_faces`` faces (the input itself if it already has no more)."""
    if target_faces < 4:
        raise ValueError(f"target_faces must be at least 4, got {target_faces}")
    if mesh.n_faces <= target_faces:
        return mesh
    import fast_simplification

    points = mesh.vertices.detach().cpu().double().numpy()
    triangles = mesh.faces.cpu().numpy().astype(np.int64)
    target = target_faces
    for _ in range(4):  # the library stops near the count, occasionally a few faces above it
        v, f = fast_simplification.simplify(points, triangles, target_count=target)
        out = Mesh(torch.from_numpy(np.ascontiguousarray(v)).to(mesh.vertices), torch.from_numpy(f.astype(np.int64)).to(mesh.faces.device))
        out = drop_fins(out.cleaned())
        if out.n_faces <= target_faces:
            return out
        target = max(4, int(target * target_faces / out.n_faces) - 1)
    raise ValueError(f"could not decimate {mesh.n_faces} faces to {target_faces}: ask for a larger budget")
