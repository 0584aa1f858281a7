"""Outline-stage step time with and without the density regularisers, in one process.

One stage per variant (no regularisers; normals by finite differences, the default,
on the preset's every-Nth step and on every step; normals by the analytic gradient,
a double backward through the hash grid, on every step), each
warmed up, then their steps interleaved round-robin, so load from other work on
the machine falls on every variant alike and the ratios compare. Steps run against
the multi-view supervision guidance on the procedural object (no model weights).
"""

from __future__ import annotations

import os
import statistics
import time

from common import machine, parser, quiet, report, sync
from mpod123.config import outline_preset
from mpod123.guidance import MultiViewSupervision
from mpod123.stages import OutlineStage, ReferenceView
from mpod123.bench.synthetic import turntable_dataset

VARIANTS = {
    "none": {"entropy_weight": 0.0, "orientation_weight": 0.0, "normal_smoothness_weight": 0.0},
    "finite_difference (the preset's regulariser_every)": {"normal_method": "finite_difference"},
    "finite_difference, every step": {"normal_method": "finite_difference", "regulariser_every": 1},
    "analytic, every step": {"normal_method": "analytic", "regulariser_every": 1},
}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--preset", default="draft")
    p.add_argument("--res", type=int, help="render resolution (default: the preset's)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant, interleaved")
    p.add_argument("--warmup", type=int, default=40, help="untimed steps first (the grid settles)")
    args = p.parse_args()
    quiet()
    views = turntable_dataset(16, 64)
    stages = {}
    for name, overrides in VARIANTS.items():
        cfg = outline_preset(args.preset)
        cfg.preview_every = 0
        if args.res:
            cfg.render.resolution = args.res
        cfg.occupancy.warmup_steps = min(cfg.occupancy.warmup_steps, args.warmup)
        for key, value in overrides.items():
            setattr(cfg, key, value)
        ref = ReferenceView(views.images[0], views.cameras[0])
        stage = OutlineStage(cfg, ref, MultiViewSupervision(views.images, views.cameras), device=args.device)
        for _ in range(args.warmup):
            stage.train_step()
        stages[name] = stage
    times: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(args.steps):
        for name, stage in stages.items():
            sync(args.device)
            t0 = time.perf_counter()
            stage.train_step()
            sync(args.device)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["none"])
    rows = [
        {
            "regularisers": name,
            "median_step_s": statistics.median(t),
            "mean_step_s": statistics.mean(t),
            "ratio_to_none": statistics.median(t) / base,
            "projected_stage_s": statistics.median(t) * stages[name].cfg.steps,
        }
        for name, t in times.items()
    ]
    record = {
        "benchmark": "regularisers",
        "preset": args.preset,
        "render_resolution": stages["none"].cfg.render.resolution,
        "regulariser_rays": stages["none"].cfg.regulariser_rays,
        "machine": machine(args.device),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "results": rows,
    }
    report("regularisers", record, args.out)


if __name__ == "__main__":
    main()
