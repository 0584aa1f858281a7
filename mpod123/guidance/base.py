"""The guidance interface: what a stage calls on every novel-view step.

A stage renders some cameras and hands the guidance a :class:`GuidanceInput`;
the guidance answers with named, already-weighted losses that the stage adds
up and reports. Zero-1-to-3 SDS (stage 1), Stable Diffusion with DAI (stage 2)
and the multi-view supervision used by tests and benchmarks all implement
:class:`Guidance`.

A guidance that must be shown particular cameras (multi-view supervision has
targets only for its known views) also implements :class:`CameraProposer`;
otherwise the stage draws random orbit cameras.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..camera import Cameras


@dataclass
class GuidanceInput:
    rgb: Tensor
    """(B, H, W, 3) render composited over ``background``."""
    opacity: Tensor
    """(B, H, W, 1) accumulated alpha."""
    cameras: Cameras
    background: Tensor
    """(B, 3) the background colour used for each view."""
    step: int
    total_steps: int
    view_ids: Tensor | None = None
    """Indices returned by a CameraProposer for these cameras, else None."""
    masks: Tensor | None = None
    """(B, H, W, 1) stage-1 outline masks of these cameras (the detail stage sets them; MRCA reads them)."""


@runtime_checkable
class Guidance(Protocol):
    def __call__(self, inp: GuidanceInput) -> dict[str, Tensor]:
        """Named scalar losses, already weighted, to be summed by the stage."""
        ...


@runtime_checkable
class CameraProposer(Protocol):
    def propose_cameras(self, step: int, resolution: int, generator: torch.Generator) -> tuple[Cameras, Tensor]:
        """Cameras to render at ``resolution`` for this step, and their view ids."""
        ...
