"""Marching-tets time per grid size (extraction plus backward through the vertex positions)."""

from __future__ import annotations

import torch

from common import machine, median_seconds, parser, quiet, report
from mpod123.geometry import marching_tets_reference, tet_grid


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    args = p.parse_args()
    quiet()
    rows = []
    for size in args.sizes:
        grid = tet_grid(size).to(args.device)
        sdf = (grid.vertices.norm(dim=-1) - 0.6).requires_grad_(True)

        def extract():
            with torch.no_grad():
                marching_tets_reference(grid.vertices, sdf, grid.tets)

        def extract_backward():
            sdf.grad = None
            marching_tets_reference(grid.vertices, sdf, grid.tets).vertices.sum().backward()

        faces = marching_tets_reference(grid.vertices, sdf.detach(), grid.tets).n_faces
        rows.append(
            {
                "grid": size,
                "tets": int(grid.tets.shape[0]),
                "faces": faces,
                "extract_ms": 1000 * median_seconds(extract, args.device, args.repeats),
                "extract_bwd_ms": 1000 * median_seconds(extract_backward, args.device, args.repeats),
            }
        )
    report("marching_tets", {"benchmark": "marching_tets", "machine": machine(args.device), "results": rows}, args.out)


if __name__ == "__main__":
    main()
