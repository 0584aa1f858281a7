"""Ray marching: uniform steps through the scene box, skipping empty cells.

Two backends with one signature (:meth:`RayMarcher.march`):

* ``torch``: the reference. It lays the uniform steps of every ray out as a
  (rays, steps) table, drops steps outside the box or in empty grid cells, and,
  given a density function, evaluates the survivors once without gradients to
  drop steps behind an opaque surface (transmittance below ``early_stop_eps``)
  or with alpha below ``alpha_threshold``, as nerfacc does.
* ``nerfacc``: nerfacc's CUDA grid traversal on the same occupancy grid.

Both return packed samples (ray index, t_start, t_end), ray-major and sorted by t.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..runtime.accelerators import probe, resolve_backend
from ..runtime.syncs import Compactor, takes_gpu_paths
from .occupancy_grid import OccupancyGrid

DensityFn = Callable[[Tensor], Tensor]


@dataclass
class RaySamples:
    """Packed samples: ``ray_indices`` (M,) sorted ascending, ``t_starts``/``t_ends`` (M,)."""

    ray_indices: Tensor
    t_starts: Tensor
    t_ends: Tensor
    n_rays: int

    def __len__(self) -> int:
        return self.ray_indices.shape[0]

    def midpoints(self, rays_o: Tensor, rays_d: Tensor) -> Tensor:
        t_mid = 0.5 * (self.t_starts + self.t_ends)
        return rays_o[self.ray_indices] + t_mid[:, None] * rays_d[self.ray_indices]


def ray_box_intersection(rays_o: Tensor, rays_d: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays through the cube [-bound, bound]^3 (exit <= entry on a miss)."""
    inv = 1.0 / torch.where(rays_d.abs() < 1e-12, torch.full_like(rays_d, 1e-12), rays_d)
    t0 = (-bound - rays_o) * inv
    t1 = (bound - rays_o) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far


def transmittance_before(sigma_delta: Tensor) -> Tensor:
    """Transmittance in front of each sample, exp(-sum of earlier sigma*delta), along the last dim."""
    return torch.exp(-(torch.cumsum(sigma_delta, dim=-1) - sigma_delta))


def march_rays_reference(
    rays_o: Tensor,
    rays_d: Tensor,
    step_size: float,
    bound: float,
    grid: OccupancyGrid | None = None,
    density_fn: DensityFn | None = None,
    early_stop_eps: float = 1e-4,
    alpha_threshold: float = 0.0,
    near_plane: float = 0.0,
    stratified: bool = False,
    generator: torch.Generator | None = None,
    compactor: Compactor | None = None,
) -> RaySamples:
    """The torch reference described in the module docstring.

    With a ``compactor`` on a GPU (:func:`~mpod123.runtime.syncs.takes_gpu_paths`) no step reads
    a size back: the kept steps are gathered at the compactor's capacity (:func:`_march_static`)."""
    n_rays = rays_o.shape[0]
    dev = rays_o.device
    gpu = takes_gpu_paths(dev)
    t_near, t_far = ray_box_intersection(rays_o, rays_d, bound)
    t_near = t_near.clamp_min(near_plane)
    span = (t_far - t_near).clamp_min(0.0)
    if not n_rays:
        n_steps = 0
    elif gpu:  # no host sync: no ray spans more than the box's diagonal
        n_steps = math.ceil(2.0 * math.sqrt(3.0) * bound / step_size - 1e-6)
    else:
        n_steps = int(torch.ceil(span.max() / step_size).item())
    if n_steps == 0:
        empty = torch.zeros(0, device=dev)
        return RaySamples(torch.zeros(0, dtype=torch.long, device=dev), empty, empty.clone(), n_rays)
    start = t_near
    if stratified:  # drawn where the generator lives (the stage passes a device generator on a GPU)
        start = start + torch.rand(n_rays, generator=generator, device=_where(generator)).to(dev) * step_size
    t_starts = start[:, None] + step_size * torch.arange(n_steps, device=dev, dtype=rays_o.dtype)[None]
    keep = t_starts < t_far[:, None]
    t_ends = torch.minimum(t_starts + step_size, t_far[:, None])
    if grid is not None:
        mids = rays_o[:, None] + (0.5 * (t_starts + t_ends))[..., None] * rays_d[:, None]
        keep &= grid.query(mids)
    if gpu and compactor is not None:
        return _march_static(rays_o, rays_d, t_starts, t_ends, keep, grid is not None and density_fn is not None and (
            early_stop_eps > 0.0 or alpha_threshold > 0.0), density_fn, early_stop_eps, alpha_threshold, compactor)
    if grid is not None:
        if density_fn is not None and (early_stop_eps > 0.0 or alpha_threshold > 0.0):
            # on CUDA one block: every block costs host syncs (nonzero, the active set), which
            # stall the GPU more than the density evaluations behind opaque surfaces cost
            block = n_steps if gpu else 32
            keep &= _visible(rays_o, rays_d, t_starts, t_ends, keep, density_fn, early_stop_eps, alpha_threshold, block)
    ray_idx, step_idx = torch.nonzero(keep, as_tuple=True)
    return RaySamples(ray_idx, t_starts[ray_idx, step_idx], t_ends[ray_idx, step_idx], n_rays)


def _where(generator: torch.Generator | None) -> torch.device | None:
    return generator.device if generator is not None else None


def _march_static(
    rays_o: Tensor,
    rays_d: Tensor,
    t_starts: Tensor,
    t_ends: Tensor,
    keep: Tensor,
    prune: bool,
    density_fn: DensityFn | None,
    early_stop_eps: float,
    alpha_threshold: float,
    compactor: Compactor,
) -> RaySamples:
    """The GPU form of the reference march: the same samples, gathered at fixed sizes.

    The kept steps (in the box, in occupied cells) are gathered at the compactor's capacity and
    their density evaluated once without gradients, as the one-block :func:`_visible` does; the
    visible ones are gathered again. Padding entries repeat the table's last cell with
    ``t_end = t_start``: zero length, so zero weight, after every real sample (ray-major order holds)."""
    n_rays, n_steps = keep.shape
    if prune:
        idx, valid = compactor.nonzero(keep, ("occupied", keep.numel()))
        with torch.no_grad():
            ts, te = t_starts.reshape(-1)[idx], t_ends.reshape(-1)[idx]
            rows = idx // n_steps
            mids = rays_o[rows] + (0.5 * (ts + te))[:, None] * rays_d[rows]
            sd = torch.where(valid, density_fn(mids).reshape(-1).to(ts.dtype) * (te - ts), 0.0)
            sigma_delta = torch.zeros(keep.numel(), dtype=ts.dtype, device=keep.device).index_add_(0, idx, sd)
            sigma_delta = sigma_delta.view(n_rays, n_steps)
            before = torch.cumsum(sigma_delta, dim=1) - sigma_delta
            keep = keep & (torch.exp(-before) >= early_stop_eps)
            if alpha_threshold > 0.0:
                keep &= (1.0 - torch.exp(-sigma_delta)) >= alpha_threshold
    idx, valid = compactor.nonzero(keep, ("samples", keep.numel()))
    ts = t_starts.reshape(-1)[idx]
    te = torch.where(valid, t_ends.reshape(-1)[idx], ts)
    return RaySamples(idx // n_steps, ts, te, n_rays)


@torch.no_grad()
def _visible(
    rays_o: Tensor,
    rays_d: Tensor,
    t_starts: Tensor,
    t_ends: Tensor,
    keep: Tensor,
    density_fn: DensityFn,
    early_stop_eps: float,
    alpha_threshold: float,
    block: int = 32,
) -> Tensor:
    """Which kept steps are visible: transmittance in front >= eps, alpha >= threshold.

    Marches ``block`` steps at a time and stops evaluating a ray once its
    transmittance has fallen below ``early_stop_eps``, so the density is not
    evaluated behind opaque surfaces. The result equals evaluating every kept
    step at once (nerfacc's rule), at a fraction of the cost.
    """
    n_rays, n_steps = keep.shape
    visible = torch.zeros_like(keep)
    optical_depth = torch.zeros(n_rays, dtype=t_starts.dtype, device=keep.device)
    active = torch.arange(n_rays, device=keep.device)
    for s0 in range(0, n_steps, block):
        sl = slice(s0, s0 + block)
        k = keep[active, sl]
        rows, cols = torch.nonzero(k, as_tuple=True)
        if rows.numel() == 0:
            continue
        rays = active[rows]
        ts, te = t_starts[rays, s0 + cols], t_ends[rays, s0 + cols]
        mids = rays_o[rays] + (0.5 * (ts + te))[:, None] * rays_d[rays]
        sigma_delta = torch.zeros(k.shape, dtype=t_starts.dtype, device=keep.device)
        sigma_delta[rows, cols] = density_fn(mids).reshape(-1).to(sigma_delta.dtype) * (te - ts)
        before = optical_depth[active][:, None] + torch.cumsum(sigma_delta, dim=1) - sigma_delta
        vis = k & (torch.exp(-before) >= early_stop_eps)
        if alpha_threshold > 0.0:
            vis &= (1.0 - torch.exp(-sigma_delta)) >= alpha_threshold
        visible[active, sl] = vis
        optical_depth[active] += sigma_delta.sum(dim=1)
        active = active[torch.exp(-optical_depth[active]) >= early_stop_eps]
        if active.numel() == 0:
            break
    return visible


class RayMarcher:
    """Marches rays through an occupancy grid with the torch or nerfacc backend.

    ``grid=None`` marches densely (every step inside the box), the reference the
    skipping is checked against.
    """

    def __init__(
        self,
        grid: OccupancyGrid | None,
        step_size: float,
        bound: float,
        early_stop_eps: float = 1e-4,
        alpha_threshold: float = 0.0,
        backend: str = "auto",
        device: torch.device | str = "cpu",
    ) -> None:
        self.grid = grid
        self.step_size = step_size
        self.bound = bound
        self.early_stop_eps = early_stop_eps
        self.alpha_threshold = alpha_threshold
        self.backend = resolve_backend(backend, "nerfacc", device) if grid is not None else "torch"
        self.estimator = None
        self.compactor = Compactor()
        """Fixed-size gathers on a GPU (the torch backend); its stage refreshes it once a step."""
        if self.backend == "nerfacc":
            nerfacc = probe("nerfacc")
            b = bound
            self.estimator = nerfacc.OccGridEstimator([-b, -b, -b, b, b, b], resolution=grid.resolution).to(device)

    def march(
        self,
        rays_o: Tensor,
        rays_d: Tensor,
        density_fn: DensityFn | None = None,
        stratified: bool = False,
        generator: torch.Generator | None = None,
    ) -> RaySamples:
        if self.backend == "nerfacc":
            return self._march_nerfacc(rays_o, rays_d, density_fn, stratified, generator)
        return march_rays_reference(
            rays_o,
            rays_d,
            self.step_size,
            self.bound,
            self.grid,
            density_fn,
            self.early_stop_eps,
            self.alpha_threshold,
            stratified=stratified,
            generator=generator,
            compactor=self.compactor,
        )

    def _march_nerfacc(
        self, rays_o: Tensor, rays_d: Tensor, density_fn: DensityFn | None, stratified: bool,
        generator: torch.Generator | None = None,
    ) -> RaySamples:
        est = self.estimator
        est.binaries = self.grid.binary[None]  # share our grid; nerfacc only traverses it
        est.occs = self.grid.occs
        sigma_fn = None
        if density_fn is not None:

            def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
                t_mid = 0.5 * (t_starts + t_ends)
                return density_fn(rays_o[ray_indices] + t_mid[:, None] * rays_d[ray_indices]).reshape(-1)

        # nerfacc's own jitter (stratified=True) draws from the global RNG; ours comes from the
        # stage's generator, as the torch path's does, and enters as each ray's t_min
        # (nerfacc 0.5: near = max(near_plane, t_min), then + U * step when stratified).
        t_min = None
        if stratified:
            t_min = torch.rand(rays_o.shape[0], generator=generator, device=_where(generator)).to(rays_o.device) * self.step_size
        ray_indices, t_starts, t_ends = est.sampling(
            rays_o.contiguous(),
            rays_d.contiguous(),
            sigma_fn=sigma_fn,
            t_min=t_min,
            render_step_size=self.step_size,
            early_stop_eps=self.early_stop_eps,
            alpha_thre=self.alpha_threshold,
            stratified=False,
        )
        return RaySamples(ray_indices.long(), t_starts, t_ends, rays_o.shape[0])
