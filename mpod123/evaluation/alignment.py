"""Put another tool's mesh into the reference camera's frame before scoring: a scale and a translation.

Every image-to-3D tool puts the photo's view at the front, but each has its
own scale and origin, and the input photo is re-framed by preprocessing (the
object centred, its long side at 60% of the frame) while a mesh is not. Scored
in the frame it comes in, even the true mesh of a rendered dataset misses its
own input (reference-view IoU 0.49 in the issue that asked for this). So the
evaluation aligns first, with the rotation left as the tool made it:

1. **Moments.** The mesh is centred (its box centre at the origin) and scaled
   into the unit sphere; then the projected vertices' image box from the
   reference camera is matched to the input mask's box (its long side and its
   centre) by a few fixed-point rounds (the projection is perspective).
2. **IoU.** A pattern search over (log scale, sideways shift, upward shift)
   maximises the silhouette IoU with the mask at ``AlignConfig.resolution``,
   halving its steps until they are below a tenth of a pixel or so.

The depth shift stays 0 (one silhouette hardly tells it from the scale). The
transform ``x -> scale * x + translation`` (in the file's units) is recorded;
a final IoU below ``AlignConfig.poor_iou`` is reported as a poor alignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..camera import Cameras
from ..rendering.rasterizer import project, rasterize
from .config import AlignConfig


@dataclass
class Alignment:
    scale: float
    translation: tuple[float, float, float]
    """``aligned = scale * original + translation`` (the rotation is the tool's)."""
    iou_before: float
    iou_after: float
    evaluations: int

    def apply(self, vertices: Tensor) -> Tensor:
        return vertices * self.scale + torch.tensor(self.translation, dtype=vertices.dtype, device=vertices.device)

    def to_dict(self) -> dict:
        return {"scale": self.scale, "translation": list(self.translation), "iou_before": self.iou_before,
                "iou_after": self.iou_after, "evaluations": self.evaluations}


def silhouette(vertices: Tensor, faces: Tensor, camera: Cameras) -> Tensor:
    """(H, W) bool: the pixels whose centre a face covers."""
    screen, depth = project(vertices, camera)
    return rasterize(screen, depth, faces, camera.width, camera.height).tri_id[0] >= 0


def _iou(a: Tensor, b: Tensor) -> float:
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 0.0


def _image_box(vertices: Tensor, camera: Cameras) -> tuple[Tensor, float]:
    """Centre (2,) and long half side of the vertices' projected box, in pixels."""
    screen, _ = project(vertices, camera)
    lo, hi = screen[0].amin(0), screen[0].amax(0)
    return (lo + hi) / 2, float((hi - lo).max()) / 2


def _mask_box(mask: Tensor) -> tuple[Tensor, float]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    lo = torch.stack([xs.min(), ys.min()]).double()
    hi = torch.stack([xs.max(), ys.max()]).double() + 1.0
    return (lo + hi) / 2, float((hi - lo).max()) / 2


def align_to_reference(vertices: Tensor, faces: Tensor, mask: Tensor, camera: Cameras,
                       cfg: AlignConfig | None = None) -> Alignment:
    """The scale and translation that best overlay the mesh's silhouette from ``camera`` (one view, any
    size: it is resized to ``cfg.resolution``) on ``mask`` (H, W) bool, the input's preprocessed alpha."""
    cfg = cfg or AlignConfig()
    if not bool(mask.any()):
        raise ValueError("the reference mask is empty: nothing to align the mesh to")
    v = vertices.detach().double().cpu()  # the transform is solved in float64, silhouettes are drawn in float32
    faces = faces.cpu()
    cam = camera.resized(cfg.resolution, cfg.resolution)
    cam32 = Cameras(cam.c2w.float().cpu(), cam.fov_y.float().cpu(), cam.width, cam.height)
    cam = Cameras(cam.c2w.double().cpu(), cam.fov_y.double().cpu(), cam.width, cam.height)
    target = _resize_mask(mask.cpu(), cfg.resolution)
    iou_before = _iou(silhouette(v.float(), faces, cam32), target)
    c2w = cam.c2w[0]
    right, up, back = c2w[:3, 0], c2w[:3, 1], c2w[:3, 2]
    centre_at = c2w[:3, 3] - (c2w[:3, 3] @ back) * back  # the point of the camera's axis nearest the origin
    distance = float(c2w[:3, 3] @ back)
    f = float(cam.focal[0])

    # 1. moments: centred in the unit sphere, then the image boxes matched
    box_centre = (v.amin(0) + v.amax(0)) / 2
    radius = float((v - box_centre).norm(dim=-1).max())
    if not radius > 0:
        raise ValueError("the mesh is a single point: nothing to align")
    scale, shift = 1.0 / radius, centre_at.clone()  # aligned = scale * (v - box_centre) + shift
    want_centre, want_half = _mask_box(target)
    limit = 0.9 * distance  # no vertex may reach the camera
    for _ in range(4):
        placed = scale * (v - box_centre) + shift
        got_centre, got_half = _image_box(placed, cam)
        scale = min(scale * want_half / max(got_half, 1e-9), limit / radius)
        dx, dy = (want_centre - got_centre).tolist()
        shift = shift + (dx * right - dy * up) * distance / f  # pixels -> world at the object's depth

    # 2. IoU: a pattern search over (log scale, shift along right, shift along up)
    def score(params: tuple[float, float, float]) -> float:
        s = min(scale * math.exp(params[0]), limit / radius)
        placed = s * (v - box_centre) + shift + params[1] * right + params[2] * up
        return _iou(silhouette(placed.float(), faces, cam32), target)

    pixel = distance / f  # world size of one pixel at the object's depth
    params, best = [0.0, 0.0, 0.0], score((0.0, 0.0, 0.0))
    steps = [0.04, 2.0 * pixel, 2.0 * pixel]
    evaluations = 1
    while evaluations < cfg.max_evaluations and steps[1] > 0.1 * pixel:
        improved = False
        for k in range(3):
            for sign in (1.0, -1.0):
                trial = list(params)
                trial[k] += sign * steps[k]
                value = score(tuple(trial))
                evaluations += 1
                if value > best:
                    params, best, improved = trial, value, True
                    break
        if not improved:
            steps = [s / 2 for s in steps]
    s = min(scale * math.exp(params[0]), limit / radius)
    translation = shift + params[1] * right + params[2] * up - s * box_centre
    return Alignment(float(s), tuple(float(x) for x in translation), iou_before, best, evaluations)


def _resize_mask(mask: Tensor, side: int) -> Tensor:
    """Area-resample a square mask to ``side`` and threshold at one half."""
    if mask.shape[0] == side and mask.shape[1] == side:
        return mask.bool()
    m = torch.nn.functional.interpolate(mask.float()[None, None], size=(side, side), mode="area")
    return m[0, 0] >= 0.5


__all__ = ["AlignConfig", "Alignment", "align_to_reference", "silhouette"]
