"""DMTet: a per-vertex SDF and a bounded per-vertex deformation on a tet grid.

The surface is the zero level set extracted by marching tetrahedra from the
deformed grid. Both the SDF and the deformation are plain parameters (one per
grid vertex), initialised from the stage-1 NeRF's density.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..runtime.accelerators import resolve_backend
from ..runtime.syncs import takes_gpu_paths
from .marching_tets import BandedMarchingTets, marching_tets
from .mesh import Mesh
from .tet_grid import TetGrid


@torch.no_grad()
def density_box(
    density_fn: Callable[[Tensor], Tensor],
    bound: float,
    threshold: float,
    margin: float = 0.1,
    resolution: int = 64,
    device: torch.device | str = "cpu",
    chunk: int = 1 << 18,
) -> tuple[Tensor, Tensor]:
    """(lo, hi) (3,) of the points where the density exceeds ``threshold``, on a ``resolution``^3
    lattice over [-bound, bound]^3, grown by one lattice cell plus ``margin`` x the box's largest
    side and clipped to the cube; the whole cube when nothing is that dense.

    Magic123 (like stable-dreamfusion) rescales its tet grid to the NeRF's density box before
    the DMTet stage, so the grid's cells all land on the object."""
    axis = torch.linspace(-bound, bound, resolution, device=device)
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    dense = torch.cat([density_fn(c).reshape(-1) > threshold for c in pts.split(chunk)])
    full = torch.full((3,), float(bound), device=device)
    if not bool(dense.any()):
        return -full, full
    inside = pts[dense]
    lo, hi = inside.amin(0), inside.amax(0)
    grow = 2.0 * bound / (resolution - 1) + margin * float((hi - lo).max())
    return (lo - grow).clamp(-bound, bound), (hi + grow).clamp(-bound, bound)


class DMTet(nn.Module):
    def __init__(
        self,
        grid: TetGrid,
        deform_scale: float = 0.25,
        backend: str = "auto",
        box: tuple[Tensor, Tensor] | None = None,
        band: float = 0.05,
    ) -> None:
        """``box`` (lo, hi) maps the grid's cube onto that axis-aligned box (None: the grid's own cube);
        ``band``: the SDF band of the candidate tets marching tets visits on a GPU (:class:`BandedMarchingTets`)."""
        super().__init__()
        self.grid = grid
        self.band = band
        self._banded: BandedMarchingTets | None = None
        self.deform_scale = deform_scale
        self.backend = backend
        vertices = grid.vertices.clone()
        cell = torch.full((3,), grid.cell_size, device=vertices.device)
        if box is not None:
            lo, hi = (b.to(vertices) for b in box)
            scale = (hi - lo) / (2.0 * grid.bound)
            vertices = (vertices + grid.bound) * scale + lo
            cell = cell * scale
        self.register_buffer("cell_size", cell, persistent=False)
        self.register_buffer("base_vertices", vertices, persistent=False)
        self.register_buffer("tets", grid.tets.clone(), persistent=False)
        n = grid.vertices.shape[0]
        self.sdf = nn.Parameter(torch.zeros(n, device=grid.vertices.device))
        self.deform = nn.Parameter(torch.zeros(n, 3, device=grid.vertices.device))

    def vertices(self) -> Tensor:
        """Deformed grid vertices: each moves at most ``deform_scale`` of a cell per axis."""
        return self.base_vertices + self.deform_scale * self.cell_size * torch.tanh(self.deform)

    def mesh(self) -> Mesh:
        """The surface; on a GPU's torch path only the tets near it are visited (the same mesh)."""
        if takes_gpu_paths(self.sdf.device) and resolve_backend(self.backend, "kaolin", self.sdf.device) == "torch":
            if self._banded is None:
                self._banded = BandedMarchingTets(self.tets, self.band)
            return self._banded(self.vertices(), self.sdf)
        return marching_tets(self.vertices(), self.sdf, self.tets, backend=self.backend)

    @torch.no_grad()
    def grid_density(self, density_fn: Callable[[Tensor], Tensor], chunk: int = 1 << 18) -> Tensor:
        """The density at every grid vertex (V,), evaluated in chunks."""
        return torch.cat([density_fn(c).reshape(-1) for c in self.base_vertices.split(chunk)])

    @torch.no_grad()
    def init_from_density(self, density: Tensor, threshold: float) -> None:
        """SDF = (threshold - density) / threshold clamped to [-1, 1]: negative where the
        NeRF is denser than ``threshold`` (inside), linear in the density near the surface."""
        if threshold <= 0:
            raise ValueError(f"density threshold must be positive, got {threshold}")
        self.sdf.copy_(((threshold - density) / threshold).clamp(-1.0, 1.0))
        self.deform.zero_()
