"""A GLB's textured mesh, rendered with its base-colour texture by our torch rasterizer.

Per covered pixel the rasterizer's perspective-correct barycentrics interpolate
the vertices' TEXCOORD_0, and the texture is sampled bilinearly with glTF's
convention: (u, v) = (0, 0) is the image's top-left corner, v runs downwards,
texel (i, j) has its centre at ((j + 0.5) / W, (i + 0.5) / H) (this is how
:mod:`mpod123.export.bake` writes texels), and the sampler clamps to the edge
(CLAMP_TO_EDGE, what our exporter declares). Colours are unlit albedo, like the
renders the stages are trained against. Only the first primitive is read and
node transforms are ignored (our exporter writes none).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..camera import Cameras
from ..rendering.rasterizer import (
    antialias,
    barycentrics,
    interpolate,
    project,
    rasterize,
)
from .config import EvalInputError


@dataclass
class TexturedMesh:
    vertices: Tensor
    """(V, 3) float32 positions in our world (glTF's: Y-up, front +Z)."""
    faces: Tensor
    """(F, 3) int64 vertex indices."""
    uvs: Tensor | None
    """(V, 2) glTF texture coordinates, or None for an untextured mesh (rendered white)."""
    texture: Tensor | None
    """(H, W, 3) base colour in [0, 1] (sRGB values as stored), or None."""

    @property
    def textured(self) -> bool:
        return self.uvs is not None and self.texture is not None

    def to(self, device: torch.device | str) -> TexturedMesh:
        move = (lambda t: t.to(device) if t is not None else None)
        return TexturedMesh(move(self.vertices), move(self.faces), move(self.uvs), move(self.texture))


def load_glb(path: str | Path) -> TexturedMesh:
    """Read a GLB's first primitive and its baseColorTexture; a clear error for anything else."""
    from ..export.gltf import GLBError, parse_glb

    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"no result file at {path}: pass the GLB that `mpod123 generate` wrote")
    try:
        glb = parse_glb(path.read_bytes())
    except GLBError as exc:
        raise EvalInputError(f"{path} is not a usable GLB: {exc}") from None
    if glb.indices.shape[0] == 0:
        raise EvalInputError(f"{path} has no faces: nothing to render")
    texture = None
    if glb.texture_png is not None:
        try:
            img = Image.open(io.BytesIO(glb.texture_png)).convert("RGB")
        except OSError as exc:
            raise EvalInputError(f"the texture in {path} does not decode: {exc}") from None
        texture = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    uvs = torch.from_numpy(glb.uvs.astype(np.float32)) if glb.uvs is not None else None
    return TexturedMesh(
        torch.from_numpy(glb.positions.astype(np.float32)), torch.from_numpy(glb.indices.astype(np.int64)), uvs, texture
    )


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear samples (N, C) of ``texture`` (H, W, C) at glTF coordinates ``uv`` (N, 2), clamped to the edge."""
    h, w = texture.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = uv[:, 1] * h - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.long(), y0.long()
    xs = (x0.clamp(0, w - 1), (x0 + 1).clamp(0, w - 1))
    ys = (y0.clamp(0, h - 1), (y0 + 1).clamp(0, h - 1))
    top = texture[ys[0], xs[0]] * (1 - fx) + texture[ys[0], xs[1]] * fx
    bottom = texture[ys[1], xs[0]] * (1 - fx) + texture[ys[1], xs[1]] * fx
    return top * (1 - fy) + bottom * fy


@dataclass
class TexturedRender:
    rgb: Tensor
    """(B, H, W, 3) colour over the background, silhouettes antialiased."""
    opacity: Tensor
    """(B, H, W) antialiased coverage in [0, 1]."""
    covered: Tensor
    """(B, H, W) bool: a face covers the pixel centre."""


@torch.no_grad()
def render_textured(mesh: TexturedMesh, cameras: Cameras, background: float = 1.0) -> TexturedRender:
    """Render ``mesh`` with its texture (white without one) from each camera, one view at a time."""
    rgbs, opacities, covers = [], [], []
    for i in range(len(cameras)):
        cam = cameras[i]
        h, w = cam.height, cam.width
        screen, depth = project(mesh.vertices, cam)
        rast = rasterize(screen, depth, mesh.faces, w, h)
        bi, pix, bary = barycentrics(screen, depth, mesh.faces, rast)
        if mesh.textured:
            colors = sample_texture(mesh.texture, interpolate(mesh.uvs, mesh.faces, rast, bi, pix, bary))
        else:
            colors = torch.ones(pix.shape[0], 3, dtype=mesh.vertices.dtype, device=mesh.vertices.device)
        image = torch.full((h * w, 4), background, dtype=mesh.vertices.dtype, device=mesh.vertices.device)
        image[:, 3] = 0.0
        image[pix, :3] = colors.clamp(0, 1)
        image[pix, 3] = 1.0
        both = antialias(image.view(1, h, w, 4), rast, screen, mesh.faces, mesh.vertices.shape[0])[0]
        rgbs.append(both[..., :3].clamp(0, 1))
        opacities.append(both[..., 3].clamp(0, 1))
        covers.append(rast.tri_id[0] >= 0)
    return TexturedRender(torch.stack(rgbs), torch.stack(opacities), torch.stack(covers))
