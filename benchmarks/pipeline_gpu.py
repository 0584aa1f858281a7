"""The whole pipeline per preset at real model sizes (random weights): seconds per stage,
step rates, peak GPU memory and the extrapolated time of a full run.

Each preset runs through the production runner with a shortened step budget
(``--steps`` per stage, textual inversion included); the step rate of each
stage is measured after its first steps (warm-up, compilation, caches) and
multiplied out to the preset's real budget. Stage 1 first runs through its
occupancy grid's warm-up (every cell re-evaluated, dense marching: slower
steps than the rest of the stage), which is timed apart and not extrapolated.
Mesh previews are off (``bench_preview_mesh.py`` times them apart) and progress
events keep their production rate (``--progress-hz``: each event reads the
losses back from the device); rates come from the events' step numbers, so
they stay right when events are throttled. Each preset's row is written to the
JSON report as soon as the preset ends (atomically), so a run stopped in the
middle keeps the presets it finished. Rows are compared with the targets on one
H100 (``gpu_report.TARGETS``: ``paper`` in at most 10 minutes and 24 GB,
``fast`` in at most 3 minutes); a missed target makes the exit code 1.

Refuses to run on the CPU; ``--tiny --allow-cpu`` is a smoke test of the script.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import RESULTS, machine, parser
from gpu_report import StepRecord, compare_targets
from mpod123.config import pipeline_preset
from mpod123.pipeline.generate import ModelSources, configure
from mpod123.runtime.progress import MeshPreview, Progress
from mpod123.stages.base import PROGRESS_RATE_HZ, OptimisationStage
from mpod123.pipeline.runner import Runner
from mpod123.runtime.tiny_models import FULL, TINY, save_tiny_stable_diffusion, save_tiny_zero123

STAGES = ("outline", "inversion", "detail")


class StepClock:
    """Wall-clock time and step number of every Progress event, per stage."""

    def __init__(self) -> None:
        self.times: dict[str, list[tuple[float, int]]] = {s: [] for s in STAGES}
        self.mesh_previews = 0

    def __call__(self, event) -> None:
        if isinstance(event, Progress) and event.stage in self.times:
            self.times[event.stage].append((time.perf_counter(), event.step))
        elif isinstance(event, MeshPreview):
            self.mesh_previews += 1

    def steps(self, stage: str) -> int:
        return self.times[stage][-1][1] if self.times[stage] else 0

    def rate(self, stage: str, skip: int) -> float | None:
        """Steps per second from step ``skip`` on (rates come from step numbers, not event
        counts, which stay right if progress events are throttled)."""
        t = [(when, step) for when, step in self.times[stage] if step >= skip]
        if len(t) < 2 or t[-1][0] <= t[0][0]:
            return None
        return (t[-1][1] - t[0][1]) / (t[-1][0] - t[0][0])


def input_image(path: Path) -> Path:
    """A cut-out with alpha: a two-tone box and disk (the content does not change the cost)."""
    y, x = np.mgrid[0:512, 0:512] / 512.0
    rgba = np.zeros((512, 512, 4), np.float32)
    rgba[(abs(x - 0.5) < 0.2) & (abs(y - 0.6) < 0.15)] = (0.8, 0.3, 0.2, 1.0)
    rgba[(x - 0.5) ** 2 + (y - 0.35) ** 2 < 0.02] = (0.2, 0.4, 0.8, 1.0)
    Image.fromarray((rgba * 255).astype(np.uint8), "RGBA").save(path)
    return path


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--presets", nargs="+", default=["fast", "paper"])
    p.add_argument("--steps", type=int, default=60, help="steps run per stage (the rest is extrapolated)")
    p.add_argument("--warmup", type=int, default=10, help="steps per stage left out of the rate")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--allow-cpu", action="store_true")
    p.add_argument("--models", help="folder to keep the random models in (default: a temporary folder)")
    p.add_argument("--progress-hz", type=float, default=PROGRESS_RATE_HZ,
                   help="progress events per second (default: the production rate; 0: every step, a host sync each)")
    args = p.parse_args()
    if not args.device.startswith("cuda") and not args.allow_cpu:
        sys.exit("pipeline_gpu: needs a CUDA device (the presets are GPU budgets); use --tiny --allow-cpu for a smoke test")
    OptimisationStage.progress_rate_hz = args.progress_hz
    size, dtype = (TINY, None) if args.tiny else (FULL, torch.float16)
    root = Path(args.models or tempfile.mkdtemp(prefix="mpod123-bench-models-"))
    if not (root / "zero123" / "model_index.json").is_file():
        save_tiny_zero123(root / "zero123", size=size, dtype=dtype)
    if not (root / "sd" / "model_index.json").is_file():
        save_tiny_stable_diffusion(root / "sd", size=size, dtype=dtype)
    work = Path(tempfile.mkdtemp(prefix="mpod123-bench-run-"))
    image = input_image(work / "input.png")
    out = Path(args.out) if args.out else RESULTS / ("pipeline_tiny.json" if args.tiny else "pipeline_gpu.json")
    rec = StepRecord(out, {"benchmark": "pipeline_gpu", "sizes": "tiny" if args.tiny else "real (random weights)",
                           "machine": machine(args.device), "progress_hz": args.progress_hz, "mesh_previews": "off",
                           "rows": []})
    missed = []
    for preset in args.presets:
        full = pipeline_preset(preset)
        cfg = configure(preset, 0, ModelSources(str(root / "zero123"), str(root / "sd")), config=pipeline_preset(preset))
        budget = {"outline": full.outline.steps, "inversion": full.inversion.steps, "detail": full.detail.steps}
        grid_warmup = cfg.outline.occupancy.warmup_steps
        cfg.outline.steps = min(grid_warmup + args.steps, full.outline.steps)
        cfg.detail.steps = min(args.steps, full.detail.steps)
        cfg.inversion.steps = min(args.steps, full.inversion.steps)
        cfg.deterministic = False  # what a GPU user runs for speed
        cfg.outline.mesh_preview.enabled = cfg.detail.mesh_preview.enabled = False  # not timed here
        clock = StepClock()
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        runner = Runner(cfg, work / preset, args.device, clock)
        result = runner.run(image, work / f"{preset}.glb")
        timings = result.record["timings_s"]
        stages = {}
        total = timings.get("preprocess", 0.0) + timings.get("export", 0.0)
        for stage in STAGES:
            first = grid_warmup if stage == "outline" else 0  # stage 1: time after the grid's warm-up
            done = clock.steps(stage)
            rate = clock.rate(stage, first + min(args.warmup, max(0, done - first - 3)))
            # model loading, init, masks, and stage 1's grid warm-up, counted once as run
            setup = max(0.0, timings[stage] - ((done - first) / rate if rate else 0.0))
            full_s = setup + ((budget[stage] - first) / rate if rate else 0.0)
            total += full_s
            stages[stage] = {"steps_run": done, "steps_per_s": None if rate is None else round(rate, 4),
                             "seconds_run": timings[stage], "setup_s": round(setup, 2),
                             "budget_steps": budget[stage], "extrapolated_s": round(full_s, 1)}
        row = {"preset": preset, "stages": stages, "export_s": timings.get("export"),
               "peak_gpu_gb": result.record.get("peak_gpu_memory_gb"),
               "extrapolated_total_s": round(total, 1), "extrapolated_total_min": round(total / 60, 2),
               "backends": result.record["backends"], "backend_fallbacks": result.record.get("backend_fallbacks", {}),
               "mesh_previews_emitted": clock.mesh_previews}
        target = None if args.tiny else compare_targets(row)  # tiny models: nothing to compare
        if target is not None:
            row["target"] = target
            missed += [f"{preset}: {m}" for m in target["missed"]]
        rec.data["rows"].append(row)
        rec.step(preset, {"extrapolated_total_min": row["extrapolated_total_min"], "target": target})  # on disk now
        print(json.dumps(row), flush=True)
    if missed:
        sys.exit(f"pipeline_gpu: missed targets: {'; '.join(missed)} (report: {out})")


if __name__ == "__main__":
    main()
