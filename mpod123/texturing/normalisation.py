"""The similarity transform that puts a mesh into the unit sphere, and back.

The stages work in a world where the object fits the unit sphere (the texture
field lives in the cube [-1, 1]^3). An artist's mesh can be anywhere at any
scale, so it is moved and scaled uniformly (``x' = s (x - c)``) before
texturing, and every position written out goes through the inverse, so the
textured mesh sits exactly where the input was. A uniform scale keeps angles,
so normals and cameras' fields of view need no change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..camera import Cameras


@dataclass(frozen=True)
class Normalisation:
    """``normalised = scale * (original - centre)``."""

    centre: tuple[float, float, float]
    scale: float

    @staticmethod
    def into_unit_sphere(vertices: Tensor, radius: float = 1.0) -> Normalisation:
        """Centre on the bounding box's centre; the farthest vertex lands at ``radius``."""
        if vertices.numel() == 0:
            raise ValueError("the mesh has no vertices")
        v = vertices.detach().double()
        centre = (v.amin(0) + v.amax(0)) / 2
        extent = float((v - centre).norm(dim=-1).max())
        if not extent > 0:
            raise ValueError("the mesh is a single point: it has no size to texture")
        return Normalisation(tuple(float(x) for x in centre), radius / extent)

    def then(self, scale: float, shift: Tensor | tuple[float, float, float]) -> Normalisation:
        """This normalisation followed by ``x -> scale * x + shift`` (still one similarity)."""
        shift = torch.as_tensor(shift, dtype=torch.float64)
        c = torch.tensor(self.centre, dtype=torch.float64)
        total = self.scale * scale
        # scale*(s(x - c)) + shift = total * (x - (c - shift / total))
        centre = c - shift / total
        return Normalisation(tuple(float(x) for x in centre), total)

    def apply(self, points: Tensor) -> Tensor:
        c = torch.tensor(self.centre, dtype=points.dtype, device=points.device)
        return (points - c) * self.scale

    def restore(self, points: Tensor) -> Tensor:
        c = torch.tensor(self.centre, dtype=points.dtype, device=points.device)
        return points / self.scale + c

    def apply_cameras(self, cameras: Cameras) -> Cameras:
        """The same cameras in the normalised world: centres move with the mesh, orientations stay."""
        c2w = cameras.c2w.clone()
        c2w[:, :3, 3] = self.apply(c2w[:, :3, 3])
        return Cameras(c2w, cameras.fov_y, cameras.width, cameras.height)

    def to_dict(self) -> dict:
        return {"centre": list(self.centre), "scale": self.scale}


__all__ = ["Normalisation"]
