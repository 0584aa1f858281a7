"""Multi-view supervision: photometric and mask losses against known views.

It stands in for the diffusion priors in tests and benchmarks: fitting a known
object from its renders exercises the fields, the renderer, the stage loops and
the export, and gives numbers that can be checked (IoU, PSNR) without weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..camera import Cameras
from ..config import MultiViewGuidanceConfig
from .base import GuidanceInput


def resize_rgba(images: Tensor, height: int, width: int) -> Tensor:
    """Area-resize RGBA images (N, H, W, 4) to (N, height, width, 4), colour premultiplied by alpha."""
    if images.shape[1] == height and images.shape[2] == width:
        return images
    premult = torch.cat([images[..., :3] * images[..., 3:], images[..., 3:]], dim=-1)
    out = F.interpolate(premult.permute(0, 3, 1, 2), size=(height, width), mode="area").permute(0, 2, 3, 1)
    alpha = out[..., 3:]
    rgb = torch.where(alpha > 1e-6, out[..., :3] / alpha.clamp_min(1e-6), torch.zeros_like(out[..., :3]))
    return torch.cat([rgb.clamp(0, 1), alpha], dim=-1)


def over(rgba: Tensor, background: Tensor) -> Tensor:
    """Composite RGBA (B, H, W, 4) over per-view colours (B, 3)."""
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + (1.0 - alpha) * background[:, None, None, :]


class MultiViewSupervision:
    """Guidance from known RGBA views and their cameras (in our world)."""

    def __init__(self, images: Tensor, cameras: Cameras, cfg: MultiViewGuidanceConfig | None = None) -> None:
        if images.shape[0] != len(cameras):
            raise ValueError("one camera per image is required")
        self.images = images
        self.cameras = cameras
        self.cfg = cfg or MultiViewGuidanceConfig()
        self._resized: dict[tuple[int, int], Tensor] = {}

    def targets(self, view_ids: Tensor, height: int, width: int) -> Tensor:
        """Target RGBA views (B, height, width, 4), resized once per size and cached."""
        key = (height, width)
        if key not in self._resized:
            self._resized[key] = resize_rgba(self.images, height, width)
        return self._resized[key][view_ids.cpu()]

    def propose_cameras(self, step: int, resolution: int, generator: torch.Generator) -> tuple[Cameras, Tensor]:
        ids = torch.randint(len(self.cameras), (self.cfg.batch_size,), generator=generator)
        height = resolution
        width = max(1, round(resolution * self.cameras.width / self.cameras.height))
        return self.cameras[ids].resized(width, height), ids

    def __call__(self, inp: GuidanceInput) -> dict[str, Tensor]:
        if inp.view_ids is None:
            raise ValueError("multi-view supervision needs the view ids of the cameras it proposed")
        target = self.targets(inp.view_ids, inp.rgb.shape[1], inp.rgb.shape[2]).to(inp.rgb.device)
        rgb_loss = F.mse_loss(inp.rgb, over(target, inp.background))
        mask_loss = F.mse_loss(inp.opacity, target[..., 3:])
        return {"mv_rgb": self.cfg.rgb_weight * rgb_loss, "mv_mask": self.cfg.mask_weight * mask_loss}
