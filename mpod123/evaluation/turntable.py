"""The evaluation turntable: N views of a result at the reference camera's elevation and distance.

View k sits at azimuth ``azimuth_deg + 360 k / N`` (degrees), so view 0 is the
reference camera (on +Z for the defaults, seeing the object's front) and the
azimuth then increases from +Z towards +X, i.e. counter-clockwise seen from
above (+Y), the project's convention (:mod:`mpod123.camera.cameras`). Views
adjacent in this order are adjacent on the circle, and view N-1 neighbours
view 0 (the wrap-around MVC uses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..camera import Cameras, orbit_cameras
from .config import EvalConfig
from .textured_mesh import TexturedMesh, render_textured


def turntable_azimuths(cfg: EvalConfig) -> list[float]:
    """Azimuths in degrees of the ``cfg.views`` views, view 0 first (the reference's)."""
    return [cfg.azimuth_deg + 360.0 * k / cfg.views for k in range(cfg.views)]


def turntable_cameras(cfg: EvalConfig, device: torch.device | str = "cpu") -> Cameras:
    """The turntable's cameras, in view order."""
    if cfg.views < 2:
        raise ValueError(f"--views must be at least 2 (the reference view and one novel view), got {cfg.views}")
    if cfg.resolution < 8:
        raise ValueError(f"the render resolution must be at least 8 pixels, got {cfg.resolution}")
    return orbit_cameras(
        cfg.polar_deg, turntable_azimuths(cfg), cfg.radius, cfg.fov_deg, cfg.resolution, device=device
    )


@dataclass
class Turntable:
    rgb: Tensor
    """(N, H, W, 3) renders on white, view 0 from the reference camera."""
    opacity: Tensor
    """(N, H, W) antialiased coverage."""
    azimuth_deg: list[float]
    """Each view's azimuth."""
    textured: bool
    """Whether the mesh carried a texture (an untextured one renders white)."""

    @property
    def reference_view(self) -> Tensor:
        return self.rgb[0]

    @property
    def novel_views(self) -> Tensor:
        return self.rgb[1:]


def render_turntable(mesh: TexturedMesh, cfg: EvalConfig, device: torch.device | str = "cpu") -> Turntable:
    """Render the turntable of ``mesh`` on a white background."""
    out = render_textured(mesh.to(device), turntable_cameras(cfg, device), background=1.0)
    return Turntable(out.rgb, out.opacity, turntable_azimuths(cfg), mesh.textured)
