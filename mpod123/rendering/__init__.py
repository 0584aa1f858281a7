"""Volume rendering of the NeRF: occupancy grid, ray marching, compositing, masks."""

from .background import background_color
from .compositing import Composited, composite, sample_weights
from .masks import MASK_THRESHOLD, opacity_mask
from .occupancy_grid import OccupancyGrid
from .ray_marching import RayMarcher, RaySamples, march_rays_reference, ray_box_intersection
from .volume_renderer import RenderOutput, VolumeRenderer

__all__ = [
    "MASK_THRESHOLD",
    "Composited",
    "OccupancyGrid",
    "RayMarcher",
    "RaySamples",
    "RenderOutput",
    "VolumeRenderer",
    "background_color",
    "composite",
    "march_rays_reference",
    "opacity_mask",
    "ray_box_intersection",
    "sample_weights",
]

from .mesh_renderer import MeshRenderer, MeshRenderOutput  # noqa: E402
from .rasterizer import Rasterized, antialias, project, rasterize  # noqa: E402

__all__ += ["MeshRenderOutput", "MeshRenderer", "Rasterized", "antialias", "project", "rasterize"]
