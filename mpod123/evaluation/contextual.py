"""The contextual similarity CX (Mechrez, Talmi and Zelnik-Manor, ECCV 2018) and its -log.

Features X = {x_i} of a rendered view and Y = {y_j} of the reference, one per
spatial position of a feature map, are compared as sets, so the score does not
need the two images to be aligned:

1. centre both by the mean of Y and normalise each vector to unit length;
2. cosine distances d_ij = 1 - <x_i, y_j>;
3. relative distances d~_ij = d_ij / (min_k d_ik + eps): for each x_i, its
   nearest y has d~ close to 1;
4. similarities w_ij = exp((1 - d~_ij) / h), normalised over j:
   CX_ij = w_ij / sum_k w_ik;
5. CX(X, Y) = mean over j of max over i of CX_ij, in (0, 1].

Every y_j found exactly by some x_i gives CX = 1, so -log CX is 0 for an image
against itself (up to features that repeat within the image, such as a plain
background, which split their similarity) and grows as the reference's
features go missing from the view. The paper reports -log CX (lower is
better) on VGG19 relu5_4 with h = 0.5.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EPS = 1e-5
"""eps of the relative distance, as in the original formulation."""


def _flatten(features: Tensor) -> Tensor:
    """(C, H, W) or (N, C) -> (N, C) float32/64."""
    if features.ndim == 3:
        features = features.flatten(1).T
    if features.ndim != 2:
        raise ValueError(f"features must be (C, H, W) or (N, C), got {tuple(features.shape)}")
    return features if features.dtype == torch.float64 else features.float()


def contextual_similarity(x: Tensor, y: Tensor, bandwidth: float = 0.5) -> float:
    """CX(X, Y) of the features ``x`` (of the image scored) against ``y`` (of the reference)."""
    x, y = _flatten(x), _flatten(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature widths differ: {x.shape[1]} vs {y.shape[1]}")
    mu = y.mean(dim=0, keepdim=True)
    xn = torch.nn.functional.normalize(x - mu, dim=1)
    yn = torch.nn.functional.normalize(y - mu, dim=1)
    dist = (1.0 - xn @ yn.T).clamp_min(0.0)  # (N, M)
    rel = dist / (dist.min(dim=1, keepdim=True).values + EPS)
    cx = torch.softmax((1.0 - rel) / bandwidth, dim=1)  # w_ij / sum_k w_ik, computed stably
    return float(cx.max(dim=0).values.mean())


def contextual_score(x: Tensor, y: Tensor, bandwidth: float = 0.5) -> float:
    """-log CX(X, Y): the paper's CX column (0 is a perfect match; lower is better)."""
    return -math.log(max(contextual_similarity(x, y, bandwidth), 1e-30))
