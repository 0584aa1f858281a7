"""Triangle meshes and the measures and regularisers the detail stage needs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..runtime.syncs import takes_gpu_paths


@dataclass
class Mesh:
    """Vertices (V, 3) and counter-clockwise (outward) faces (F, 3) int64."""

    vertices: Tensor
    faces: Tensor

    @property
    def n_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def n_faces(self) -> int:
        return self.faces.shape[0]

    def to(self, device: torch.device | str) -> Mesh:
        return Mesh(self.vertices.to(device), self.faces.to(device))

    def detach(self) -> Mesh:
        return Mesh(self.vertices.detach(), self.faces)

    def face_normals(self, normalize: bool = True) -> Tensor:
        v = self.vertices[self.faces]
        n = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
        return F.normalize(n, dim=-1, eps=1e-12) if normalize else n

    def vertex_normals(self) -> Tensor:
        """Area-weighted vertex normals (V, 3)."""
        n = self.face_normals(normalize=False)
        out = torch.zeros_like(self.vertices)
        for k in range(3):
            out = out.index_add(0, self.faces[:, k], n)
        return F.normalize(out, dim=-1, eps=1e-12)

    def edges(self) -> tuple[Tensor, Tensor]:
        """Unique undirected edges (E, 2) and, per face corner edge, its edge id (F, 3)."""
        e = torch.stack([self.faces[:, [0, 1]], self.faces[:, [1, 2]], self.faces[:, [2, 0]]], dim=1)  # (F, 3, 2)
        key = e.min(-1).values * self.n_vertices + e.max(-1).values
        unique, inverse = torch.unique(key.reshape(-1), return_inverse=True)
        pairs = torch.stack([unique // self.n_vertices, unique % self.n_vertices], dim=1)
        return pairs, inverse.reshape(-1, 3)

    def corner_edges(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every face corner's undirected edge, sorted once per mesh (both mesh losses share it):
        keys (3F,) ascending (lo * V + hi), the corner each came from (3F,; face = corner // 3),
        and whether it is the first corner of its edge (3F,). Fixed sizes: no host sync."""
        cached = self.__dict__.get("_corner_edges")
        if cached is None:
            e = torch.stack([self.faces[:, [0, 1]], self.faces[:, [1, 2]], self.faces[:, [2, 0]]], dim=1)
            key = (e.min(-1).values * self.n_vertices + e.max(-1).values).reshape(-1)
            keys, corner = torch.sort(key, stable=True)
            first = torch.ones_like(keys, dtype=torch.bool)
            first[1:] = keys[1:] != keys[:-1]
            cached = self.__dict__["_corner_edges"] = (keys, corner, first)
        return cached

    def edge_face_counts(self) -> Tensor:
        """How many faces use each unique edge (E,)."""
        _, face_edges = self.edges()
        return torch.bincount(face_edges.reshape(-1))

    def is_closed(self) -> bool:
        """Every edge is shared by exactly two faces (a closed 2-manifold surface)."""
        return self.n_faces > 0 and bool((self.edge_face_counts() == 2).all())

    def euler_characteristic(self) -> int:
        """V - E + F, counting only vertices that faces use."""
        used = torch.unique(self.faces).numel()
        return used - self.edges()[0].shape[0] + self.n_faces

    def signed_volume(self) -> Tensor:
        """Enclosed volume; positive when the faces wind outwards."""
        v = self.vertices[self.faces]
        return (v[:, 0] * torch.linalg.cross(v[:, 1], v[:, 2], dim=-1)).sum() / 6.0

    def cleaned(self, tolerance: float = 1e-7) -> Mesh:
        """Weld vertices closer than ``tolerance`` and drop faces that collapse (repeated
        vertices or zero area). Marching tets leaves such slivers where the SDF is zero at a
        grid vertex; UV unwrappers give them no texture space."""
        v = self.vertices.detach()
        key = torch.round(v / tolerance).long()
        _, inverse = torch.unique(key, dim=0, return_inverse=True)
        n_unique = int(inverse.max()) + 1 if inverse.numel() else 0
        first = torch.full((n_unique,), v.shape[0], dtype=torch.long, device=v.device)
        first = first.scatter_reduce(0, inverse, torch.arange(v.shape[0], device=v.device), reduce="amin")
        faces = inverse[self.faces]
        welded = Mesh(self.vertices[first], faces[~collapsed(faces)])
        area = welded.face_normals(normalize=False).norm(dim=-1)
        return Mesh(welded.vertices, welded.faces[area > 1e-12])

    def welded(self) -> tuple[Mesh, Tensor]:
        """The mesh with one vertex per distinct position, and for each vertex its welded index (V,).

        glTF (and any UV-mapped mesh) splits a vertex wherever its UVs jump (a seam): the
        copies share a position, not an index, so the surface looks torn to anything that
        follows indices (per-vertex offsets, edge adjacency). Exact positions are compared;
        the welded vertices keep the order of first occurrence (a mesh with no copies comes
        back unchanged) and every face is kept, so ``welded.vertices[index]`` splits it again."""
        v = self.vertices.detach()
        if v.shape[0] == 0:
            return self, torch.zeros(0, dtype=torch.long, device=v.device)
        _, inverse = torch.unique(v, dim=0, return_inverse=True)
        n = int(inverse.max()) + 1
        first = torch.full((n,), v.shape[0], dtype=torch.long, device=v.device)
        first = first.scatter_reduce(0, inverse, torch.arange(v.shape[0], device=v.device), reduce="amin")
        order = torch.argsort(first)  # unique ids in order of first occurrence
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n, device=v.device)
        index = rank[inverse]
        return Mesh(self.vertices[first[order]], index[self.faces]), index

    def surface_area(self) -> Tensor:
        return 0.5 * self.face_normals(normalize=False).norm(dim=-1).sum()

    def face_components(self) -> Tensor:
        """A label per face, the same for faces connected through shared vertices (the smallest
        vertex index of the part): min-label propagation along the edges with pointer jumping."""
        labels = torch.arange(self.n_vertices, device=self.faces.device)
        if self.n_faces == 0:
            return labels[:0]
        a, b = self.faces.roll(1, dims=1).reshape(-1), self.faces.reshape(-1)
        while True:
            m = torch.minimum(labels[a], labels[b])
            new = labels.scatter_reduce(0, a, m, reduce="amin").scatter_reduce(0, b, m, reduce="amin")
            new = new[new]  # every label is a vertex whose own label is no larger: jump to it
            if torch.equal(new, labels):
                return labels[self.faces[:, 0]]
            labels = new

    def without_small_parts(self, min_area_fraction: float, relative_to: str = "total") -> Mesh:
        """The mesh without its connected parts smaller than ``min_area_fraction`` of the whole
        surface's area (``relative_to="total"``) or of the largest part's (``"largest"``,
        threestudio's rule), unused vertices dropped: the floaters and bubbles an SDF leaves.
        0 keeps everything."""
        if relative_to not in ("total", "largest"):
            raise ValueError(f"relative_to must be 'total' or 'largest', not {relative_to!r}")
        if min_area_fraction <= 0 or self.n_faces == 0:
            return self
        label = self.face_components()
        area = self.face_normals(normalize=False).norm(dim=-1).detach()
        part_area = torch.zeros(self.n_vertices, dtype=area.dtype, device=area.device).index_add_(0, label, area)
        whole = part_area.max() if relative_to == "largest" else area.sum()
        keep = part_area[label] >= min_area_fraction * whole
        if bool(keep.all()):
            return self
        faces = self.faces[keep]
        used = torch.zeros(self.n_vertices, dtype=torch.bool, device=faces.device)
        used[faces.reshape(-1)] = True
        index = torch.cumsum(used.long(), 0) - 1
        return Mesh(self.vertices[used], index[faces])

    def sample_surface(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` points uniformly distributed on the surface (by area)."""
        # the draw runs on the CPU, where a (CPU) generator can drive it on any device
        areas = self.face_normals(normalize=False).norm(dim=-1).detach().cpu()
        face = torch.multinomial(areas / areas.sum(), n, replacement=True, generator=generator).to(self.vertices.device)
        u, v = torch.rand(2, n, generator=generator).to(self.vertices.device)
        flip = u + v > 1
        u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
        tri = self.vertices[self.faces[face]]
        return tri[:, 0] + u[:, None] * (tri[:, 1] - tri[:, 0]) + v[:, None] * (tri[:, 2] - tri[:, 0])


def collapsed(faces: Tensor) -> Tensor:
    """(F,) whether a face uses the same vertex twice (after welding or clustering)."""
    return (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])


def laplacian_loss(mesh: Mesh, form: str = "squared") -> Tensor:
    """The uniform Laplacian of the vertices, averaged over the vertices that faces use.

    ``"squared"``: the squared distance of each vertex from the mean of its neighbours.
    ``"norm"``: the length of (D - A) v, degree times that offset, unsquared (Magic123's
    laplacian_smooth_loss, threestudio's Mesh.laplacian)."""
    if form not in ("squared", "norm"):
        raise ValueError(f"Laplacian form must be 'squared' or 'norm', not {form!r}")
    v = mesh.vertices
    if takes_gpu_paths(v.device):  # the same sums over the sorted corner edges, each edge once: no host sync
        keys, _, first = mesh.corner_edges()
        a, b, w = keys // mesh.n_vertices, keys % mesh.n_vertices, first.to(v.dtype)
        total = torch.zeros_like(v).index_add(0, a, v[b] * w[:, None]).index_add(0, b, v[a] * w[:, None])
        degree = torch.zeros(v.shape[0], device=v.device, dtype=v.dtype).index_add(0, a, w).index_add(0, b, w)
        used = degree > 0
        if form == "norm":
            lap = degree[:, None] * v - total
            return (lap.norm(dim=-1) * used).sum() / used.sum().clamp_min(1)
        lap = v - total / degree.clamp_min(1.0)[:, None]
        return (lap.pow(2).sum(-1) * used).sum() / used.sum().clamp_min(1)
    pairs, _ = mesh.edges()
    total = torch.zeros_like(v)
    total = total.index_add(0, pairs[:, 0], v[pairs[:, 1]]).index_add(0, pairs[:, 1], v[pairs[:, 0]])
    degree = torch.zeros(v.shape[0], device=v.device, dtype=v.dtype)
    ones = torch.ones(pairs.shape[0], device=v.device, dtype=v.dtype)
    degree = degree.index_add(0, pairs[:, 0], ones).index_add(0, pairs[:, 1], ones)
    used = degree > 0
    if form == "norm":
        lap = degree[used, None] * v[used] - total[used]
        return lap.norm(dim=-1).mean() if used.any() else v.sum() * 0.0
    lap = v[used] - total[used] / degree[used, None]
    return lap.pow(2).sum(-1).mean() if used.any() else v.sum() * 0.0


def normal_consistency_loss(mesh: Mesh, form: str = "face") -> Tensor:
    """Mean (1 - cos) between normals across the edges.

    ``"face"``: between the two faces that share each edge. ``"vertex"``: between the
    (area-weighted) vertex normals at the two ends of each edge, threestudio's form; on a
    smooth surface it is about a tenth of the face form."""
    if form == "vertex":
        n = mesh.vertex_normals()
        if takes_gpu_paths(n.device):  # each edge once, from the sorted corner edges: no host sync
            keys, _, first = mesh.corner_edges()
            a, b = keys // mesh.n_vertices, keys % mesh.n_vertices
            w = first.to(n.dtype)
            return ((1.0 - (n[a] * n[b]).sum(-1)) * w).sum() / w.sum().clamp_min(1)
        pairs, _ = mesh.edges()
        if pairs.shape[0] == 0:
            return mesh.vertices.sum() * 0.0
        return (1.0 - (n[pairs[:, 0]] * n[pairs[:, 1]]).sum(-1)).mean()
    if form != "face":
        raise ValueError(f"normal consistency form must be 'vertex' or 'face', not {form!r}")
    normals = mesh.face_normals()
    if takes_gpu_paths(normals.device):  # the same pairs, masked instead of gathered: no host sync
        keys, corner, _ = mesh.corner_edges()
        faces = corner // 3
        same = keys[1:] == keys[:-1]
        cos = (normals[faces[:-1]] * normals[faces[1:]]).sum(-1)
        return ((1.0 - cos) * same).sum() / same.sum().clamp_min(1)
    _, face_edges = mesh.edges()
    flat = face_edges.reshape(-1)
    face_of = torch.arange(mesh.n_faces, device=flat.device).repeat_interleave(3)
    order = torch.argsort(flat, stable=True)
    sorted_edges, sorted_faces = flat[order], face_of[order]
    same = sorted_edges[1:] == sorted_edges[:-1]
    f0, f1 = sorted_faces[:-1][same], sorted_faces[1:][same]
    if f0.numel() == 0:
        return normals.sum() * 0.0
    return (1.0 - (normals[f0] * normals[f1]).sum(-1)).mean()


def chamfer_distance(a: Tensor, b: Tensor, chunk: int = 4096) -> Tensor:
    """Symmetric mean nearest-neighbour distance between point sets (N, 3) and (M, 3)."""

    def one_way(x: Tensor, y: Tensor) -> Tensor:
        return torch.cat([torch.cdist(c, y, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values for c in x.split(chunk)]).mean()

    return 0.5 * (one_way(a, b) + one_way(b, a))
