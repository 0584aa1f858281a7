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

import contextlib
import functools
import math

import numpy as np
import torch
from torch import Tensor, nn

from ..config import HashGridConfig
from ..runtime.accelerators import probe, resolve_backend
from ..runtime.selftest import register as register_self_test

PRIMES = (1, 2654435761, 805459861)
_U32 = 0xFFFFFFFF


def level_layout(cfg: HashGridConfig) -> tuple[list[float], list[int], list[int], list[int]]:
    """Per level: (scale, resolution, table size, table offset), as tiny-cuda-nn computes them."""
    return _layout(cfg.n_levels, cfg.log2_hashmap_size, cfg.base_resolution, cfg.per_level_scale)


@functools.lru_cache(maxsize=32)
def _layout(n_levels: int, log2_hashmap_size: int, base_resolution: int, per_level_scale: float):
    # cached: every forward pass asks for it
    log2_scale = np.float32(math.log2(per_level_scale))
    scales, resolutions, sizes, offsets = [], [], [], []
    offset = 0
    for level in range(n_levels):
        scale = float(np.float32(np.exp2(np.float32(level) * log2_scale) * np.float32(base_resolution) - 1.0))
        res = int(math.ceil(scale)) + 1
        size = min(-(-(res**3) // 8) * 8, 1 << log2_hashmap_size)
        scales.append(scale)
        resolutions.append(res)
        sizes.append(size)
        offsets.append(offset)
        offset += size
    return scales, resolutions, sizes, offsets


def level_cell_size(cfg: HashGridConfig, level: int, bound: float = 1.0) -> float:
    """World size of one cell of ``level`` (0-based) for a field in [-bound, bound]^3: the cube's
    side over the level's scale (4095 cells at the 16th level of the default layout)."""
    scales = level_layout(cfg)[0]
    return 2.0 * bound / scales[max(0, min(level, len(scales) - 1))]


def hash_grid_reference(x: Tensor, table: Tensor, cfg: HashGridConfig) -> Tensor:
    """The encoding of points ``x`` (N, 3) in [0, 1] with a table (n_entries, F).

    Differentiable in both the table and ``x`` (trilinear weights), in any dtype.
    All levels and all eight cell corners go through one ``index_select``: its
    backward is a single ``index_add`` into the table (rather than one
    table-sized gradient per corner). On two or more CPU threads that sum's order
    varies unless torch's deterministic algorithms are on, which every stage turns
    on on the CPU (``OptimisationStage.deterministic``): then resumed runs are
    bit-identical. The per-axis terms of the index and the weight are formed once
    for the two corner offsets and combined per corner, since both the dense
    index (a sum) and the spatial hash (an XOR) separate by axis.
    """
    scales, resolutions, sizes, offsets = level_layout(cfg)
    dev = x.device
    n_levels, n_feat = len(scales), table.shape[1]
    scale = torch.tensor(scales, dtype=x.dtype, device=dev)[:, None, None]
    res = torch.tensor(resolutions, dtype=torch.int64, device=dev)[:, None]
    size = torch.tensor(sizes, dtype=torch.int64, device=dev)[:, None]
    offset = torch.tensor(offsets, dtype=torch.int64, device=dev)[:, None]
    use_hash = res**3 > size  # (L, 1)

    pos = x[None] * scale + 0.5  # (L, N, 3)
    cell = torch.floor(pos.detach())
    frac = pos - cell
    cell = cell.to(torch.int64)
    # term[d][b]: axis d's contribution for corner offset b (0 or 1), per level and point
    terms, weights = [], []
    dense_stride = [torch.ones_like(res), res, res * res]
    for d in range(3):
        c0 = cell[..., d]
        per_b = []
        for b in (0, 1):
            c = c0 + b
            hashed = (c * PRIMES[d]) & _U32
            per_b.append(torch.where(use_hash, hashed, c * dense_stride[d]))
        terms.append(per_b)
        weights.append((1.0 - frac[..., d], frac[..., d]))
    n = x.shape[0]
    idx_all = torch.empty(8, n_levels, n, dtype=torch.int64, device=dev)
    w_list = []
    for corner in range(8):
        b = [(corner >> d) & 1 for d in range(3)]
        h = terms[0][b[0]] ^ terms[1][b[1]] ^ terms[2][b[2]]
        s = terms[0][b[0]] + terms[1][b[1]] + terms[2][b[2]]
        torch.remainder(torch.where(use_hash, h, s & _U32), size, out=idx_all[corner])
        w_list.append(weights[0][b[0]] * weights[1][b[1]] * weights[2][b[2]])
    idx_all += offset
    w_all = torch.stack(w_list)  # (8, L, N)
    feats = table.index_select(0, idx_all.reshape(-1)).view(8, n_levels, n, n_feat)
    out = (w_all[..., None] * feats).sum(dim=0)  # (L, N, F)
    return out.permute(1, 0, 2).reshape(n, n_levels * n_feat)


def tcnn_encoding(tcnn, cfg: HashGridConfig, params: nn.Parameter, device: torch.device | str) -> nn.Module:
    """A ``tinycudann.Encoding`` with our layout, built on ``device`` and reading ``params``.

    tiny-cuda-nn's torch ``Encoding`` (bindings 1.7) builds its native module on the
    *current* CUDA device, so it is built inside ``torch.cuda.device(device)``. Its
    parameter count is ``native_tcnn_module.n_params()`` (the Python module has no
    ``n_params``; ``params.numel()`` is the same number); ours must match it, or the
    two layouts differ. Its own ``params`` Parameter is then replaced by ours.
    """
    device = torch.device(device)
    config = {
        "otype": "HashGrid",
        "n_levels": cfg.n_levels,
        "n_features_per_level": cfg.n_features_per_level,
        "log2_hashmap_size": cfg.log2_hashmap_size,
        "base_resolution": cfg.base_resolution,
        "per_level_scale": cfg.per_level_scale,
        "interpolation": "Linear",
    }
    on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with on_device:
        encoding = tcnn.Encoding(3, config, dtype=torch.float32)
    native = getattr(encoding, "native_tcnn_module", None)
    n_params = int(native.n_params()) if native is not None else encoding.params.numel()
    if n_params != params.numel():
        raise RuntimeError(
            f"tinycudann allocates {n_params} hash-grid parameters, this layout expects {params.numel()}; "
            "use backend='torch' and report the tinycudann version"
        )
    encoding.params = params
    return encoding


class HashEncoding(nn.Module):
    """Hash-grid encoding with a tinycudann path and the torch reference.

    ``backend``: ``"torch"``, ``"tcnn"`` or ``"auto"`` (see :mod:`mpod123.runtime.accelerators`).
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
        self.active_levels = cfg.n_levels
        """Levels that feed the output, coarsest first (coarse to fine: threestudio's
        ProgressiveBandHashGrid). The finer ones read as zeros and get no gradient. Every level
        unless a stage narrows it; not saved (the stage sets it from its step)."""
        self.params = nn.Parameter(
            torch.empty(self.n_entries * cfg.n_features_per_level, device=device).uniform_(-1e-4, 1e-4)
        )
        if self.backend == "tcnn":
            # tinycudann reads our parameter, so the state dict is identical on both
            # paths; kept out of the module registry so it is not saved twice.
            self.__dict__["_tcnn"] = tcnn_encoding(probe("tcnn"), cfg, self.params, device)

    @property
    def tcnn_module(self) -> nn.Module | None:
        """tiny-cuda-nn's encoding when that path runs (it reads :attr:`params`, never a copy); else None."""
        return self.__dict__.get("_tcnn")

    @property
    def table(self) -> Tensor:
        """The parameters viewed as (n_entries, n_features_per_level)."""
        return self.params.view(self.n_entries, self.cfg.n_features_per_level)

    def forward(self, x: Tensor) -> Tensor:
        """Encode points (N, 3) in [0, 1]; returns (N, n_levels * n_features_per_level), zero
        past :attr:`active_levels`."""
        if self.backend == "tcnn":
            out = self._tcnn(x.contiguous()).to(x.dtype)
        else:
            out = hash_grid_reference(x, self.table, self.cfg)
        keep = self.active_levels * self.cfg.n_features_per_level
        if keep >= out.shape[-1]:
            return out
        return torch.cat([out[:, :keep], out.new_zeros(out.shape[0], out.shape[1] - keep)], dim=-1)

    def finest_active_cell(self, bound: float = 1.0) -> float:
        """World size of a cell of the finest active level (see :func:`level_cell_size`)."""
        return level_cell_size(self.cfg, self.active_levels - 1, bound)


def tcnn_self_test(device: torch.device) -> None:
    """tinycudann's parity self-test (registered below): the same table on both paths encodes alike."""
    cfg = dict(n_levels=4, log2_hashmap_size=12, base_resolution=8, per_level_scale=1.6)
    ref = HashEncoding(HashGridConfig(**cfg, backend="torch"), device=device)
    acc = HashEncoding(HashGridConfig(**cfg, backend="tcnn"), device=device)
    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        ref.params.copy_(torch.randn(ref.params.shape, generator=g) * 0.1)
        acc.params.copy_(ref.params)
    x = torch.rand(512, 3, generator=g).to(device)
    torch.testing.assert_close(acc(x), ref(x), atol=1e-5, rtol=1e-4)


register_self_test("tcnn", tcnn_self_test)
