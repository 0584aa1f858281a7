"""Whether a mesh's own UVs can carry a baked texture, or the mesh must be unwrapped afresh.

Usable UVs, as measured here:

* **present and finite** for every vertex;
* **inside the unit square**, give or take ``range_tolerance`` (UVs that tile
  with REPEAT would bake several surface points into one texel);
* **not degenerate**: at most ``max_degenerate`` of the surface (by 3D area)
  lies on faces whose UV triangle has (almost) no area, so nearly every part of
  the surface gets texels of its own;
* **not heavily overlapping**: rasterising every UV triangle at ``resolution``²,
  at most ``max_overlap`` of the texels covered are covered more than once
  (mirrored halves, stacked copies and objects UV'd separately in the same
  square all fail here, since a texel can hold only one colour).

The thresholds are fields of :class:`UVCheckConfig`; the report says which
test failed, which the CLI prints when it falls back to unwrapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class UVCheckConfig:
    range_tolerance: float = 0.01
    max_degenerate: float = 0.02
    """Largest fraction of the surface area allowed on faces with (near) zero UV area."""
    degenerate_ratio: float = 1e-4
    """A face is degenerate when its UV area share is below this times its 3D area share."""
    max_overlap: float = 0.05
    """Largest fraction of covered texels that more than one face covers."""
    resolution: int = 512


@dataclass
class UVReport:
    usable: bool
    reason: str
    degenerate_fraction: float = 0.0
    overlap_fraction: float = 0.0
    out_of_range: float = 0.0
    details: dict = field(default_factory=dict)


def _triangle_areas_2d(uv: Tensor) -> Tensor:
    a, b, c = uv[:, 0], uv[:, 1], uv[:, 2]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


@torch.no_grad()
def coverage_counts(uvs: Tensor, faces: Tensor, resolution: int) -> Tensor:
    """How many UV triangles cover each texel centre (resolution, resolution), by edge functions.

    Plain torch, triangle by bounding box in chunks: the count (not a z-buffer winner) is
    what overlap needs, which the rasterizer does not give.
    """
    tri = uvs.double()[faces] * resolution  # (F, 3, 2) in texel units
    counts = torch.zeros(resolution * resolution, dtype=torch.int32)
    area = _triangle_areas_2d(tri)
    keep = area.abs() > 1e-12
    tri, area = tri[keep], area[keep]
    lo = tri.amin(1).floor().clamp(0, resolution - 1).long()
    hi = tri.amax(1).ceil().clamp(0, resolution).long()
    size = (hi - lo).clamp_min(1)
    # group triangles by box size so each group is one dense tensor operation
    side = torch.maximum(size[:, 0], size[:, 1])
    for s in torch.unique(side).tolist():
        sel = torch.nonzero(side == s).squeeze(1)
        for chunk in sel.split(max(1, (1 << 22) // (s * s))):
            t, a, o = tri[chunk], area[chunk], lo[chunk]
            r = torch.arange(s)
            xs = (o[:, 0, None] + r)[:, None, :].expand(-1, s, s)  # (n, s, s) columns
            ys = (o[:, 1, None] + r)[:, :, None].expand(-1, s, s)  # rows
            px, py = xs.double() + 0.5, ys.double() + 0.5
            inside = torch.ones_like(px, dtype=torch.bool)
            sign = torch.sign(a)[:, None, None]
            for k in range(3):
                p0, p1 = t[:, k], t[:, (k + 1) % 3]
                e = (p1[:, 0, None, None] - p0[:, 0, None, None]) * (py - p0[:, 1, None, None]) - (
                    p1[:, 1, None, None] - p0[:, 1, None, None]) * (px - p0[:, 0, None, None])
                inside &= e * sign >= 0
            inside &= (xs < resolution) & (ys < resolution)
            idx = (ys * resolution + xs)[inside]
            counts.index_add_(0, idx, torch.ones_like(idx, dtype=torch.int32))
    return counts.view(resolution, resolution)


@torch.no_grad()
def check_uvs(vertices: Tensor, faces: Tensor, uvs: Tensor | None, cfg: UVCheckConfig | None = None) -> UVReport:
    """The verdict on a mesh's UVs (V, 2) in glTF's convention; see the module docstring."""
    cfg = cfg or UVCheckConfig()
    if uvs is None:
        return UVReport(False, "the mesh has no UVs")
    uvs = uvs.detach().double().cpu()
    faces = faces.cpu()
    if not bool(torch.isfinite(uvs).all()):
        return UVReport(False, "the UVs contain NaN or infinity")
    tol = cfg.range_tolerance
    outside = ((uvs < -tol) | (uvs > 1 + tol)).any(-1)
    out_frac = float(outside.double().mean())
    if out_frac > 0:
        return UVReport(False, f"{out_frac:.1%} of the UVs lie outside the unit square (tiled UVs)", out_of_range=out_frac)
    v = vertices.detach().double().cpu()[faces]
    area3 = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1).norm(dim=-1) / 2
    area_uv = _triangle_areas_2d(uvs[faces]).abs()
    share3 = area3 / area3.sum().clamp_min(1e-30)
    share_uv = area_uv / area_uv.sum().clamp_min(1e-30)
    degenerate = share_uv < cfg.degenerate_ratio * share3
    degenerate_frac = float(share3[degenerate].sum())
    if degenerate_frac > cfg.max_degenerate:
        return UVReport(False, f"{degenerate_frac:.1%} of the surface has (almost) no UV area",
                        degenerate_fraction=degenerate_frac)
    counts = coverage_counts(uvs.clamp(0, 1), faces, cfg.resolution)
    covered = int((counts > 0).sum())
    if covered == 0:
        return UVReport(False, "the UV triangles cover no texel", degenerate_fraction=degenerate_frac)
    overlap = float((counts > 1).sum()) / covered
    if overlap > cfg.max_overlap:
        return UVReport(False, f"{overlap:.1%} of the texels are shared by overlapping UV triangles",
                        degenerate_fraction=degenerate_frac, overlap_fraction=overlap)
    return UVReport(True, "usable", degenerate_frac, overlap, 0.0, {"covered_fraction": covered / cfg.resolution ** 2})


__all__ = ["UVCheckConfig", "UVReport", "check_uvs", "coverage_counts"]
