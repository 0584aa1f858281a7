"""Background colours composited behind renders."""

from __future__ import annotations

import torch
from torch import Tensor


def background_color(kind: str, batch: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """(batch, 3) colours: ``white``, ``black`` or ``random`` (uniform per view)."""
    if kind == "white":
        return torch.ones(batch, 3, device=device)
    if kind == "black":
        return torch.zeros(batch, 3, device=device)
    if kind == "random":
        where = generator.device if generator is not None else None  # a device generator draws on the device
        return torch.rand(batch, 3, generator=generator, device=where).to(device)
    raise ValueError(f"unknown background {kind!r}: choose white, black or random")
