"""DMTet: a per-vertex SDF and a bounded per-vertex deformation on a tet grid.

The surface is the zero level set extracted by marching tetrahedra from the
deformed grid. Both the SDF and the deformation are plain parameters (one per
grid vertex), initialised from the stage-1 NeRF's density.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .marching_tets import marching_tets
from .mesh import Mesh
from .tet_grid import TetGrid


class DMTet(nn.Module):
    def __init__(self, grid: TetGrid, deform_scale: float = 0.25, backend: str = "auto") -> None:
        super().__init__()
        self.grid = grid
        self.deform_scale = deform_scale
        self.backend = backend
        self.register_buffer("base_vertices", grid.vertices.clone(), persistent=False)
        self.register_buffer("tets", grid.tets.clone(), persistent=False)
        n = grid.vertices.shape[0]
        self.sdf = nn.Parameter(torch.zeros(n, device=grid.vertices.device))
        self.deform = nn.Parameter(torch.zeros(n, 3, device=grid.vertices.device))

    def vertices(self) -> Tensor:
        """Deformed grid vertices: each moves at most ``deform_scale`` of a cell per axis."""
        return self.base_vertices + self.deform_scale * self.grid.cell_size * torch.tanh(self.deform)

    def mesh(self) -> Mesh:
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
