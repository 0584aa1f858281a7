"""Hash-grid throughput: points per second, forward plus backward, per backend and size."""

from __future__ import annotations

import torch

from common import machine, median_seconds, parser, quiet, report
from mpod123.runtime.accelerators import BackendUnavailable
from mpod123.config import HashGridConfig
from mpod123.fields import HashEncoding

CONFIGS = {
    "paper (16 levels, 2^19)": HashGridConfig(),
    "draft (8 levels, 2^15)": HashGridConfig(n_levels=8, log2_hashmap_size=15, base_resolution=8),
}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--points", type=int, default=1 << 16)
    args = p.parse_args()
    quiet()
    rows = []
    for name, cfg in CONFIGS.items():
        for backend in ("torch", "tcnn"):
            try:
                enc = HashEncoding(HashGridConfig(**{**cfg.__dict__, "backend": backend}), device=args.device)
            except BackendUnavailable as exc:
                rows.append({"config": name, "backend": backend, "skipped": str(exc)})
                continue
            x = torch.rand(args.points, 3, device=args.device)

            def step():
                enc.params.grad = None
                enc(x).square().sum().backward()

            def forward():
                with torch.no_grad():
                    enc(x)

            t_fb = median_seconds(step, args.device, args.repeats)
            t_f = median_seconds(forward, args.device, args.repeats)
            rows.append(
                {
                    "config": name,
                    "backend": backend,
                    "points": args.points,
                    "fwd_bwd_points_per_s": args.points / t_fb,
                    "fwd_points_per_s": args.points / t_f,
                    "fwd_bwd_ms": 1000 * t_fb,
                }
            )
    report("hash_grid", {"benchmark": "hash_grid", "machine": machine(args.device), "results": rows}, args.out)


if __name__ == "__main__":
    main()
