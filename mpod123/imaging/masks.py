"""Opacity masks: the outline that stage 1 hands to stage 2 (the paper's Eq. 5)."""

from __future__ import annotations

from torch import Tensor

MASK_THRESHOLD = 0.5


def opacity_mask(opacity: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:
    """``opacity >= threshold`` as a bool tensor of the same shape (Eq. 5: M = 1[O >= 0.5])."""
    return opacity >= threshold
