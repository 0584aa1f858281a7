"""Multi-resolution hash encoding (Instant-NGP) with a pure-torch reference.

The torch path reproduces tiny-cuda-nn's ``HashGrid`` exactly, so that a table
trained on one runs on the other and the parity test can compare them value
for value:

* level ``l`` has ``scale_l = base * per_level_scale**l - 1`` and
  ``resolution_l = ceil(scale_l) + 1`` (``base`` counts grid *vertices*);
* a position ``x`` in [0, 1] maps to ``x * scale_l + 0.5`` (the half-cell
  offset staggers the levels);
* a level whose dense grid fits in its table is indexed densely
  (``x + y*res + z*res^2``), otherwise hashed with the primes
  (1, 2654435761, 805459861) XOR-ed in 32-bit arithmetic; either way the
  index is taken modulo the level's table size;
* table sizes are ``min(next multiple of 8 of res^3, 2^log2_hashmap_size)``;
* parameters are one flat vector, level after level, features innermost, and
  the output is (N, n_levels * n_features), level-major.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from .._optional import probe, resolve_backend
from ..config import HashGridConfig

PRIMES = (1, 2654435761, 805459861)
_U32 = 0xFFFFFFFF


def level_layout(cfg: HashGridConfig) -> tuple[list[float], list[int], list[int], list[int]]:
    """Per level: (scale, resolution, table size, table offset), as tiny-cuda-nn computes them."""
    log2_scale = np.float32(math.log2(cfg.per_level_scale))
    scales, resolutions, sizes, offsets = [], [], [], []
    offset = 0
    for level in range(cfg.n_levels):
        scale = float(np.float32(np.exp2(np.float32(level) * log2_scale) * np.float32(cfg.base_resolution) - 1.0))
        res = int(math.ceil(scale)) + 1
        dense = res**3
        size = min(-(-dense // 8) * 8, 1 << cfg.log2_hashmap_size)
        scales.append(scale)
        resolutions.append(res)
        sizes.append(size)
        offsets.append(offset)
        offset += size
    return scales, resolutions, sizes, offsets


def hash_grid_reference(x: Tensor, table: Tensor, cfg: HashGridConfig) -> Tensor:
    """The encoding of points ``x`` (N, 3) in [0, 1] with a table (n_entries, F).

    Differentiable in both the table and ``x`` (trilinear weights), in any dtype.
    The levels are processed together and the eight corners one at a time, which
    keeps peak memory at one (levels, N, F) gather.
    """
    scales, resolutions, sizes, offsets = level_layout(cfg)
    dev = x.device
    scale = torch.tensor(scales, dtype=x.dtype, device=dev)[:, None, None]
    res = torch.tensor(resolutions, dtype=torch.int64, device=dev)[:, None]
    size = torch.tensor(sizes, dtype=torch.int64, device=dev)[:, None]
    offset = torch.tensor(offsets, dtype=torch.int64, device=dev)[:, None]
    use_hash = (res**3 > size)  # (L, 1)

    pos = x[None] * scale + 0.5  # (L, N, 3)
    cell = torch.floor(pos.detach())
    frac = pos - cell
    cell = cell.to(torch.int64)
    out = x.new_zeros(len(scales), x.shape[0], table.shape[1])
    for corner in range(8):
        bits = [(corner >> d) & 1 for d in range(3)]
        c = [cell[..., d] + bits[d] for d in range(3)]
        dense_idx = c[0] + c[1] * res + c[2] * res * res
        hash_idx = ((c[0] * PRIMES[0]) ^ (c[1] * PRIMES[1]) ^ (c[2] * PRIMES[2])) & _U32
        idx = torch.where(use_hash, hash_idx, dense_idx & _U32) % size + offset  # (L, N)
        w = torch.ones_like(frac[..., 0])
        for d in range(3):
            w = w * (frac[..., d] if bits[d] else 1.0 - frac[..., d])
        # index_select rather than table[idx]: its backward (index_add) is deterministic
        # on the CPU, which makes resumed runs bit-identical, and it is faster.
        out = out + w[..., None] * table.index_select(0, idx.reshape(-1)).view(*idx.shape, table.shape[1])
    return out.permute(1, 0, 2).reshape(x.shape[0], len(scales) * table.shape[1])


class HashEncoding(nn.Module):
    """Hash-grid encoding with a tinycudann path and the torch reference.

    ``backend``: ``"torch"``, ``"tcnn"`` or ``"auto"`` (see :mod:`mpod123._optional`).
    Both paths keep one flat parameter vector in tiny-cuda-nn's layout
    (``params``), so a state dict moves between them unchanged.
    """

    def __init__(self, cfg: HashGridConfig, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.cfg = cfg
        _, _, sizes, _ = level_layout(cfg)
        self.n_entries = sum(sizes)
        self.n_output_dims = cfg.n_levels * cfg.n_features_per_level
        self.backend = resolve_backend(cfg.backend, "tcnn", device)
        self.params = nn.Parameter(
            torch.empty(self.n_entries * cfg.n_features_per_level, device=device).uniform_(-1e-4, 1e-4)
        )
        if self.backend == "tcnn":
            tcnn = probe("tcnn")
            encoding = tcnn.Encoding(
                3,
                {
                    "otype": "HashGrid",
                    "n_levels": cfg.n_levels,
                    "n_features_per_level": cfg.n_features_per_level,
                    "log2_hashmap_size": cfg.log2_hashmap_size,
                    "base_resolution": cfg.base_resolution,
                    "per_level_scale": cfg.per_level_scale,
                    "interpolation": "Linear",
                },
                dtype=torch.float32,
            )
            if encoding.n_params != self.params.numel():
                raise RuntimeError(f"tinycudann allocates {encoding.n_params} parameters, expected {self.params.numel()}")
            # tinycudann reads our parameter, so the state dict is identical on both
            # paths; kept out of the module registry so it is not saved twice.
            encoding.params = self.params
            self.__dict__["_tcnn"] = encoding

    @property
    def table(self) -> Tensor:
        """The parameters viewed as (n_entries, n_features_per_level)."""
        return self.params.view(self.n_entries, self.cfg.n_features_per_level)

    def forward(self, x: Tensor) -> Tensor:
        """Encode points (N, 3) in [0, 1]; returns (N, n_levels * n_features_per_level)."""
        if self.backend == "tcnn":
            return self._tcnn(x.contiguous()).to(x.dtype)
        return hash_grid_reference(x, self.table, self.cfg)
