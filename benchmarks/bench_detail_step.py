"""Detail-stage step time (marching tets + rasterize + losses + backward + Adam), per preset.

Stage 1 is replaced by an untrained NeRF with a sharp density blob (the DMTet
only needs a density to start from), and multi-view supervision stands in for
the diffusion prior, so this is the stage's own cost. The stage-1 masks for
L_nvm are rendered by a real outline stage around that NeRF (``--masks nerf``,
the default: what a run pays), or are a constant (``--masks constant``: the
stage without L_nvm's stage-1 renders).
"""

from __future__ import annotations

import torch

from common import machine, parser, quiet, report, step_seconds
from mpod123.config import detail_preset, outline_preset
from mpod123.guidance import MultiViewSupervision
from mpod123.stages import DetailStage, OutlineStage, ReferenceView
from mpod123.bench.synthetic import turntable_dataset


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--presets", nargs="+", default=["draft", "fast"])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (with fixed views: their masks get cached)")
    p.add_argument("--masks", choices=["nerf", "constant"], default="nerf")
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


if __name__ == "__main__":
    main()
