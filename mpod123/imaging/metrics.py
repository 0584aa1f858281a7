"""Image metrics for reconstruction checks: silhouette IoU, (masked) PSNR and SSIM."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import MASK_THRESHOLD, opacity_mask


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


def _gaussian_window(size: int, sigma: float, dtype, device) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2.0
    g = torch.exp(-(x**2) / (2.0 * sigma**2))
    return g / g.sum()


def ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> float:
    """Mean SSIM (Wang et al. 2004) of images (H, W, C) or (B, H, W, C) in [0, data_range].

    Local statistics use a Gaussian window (``window`` taps, ``sigma``) over the
    positions where it fits entirely (no padding, as the original's 'valid'
    filtering), per channel; K1 = 0.01, K2 = 0.03, and the map is averaged over
    positions, channels and images.
    """
    if pred.shape != target.shape:
        raise ValueError(f"ssim: shapes differ {tuple(pred.shape)} vs {tuple(target.shape)}")
    x, y = pred.double(), target.double()
    if x.ndim == 3:
        x, y = x[None], y[None]
    b, h, w, c = x.shape
    if h < window or w < window:
        raise ValueError(f"ssim: images of {h}x{w} are smaller than the {window}x{window} window")
    x, y = x.permute(0, 3, 1, 2).reshape(b * c, 1, h, w), y.permute(0, 3, 1, 2).reshape(b * c, 1, h, w)
    g = _gaussian_window(window, sigma, x.dtype, x.device)

    def blur(t: Tensor) -> Tensor:  # separable Gaussian, valid positions only
        return F.conv2d(F.conv2d(t, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float((num / den).mean())


def mask_from_alpha(alpha: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:
    """Ground-truth silhouette from an alpha channel, with the same rule as Eq. 5."""
    return opacity_mask(alpha, threshold)


__all__ = ["mask_from_alpha", "psnr", "silhouette_iou", "ssim"]
