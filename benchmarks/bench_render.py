"""Rays per second at 128^2, with and without the occupancy grid (the ratio is the point).

The field is the stage-1 NeRF with a sharp density blob (an object of radius
~0.5, like a trained one) whose grid has had its 16 warm-up updates. Timed
forward only (previews, masks) and forward plus backward (a training step).
"""

from __future__ import annotations

import torch

from common import machine, median_seconds, parser, quiet, report
from mpod123.camera import orbit_cameras
from mpod123.config import HashGridConfig, NeRFFieldConfig, OccupancyGridConfig, RenderConfig
from mpod123.fields import NeRFField
from mpod123.rendering import OccupancyGrid, VolumeRenderer


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--samples-per-ray", type=int, default=512)
    p.add_argument("--grid", choices=["paper", "draft"], default="draft", help="hash-grid size")
    p.add_argument("--marcher", default="auto", help="auto, torch or nerfacc")
    p.add_argument("--dense-repeats", type=int, default=1, help="repeats for dense marching (slow on a CPU)")
    args = p.parse_args()
    quiet()
    torch.manual_seed(0)
    hg = HashGridConfig() if args.grid == "paper" else HashGridConfig(n_levels=8, log2_hashmap_size=15, base_resolution=8)
    field = NeRFField(NeRFFieldConfig(hash_grid=hg, blob_density=40.0), device=args.device)
    rc = RenderConfig(resolution=args.res, samples_per_ray=args.samples_per_ray)
    grid = OccupancyGrid(OccupancyGridConfig(), device=args.device)
    skip = VolumeRenderer(field, grid, rc, backend=args.marcher)
    for i in range(16):
        grid.update(16 * i, field.density, skip.step_size)
    dense = VolumeRenderer(field, None, RenderConfig(resolution=args.res, samples_per_ray=args.samples_per_ray, use_occupancy_grid=False))
    cams = orbit_cameras(90.0, 30.0, 2.5, 40.0, args.res, device=args.device)
    bg = torch.ones(1, 3, device=args.device)
    n_rays = args.res * args.res
    rows = []
    for name, renderer in (("occupancy grid", skip), ("dense", dense)):
        samples = renderer.render(cams, bg).n_samples

        def forward(r=renderer):
            with torch.no_grad():
                r.render(cams, bg)

        def train(r=renderer):
            field.zero_grad(set_to_none=True)
            out = r.render(cams, bg, stratified=True)
            (out.rgb.mean() + out.opacity.mean()).backward()

        repeats = args.repeats if renderer is skip else args.dense_repeats
        t_f = median_seconds(forward, args.device, repeats, warmup=0)
        t_t = median_seconds(train, args.device, repeats, warmup=0)
        rows.append(
            {
                "marching": name,
                "backend": renderer.marcher.backend,
                "samples": samples,
                "samples_per_ray": samples / n_rays,
                "fwd_rays_per_s": n_rays / t_f,
                "fwd_bwd_rays_per_s": n_rays / t_t,
                "fwd_ms": 1000 * t_f,
                "fwd_bwd_ms": 1000 * t_t,
            }
        )
    ratio = {
        "fwd_speedup": rows[0]["fwd_rays_per_s"] / rows[1]["fwd_rays_per_s"],
        "fwd_bwd_speedup": rows[0]["fwd_bwd_rays_per_s"] / rows[1]["fwd_bwd_rays_per_s"],
        "sample_reduction": rows[1]["samples"] / max(rows[0]["samples"], 1),
        "occupied_fraction": grid.occupied_fraction,
    }
    record = {"benchmark": "render", "resolution": args.res, "grid": args.grid, "machine": machine(args.device), "results": rows, "ratio": ratio}
    report("render", record, args.out)


if __name__ == "__main__":
    main()
