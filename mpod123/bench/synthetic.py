"""A procedural textured test object, ray-traced analytically.

Tests and benchmarks need a ground truth that does not come from the code under
test: this object is a union of an ellipsoid body with stripes, a checkered box
head, a red nose on its front (+Z) and a blue arm on its right (+X), so that
front/back and left/right mix-ups show. It is rendered by exact ray-primitive
intersection with 2x2 supersampled antialiasing, unlit (albedo only), in our
world and camera convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..camera import Cameras, camera_rays, orbit_cameras
from .dataset import MultiViewDataset


@dataclass(frozen=True)
class Ellipsoid:
    center: tuple[float, float, float]
    radii: tuple[float, float, float]


@dataclass(frozen=True)
class Box:
    center: tuple[float, float, float]
    half: tuple[float, float, float]


BODY = Ellipsoid((0.0, -0.1, 0.0), (0.42, 0.32, 0.30))
HEAD = Box((0.0, 0.35, -0.02), (0.16, 0.14, 0.14))
NOSE = Ellipsoid((0.0, 0.35, 0.19), (0.07, 0.07, 0.07))
ARM = Box((0.45, -0.05, 0.0), (0.14, 0.05, 0.05))
PRIMITIVES = (BODY, HEAD, NOSE, ARM)


def _hit_ellipsoid(o: Tensor, d: Tensor, e: Ellipsoid) -> Tensor:
    c = o.new_tensor(e.center)
    r = o.new_tensor(e.radii)
    oo, dd = (o - c) / r, d / r
    a = (dd * dd).sum(-1)
    b = 2.0 * (oo * dd).sum(-1)
    cc = (oo * oo).sum(-1) - 1.0
    disc = b * b - 4.0 * a * cc
    t = (-b - torch.sqrt(disc.clamp_min(0.0))) / (2.0 * a)
    return torch.where((disc >= 0.0) & (t > 0.0), t, torch.full_like(t, float("inf")))


def _hit_box(o: Tensor, d: Tensor, box: Box) -> Tensor:
    c = o.new_tensor(box.center)
    h = o.new_tensor(box.half)
    inv = 1.0 / torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t0 = (c - h - o) * inv
    t1 = (c + h - o) * inv
    t_near = torch.minimum(t0, t1).amax(-1)
    t_far = torch.maximum(t0, t1).amin(-1)
    hit = (t_near <= t_far) & (t_near > 0.0)
    return torch.where(hit, t_near, torch.full_like(t_near, float("inf")))


def _albedo(p: Tensor, prim: Tensor) -> Tensor:
    stripes = torch.where(
        (torch.sin(18.0 * p[:, 1]) > 0)[:, None], p.new_tensor([0.95, 0.55, 0.10]), p.new_tensor([0.10, 0.60, 0.60])
    )
    parity = (torch.floor(p * 8.0).long().sum(-1) % 2 == 0)[:, None]
    checker = torch.where(parity, p.new_tensor([0.90, 0.85, 0.20]), p.new_tensor([0.45, 0.20, 0.60]))
    nose = p.new_tensor([0.85, 0.10, 0.10]).expand_as(p)
    arm = p.new_tensor([0.15, 0.25, 0.85]).expand_as(p)
    table = torch.stack([stripes, checker, nose, arm], dim=0)  # (4, R, 3)
    return table.gather(0, prim.clamp_min(0)[None, :, None].expand(1, -1, 3))[0]


def trace(rays_o: Tensor, rays_d: Tensor) -> tuple[Tensor, Tensor]:
    """Nearest hit distance (R,) (inf on a miss) and the RGB albedo there (R, 3)."""
    hits = []
    for prim in PRIMITIVES:
        fn = _hit_ellipsoid if isinstance(prim, Ellipsoid) else _hit_box
        hits.append(fn(rays_o, rays_d, prim))
    t_all = torch.stack(hits, dim=-1)
    t, prim_id = t_all.min(dim=-1)
    points = rays_o + torch.where(torch.isfinite(t), t, torch.zeros_like(t))[:, None] * rays_d
    return t, _albedo(points, prim_id)


def render_object(cameras: Cameras, supersample: int = 2) -> Tensor:
    """RGBA renders (B, H, W, 4) in [0, 1] with straight alpha."""
    s = supersample
    hi = cameras.resized(cameras.width * s, cameras.height * s)
    rays_o, rays_d = camera_rays(hi)
    t, rgb = trace(rays_o.reshape(-1, 3), rays_d.reshape(-1, 3))
    alpha = torch.isfinite(t).float()[:, None]
    premult = torch.cat([rgb * alpha, alpha], dim=-1).reshape(len(cameras), hi.height, hi.width, 4)
    low = F.avg_pool2d(premult.permute(0, 3, 1, 2), s).permute(0, 2, 3, 1)
    a = low[..., 3:]
    color = torch.where(a > 0, low[..., :3] / a.clamp_min(1e-8), torch.ones_like(low[..., :3]))
    return torch.cat([color, a], dim=-1)


def _primitive_distances(points: Tensor) -> Tensor:
    """(N, P) signed distance bounds to each primitive: exact for boxes, (|p / r| - 1) min(r) for ellipsoids."""
    parts = []
    for prim in PRIMITIVES:
        c = points.new_tensor(prim.center)
        if isinstance(prim, Ellipsoid):
            r = points.new_tensor(prim.radii)
            parts.append(((points - c) / r).norm(dim=-1).sub(1.0) * r.min())
        else:
            q = (points - c).abs() - points.new_tensor(prim.half)
            parts.append(q.clamp_min(0).norm(dim=-1) + q.max(dim=-1).values.clamp_max(0))
    return torch.stack(parts, dim=-1)


def object_sdf(points: Tensor) -> Tensor:
    """A signed distance bound (negative inside) whose zero set is the object's surface.

    Exact for the boxes; for the ellipsoids it has the right zero set and sign.
    Used to mesh the ground truth.
    """
    return _primitive_distances(points).min(dim=-1).values


def object_albedo(points: Tensor) -> Tensor:
    """(N, 3) colours of surface points: the albedo of the primitive nearest to each point."""
    return _albedo(points, _primitive_distances(points).argmin(dim=-1))


def object_mesh(resolution: int = 96):
    """The ground-truth surface, extracted from :func:`object_sdf` by marching tets."""
    from ..geometry import marching_tets_reference, tet_grid

    grid = tet_grid(resolution)
    return marching_tets_reference(grid.vertices, object_sdf(grid.vertices), grid.tets)


def turntable_dataset(
    n_views: int = 24,
    resolution: int = 64,
    polar_deg: tuple[float, ...] = (60.0, 80.0, 100.0),
    radius: float = 2.5,
    fov_deg: float = 40.0,
) -> MultiViewDataset:
    """``n_views`` renders on a spiral: azimuths evenly around, polar cycling through ``polar_deg``."""
    azimuth = [360.0 * i / n_views for i in range(n_views)]
    polar = [polar_deg[i % len(polar_deg)] for i in range(n_views)]
    cams = orbit_cameras(polar, azimuth, radius, fov_deg, resolution)
    return MultiViewDataset(render_object(cams), cams, [f"view_{i:03d}" for i in range(n_views)])
