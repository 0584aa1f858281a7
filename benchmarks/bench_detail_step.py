"""Detail-stage step time (marching tets + rasterize + losses + backward + Adam), per preset.

Stage 1 is replaced by an untrained NeRF with a sharp density blob (the DMTet
only needs a density to start from), and multi-view supervision stands in for
the diffusion prior, so this is the stage's own cost. The stage-1 masks for
L_nvm are rendered by a real outline stage around that NeRF (``--masks nerf``,
the default: what a run pays), or are a constant (``--masks constant``: the
stage without L_nvm's stage-1 renders).

``--pool-ab``: a prior that proposes no cameras (like the diffusion priors; it scores
nothing, so the step is the stage's own cost plus L_nvm's targets), the same stage run
with per-step stage-1 mask renders (``nvm_camera_pool = 0``) and with the cached camera
pool (96, the paper default), one after the other in one process; the ratio of their median steps.
"""

from __future__ import annotations

import time

import torch

from common import machine, parser, quiet, report, step_seconds
from mpod123.config import DetailStageConfig, detail_preset, outline_preset
from mpod123.guidance import MultiViewSupervision
from mpod123.stages import DetailStage, OutlineStage, ReferenceView
from mpod123.bench.synthetic import turntable_dataset


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--presets", nargs="+", default=["draft", "fast"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (with fixed views: their masks get cached)")
    p.add_argument("--masks", choices=["nerf", "constant"], default="nerf")
    p.add_argument("--pool-ab", action="store_true", help="per-step mask renders against the cached camera pool")
    args = p.parse_args()
    quiet()
    views = turntable_dataset(8, 64)
    ref = ReferenceView(views.images[0], views.cameras[0])
    rows = []
    for preset in args.presets:
        # stage 1 of the same preset, its field replaced by the density blob
        outline_cfg = outline_preset(preset)
        outline_cfg.nerf.blob_density = 40.0
        outline = OutlineStage(outline_cfg, ref, MultiViewSupervision(views.images, views.cameras), device=args.device)
        outline.grid.update(0, outline.field.density, outline.renderer.step_size, outline.generator)
        nerf = outline.field
        if args.masks == "nerf":
            masks = outline.masks
        else:
            def masks(cams):
                return torch.ones(len(cams), cams.height, cams.width, dtype=torch.bool)
        if args.pool_ab:
            rows.append(pool_ab(preset, ref, nerf, masks, args))
            continue
        cfg = detail_preset(preset)
        cfg.preview_every = 0
        cfg.dmtet.init_threshold = 5.0
        stage = DetailStage(cfg, ref, MultiViewSupervision(views.images, views.cameras), nerf, masks, device=args.device)
        for _ in range(args.warmup):
            stage.train_step()
        times = step_seconds(stage.train_step, args.device, args.steps)
        rows.append(
            {
                "preset": preset,
                "render_resolution": cfg.resolution,
                "tet_grid": cfg.dmtet.resolution,
                "faces": stage.mesh().n_faces,
                "median_step_s": times[len(times) // 2],
                "projected_stage_s": times[len(times) // 2] * cfg.steps,
                "steps_in_preset": cfg.steps,
                "rasterizer": stage.renderer.backend,
                "stage1_masks": args.masks,
                "warmup_steps": args.warmup,
                "nvm_mask_resolution": cfg.nvm_mask_resolution,
            }
        )
    report("detail_step", {"benchmark": "detail_step", "machine": machine(args.device), "results": rows}, args.out)


class ScoresNothing:
    """A prior that proposes no cameras (the stage draws them, as for SD) and adds no loss."""

    def __call__(self, inp):
        return {}


def pool_ab(preset, ref, nerf, masks, args) -> dict:
    """Median novel-view step with per-step stage-1 renders, then with the cached pool."""
    out = {"preset": preset, "prior": "none (no cameras proposed)", "stage1_masks": args.masks}
    for name, pool in (("per_step_renders", 0), ("camera_pool", DetailStageConfig().nvm_camera_pool)):
        cfg = detail_preset(preset)
        cfg.preview_every, cfg.reference_view_prob, cfg.nvm_camera_pool = 0, 0.0, pool
        cfg.dmtet.init_threshold = 5.0
        t0 = time.perf_counter()
        stage = DetailStage(cfg, ref, ScoresNothing(), nerf, masks, device=args.device)
        out[f"{name}_setup_s"] = time.perf_counter() - t0
        for _ in range(args.warmup):
            stage.train_step()
        times = step_seconds(stage.train_step, args.device, args.steps)
        out[f"{name}_median_step_s"] = times[len(times) // 2]
        out["render_resolution"], out["nvm_mask_resolution"] = cfg.resolution, cfg.nvm_mask_resolution
        out["pool_views"] = max(out.get("pool_views", 0), pool)
    out["speedup"] = out["per_step_renders_median_step_s"] / out["camera_pool_median_step_s"]
    return out


if __name__ == "__main__":
    main()
