"""Rasterizer throughput: faces and pixels per second, forward plus backward (mask + colour loss)."""

from __future__ import annotations

import torch

from common import machine, median_seconds, parser, quiet, report
from mpod123.runtime.accelerators import BackendUnavailable
from mpod123.camera import orbit_cameras
from mpod123.geometry import marching_tets_reference, tet_grid
from mpod123.rendering import MeshRenderer


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--res", type=int, nargs="+", default=[128, 256])
    p.add_argument("--grid", type=int, nargs="+", default=[32, 64], help="sphere mesh from a tet grid of this size")
    args = p.parse_args()
    quiet()
    rows = []
    for g in args.grid:
        grid = tet_grid(g)
        mesh = marching_tets_reference(grid.vertices, grid.vertices.norm(dim=-1) - 0.6, grid.tets).to(args.device)
        for res in args.res:
            cams = orbit_cameras(90.0, [0.0, 90.0], 2.5, 40.0, res, device=args.device)
            for backend in ("torch", "nvdiffrast"):
                try:
                    renderer = MeshRenderer(backend, args.device)
                except BackendUnavailable as exc:
                    rows.append({"backend": backend, "skipped": str(exc)})
                    continue
                verts = mesh.vertices.clone().requires_grad_(True)
                color = lambda x: (x * 0.5 + 0.5).clamp(0, 1)  # noqa: E731

                def step():
                    verts.grad = None
                    out = renderer.render(type(mesh)(verts, mesh.faces), cams, color, torch.ones(2, 3, device=args.device))
                    (out.rgb.mean() + out.opacity.mean()).backward()

                t = median_seconds(step, args.device, args.repeats)
                rows.append(
                    {
                        "backend": backend,
                        "faces": mesh.n_faces,
                        "resolution": res,
                        "views": 2,
                        "fwd_bwd_ms": 1000 * t,
                        "faces_per_s": 2 * mesh.n_faces / t,
                        "pixels_per_s": 2 * res * res / t,
                    }
                )
    report("rasterizer", {"benchmark": "rasterizer", "machine": machine(args.device), "results": rows}, args.out)


if __name__ == "__main__":
    main()
