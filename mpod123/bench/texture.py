"""``mpod123 bench texture``: texture a dataset's true mesh from its training views, score held-out views.

A weight-free measure of the texturing machinery: the mesh is the object's own
(``bench make-dataset`` writes it beside the views), the prior is multi-view
supervision on the training views (no diffusion weights; the texturing stage
is the one ``mpod123 texture`` runs), and the score is the masked PSNR of the
*exported GLB* (normalisation restored, UVs unwrapped, texture baked, read
back by the glTF reader and rendered with its texture) on views held out from
training. The PSNR of the texture field before the bake is reported beside
it, so a loss in the bake or the UVs shows as the gap between the two; the
surface PSNR leaves out the one-pixel band along the silhouettes, where the
given mesh (the object marched at 96³) and the analytic object disagree, so it
measures the texture alone.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import DetailStageConfig, ExportConfig, NeRFFieldConfig, to_dict
from .dataset import DatasetError, read_dataset_mesh, read_nerf_synthetic
from ..geometry import Mesh
from ..guidance import MultiViewSupervision
from ..imaging.images import grid_image
from ..imaging.metrics import psnr, silhouette_iou
from ..runtime.progress import ProgressCallback
from ..stages import ReferenceView
from ..stages.texturing import TexturingStage
from ..texturing.normalisation import Normalisation
from ..texturing.texturer import MeshInput, textured_export
from ..texturing.uv_usability import check_uvs


@dataclass
class TextureBenchReport:
    metrics: dict
    contact_sheet: np.ndarray
    """Held-out ground truth (top), the texture field (middle), the baked GLB (bottom), on white."""


def bench_config(steps: int, resolution: int, seed: int = 0, lr: float | None = None) -> DetailStageConfig:
    """The texturing stage's settings for the benchmark: every step a multi-view step (no reference
    schedule is needed with all views known); the texture field's lr is ``mpod123 texture``'s own
    (``fresh_texture_lr``) unless ``lr`` is given."""
    cfg = DetailStageConfig(steps=steps, resolution=resolution, reference_view_prob=0.0, preview_every=0,
                            checkpoint_every=0, seed=seed, nvm_mask_resolution=resolution)
    if lr is not None:
        cfg.fresh_texture_lr = lr
    return cfg


def bench_field_config(levels: int = 16, log2_table: int = 17) -> NeRFFieldConfig:
    """The texture field: the stage-1 field's 16 levels with a 2^17 table instead of 2^19. On the CPU a
    step's cost is mostly the table's (its dense gradient and Adam over every entry), so this is ~4x
    cheaper; 10 levels and 2^16 are cheaper still, for smoke runs (docs/benchmarks.md compares them)."""
    cfg = NeRFFieldConfig()
    cfg.hash_grid.n_levels = levels
    cfg.hash_grid.log2_hashmap_size = log2_table
    return cfg


def bench_texture(
    dataset_dir: str | Path,
    holdout: int = 4,
    steps: int = 600,
    resolution: int | None = None,
    texture_size: int = 1024,
    eval_resolution: int | None = None,
    device: str = "cpu",
    seed: int = 0,
    callback: ProgressCallback | None = None,
    out_glb: str | Path | None = None,
    field_cfg: NeRFFieldConfig | None = None,
    lr: float | None = None,
) -> TextureBenchReport:
    from ..evaluation.textured_mesh import load_mesh_file, render_textured
    from .reconstruct import _HeldOut

    dataset = read_nerf_synthetic(dataset_dir)
    true_mesh = read_dataset_mesh(dataset_dir)
    if true_mesh is None:
        raise DatasetError(f"{dataset_dir} has no mesh.glb or mesh.obj: make it with `mpod123 bench make-dataset`")
    train, held = dataset.split_holdout(holdout)
    norm = Normalisation.into_unit_sphere(true_mesh.vertices)
    cams = norm.apply_cameras(train.cameras)
    resolution = resolution or train.cameras.height
    guidance = MultiViewSupervision(train.images, cams)
    reference = ReferenceView(train.images[0], cams[0])
    cfg = bench_config(steps, resolution, seed, lr)
    mesh = Mesh(norm.apply(true_mesh.vertices.double()).float(), true_mesh.faces)
    stage = TexturingStage(cfg, reference, guidance, mesh, field_cfg or bench_field_config(), device=device,
                           callback=callback)
    t0 = time.perf_counter()
    stage.run()
    seconds = time.perf_counter() - t0

    height = eval_resolution or held.cameras.height
    gt = _HeldOut.of(held, height)
    field_out = stage.render(norm.apply_cameras(gt.cameras))
    field_rgb = field_out.rgb.clamp(0, 1).cpu()
    tmp_dir = None
    if out_glb is None:
        import tempfile

        tmp_dir = tempfile.TemporaryDirectory()
        out_glb = Path(tmp_dir.name) / "textured.glb"
    out_glb = Path(out_glb)
    source = MeshInput(true_mesh.vertices, true_mesh.faces, None, 1)
    t1 = time.perf_counter()
    export = textured_export(stage, source, norm, check_uvs(source.vertices, source.faces, None), out_glb,
                             ExportConfig(texture_size=texture_size, obj=False))
    export_s = time.perf_counter() - t1
    baked = render_textured(load_mesh_file(out_glb), gt.cameras)
    if tmp_dir is not None:
        tmp_dir.cleanup()
    interior = surface_interior(gt.mask, baked.covered)
    per_view = []
    for i, name in enumerate(gt.names):
        per_view.append({
            "name": name,
            "masked_psnr": psnr(baked.rgb[i], gt.rgb[i], gt.mask[i]),
            "surface_psnr": psnr(baked.rgb[i], gt.rgb[i], interior[i]),
            "field_psnr": psnr(field_rgb[i], gt.rgb[i], gt.mask[i]),
            "silhouette_iou": silhouette_iou(baked.opacity[i] >= 0.5, gt.mask[i]),
        })
    metrics = {
        "masked_psnr": float(np.mean([v["masked_psnr"] for v in per_view])),
        "surface_psnr": float(np.mean([v["surface_psnr"] for v in per_view])),
        "field_psnr": float(np.mean([v["field_psnr"] for v in per_view])),
        "silhouette_iou": float(np.mean([v["silhouette_iou"] for v in per_view])),
        "per_view": per_view,
        "steps": stage.step,
        "seconds": round(seconds, 3),
        "export_seconds": round(export_s, 3),
        "train_views": len(train),
        "held_out_views": len(held),
        "render_resolution": resolution,
        "eval_resolution": height,
        "texture_size": texture_size,
        "uv_backend": export["uv_backend"],
        "faces": export["faces"],
        "device": str(device),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "config": to_dict(cfg),
    }
    sheet = grid_image([list(gt.rgb.numpy()), list(field_rgb.numpy()), list(baked.rgb.numpy())])
    return TextureBenchReport(metrics, sheet)


def surface_interior(true_mask: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """Pixels (B, H, W) inside both the true silhouette and the mesh's, one pixel away from either edge:
    where a pixel's colour is the texture's alone. The masked PSNR also counts the silhouette band, where
    the given mesh (marching tets of the object) and the analytic object differ by a pixel or so."""
    both = (true_mask.bool() & covered.bool().cpu()).float()[:, None]
    return (-torch.nn.functional.max_pool2d(-both, 3, stride=1, padding=1))[:, 0] > 0.5


def write_bench_report(report: TextureBenchReport, out_dir: str | Path) -> Path:
    from PIL import Image

    from ..imaging.images import to_uint8

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report.metrics, indent=2))
    Image.fromarray(to_uint8(report.contact_sheet)).save(out / "contact_sheet.png")
    return out / "metrics.json"


__all__ = ["TextureBenchReport", "bench_config", "bench_field_config", "bench_texture", "write_bench_report"]
