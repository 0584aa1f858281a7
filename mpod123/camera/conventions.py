"""Conversions between Blender's Z-up world and the project's Y-up world.

NeRF-synthetic ``transforms.json`` files store camera-to-world matrices in
Blender's world (Z-up, front facing -Y) with the OpenGL camera frame. Our world
is glTF's (Y-up, front facing +Z), and the camera frame is the same OpenGL one,
so only the world axes change:

    (x, y, z)_blender  ->  (x, z, -y)_ours

This is the inverse of what Blender's glTF importer does to a Y-up file, so a
mesh we export in our world lands in Blender with its front facing -Y (Blender's
Front view).
"""

from __future__ import annotations

import torch
from torch import Tensor

BLENDER_TO_WORLD = torch.tensor(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)


def blender_c2w_to_world(c2w: Tensor, scale: float = 1.0) -> Tensor:
    """Blender-world camera-to-world (B, 4, 4) to ours, scaling camera positions by ``scale``."""
    out = BLENDER_TO_WORLD.to(c2w) @ c2w
    out = out.clone()
    out[..., :3, 3] *= scale
    return out


def world_c2w_to_blender(c2w: Tensor, scale: float = 1.0) -> Tensor:
    """Inverse of :func:`blender_c2w_to_world`."""
    out = c2w.clone()
    out[..., :3, 3] /= scale
    return BLENDER_TO_WORLD.to(c2w).T @ out
