"""Density regularisers of the outline stage: no haze, no floaters, no back-facing normals.

SDS alone lets a NeRF grow semi-transparent haze and floaters; here that would
matter three times over, since the stage-1 opacity thresholded at 0.5 (Eq. 5)
becomes the L_nvm targets, the MRCA masks and the DMTet surface. Every
reference adds terms like these; the paper names none, so the defaults are
Magic123's (see OutlineStageConfig):

- **opacity entropy** (Magic123 / stable-dreamfusion ``lambda_entropy``): the
  binary entropy of each pixel's opacity, lowest at 0 and 1;
- **orientation** (Ref-NeRF, Magic123 ``lambda_orient``): per ray
  sum_i w_i max(0, n_i . d)^2, which penalises normals facing away from the
  camera at visible samples (the signature of fog and floaters);
- **3D normal smoothness** (stable-dreamfusion ``lambda_3d_normal_smooth``):
  per ray sum_i w_i |n(x_i) - n(x_i + e_i)|_1 with a small random offset e_i.

The sample weights w_i are detached in the last two (as in the references), so
they shape the density's gradient field (the normals) without pulling opacity.
Differentiating a normal needs second derivatives of the density; through the
pure-torch hash grid that double backward tripled a draft step on the CPU. So
the normals come from finite differences of the density by default
(:mod:`mpod123.fields.normals`; Magic123's way), with a step of one cell of the
finest active hash-grid level (the outline stage's ``normal_step``), and the
terms run on a random subset of the step's rays, an unbiased estimate of the
per-ray mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..camera import Cameras, camera_rays
from ..fields.normals import NormalMethod, density_normals
from ..rendering import VolumeRenderer
from ..rendering.compositing import accumulate, sample_weights
from ..rendering.ray_marching import RaySamples
from ..runtime.syncs import takes_gpu_paths


def opacity_entropy(opacity: Tensor, eps: float = 1e-5) -> Tensor:
    """Mean binary entropy (in bits) of opacities in [0, 1]: 0 at 0 and 1, 1 at 0.5."""
    o = opacity.clamp(eps, 1.0 - eps)
    return -(o * torch.log2(o) + (1.0 - o) * torch.log2(1.0 - o)).mean()


def normal_regularisers(
    renderer: VolumeRenderer,
    cameras: Cameras,
    n_rays: int,
    generator: torch.Generator,
    smoothness_eps: float = 0.01,
    with_orientation: bool = True,
    with_smoothness: bool = True,
    min_weight: float = 1e-3,
    normal_method: NormalMethod = "finite_difference",
    normal_eps: float = 0.01,
) -> dict[str, Tensor]:
    """Orientation and 3D normal smoothness on ``n_rays`` rays drawn from ``cameras``.

    Samples whose weight is at most ``min_weight`` are left out. The normals come from
    ``normal_method``: finite differences of the density with step ``normal_eps`` (first
    derivatives only, one batched density call) or the analytic gradient (a double backward
    through the field). Returns the unweighted terms, each a mean over the drawn rays (empty
    when nothing is hit)."""
    field = renderer.field
    rays_o, rays_d = camera_rays(cameras)
    rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    where = generator.device if generator is not None else None  # a device generator draws on the device
    if n_rays < rays_o.shape[0]:
        pick = torch.randperm(rays_o.shape[0], generator=generator, device=where)[:n_rays].to(rays_o.device)
        rays_o, rays_d = rays_o[pick], rays_d[pick]
    prune = field.density if renderer.grid is not None else None
    samples = renderer.marcher.march(rays_o, rays_d, prune, stratified=True, generator=generator)
    if len(samples) == 0:
        return {}
    points = samples.midpoints(rays_o, rays_d).detach()
    with torch.no_grad():
        weights = sample_weights(samples, field.density(points))
    # only samples that can matter get second derivatives (the weights scale both terms, and
    # samples in front of or deep inside the surface carry next to none): a several-fold saving
    keep = weights > min_weight
    if takes_gpu_paths(points.device):  # gathered at a fixed size; padding gets weight 0
        idx, valid = renderer.marcher.compactor.nonzero(keep, ("regularisers", keep.numel()))
        samples = RaySamples(samples.ray_indices[idx], samples.t_starts[idx], samples.t_ends[idx], samples.n_rays)
        points, weights = points[idx], torch.where(valid, weights[idx], 0.0)
    else:
        if not bool(keep.any()):
            return {}
        samples = RaySamples(samples.ray_indices[keep], samples.t_starts[keep], samples.t_ends[keep], samples.n_rays)
        points, weights = points[keep], weights[keep]
    both_at = points
    if with_smoothness:  # the perturbed points' normals come from the same (batched) call
        offset = torch.randn(points.shape, generator=generator, device=where).to(points) * smoothness_eps
        both_at = torch.cat([points, points + offset])
    both = density_normals(field.density, both_at, normal_method, normal_eps, create_graph=True)
    normals = both[: points.shape[0]]
    n = rays_o.shape[0]
    out: dict[str, Tensor] = {}
    if with_orientation:
        facing = (normals * rays_d[samples.ray_indices]).sum(-1).clamp_min(0.0) ** 2
        out["orientation"] = accumulate(samples, weights, facing[:, None]).sum() / n
    if with_smoothness:
        moved = both[points.shape[0] :]
        diff = (normals - moved).abs().sum(-1)
        out["normal_smoothness"] = accumulate(samples, weights, diff[:, None]).sum() / n
    return out


__all__ = ["normal_regularisers", "opacity_entropy"]
