"""Bake a colour field into a texture image through the UV layout, with seam dilation.

Every texel centre covered by a triangle in UV space gets the colour field's
value at the matching surface point (linear barycentrics: UV space is flat).
Texels outside every island are then filled outwards from the islands'
borders for ``padding`` rings, so that bilinear filtering and mip-maps do not
pull in background colour along the seams.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..rendering.rasterizer import barycentrics, interpolate, rasterize
from .uv import UVMesh


@torch.no_grad()
def bake_texture(
    uv_mesh: UVMesh, color_fn: Callable[[Tensor], Tensor], size: int = 1024, padding: int = 8, chunk: int = 1 << 18
) -> tuple[Tensor, Tensor]:
    """The texture (size, size, 3) in [0, 1] and its coverage mask (size, size) before dilation."""
    uv = uv_mesh.uvs.to(uv_mesh.vertices.dtype)
    screen = (uv * size)[None]  # texel centres at +0.5, row = v * size (top-left origin)
    depth = torch.ones(1, uv.shape[0], dtype=uv.dtype, device=uv.device)
    rast = rasterize(screen, depth, uv_mesh.faces, size, size)
    bi, pix, bary = barycentrics(screen, depth, uv_mesh.faces, rast)
    points = interpolate(uv_mesh.vertices, uv_mesh.faces, rast, bi, pix, bary)
    colors = torch.cat([color_fn(p) for p in points.split(chunk)]) if points.shape[0] else points.new_zeros(0, 3)
    image = torch.zeros(size * size, 3, dtype=colors.dtype, device=uv.device)
    image[pix] = colors.clamp(0, 1)
    mask = torch.zeros(size * size, dtype=torch.bool, device=uv.device)
    mask[pix] = True
    image, mask = image.view(size, size, 3), mask.view(size, size)
    return dilate(image, mask, padding), mask


def dilate(image: Tensor, mask: Tensor, rings: int) -> Tensor:
    """Grow the covered region by ``rings`` texels, each new texel the mean of its covered 8-neighbours."""
    img = (image * mask[..., None]).permute(2, 0, 1)[None]
    m = mask[None, None].to(image.dtype)
    kernel = torch.ones(1, 1, 3, 3, dtype=image.dtype, device=image.device)
    for _ in range(rings):
        total = F.conv2d(img, kernel.expand(3, 1, 3, 3), padding=1, groups=3)
        count = F.conv2d(m, kernel, padding=1)
        grow = (count > 0) & (m == 0)
        if not grow.any():
            break
        img = torch.where(grow, total / count.clamp_min(1), img)
        m = torch.where(grow, torch.ones_like(m), m)
    return img[0].permute(1, 2, 0)
