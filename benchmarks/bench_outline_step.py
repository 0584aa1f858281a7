"""Outline-stage step time (grid update + render + loss + backward + Adam), per preset.

Steps run against the multi-view supervision guidance on the procedural object,
so no model weights are needed; the guidance itself costs next to nothing, which
makes this the stage's own cost (a diffusion prior adds its UNet on top).
"""

from __future__ import annotations

from common import machine, parser, quiet, report, step_seconds
from mpod123.config import outline_preset
from mpod123.guidance import MultiViewSupervision
from mpod123.stages import OutlineStage, ReferenceView
from mpod123.bench.synthetic import turntable_dataset


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--presets", nargs="+", default=["draft", "fast", "paper"])
    p.add_argument("--steps", type=int, default=20, help="timed steps after warm-up")
    p.add_argument("--warmup", type=int, default=40, help="untimed steps first (the grid settles)")
    args = p.parse_args()
    quiet()
    views = turntable_dataset(16, 128)
    rows = []
    for preset in args.presets:
        cfg = outline_preset(preset)
        cfg.preview_every = 0
        cfg.occupancy.warmup_steps = min(cfg.occupancy.warmup_steps, args.warmup)
        ref = ReferenceView(views.images[0], views.cameras[0])
        stage = OutlineStage(cfg, ref, MultiViewSupervision(views.images, views.cameras), device=args.device)
        for _ in range(args.warmup):
            stage.train_step()
        times = step_seconds(stage.train_step, args.device, args.steps)
        rows.append(
            {
                "preset": preset,
                "render_resolution": cfg.render.resolution,
                "samples_per_ray_max": cfg.render.samples_per_ray,
                "hash_levels": cfg.nerf.hash_grid.n_levels,
                "median_step_s": times[len(times) // 2],
                "mean_step_s": sum(times) / len(times),
                "projected_stage_s": sum(times) / len(times) * cfg.steps,
                "steps_in_preset": cfg.steps,
                "backends": {"hash_grid": stage.field.encoding.backend, "ray_marching": stage.renderer.marcher.backend},
            }
        )
    report("outline_step", {"benchmark": "outline_step", "machine": machine(args.device), "results": rows}, args.out)


if __name__ == "__main__":
    main()
