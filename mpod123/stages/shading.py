"""Lambertian shading of the novel views a diffusion prior scores (stage 2).

Unlit albedo lets SDS reach the geometry only through silhouettes. Magic123 and
stable-dreamfusion shade those views instead: a directional light near the
camera (the camera's position plus Gaussian jitter, seen from the origin), a
random ambient share, and sometimes a white albedo ("textureless") so that
the prior judges the shape alone. Then the normals, hence the vertex positions,
get gradients from every pixel. Views compared with known images (the reference
view, multi-view supervision) stay unlit: those images carry their own light.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..camera import Cameras


@dataclass
class Lighting:
    """One draw of the lighting for a batch of views."""

    direction: Tensor
    """(B, 3) unit vectors from the surface towards the light (world space)."""
    ambient: Tensor
    """(B,) ambient share in [0, 1]; 1 is unlit."""
    textureless: Tensor
    """(B,) bool: shade a white albedo (geometry only)."""

    @staticmethod
    def draw(
        cameras: Cameras,
        generator: torch.Generator,
        min_ambient: float = 0.1,
        textureless_prob: float = 0.2,
        jitter: float = 1.0,
    ) -> Lighting:
        """A light near each camera, an ambient share in [min_ambient, 1], textureless at ``textureless_prob``."""
        b = len(cameras)
        where = generator.device  # a device generator draws on the device: nothing is copied either way
        position = cameras.c2w[:, :3, 3].detach().float().to(where)
        direction = F.normalize(position + jitter * torch.randn(b, 3, generator=generator, device=where), dim=-1)
        ambient = min_ambient + (1.0 - min_ambient) * torch.rand(b, generator=generator, device=where)
        textureless = torch.rand(b, generator=generator, device=where) < textureless_prob
        device = cameras.c2w.device
        return Lighting(direction.to(device), ambient.to(device), textureless.to(device))


def shade(albedo: Tensor, opacity: Tensor, normals: Tensor, background: Tensor, light: Lighting) -> Tensor:
    """Lit colour over the background (B, H, W, 3).

    ``albedo`` is the colour rendered over black (so premultiplied by coverage), ``opacity``
    (B, H, W, 1) the coverage, ``normals`` (B, H, W, 3) unit world normals (zero off the surface),
    ``background`` (B, 3). Lambert: albedo * (ambient + (1 - ambient) * max(0, n . l))."""
    b = albedo.shape[0]
    l = light.direction.to(normals)[:, None, None, :]
    ambient = light.ambient.to(albedo)[:, None, None, None]
    lambert = (normals * l).sum(-1, keepdim=True).clamp_min(0.0)
    factor = ambient + (1.0 - ambient) * lambert
    white = opacity.expand_as(albedo)  # a white albedo, premultiplied by coverage like ``albedo``
    base = torch.where(light.textureless.view(b, 1, 1, 1), white, albedo)
    return base * factor + (1.0 - opacity) * background[:, None, None, :].to(albedo)


__all__ = ["Lighting", "shade"]
