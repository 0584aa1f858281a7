"""Export time (unwrap + bake + write) for a mesh of about 100k faces, per UV backend."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from common import machine, parser, quiet, report
from mpod123.config import ExportConfig
from mpod123.export import export_mesh
from mpod123.geometry import marching_tets_reference, tet_grid
from mpod123.synthetic import object_sdf


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--grid", type=int, default=112, help="tet grid of the procedural object (112 gives ~100k faces)")
    p.add_argument("--texture-size", type=int, default=1024)
    p.add_argument("--uv", nargs="+", default=["torch", "xatlas"])
    args = p.parse_args()
    quiet()
    grid = tet_grid(args.grid)
    mesh = marching_tets_reference(grid.vertices, object_sdf(grid.vertices), grid.tets).cleaned()
    color = lambda x: (x * 0.5 + 0.5).clamp(0, 1)  # noqa: E731
    rows = []
    for uv in args.uv:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = export_mesh(mesh, color, Path(tmp) / "mesh.glb", ExportConfig(texture_size=args.texture_size, uv_backend=uv))
            total = time.perf_counter() - t0
            rows.append(
                {
                    "uv_backend": result.uv_backend,
                    "faces": result.n_faces,
                    "texture_size": args.texture_size,
                    "total_s": total,
                    **{k: round(v, 3) for k, v in result.seconds.items()},
                    "glb_bytes": result.glb.stat().st_size,
                }
            )
    report("export", {"benchmark": "export", "machine": machine(args.device), "results": rows}, args.out)


if __name__ == "__main__":
    main()
