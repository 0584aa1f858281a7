"""Geometry for the detail stage: tet grids, marching tets, DMTet, meshes and regularisers."""

from .dmtet import DMTet
from .marching_tets import marching_tets, marching_tets_reference
from .mesh import Mesh, chamfer_distance, laplacian_loss, normal_consistency_loss
from .tet_grid import TetGrid, tet_grid

__all__ = [
    "DMTet",
    "Mesh",
    "TetGrid",
    "chamfer_distance",
    "laplacian_loss",
    "marching_tets",
    "marching_tets_reference",
    "normal_consistency_loss",
    "tet_grid",
]
