"""Detail-stage step time (marching tets + rasterize + losses + backward + Adam), per preset.

Stage 1 is replaced by an untrained NeRF with a sharp density blob (the DMTet
only needs a density to start from), and multi-view supervision stands in for
the diffusion prior, so this is the stage's own cost.
"""

from __future__ import annotations

import torch

from common import machine, parser, quiet, report, step_seconds
from mpod123.config import NeRFFieldConfig, detail_preset
from mpod123.fields import NeRFField
from mpod123.guidance import MultiViewSupervision
from mpod123.stages import DetailStage, ReferenceView
from mpod123.synthetic import turntable_dataset


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--presets", nargs="+", default=["draft", "fast"])
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    quiet()
    views = turntable_dataset(8, 64)
    nerf = NeRFField(NeRFFieldConfig(blob_density=40.0), device=args.device)
    rows = []
    for preset in args.presets:
        cfg = detail_preset(preset)
        cfg.preview_every = 0
        cfg.dmtet.init_threshold = 5.0
        ref = ReferenceView(views.images[0], views.cameras[0])
        stage = DetailStage(
            cfg, ref, MultiViewSupervision(views.images, views.cameras), nerf,
            lambda cams: torch.ones(len(cams), cams.height, cams.width, dtype=torch.bool), device=args.device,
        )
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
            }
        )
    report("detail_step", {"benchmark": "detail_step", "machine": machine(args.device), "results": rows}, args.out)


if __name__ == "__main__":
    main()
