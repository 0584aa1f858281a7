"""Reconstruction benchmark: fit the stages from known views and score them on held-out ones.

``mpod123 bench reconstruct`` runs this. The multi-view supervision guidance
stands in for the diffusion prior, so the scores measure the fields, the
renderers, the stage loops and the export, with no model weights. The first
training view is the stages' reference view. With ``stage="detail"`` stage 1
runs first, then stage 2 from it, then the export; both stages are scored.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..camera import Cameras
from ..config import DetailStageConfig, ExportConfig, OutlineStageConfig, to_dict
from .dataset import MultiViewDataset
from ..guidance import MultiViewSupervision, over, resize_rgba
from ..imaging.images import grid_image, to_uint8
from ..imaging.metrics import mask_from_alpha, psnr, silhouette_iou
from ..runtime.progress import ProgressCallback
from ..stages import DetailStage, OutlineStage, ReferenceView
from ..stages.base import scaled_size


@dataclass
class ReconstructionReport:
    metrics: dict
    contact_sheet: np.ndarray
    """Held-out ground truth (top row) over the renders (one row per stage), on white."""
    stages: dict = field(default_factory=dict)


@dataclass
class _HeldOut:
    """Held-out views prepared once at the evaluation size: cameras, names, ground truth on white."""

    cameras: Cameras
    names: list[str]
    rgb: torch.Tensor
    mask: torch.Tensor

    @staticmethod
    def of(held: MultiViewDataset, height: int) -> _HeldOut:
        width, height = scaled_size(held.cameras, height)
        target = resize_rgba(held.images, height, width)
        rgb = over(target, torch.ones(len(held), 3))
        return _HeldOut(held.cameras.resized(width, height), held.names, rgb, mask_from_alpha(target[..., 3]))


def _score(render_fn, gt: _HeldOut) -> tuple[dict, list[np.ndarray]]:
    per_view, renders = [], []
    for i in range(len(gt.names)):
        out = render_fn(gt.cameras[i])
        rgb = out.rgb[0].detach().clamp(0, 1).cpu()
        per_view.append(
            {
                "name": gt.names[i],
                "silhouette_iou": silhouette_iou(out.mask[0].cpu(), gt.mask[i]),
                "masked_psnr": psnr(rgb, gt.rgb[i], gt.mask[i]),
            }
        )
        renders.append(rgb.numpy())
    summary = {
        "silhouette_iou": float(np.mean([v["silhouette_iou"] for v in per_view])),
        "masked_psnr": float(np.mean([v["masked_psnr"] for v in per_view])),
        "per_view": per_view,
    }
    return summary, renders


def reconstruct(
    dataset: MultiViewDataset,
    holdout: int,
    outline_cfg: OutlineStageConfig,
    detail_cfg: DetailStageConfig | None = None,
    export_cfg: ExportConfig | None = None,
    out_dir: str | Path | None = None,
    device: str = "cpu",
    callback: ProgressCallback | None = None,
    eval_resolution: int | None = None,
    reference_mesh=None,
) -> ReconstructionReport:
    """Fit stage 1 (and stage 2 when ``detail_cfg`` is given) on all views but ``holdout``.

    With stage 2 the mesh is exported to ``out_dir/mesh.glb``; with a
    ``reference_mesh`` (in our world) the Chamfer distance to it is reported.
    """
    train, held = dataset.split_holdout(holdout)
    reference = ReferenceView(train.images[0], train.cameras[0])
    guidance = MultiViewSupervision(train.images, train.cameras)
    height = eval_resolution or held.cameras.height
    gt = _HeldOut.of(held, height)
    metrics: dict = {
        "guidance": "multiview_supervision",
        "train_views": len(train),
        "held_out_views": len(held),
        "eval_resolution": height,
        "device": str(device),
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    outline = OutlineStage(outline_cfg, reference, guidance, device=device, callback=callback)
    t0 = time.perf_counter()
    outline.run()
    fit_s = time.perf_counter() - t0
    summary, renders = _score(outline.render, gt)
    metrics["outline"] = {
        **summary,
        "steps": outline.step,
        "seconds": round(fit_s, 3),
        "seconds_per_step": round(fit_s / max(outline.step, 1), 5),
        "render_resolution": outline_cfg.render.resolution,
        "backends": {"hash_grid": outline.field.encoding.backend, "ray_marching": outline.renderer.marcher.backend},
        "config": to_dict(outline_cfg),
    }
    rows = [list(gt.rgb.numpy()), renders]
    stages: dict = {"outline": outline}
    if detail_cfg is not None:
        detail = DetailStage(detail_cfg, reference, guidance, outline.field, outline.opacity, device=device, callback=callback)
        t1 = time.perf_counter()
        detail.run()
        fit2_s = time.perf_counter() - t1
        summary2, renders2 = _score(detail.render, gt)
        # the shape as exported: without the floaters an SDF grid leaves (ExportConfig.min_part_fraction)
        ex = export_cfg or ExportConfig()
        whole = detail.mesh().detach()
        mesh = whole.without_small_parts(ex.min_part_fraction, ex.part_relative_to)
        metrics["detail"] = {
            **summary2,
            "steps": detail.step,
            "seconds": round(fit2_s, 3),
            "seconds_per_step": round(fit2_s / max(detail.step, 1), 5),
            "render_resolution": detail_cfg.resolution,
            "init_threshold": detail.init_threshold,
            "faces": mesh.n_faces,
            "parts": int(whole.face_components().unique().numel()),
            "parts_kept": int(mesh.face_components().unique().numel()),
            "closed": mesh.is_closed(),
            "backends": {"rasterizer": detail.renderer.backend},
            "config": to_dict(detail_cfg),
        }
        rows.append(renders2)
        stages["detail"] = detail
        if out_dir is not None:
            from ..export import export_mesh

            result = export_mesh(mesh, detail.texture.color, Path(out_dir) / "mesh.glb", export_cfg)
            metrics["export"] = {
                "glb": result.glb.name,
                "obj": result.obj.name if result.obj else None,
                "faces": result.n_faces,
                "vertices": result.n_vertices,
                "uv_backend": result.uv_backend,
                "texture_size": result.texture_size,
                "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
            }
        if reference_mesh is not None:
            from ..geometry import chamfer_distance

            def chamfer(m) -> float:
                g = torch.Generator().manual_seed(0)
                ours = m.detach().to("cpu").sample_surface(20000, g)
                return float(chamfer_distance(ours, reference_mesh.to("cpu").sample_surface(20000, g)))

            metrics["detail"]["chamfer"] = chamfer(mesh)
            # the same surface under each part rule, so the rules compare on one run
            metrics["detail"]["chamfer_by_part_rule"] = {
                "every part": chamfer(whole),
                "under 5 % of the total area dropped": chamfer(whole.without_small_parts(0.05, "total")),
                "under 1 % of the largest part dropped": chamfer(whole.without_small_parts(0.01, "largest")),
                "under 5 % of the largest part dropped": chamfer(whole.without_small_parts(0.05, "largest")),
            }
    metrics["stage"] = "detail" if detail_cfg is not None else "outline"
    final = metrics[metrics["stage"]]
    metrics["silhouette_iou"], metrics["masked_psnr"] = final["silhouette_iou"], final["masked_psnr"]
    return ReconstructionReport(metrics, grid_image(rows), stages)


def reconstruct_outline(
    dataset: MultiViewDataset, holdout: int, cfg: OutlineStageConfig, device: str = "cpu",
    callback: ProgressCallback | None = None, eval_resolution: int | None = None,
) -> ReconstructionReport:
    """Stage 1 only (see :func:`reconstruct`)."""
    return reconstruct(dataset, holdout, cfg, device=device, callback=callback, eval_resolution=eval_resolution)


def write_report(report: ReconstructionReport, out_dir: str | Path) -> tuple[Path, Path]:
    """``metrics.json`` and ``contact_sheet.png`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(report.metrics, indent=2))
    sheet_path = out / "contact_sheet.png"
    Image.fromarray(to_uint8(report.contact_sheet)).save(sheet_path)
    return metrics_path, sheet_path


__all__ = ["ReconstructionReport", "reconstruct", "reconstruct_outline", "write_report"]
