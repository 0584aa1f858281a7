"""Occupancy grid for empty-space skipping, the pure-torch twin of nerfacc's OccGridEstimator.

Behaviour copied from nerfacc (0.5): every ``update_every`` steps, cells are
re-evaluated at a jittered point inside them; ``occ = density * step_size``;
the stored value is ``max(old * ema_decay, occ)``; a cell is occupied when its
value exceeds ``min(mean of all cells, threshold)``. During warm-up every cell
is evaluated; afterwards a random quarter of all cells plus up to as many
occupied cells. The layout is nerfacc's too (cell ``(i, j, k)`` at flat index
``i*R*R + j*R + k``, ``i`` along x), so a grid can be copied between the two.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..config import OccupancyGridConfig
from ..runtime.syncs import takes_gpu_paths


class OccupancyGrid(nn.Module):
    def __init__(self, cfg: OccupancyGridConfig, bound: float = 1.0, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.cfg = cfg
        self.bound = bound
        r = cfg.resolution
        self.register_buffer("occs", torch.zeros(r**3, device=device))
        # Every cell starts occupied, so a grid that was never updated marches densely
        # (correct, only slower) instead of rendering nothing.
        self.register_buffer("binary", torch.ones(r, r, r, dtype=torch.bool, device=device))
        coords = torch.stack(torch.meshgrid(*(torch.arange(r, device=device),) * 3, indexing="ij"), dim=-1)
        self.register_buffer("cell_coords", coords.reshape(-1, 3), persistent=False)

    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    @property
    def occupied_fraction(self) -> float:
        return float(self.binary.float().mean())

    def fill(self, occupied: bool = True) -> None:
        """Mark every cell occupied (or empty): dense marching through the grid."""
        self.occs.fill_(1.0 if occupied else 0.0)
        self.binary.fill_(occupied)

    @torch.no_grad()
    def update(
        self, step: int, density_fn: Callable[[Tensor], Tensor], step_size: float, generator: torch.Generator | None = None
    ) -> bool:
        """Refresh the grid if ``step`` is an update step; returns whether it did."""
        if step % self.cfg.update_every != 0:
            return False
        n_cells = self.occs.numel()
        dev = self.occs.device
        where = generator.device if generator is not None else None  # a device generator draws on the device
        if step < self.cfg.warmup_steps:
            indices = torch.arange(n_cells, device=dev)
        else:
            n = n_cells // 4
            uniform = torch.randint(n_cells, (n,), generator=generator, device=where).to(dev)
            if takes_gpu_paths(dev):
                # no count read back: n distinct occupied cells at random (all of them, topped up
                # with random empty ones, when fewer are occupied); re-evaluating more cells is harmless
                keys = torch.rand(n_cells, generator=generator, device=where).to(dev) + self.binary.flatten()
                occupied = torch.topk(keys, n, sorted=False).indices
            else:
                occupied = torch.nonzero(self.binary.flatten())[:, 0]
                if n < occupied.numel():
                    occupied = occupied[torch.randint(occupied.numel(), (n,), generator=generator).to(dev)]
            indices = torch.cat([uniform, occupied])
        jitter = torch.rand(indices.numel(), 3, generator=generator, device=where).to(dev)
        x01 = (self.cell_coords[indices].float() + jitter) / self.cfg.resolution
        x = (x01 * 2.0 - 1.0) * self.bound
        occ = torch.cat([density_fn(chunk) for chunk in x.split(1 << 18)]).reshape(-1) * step_size
        self.occs[indices] = torch.maximum(self.occs[indices] * self.cfg.ema_decay, occ)
        threshold = torch.clamp(self.occs.mean(), max=self.cfg.threshold)
        self.binary = (self.occs > threshold).view_as(self.binary)
        return True

    def query(self, x: Tensor) -> Tensor:
        """Whether each world point (..., 3) lies in an occupied cell; False outside the box."""
        r = self.cfg.resolution
        x01 = (x / self.bound) * 0.5 + 0.5
        inside = ((x01 >= 0.0) & (x01 < 1.0)).all(dim=-1)
        idx = (x01 * r).long().clamp(0, r - 1)
        flat = (idx[..., 0] * r + idx[..., 1]) * r + idx[..., 2]
        return self.binary.reshape(-1)[flat] & inside
