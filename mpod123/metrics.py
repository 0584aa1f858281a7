"""Image metrics for reconstruction checks: silhouette IoU and (masked) PSNR."""

from __future__ import annotations

import math

from torch import Tensor

from .rendering.masks import MASK_THRESHOLD, opacity_mask


def silhouette_iou(pred: Tensor, target: Tensor) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty."""
    pred, target = pred.bool(), target.bool()
    union = (pred | target).sum().item()
    if union == 0:
        return 1.0
    return (pred & target).sum().item() / union


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """PSNR in dB of images in [0, 1] (..., 3), over the pixels where ``mask`` (...) is true."""
    err = (pred.float() - target.float()).pow(2).mean(dim=-1)
    if mask is not None:
        mask = mask.bool()
        if not mask.any():
            return float("nan")
        err = err[mask]
    mse = err.mean().item()
    return float("inf") if mse == 0.0 else -10.0 * math.log10(mse)


def mask_from_alpha(alpha: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:
    """Ground-truth silhouette from an alpha channel, with the same rule as Eq. 5."""
    return opacity_mask(alpha, threshold)


__all__ = ["mask_from_alpha", "psnr", "silhouette_iou"]
