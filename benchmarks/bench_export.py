"""Export of a ~110k-face object: decimation, unwrap, bake, write and file size, per face budget.

The full mesh (no budget) is what the exporter did before it decimated: xatlas
then unwraps every face. With a budget, quadric decimation runs first and the
unwrap only sees the budgeted mesh. Each row also gives the Chamfer distance
between the full and the exported surface (20k area-uniform samples each; the
record's ``chamfer_floor`` is the same measure between two samplings of the
full surface, i.e. what sampling alone contributes) and,
when node and the npm package gltf-validator are installed, the Khronos
validator's error and warning counts for the written GLB.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from common import machine, parser, quiet, report

from mpod123.config import ExportConfig
from mpod123.export import export_mesh, read_mesh
from mpod123.geometry import chamfer_distance, marching_tets_reference, tet_grid
from mpod123.bench.synthetic import object_albedo, object_sdf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _validate(path: Path) -> dict | None:
    from gltf_validator import validate, validator_missing  # beside this script

    if validator_missing():
        return None
    issues = validate(path)["issues"]
    return {k: issues[k] for k in ("numErrors", "numWarnings", "numInfos", "numHints")}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--grid", type=int, default=156, help="tet grid of the procedural object (156 gives ~109k faces)")
    p.add_argument("--texture-size", type=int, nargs="+", default=[1024])
    p.add_argument("--faces", type=int, nargs="+", default=[0, 50_000, 20_000], help="face budgets; 0 = the full mesh")
    p.add_argument("--uv", default="xatlas")
    args = p.parse_args()
    quiet()
    grid = tet_grid(args.grid)
    mesh = marching_tets_reference(grid.vertices, object_sdf(grid.vertices), grid.tets).cleaned()
    g = torch.Generator().manual_seed(0)
    full_points = mesh.sample_surface(20000, g)
    # two independent samplings of one surface are this far apart: the measure's noise floor
    floor = float(chamfer_distance(mesh.sample_surface(20000, g), full_points))
    rows = []
    for size in args.texture_size:
        for faces in args.faces:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = ExportConfig(texture_size=size, uv_backend=args.uv, target_faces=faces or None, obj=False)
                t0 = time.perf_counter()
                result = export_mesh(mesh, object_albedo, Path(tmp) / "mesh.glb", cfg)
                total = time.perf_counter() - t0
                out = read_mesh(result.glb)
                rows.append(
                    {
                        "budget": faces or None,
                        "input_faces": mesh.n_faces,
                        "faces": result.n_faces,
                        "uv_backend": result.uv_backend,
                        "texture_size": size,
                        "total_s": round(total, 3),
                        **{k: round(v, 3) for k, v in result.seconds.items()},
                        "glb_bytes": result.glb.stat().st_size,
                        "chamfer_to_full": float(chamfer_distance(out.sample_surface(20000, g), full_points)),
                        "validator": _validate(result.glb),
                    }
                )
                print(rows[-1], file=sys.stderr, flush=True)
    record = {"benchmark": "export", "machine": machine(args.device), "chamfer_floor": floor, "results": rows}
    report("export", record, args.out)


if __name__ == "__main__":
    main()
