"""Volume compositing of packed samples (the paper's Eq. 3-4).

For samples i along a ray with density sigma_i over an interval delta_i::

    alpha_i = 1 - exp(-sigma_i delta_i)
    T_i     = exp(-sum_{j<i} sigma_j delta_j)          (transmittance, Eq. 3)
    w_i     = T_i alpha_i
    C       = sum_i w_i c_i + (1 - O) * background
    O       = sum_i w_i                                  (opacity, Eq. 4)

On the CPU the per-ray prefix sums run on a zero-padded (rays, max samples)
table rather than one global cumulative sum over all samples, whose float32
rounding grows with the sample count; on CUDA (where sizing that table is a
host sync) the global sum runs in float64 instead, and the per-ray counts come
from a scatter-add rather than ``bincount``. Samples of zero length (the
fixed-size padding of :func:`~.ray_marching._march_static`) get zero weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..runtime.syncs import takes_gpu_paths
from .ray_marching import RaySamples, transmittance_before


@dataclass
class Composited:
    rgb: Tensor
    """(R, 3) colour over the background."""
    opacity: Tensor
    """(R,) accumulated alpha, the paper's O."""
    depth: Tensor
    """(R,) expected distance along the ray, sum_i w_i t_i (not normalised by opacity)."""
    weights: Tensor
    """(M,) per-sample weights w_i."""


def sample_weights(samples: RaySamples, sigmas: Tensor, packed: bool | None = None) -> Tensor:
    """Per-sample weights w_i (M,) from densities (M,).

    Two equal ways to the per-ray prefix sums: a zero-padded (rays, max samples)
    table (the CPU's), whose width needs ``counts.max()`` on the host, or
    (``packed``, the default on CUDA, where that read is a sync every chunk) one
    float64 cumulative sum over all samples minus its value at each ray's start,
    float64 keeping the rounding of the global sum far below float32's.
    """
    m = len(samples)
    if m == 0:
        return sigmas.new_zeros(0)
    rays = samples.ray_indices
    if packed is None:
        packed = takes_gpu_paths(rays.device)
    if packed:  # counts by a scatter-add: bincount sizes its output from the data (a host sync)
        counts = torch.zeros(samples.n_rays, dtype=rays.dtype, device=rays.device).index_add_(0, rays, torch.ones_like(rays))
    else:
        counts = torch.bincount(rays, minlength=samples.n_rays)
    first = torch.cumsum(counts, 0) - counts
    sigma_delta = sigmas * (samples.t_ends - samples.t_starts)
    if packed:
        inclusive = torch.cumsum(sigma_delta.double(), 0)
        start = inclusive[first[rays]] - sigma_delta[first[rays]].double()  # sum before each ray's first sample
        trans = torch.exp(-(inclusive - sigma_delta.double() - start)).to(sigmas.dtype)
    else:
        col = torch.arange(m, device=rays.device) - first[rays]
        table = sigmas.new_zeros(samples.n_rays, int(counts.max())).index_put((rays, col), sigma_delta)
        trans = transmittance_before(table)[rays, col]
    return trans * (1.0 - torch.exp(-sigma_delta))


def accumulate(samples: RaySamples, weights: Tensor, values: Tensor) -> Tensor:
    """Sum ``weights * values`` per ray: (M, C) -> (R, C)."""
    out = values.new_zeros(samples.n_rays, values.shape[-1])
    return out.index_add(0, samples.ray_indices, weights[:, None] * values)


def composite(samples: RaySamples, sigmas: Tensor, rgbs: Tensor, background: Tensor | None = None) -> Composited:
    """Composite packed samples; ``background`` is (R, 3) or (3,), or None for black."""
    weights = sample_weights(samples, sigmas)
    opacity = accumulate(samples, weights, torch.ones_like(sigmas)[:, None])[:, 0]
    rgb = accumulate(samples, weights, rgbs)
    t_mid = 0.5 * (samples.t_starts + samples.t_ends)
    depth = accumulate(samples, weights, t_mid[:, None])[:, 0]
    if background is not None:
        rgb = rgb + (1.0 - opacity)[:, None] * background
    return Composited(rgb, opacity, depth, weights)
