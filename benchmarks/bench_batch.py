"""Per-asset overhead of `mpod123 batch` outside the GPU work: glTF import, preview render, pack and save.

The input is the procedural test object at about 100k faces (``--grid 160``), exported to a textured GLB
with ``mpod123.export.export_mesh`` (made once; not timed as overhead). Each repeat then does what the batch
does per photo with the bpy module, headless: a clean factory scene, ``blender_addon.blender.importer.import_glb``,
the asset mark and metadata, a preview render loaded as the asset preview, ``file.pack_all`` and a
compressed ``save_as_mainfile``. The first run of each engine is reported apart (cold caches, shader and
kernel set-up); the rest as medians. Blender's own console output goes to a log file, so the JSON stays clean.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import machine, parser, quiet, report

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # blender_addon and blender_batch, as in the repo


def make_glb(path: Path, grid: int, texture_size: int, uv: str) -> dict:
    from mpod123.config import ExportConfig
    from mpod123.export import export_mesh
    from mpod123.bench.synthetic import object_albedo, object_mesh

    t0 = time.perf_counter()
    mesh = object_mesh(grid).cleaned()
    result = export_mesh(mesh, object_albedo, path, ExportConfig(texture_size=texture_size, uv_backend=uv, obj=False))
    return {"faces": result.n_faces, "uv_backend": result.uv_backend, "texture_size": texture_size,
            "glb_bytes": path.stat().st_size, "make_s": round(time.perf_counter() - t0, 2)}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--grid", type=int, default=160, help="tet grid of the procedural object (160 gives ~110k faces)")
    p.add_argument("--texture-size", type=int, default=1024)
    p.add_argument("--uv", default="torch", choices=["torch", "xatlas"], help="UV unwrap of the input GLB")
    p.add_argument("--preview-size", type=int, default=256)
    p.add_argument("--engines", nargs="+", default=["cycles", "workbench"], choices=["cycles", "workbench"])
    p.add_argument("--glb", help="time this GLB instead of making one")
    args = p.parse_args()
    quiet()
    from blender_batch.assets import AssetSpec, blender_output_to, build_asset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.glb:
            glb = Path(args.glb)
            source = {"glb": glb.name, "glb_bytes": glb.stat().st_size}
        else:
            glb = tmp / "object.glb"
            source = make_glb(glb, args.grid, args.texture_size, args.uv)
        rows = []
        for engine in args.engines:
            runs = []
            for i in range(args.repeats + 1):
                out = tmp / f"asset_{engine}_{i}.blend"
                spec = AssetSpec(glb, out, "object", tags=["bench"], description="benchmark",
                                 preview_size=args.preview_size, preview_engine=engine, preview_png=tmp / "preview.png")
                with blender_output_to(tmp / "blender.log"):
                    t = build_asset(spec)
                t["blend_bytes"] = out.stat().st_size
                runs.append(t)
            warm = runs[1:]
            med = {k: round(statistics.median(r[k] for r in warm), 3) for k in ("import_s", "preview_s", "save_s", "total_s")}
            rows.append({
                "engine": warm[0]["engine"], "preview_size": args.preview_size, "repeats": len(warm),
                "faces_in_blender": int(warm[0]["faces"]), "blend_bytes": warm[0]["blend_bytes"], **med,
                "first_run_total_s": round(runs[0]["total_s"], 3),
            })
    record = {"benchmark": "batch_per_asset_overhead", "machine": machine("cpu"), "input": source, "rows": rows}
    report("bench_batch", record, args.out)


if __name__ == "__main__":
    main()
