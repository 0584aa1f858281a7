"""Small ReLU MLPs (the heads on top of the hash grid)."""

from __future__ import annotations

from torch import Tensor, nn


class MLP(nn.Module):
    """``n_hidden_layers`` ReLU layers of width ``hidden_dim`` and a linear output."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, n_hidden_layers: int, bias: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(n_hidden_layers):
            layers += [nn.Linear(dim, hidden_dim, bias=bias), nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
