"""Live 3D previews: what one mesh preview costs a stage, and its share of the stage's wall time.

Per preset (draft, fast) and stage: the stage is trained a few warm-up steps
against multi-view supervision on the procedural object (no weights needed),
then timed: the median training step, and the median mesh preview (extraction,
decimation to the face budget, colours, GLB), exactly what the stage does
every ``mesh_preview.interval`` steps. The share is the previews' time over the
stage's projected wall time with its previews: ``(previews x preview) /
(steps x step + previews x preview)``, with previews = (steps - 1) // interval + 1
(the one at the end).
"""

from __future__ import annotations

import time

from common import machine, parser, quiet, report, step_seconds
from mpod123.config import detail_preset, outline_preset
from mpod123.guidance import MultiViewSupervision
from mpod123.runtime.progress import MeshPreview
from mpod123.stages import DetailStage, OutlineStage, ReferenceView
from mpod123.bench.synthetic import turntable_dataset


def time_previews(stage, repeats: int) -> tuple[list[float], MeshPreview]:
    """Seconds of ``repeats`` mesh previews of the stage as it is now, sorted, and the last event."""
    events: list[MeshPreview] = []
    stage.callback = events.append
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        stage.mesh_previews.emit()
        times.append(time.perf_counter() - t0)
    stage.callback = None
    return sorted(times), events[-1]


def row(preset: str, stage_name: str, stage, cfg, step_times: list[float], times: list[float], event: MeshPreview) -> dict:
    step = step_times[len(step_times) // 2]
    preview = times[len(times) // 2]
    n = (cfg.steps - 1) // cfg.mesh_preview.interval(cfg.steps) + 1  # the multiples before the end, and the end
    return {
        "preset": preset,
        "stage": stage_name,
        "median_step_s": round(step, 4),
        "median_preview_s": round(preview, 4),
        "previews_per_stage": n,
        "steps_in_preset": cfg.steps,
        "share_of_stage": round(n * preview / (cfg.steps * step + n * preview), 4),
        "preview_vertices": event.vertices,
        "preview_faces": event.faces,
        "preview_bytes": len(event.glb),
        "grid_resolution": cfg.mesh_preview.grid_resolution if stage_name == "outline" else None,
    }


def time_blender_update(glb: bytes, repeats: int) -> dict | None:
    """Median wall and CPU seconds of the add-on's in-place update of a preview object from ``glb``
    (None without bpy). This runs in Blender's main-thread tick, whose budget is about 8 ms; the CPU
    time is what it costs on an idle machine."""
    try:
        import bpy
    except ImportError:
        return None
    from types import SimpleNamespace

    from blender_addon.blender import preview_object

    job = SimpleNamespace(job_id="bench" * 6, name="bench", location=(0.0, 0.0, 0.0), target_height=0.0,
                          rest_on_ground=False)
    preview_object.show(bpy.context, job, glb)
    wall, cpu = [], []
    for _ in range(max(repeats, 10)):
        t0, c0 = time.perf_counter(), time.process_time()
        preview_object.show(bpy.context, job, glb)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    preview_object.remove(job.job_id)
    return {"wall_s": round(sorted(wall)[len(wall) // 2], 4), "cpu_s": round(sorted(cpu)[len(cpu) // 2], 4)}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--presets", nargs="+", default=["draft", "fast"])
    p.add_argument("--steps", type=int, default=3, help="timed training steps per stage")
    p.add_argument("--warmup", type=int, default=30, help="stage-1 steps first (the density takes a shape)")
    p.add_argument("--detail-warmup", type=int, default=2)
    args = p.parse_args()
    quiet()
    views = turntable_dataset(8, 64)
    ref = ReferenceView(views.images[0], views.cameras[0])
    rows = []
    for preset in args.presets:
        ocfg = outline_preset(preset)
        ocfg.preview_every = 0
        ocfg.occupancy.warmup_steps = min(ocfg.occupancy.warmup_steps, args.warmup)
        outline = OutlineStage(ocfg, ref, MultiViewSupervision(views.images, views.cameras), device=args.device)
        for _ in range(args.warmup):
            outline.train_step()
        steps = step_seconds(outline.train_step, args.device, args.steps)
        ocfg.preview_every = 1  # previews on for the timing (the stage sends none with 0)
        times, event = time_previews(outline, args.repeats)
        rows.append(row(preset, "outline", outline, ocfg, steps, times, event))

        dcfg = detail_preset(preset)
        dcfg.preview_every = 0
        detail = DetailStage(dcfg, ref, MultiViewSupervision(views.images, views.cameras), outline.field,
                             outline.opacity, device=args.device)
        for _ in range(args.detail_warmup):
            detail.train_step()
        steps = step_seconds(detail.train_step, args.device, args.steps)
        dcfg.preview_every = 1
        times, event = time_previews(detail, args.repeats)
        rows.append(row(preset, "detail", detail, dcfg, steps, times, event))
        rows[-1]["blender_update_s"] = time_blender_update(event.glb, args.repeats)
        print(rows[-2:], flush=True)
    report("preview_mesh", {"benchmark": "preview_mesh", "machine": machine(args.device), "results": rows}, args.out)


if __name__ == "__main__":
    main()
