"""Marching-tets time per grid size (extraction plus backward through the vertex positions), over
every tet (the reference) and over the band of candidate tets the GPU path visits
(``BandedMarchingTets``, candidates found once, then reused as in a training step). The two meshes
are checked identical."""

from __future__ import annotations

import torch

from common import machine, median_seconds, parser, quiet, report
from mpod123.geometry import marching_tets_reference, tet_grid
from mpod123.geometry.marching_tets import BandedMarchingTets
from mpod123.runtime.syncs import gpu_paths


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--band", type=float, default=0.05, help="SDF band of the candidate tets (DMTetConfig.candidate_band)")
    args = p.parse_args()
    quiet()
    rows = []
    for size in args.sizes:
        grid = tet_grid(size).to(args.device)
        sdf = (grid.vertices.norm(dim=-1) - 0.6).requires_grad_(True)
        banded = BandedMarchingTets(grid.tets, args.band)

        def extract():
            with torch.no_grad():
                marching_tets_reference(grid.vertices, sdf, grid.tets)

        def extract_banded():
            with torch.no_grad(), gpu_paths():
                banded(grid.vertices, sdf)

        def extract_backward():
            sdf.grad = None
            marching_tets_reference(grid.vertices, sdf, grid.tets).vertices.sum().backward()

        def extract_backward_banded():
            sdf.grad = None
            with gpu_paths():
                banded(grid.vertices, sdf).vertices.sum().backward()

        ref = marching_tets_reference(grid.vertices, sdf.detach(), grid.tets)
        with gpu_paths():
            mine = banded(grid.vertices, sdf.detach())
        identical = torch.equal(ref.faces, mine.faces) and torch.equal(ref.vertices, mine.vertices)
        rows.append(
            {
                "grid": size,
                "tets": int(grid.tets.shape[0]),
                "candidate_tets": int(banded.candidate_valid.sum()),
                "faces": ref.n_faces,
                "identical_meshes": identical,
                "extract_ms": 1000 * median_seconds(extract, args.device, args.repeats),
                "extract_banded_ms": 1000 * median_seconds(extract_banded, args.device, args.repeats),
                "extract_bwd_ms": 1000 * median_seconds(extract_backward, args.device, args.repeats),
                "extract_bwd_banded_ms": 1000 * median_seconds(extract_backward_banded, args.device, args.repeats),
            }
        )
    report("marching_tets", {"benchmark": "marching_tets", "machine": machine(args.device), "results": rows}, args.out)


if __name__ == "__main__":
    main()
