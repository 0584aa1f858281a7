"""Render a NeRF field from cameras: march, evaluate, composite.

The renderer owns nothing trainable; it ties a field, an occupancy grid and a
marcher together and renders in chunks of rays so that a 1024^2 image fits in
memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..camera import Cameras, camera_rays, orbit_cameras
from ..config import HashGridConfig, NeRFFieldConfig, OccupancyGridConfig, RenderConfig
from ..fields import NeRFField
from ..imaging.masks import opacity_mask
from ..runtime.selftest import register as register_self_test
from .compositing import accumulate, composite
from .occupancy_grid import OccupancyGrid
from .ray_marching import RayMarcher


@dataclass
class RenderOutput:
    rgb: Tensor
    """(B, H, W, 3) colour over the background."""
    opacity: Tensor
    """(B, H, W, 1) accumulated alpha (Eq. 4)."""
    depth: Tensor
    """(B, H, W, 1) expected depth along each ray."""
    normals: Tensor | None
    """(B, H, W, 3) opacity-weighted world normals, when asked for."""
    n_samples: int
    """Samples evaluated by the field (with gradients) for this render."""

    @property
    def mask(self) -> Tensor:
        """(B, H, W) stage-1 mask, opacity >= 0.5 (Eq. 5)."""
        return opacity_mask(self.opacity[..., 0])


class VolumeRenderer:
    def __init__(self, field: NeRFField, grid: OccupancyGrid | None, cfg: RenderConfig, backend: str = "auto") -> None:
        self.field = field
        self.cfg = cfg
        self.grid = grid if cfg.use_occupancy_grid else None
        self.step_size = cfg.step_size(field.bound)
        device = next(field.parameters()).device
        self.marcher = RayMarcher(
            self.grid, self.step_size, field.bound, cfg.early_stop_eps, cfg.alpha_threshold, backend=backend, device=device
        )

    def render_rays(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        background: Tensor | None,
        stratified: bool = False,
        generator: torch.Generator | None = None,
        with_normals: bool = False,
    ) -> tuple[dict[str, Tensor], int]:
        """Render flat rays (R, 3); returns per-ray outputs and the sample count."""
        prune_fn = self.field.density if self.grid is not None else None
        samples = self.marcher.march(rays_o, rays_d, prune_fn, stratified=stratified, generator=generator)
        points = samples.midpoints(rays_o, rays_d)
        sigmas, rgbs = self.field(points) if len(samples) else (points.new_zeros(0), points.new_zeros(0, 3))
        comp = composite(samples, sigmas, rgbs, background)
        out = {"rgb": comp.rgb, "opacity": comp.opacity[:, None], "depth": comp.depth[:, None]}
        if with_normals:
            normals = self.field.normals(points) if len(samples) else points.new_zeros(0, 3)
            out["normals"] = accumulate(samples, comp.weights, normals)
        return out, len(samples)

    def render(
        self,
        cameras: Cameras,
        background: Tensor | None = None,
        stratified: bool = False,
        generator: torch.Generator | None = None,
        with_normals: bool = False,
    ) -> RenderOutput:
        """Render every camera at its own resolution; ``background`` is (B, 3) or None (black)."""
        b, h, w = len(cameras), cameras.height, cameras.width
        rays_o, rays_d = camera_rays(cameras)
        rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
        bg = None if background is None else background[:, None, :].expand(b, h * w, 3).reshape(-1, 3)
        chunks: dict[str, list[Tensor]] = {}
        total = 0
        step = self.cfg.chunk_rays
        for start in range(0, rays_o.shape[0], step):
            sl = slice(start, start + step)
            out, n = self.render_rays(
                rays_o[sl], rays_d[sl], None if bg is None else bg[sl], stratified, generator, with_normals
            )
            total += n
            for key, value in out.items():
                chunks.setdefault(key, []).append(value)
        full = {key: torch.cat(values).reshape(b, h, w, -1) for key, values in chunks.items()}
        return RenderOutput(full["rgb"], full["opacity"], full["depth"], full.get("normals"), total)

    @torch.no_grad()
    def masks(self, cameras: Cameras) -> Tensor:
        """(B, H, W) bool stage-1 masks for any cameras: opacity >= 0.5 (Eq. 5)."""
        return self.render(cameras).mask


def nerfacc_self_test(device: torch.device) -> None:
    """nerfacc's parity self-test (registered below): one small field and grid rendered by both marchers."""
    torch.manual_seed(0)  # inside the registry's fork_rng: the caller's generator is restored afterwards
    cfg = NeRFFieldConfig(hash_grid=HashGridConfig(n_levels=4, log2_hashmap_size=12, backend="torch"), blob_density=40.0)
    field = NeRFField(cfg, device=device)
    grid = OccupancyGrid(OccupancyGridConfig(resolution=16), device=device)
    rc = RenderConfig(resolution=16, samples_per_ray=64)
    ref = VolumeRenderer(field, grid, rc, backend="torch")
    acc = VolumeRenderer(field, grid, rc, backend="nerfacc")
    for update in range(4):
        grid.update(update * 16, field.density, ref.step_size)
    cams = orbit_cameras([90.0], [0.0], 2.5, 40.0, 16, device=device)
    bg = torch.ones(1, 3, device=device)
    with torch.no_grad():
        a, b = ref.render(cams, bg), acc.render(cams, bg)
    for name, x, y in (("opacity", a.opacity, b.opacity), ("rgb", a.rgb, b.rgb)):
        err = float((x - y).abs().mean())
        if err > 0.01:
            raise AssertionError(f"{name} differs from the reference by {err:.4f} on average")


register_self_test("nerfacc", nerfacc_self_test)
