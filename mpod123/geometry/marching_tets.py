"""Marching tetrahedra in pure torch (DMTet's surface extraction), with an optional kaolin path.

Inside is ``sdf < 0``. Every tetrahedron with some but not all vertices inside
contributes one triangle (one vertex on its own side) or two (two and two). A
surface vertex sits on each tet edge whose ends disagree, at the SDF's linear
zero crossing ``p = a + s_a / (s_a - s_b) * (b - a)``, which is differentiable in
both the SDF and the (deformed) grid vertices. Edges are de-duplicated across
tetrahedra, so on a conforming grid the mesh is closed and every edge has two
faces.

Winding: the triangle table is oriented once, at import, on a positively
oriented reference tetrahedron so that normals point from the inside vertices
to the outside ones. Our tet grids are positively oriented everywhere, so every
triangle faces outwards (counter-clockwise seen from outside).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..runtime.accelerators import probe, resolve_backend
from ..runtime.selftest import register as register_self_test
from ..runtime.syncs import Compactor
from .mesh import Mesh
from .tet_grid import tet_grid

TET_EDGES = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
_EDGE_ID = {pair: i for i, pair in enumerate(TET_EDGES)}


def _edge(a: int, b: int) -> int:
    return _EDGE_ID[(min(a, b), max(a, b))]


def _build_table() -> tuple[np.ndarray, np.ndarray]:
    """(16, 2, 3) local edge ids per inside-code, and (16,) triangle counts."""
    ref = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)  # det = +1
    table = np.full((16, 2, 3), -1, dtype=np.int64)
    counts = np.zeros(16, dtype=np.int64)
    for code in range(16):
        inside = [v for v in range(4) if code >> v & 1]
        outside = [v for v in range(4) if not code >> v & 1]
        if len(inside) in (0, 4):
            continue
        if len(inside) == 1 or len(outside) == 1:
            lone = inside[0] if len(inside) == 1 else outside[0]
            others = [v for v in range(4) if v != lone]
            tris = [[_edge(lone, o) for o in others]]
        else:
            (a, b), (c, d) = inside, outside
            quad = [_edge(a, c), _edge(a, d), _edge(b, d), _edge(b, c)]
            tris = [[quad[0], quad[1], quad[2]], [quad[0], quad[2], quad[3]]]
        outward = ref[outside].mean(0) - ref[inside].mean(0)
        for t, tri in enumerate(tris):
            p = [ref[list(TET_EDGES[e])].mean(0) for e in tri]
            if np.dot(np.cross(p[1] - p[0], p[2] - p[0]), outward) < 0:
                tri = [tri[0], tri[2], tri[1]]
            table[code, t] = tri
        counts[code] = len(tris)
    return table, counts


_TABLE, _COUNTS = _build_table()


def marching_tets_reference(vertices: Tensor, sdf: Tensor, tets: Tensor) -> Mesh:
    """Extract the ``sdf = 0`` surface from a tet grid: vertices (V, 3), sdf (V,), tets (T, 4)."""
    dev = vertices.device
    inside = sdf < 0
    occ = inside[tets]  # (T, 4)
    n_in = occ.sum(dim=1)
    valid = (n_in > 0) & (n_in < 4)
    vt = tets[valid].long()
    if vt.shape[0] == 0:
        return Mesh(vertices.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=dev))
    oc = occ[valid]
    pairs = torch.tensor(TET_EDGES, device=dev)
    ends = vt[:, pairs]  # (Tv, 6, 2)
    crossing = oc[:, pairs[:, 0]] != oc[:, pairs[:, 1]]  # (Tv, 6)
    lo, hi = ends.min(dim=-1).values, ends.max(dim=-1).values
    n_vertices = vertices.shape[0]
    keys = lo * n_vertices + hi
    unique_keys, inverse = torch.unique(keys[crossing], return_inverse=True)
    edge_vertex = torch.full(keys.shape, -1, dtype=torch.long, device=dev)
    edge_vertex[crossing] = inverse
    a, b = unique_keys // n_vertices, unique_keys % n_vertices
    sa, sb = sdf[a], sdf[b]
    t = (sa / (sa - sb))[:, None]
    surface = vertices[a] + t * (vertices[b] - vertices[a])

    code = (oc.long() * torch.tensor([1, 2, 4, 8], device=dev)).sum(dim=1)
    table = torch.from_numpy(_TABLE).to(dev)
    counts = torch.from_numpy(_COUNTS).to(dev)
    faces = []
    for slot in range(2):
        has = counts[code] > slot
        local = table[code[has], slot]  # (k, 3) local edge ids
        faces.append(torch.gather(edge_vertex[has], 1, local))
    return Mesh(surface, torch.cat(faces, dim=0))


class BandedMarchingTets:
    """Marching tets on one fixed tet grid that visits only the tets near the surface, for a GPU.

    A full pass over every tet (12.6 M at 128^3) finds the candidates: the tets that straddle
    the level set or have a vertex with |sdf| <= ``band``; it remembers the SDF of that pass.
    Later calls look only at the candidates while no vertex's SDF has moved by ``band`` or more
    since: a tet left out had all four vertices beyond the band on one side, so it cannot
    straddle yet, and the mesh is exactly :func:`marching_tets_reference`'s (same vertices,
    same faces, same order). Crossing edges are de-duplicated by a sort (fixed sizes), so a
    call reads back two small things: the straddling-tet counts (with the drift check and
    whether the candidates' fixed-size gather overflowed) and the number of surface vertices;
    a call that needs a new full pass reads three.
    """

    def __init__(self, tets: Tensor, band: float = 0.05) -> None:
        self.tets = tets
        self.band = band
        self.candidates: Tensor | None = None
        self.candidate_valid: Tensor | None = None
        self.reference_sdf: Tensor | None = None
        self.compactor = Compactor(headroom=1.25, granule=4096)
        """Gathers the candidates at a fixed size; an overflow is read with the next counts."""
        self.full_passes = 0

    def _refresh(self, sdf: Tensor) -> None:
        """The full pass: candidate tets from the SDF now (no read but the very first's)."""
        s = sdf.detach()
        inside = s < 0
        near = s.abs() <= self.band
        n_in = inside[self.tets].sum(1)
        cand = ((n_in > 0) & (n_in < 4)) | near[self.tets].any(1)
        self.candidates, self.candidate_valid = self.compactor.nonzero(cand, "candidates")
        self.reference_sdf = s.clone()
        self.full_passes += 1

    def __call__(self, vertices: Tensor, sdf: Tensor) -> Mesh:
        dev = vertices.device
        if self.candidates is None:
            self._refresh(sdf)
        drift = (sdf.detach() - self.reference_sdf).abs().amax() if sdf.numel() else sdf.new_zeros(())
        tets = self.tets[self.candidates]
        occ = (sdf < 0)[tets]
        n_in = occ.sum(1)
        valid = (n_in > 0) & (n_in < 4) & self.candidate_valid  # padding repeats the last tet: left out
        cut = self.compactor.overflow()
        flags = [valid.sum(), ((n_in == 2) & valid).sum(), (drift >= self.band).long(),
                 cut.long() if cut is not None else torch.zeros((), dtype=torch.long, device=dev)]
        n_valid, n_two, moved, lost = torch.stack(flags).tolist()
        if lost:  # the last full pass gathered too few candidates: grow, pass again (rare)
            self.compactor.refresh()
        if moved or lost:  # the band no longer bounds the surface: a new full pass, then the same again
            self._refresh(sdf)
            return self(vertices, sdf)
        if n_valid == 0:
            return Mesh(vertices.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=dev))
        pick = torch.nonzero_static(valid, size=n_valid)[:, 0]
        vt, oc = tets[pick].long(), occ[pick]
        pairs = torch.tensor(TET_EDGES, device=dev)
        ends = vt[:, pairs]  # (Tv, 6, 2)
        crossing = oc[:, pairs[:, 0]] != oc[:, pairs[:, 1]]
        n_vertices = vertices.shape[0]
        keys = ends.min(dim=-1).values * n_vertices + ends.max(dim=-1).values
        last = n_vertices * n_vertices  # above every key: the edges that do not cross sort last
        sorted_keys, order = torch.sort(torch.where(crossing, keys, last).reshape(-1))
        first = torch.ones_like(sorted_keys, dtype=torch.bool)
        first[1:] = sorted_keys[1:] != sorted_keys[:-1]
        first &= sorted_keys != last
        ids = torch.cumsum(first, 0) - 1
        edge_vertex = torch.empty_like(ids).scatter_(0, order, ids).view(keys.shape)
        n_surface = int(first.sum())
        unique_keys = sorted_keys[torch.nonzero_static(first, size=n_surface)[:, 0]]
        a, b = unique_keys // n_vertices, unique_keys % n_vertices
        sa, sb = sdf[a], sdf[b]
        t = (sa / (sa - sb))[:, None]
        surface = vertices[a] + t * (vertices[b] - vertices[a])
        code = (oc.long() * torch.tensor([1, 2, 4, 8], device=dev)).sum(dim=1)
        table = torch.from_numpy(_TABLE).to(dev)
        two = torch.nonzero_static(n_in[pick] == 2, size=n_two)[:, 0]
        faces = [torch.gather(edge_vertex, 1, table[code, 0]),
                 torch.gather(edge_vertex[two], 1, table[code[two], 1])]
        return Mesh(surface, torch.cat(faces, dim=0))


def kaolin_faces_outward(faces: Tensor) -> Tensor:
    """kaolin's faces wound like ours (outward).

    kaolin's ``marching_tetrahedra`` (0.13-0.17) takes inside as ``sdf > 0`` (hence the
    ``-sdf``) and, on a positively oriented tet grid such as ours, its triangle table
    winds every face inward: the same vertices in the same order, each triangle
    reversed. Swapping two corners turns them outward.
    """
    return faces[:, [0, 2, 1]].long()


def marching_tets(vertices: Tensor, sdf: Tensor, tets: Tensor, backend: str = "torch") -> Mesh:
    """Marching tets with ``backend`` "torch" (reference), "kaolin" (CUDA) or "auto"."""
    chosen = resolve_backend(backend, "kaolin", vertices.device)
    if chosen == "kaolin":
        kaolin = probe("kaolin")
        verts, faces = kaolin.ops.conversions.marching_tetrahedra(vertices[None], tets.long(), -sdf[None])
        return Mesh(verts[0], kaolin_faces_outward(faces[0]))
    return marching_tets_reference(vertices, sdf, tets)


def kaolin_self_test(device: torch.device) -> None:
    """kaolin's parity self-test (registered below): a sphere's SDF gives the same faces and volume."""
    grid = tet_grid(8).to(device)
    sdf = grid.vertices.norm(dim=-1) - 0.6
    ref = marching_tets(grid.vertices, sdf, grid.tets, backend="torch")
    acc = marching_tets(grid.vertices, sdf, grid.tets, backend="kaolin")
    if acc.n_faces != ref.n_faces:
        raise AssertionError(f"kaolin made {acc.n_faces} faces, the reference {ref.n_faces}")
    va, vr = float(acc.signed_volume()), float(ref.signed_volume())
    if abs(va - vr) > 1e-4 * abs(vr):
        raise AssertionError(f"signed volume {va} vs {vr} (winding or positions differ)")


register_self_test("kaolin", kaolin_self_test)

__all__ = ["TET_EDGES", "BandedMarchingTets", "kaolin_faces_outward", "kaolin_self_test", "marching_tets", "marching_tets_reference"]
