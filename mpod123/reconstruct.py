"""Reconstruction benchmark: fit a stage from known views and score it on held-out ones.

``mpod123 bench reconstruct`` runs this. The multi-view supervision guidance
stands in for the diffusion prior, so the score measures the fields, the
renderer and the stage loop, with no model weights. The first training view is
the stage's reference view.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import OutlineStageConfig, to_dict
from .dataset import MultiViewDataset
from .guidance import MultiViewSupervision, over, resize_rgba
from .images import grid_image, to_uint8
from .metrics import mask_from_alpha, psnr, silhouette_iou
from .progress import ProgressCallback
from .stages import OutlineStage, ReferenceView


@dataclass
class ReconstructionReport:
    metrics: dict
    contact_sheet: np.ndarray
    """Held-out ground truth (top row) over the renders (bottom row), on white."""
    stage: OutlineStage


def reconstruct_outline(
    dataset: MultiViewDataset,
    holdout: int,
    cfg: OutlineStageConfig,
    device: str = "cpu",
    callback: ProgressCallback | None = None,
    eval_resolution: int | None = None,
) -> ReconstructionReport:
    """Fit stage 1 on all views but ``holdout``, then render and score the held-out ones."""
    train, held = dataset.split_holdout(holdout)
    reference = ReferenceView(train.images[0], train.cameras[0])
    guidance = MultiViewSupervision(train.images, train.cameras)
    stage = OutlineStage(cfg, reference, guidance, device=device, callback=callback)
    t0 = time.perf_counter()
    stage.run()
    fit_s = time.perf_counter() - t0

    height = eval_resolution or held.cameras.height
    width = max(1, round(height * held.cameras.width / held.cameras.height))
    target = resize_rgba(held.images, height, width)
    per_view, renders = [], []
    for i in range(len(held)):
        out = stage.render(held.cameras[i].resized(width, height))
        gt_mask = mask_from_alpha(target[i, ..., 3])
        gt_rgb = over(target[i : i + 1], torch.ones(1, 3))[0]
        rgb = out.rgb[0].cpu()
        per_view.append(
            {
                "name": held.names[i],
                "silhouette_iou": silhouette_iou(out.mask[0].cpu(), gt_mask),
                "masked_psnr": psnr(rgb, gt_rgb, gt_mask),
            }
        )
        renders.append((gt_rgb.numpy(), rgb.numpy()))
    metrics = {
        "stage": "outline",
        "guidance": "multiview_supervision",
        "steps": stage.step,
        "seconds": round(fit_s, 3),
        "seconds_per_step": round(fit_s / max(stage.step, 1), 5),
        "train_views": len(train),
        "held_out_views": len(held),
        "render_resolution": cfg.render.resolution,
        "eval_resolution": [height, width],
        "silhouette_iou": float(np.mean([v["silhouette_iou"] for v in per_view])),
        "masked_psnr": float(np.mean([v["masked_psnr"] for v in per_view])),
        "per_view": per_view,
        "backends": {"hash_grid": stage.field.encoding.backend, "ray_marching": stage.renderer.marcher.backend},
        "device": str(device),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "config": to_dict(cfg),
    }
    sheet = grid_image([[gt for gt, _ in renders], [r for _, r in renders]])
    return ReconstructionReport(metrics, sheet, stage)


def write_report(report: ReconstructionReport, out_dir: str | Path) -> tuple[Path, Path]:
    """``metrics.json`` and ``contact_sheet.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(report.metrics, indent=2))
    sheet_path = out / "contact_sheet.png"
    Image.fromarray(to_uint8(report.contact_sheet)).save(sheet_path)
    return metrics_path, sheet_path
