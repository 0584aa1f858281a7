"""Main-thread time per tick of the Blender add-on while a job streams previews and imports its result.

Runs in the real ``bpy`` module against a real ``mpod123 serve --tiny`` on loopback, calling the add-on's
timer callback (``session.tick``) as Blender would (timers never fire in background mode), and times each
call. The goal: no tick over 20 ms except the one that imports the result.

    python benchmarks/bench_addon_tick.py [--steps 12] [--jobs 1] [--history 500] [--out results.json]

``--history N`` puts N finished jobs in the job list first (an artist's list after weeks of work), so every
tick, every job-file save and the import run with that list; ``save_ms`` times one save with one row
changed, as the tick does every 2 s while a job streams.

Each tick is recorded with what it did (outcomes taken, events and previews applied, an import, a job-file
save) and its wall and main-thread CPU time; the slowest ticks are listed with their contents.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def history_record(i: int) -> dict:
    """A finished job's record as the add-on writes it (stages, previews, import options)."""
    return {"name": f"photo_{i}", "state": "imported", "message": f"imported as photo_{i}", "last_seq": 40,
            "location": [0.0, 0.0, 0.0], "collection": "Generated", "preset": "fast", "seed": i, "steps": 0,
            "input_label": f"/photos/photo_{i}.png", "input_path": "", "result_path": "", "result_size": 150_000,
            "object_name": f"photo_{i}", "texture_target": "", "created": 1_700_000_000 + i,
            "import": {"rest_on_ground": True, "target_height": 0.0, "target_faces": 0, "shading": "SMOOTH",
                       "clear_custom_normals": True},
            "stages": [{"stage": s, "step": 10, "total": 10, "done": True} for s in ("outline", "inversion", "detail")],
            "previews": {}}


def time_saves(session, context, st, n: int = 20) -> dict:
    """One job-file save with one row changed, as the tick makes while a job streams (median of ``n``)."""
    times = []
    for i in range(n):
        st.jobs[i].message = f"changed {i}"
        session.records.mark(st.jobs[i])
        t0 = time.perf_counter()
        session.save_jobs(context)
        times.append(time.perf_counter() - t0)
    session.job_file().flush()
    return {"median": round(statistics.median(times) * 1e3, 2), "max": round(max(times) * 1e3, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="steps per stage of the tiny job (more previews)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--history", type=int, default=0, help="finished jobs in the list before the run")
    ap.add_argument("--out", help="JSON output path (default: benchmarks/results/addon_tick.json)")
    args = ap.parse_args()

    import bpy  # first: it makes addon_utils importable
    import addon_utils

    from blender_batch.service import EmbeddedBackend
    from mpod123.bench.synthetic import render_object
    from mpod123.camera import orbit_cameras
    from mpod123.imaging.images import png_bytes

    work = Path(tempfile.mkdtemp(prefix="bench-addon-"))
    tempfile.tempdir = str(work)
    server = EmbeddedBackend.start(work / "backend", tiny=True)  # on a port the OS picks
    try:
        bpy.ops.wm.read_factory_settings(use_empty=True)
        addon_utils.enable("blender_addon", default_set=True)
        from blender_addon import session
        from blender_addon.blender.preferences import prefs

        p = prefs(bpy.context)
        p.address, p.use_local_backend = server.endpoint, False
        st = bpy.context.window_manager.mpod123
        if args.history:
            session.job_file().save({f"{i:032x}": history_record(i) for i in range(args.history)})
            session.restore_jobs(bpy.context)
            assert len(st.jobs) == args.history
        save_ms = time_saves(session, bpy.context, st) if args.history else None
        image = work / "input.png"
        image.write_bytes(png_bytes(render_object(orbit_cameras(90.0, 0.0, 2.5, 40.0, 128))[0].numpy()))
        st.source, st.filepath, st.preset, st.steps = "FILE", str(image), "draft", args.steps
        for _ in range(args.jobs):
            bpy.ops.mpod123.generate()
        ticks = []
        deadline = time.monotonic() + 900
        while not all(j.state in ("imported", "failed", "cancelled") for j in st.jobs):
            if time.monotonic() > deadline:
                raise SystemExit(f"jobs not done: {[j.state for j in st.jobs]} {st.last_error}")
            t0, c0 = time.perf_counter(), time.thread_time()
            interval = session.tick()
            ticks.append((time.perf_counter() - t0, dict(session.current().last_step), time.thread_time() - c0))
            time.sleep(min(interval or 0.05, 0.05))
    finally:
        server.stop()
    imports = [t for t, what, _c in ticks if what.get("import")]
    plain = sorted(t for t, what, _c in ticks if not what.get("import"))
    cpu = sorted(c for _t, what, c in ticks if not what.get("import"))
    busy = [t for t, what, _c in ticks if what and not what.get("import")]
    res = {
        "history": args.history,
        "save_ms": save_ms,
        "ticks": len(ticks),
        "ticks_with_work": len(busy),
        "previews_applied": sum(what.get("previews", 0) for _t, what, _c in ticks),
        "median_ms": round(statistics.median(plain) * 1e3, 3),
        "median_busy_ms": round(statistics.median(busy) * 1e3, 3) if busy else None,
        "p99_ms": round(plain[int(0.99 * (len(plain) - 1))] * 1e3, 3),
        "max_ms": round(plain[-1] * 1e3, 3),
        "max_cpu_ms": round(cpu[-1] * 1e3, 3),
        "over_20ms": sum(t > 0.020 for t in plain),
        "over_20ms_cpu": sum(c > 0.020 for c in cpu),
        "median_cpu_ms": round(statistics.median(cpu) * 1e3, 3),
        "p99_cpu_ms": round(cpu[int(0.99 * (len(cpu) - 1))] * 1e3, 3),
        "import_cpu_ms": [round(c * 1e3, 1) for _t, what, c in ticks if what.get("import")],
        "import_ms": [round(t * 1e3, 1) for t in imports],
        "slowest": [(round(t * 1e3, 2), round(c * 1e3, 2), what)
                    for t, what, c in sorted(ticks, key=lambda x: -x[0])[:6]],
    }
    import os
    import platform

    res["machine"] = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                      "load_average": os.getloadavg(), "python": sys.version.split()[0], "blender": bpy.app.version_string}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "addon_tick.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
