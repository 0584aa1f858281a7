"""Rendering: the NeRF's volume renderer (occupancy grid, ray marching, compositing, masks)
and the mesh renderer (rasterizer with silhouette antialiasing)."""

from .background import background_color
from .compositing import Composited, composite, sample_weights
from ..imaging.masks import MASK_THRESHOLD, opacity_mask
from .mesh_renderer import MeshRenderer, MeshRenderOutput
from .occupancy_grid import OccupancyGrid
from .rasterizer import Rasterized, antialias, project, rasterize
from .ray_marching import RayMarcher, RaySamples, march_rays_reference, ray_box_intersection
from .volume_renderer import RenderOutput, VolumeRenderer

__all__ = [
    "MASK_THRESHOLD",
    "Composited",
    "MeshRenderOutput",
    "MeshRenderer",
    "OccupancyGrid",
    "Rasterized",
    "RayMarcher",
    "RaySamples",
    "RenderOutput",
    "VolumeRenderer",
    "antialias",
    "background_color",
    "composite",
    "march_rays_reference",
    "opacity_mask",
    "project",
    "ray_box_intersection",
    "rasterize",
    "sample_weights",
]
