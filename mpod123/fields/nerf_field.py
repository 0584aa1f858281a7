"""The stage-1 NeRF field: density and colour on a shared hash grid.

Density: ``softplus(raw + blob(x))`` where ``blob(x) = s * (1 - |x| / r)`` is
Magic3D's density blob, so training starts from a soft ball of radius ``r``
instead of empty space (which the occupancy grid would skip entirely).
Colour is view-independent (a sigmoid on a small MLP of the grid features and
the density MLP's geometry features), as in Magic123's coarse stage. Stage 2
carries the encoding and the colour head over as its texture field.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import NeRFFieldConfig
from .hash_grid import HashEncoding
from .mlp import MLP
from .normals import NormalMethod, density_normals


class NeRFField(nn.Module):
    def __init__(self, cfg: NeRFFieldConfig, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.cfg = cfg
        self.encoding = HashEncoding(cfg.hash_grid, device=device)
        enc_dim = self.encoding.n_output_dims
        self.density_mlp = MLP(enc_dim, 1 + cfg.geo_feat_dim, cfg.hidden_dim, cfg.n_hidden_layers).to(device)
        self.color_mlp = MLP(enc_dim + cfg.geo_feat_dim, 3, cfg.hidden_dim, cfg.n_hidden_layers).to(device)

    @property
    def bound(self) -> float:
        return self.cfg.bound

    def _normalize(self, x: Tensor) -> Tensor:
        return ((x / self.cfg.bound) * 0.5 + 0.5).clamp(0.0, 1.0)

    def blob(self, x: Tensor) -> Tensor:
        """Magic3D density bias (N,): positive inside radius ``blob_radius``, negative outside."""
        return self.cfg.blob_density * (1.0 - x.norm(dim=-1) / self.cfg.blob_radius)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Density (N,) and RGB (N, 3) in [0, 1] at world points ``x`` (N, 3)."""
        enc = self.encoding(self._normalize(x)).to(x.dtype)
        h = self.density_mlp(enc)
        sigma = F.softplus(h[..., 0] + self.blob(x))
        rgb = torch.sigmoid(self.color_mlp(torch.cat([enc, h[..., 1:]], dim=-1)))
        return sigma, rgb

    def color(self, x: Tensor) -> Tensor:
        """RGB (N, 3) only: the texture field the detail stage carries over from stage 1."""
        enc = self.encoding(self._normalize(x)).to(x.dtype)
        h = self.density_mlp(enc)
        return torch.sigmoid(self.color_mlp(torch.cat([enc, h[..., 1:]], dim=-1)))

    def density(self, x: Tensor) -> Tensor:
        """Density (N,) only: what the occupancy grid and the marcher's pruning need."""
        h = self.density_mlp(self.encoding(self._normalize(x)).to(x.dtype))
        return F.softplus(h[..., 0] + self.blob(x))

    def normals(
        self, x: Tensor, create_graph: bool = False, method: NormalMethod = "analytic", eps: float = 0.01
    ) -> Tensor:
        """Unit normals (N, 3): the negative normalised density gradient, by autograd or by
        finite differences of the density (see :mod:`.normals`; no second derivatives)."""
        return density_normals(self.density, x, method, eps, create_graph)
