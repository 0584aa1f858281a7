"""A mesh file's textured surface, rendered with its base colour by our torch rasterizer.

Any glTF 2.0 file (GLB or .gltf) or OBJ is read through
:func:`mpod123.export.reader.read_mesh_file` (trimesh underneath): every node's
world transform applied, all primitives merged, one material per face. Per
covered pixel the rasterizer's perspective-correct barycentrics interpolate
the vertices' TEXCOORD_0 (the texture transform already applied), and the
face's material texture is sampled bilinearly with glTF's convention:
(u, v) = (0, 0) is the image's top-left corner, v runs downwards, texel (i, j)
has its centre at ((j + 0.5) / W, (i + 0.5) / H) (this is how
:mod:`mpod123.export.bake` writes texels), and each axis wraps as the
material's sampler says (REPEAT, MIRRORED_REPEAT or CLAMP_TO_EDGE, the last
being what our exporter declares). The colour is baseColorFactor times the
texture. Colours are unlit albedo, like the renders the stages are trained
against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..camera import Cameras
from ..geometry import Mesh
from ..rendering.rasterizer import (
    antialias,
    barycentrics,
    interpolate,
    project,
    rasterize,
)
from .config import EvalInputError

REPEAT, CLAMP_TO_EDGE, MIRRORED_REPEAT = 10497, 33071, 33648


@dataclass
class Material:
    """A base colour: ``factor`` (3,) times ``texture`` (H, W, 3) when there is one, wrapped per ``wrap``."""

    factor: Tensor
    texture: Tensor | None = None
    wrap: tuple[int, int] = (CLAMP_TO_EDGE, CLAMP_TO_EDGE)

    def to(self, device: torch.device | str) -> Material:
        return Material(self.factor.to(device), self.texture.to(device) if self.texture is not None else None, self.wrap)


@dataclass
class TexturedMesh:
    vertices: Tensor
    """(V, 3) float32 positions in our world (glTF's: Y-up, front +Z)."""
    faces: Tensor
    """(F, 3) int64 vertex indices."""
    uvs: Tensor | None
    """(V, 2) glTF texture coordinates, or None for an untextured mesh."""
    texture: Tensor | None
    """(H, W, 3) base colour in [0, 1] (sRGB values as stored) of a single-texture mesh, or None.
    Given alone (no ``materials``), it is every face's texture, clamped to the edge."""
    materials: list[Material] = field(default_factory=list)
    """Per-material base colours; empty means one material made from ``texture`` (or white)."""
    face_material: Tensor | None = None
    """(F,) int64 index into ``materials``; None means material 0 everywhere."""

    def __post_init__(self) -> None:
        if not self.materials:
            self.materials = [Material(torch.ones(3, dtype=self.vertices.dtype, device=self.vertices.device), self.texture)]

    @property
    def textured(self) -> bool:
        return self.uvs is not None and any(m.texture is not None for m in self.materials)

    def to(self, device: torch.device | str) -> TexturedMesh:
        move = (lambda t: t.to(device) if t is not None else None)
        return TexturedMesh(move(self.vertices), move(self.faces), move(self.uvs), move(self.texture),
                            [m.to(device) for m in self.materials], move(self.face_material))


def load_mesh_file(path: str | Path) -> TexturedMesh:
    """Read a .glb, .gltf or .obj with its base colours; a clear error for anything unusable."""
    from ..export.reader import MeshReadError, read_mesh_file

    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"no result file at {path}: pass the GLB that `mpod123 generate` wrote")
    try:
        asset = read_mesh_file(path)
    except MeshReadError as exc:
        kind = {".glb": "GLB", ".gltf": "glTF", ".obj": "OBJ"}.get(path.suffix.lower(), "mesh")
        raise EvalInputError(f"{path} is not a usable {kind}: {exc}") from None
    if asset.faces.shape[0] == 0:
        raise EvalInputError(f"{path} has no faces: nothing to render")
    materials = [
        Material(torch.from_numpy(np.asarray(m.factor, np.float32)),
                 torch.from_numpy(m.texture) if m.texture is not None else None, m.wrap)
        for m in asset.materials
    ]
    textures = [m.texture for m in materials if m.texture is not None]
    uvs = torch.from_numpy(asset.uvs) if asset.uvs is not None else None
    return TexturedMesh(
        torch.from_numpy(asset.positions), torch.from_numpy(asset.faces), uvs,
        textures[0] if len(textures) == 1 else None, materials, torch.from_numpy(asset.face_material),
    )


load_glb = load_mesh_file
"""The name the evaluation used when it read only GLBs."""


def _wrap_index(i: Tensor, n: int, mode: int) -> Tensor:
    if mode == REPEAT:
        return torch.remainder(i, n)
    if mode == MIRRORED_REPEAT:
        period = torch.remainder(i, 2 * n)
        return torch.where(period < n, period, 2 * n - 1 - period)
    return i.clamp(0, n - 1)


def sample_texture(texture: Tensor, uv: Tensor, wrap: tuple[int, int] = (CLAMP_TO_EDGE, CLAMP_TO_EDGE)) -> Tensor:
    """Bilinear samples (N, C) of ``texture`` (H, W, C) at glTF coordinates ``uv`` (N, 2), wrapped per axis."""
    h, w = texture.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = uv[:, 1] * h - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.long(), y0.long()
    xs = (_wrap_index(x0, w, wrap[0]), _wrap_index(x0 + 1, w, wrap[0]))
    ys = (_wrap_index(y0, h, wrap[1]), _wrap_index(y0 + 1, h, wrap[1]))
    top = texture[ys[0], xs[0]] * (1 - fx) + texture[ys[0], xs[1]] * fx
    bottom = texture[ys[1], xs[0]] * (1 - fx) + texture[ys[1], xs[1]] * fx
    return top * (1 - fy) + bottom * fy


def shade(mesh: TexturedMesh, face: Tensor, uv: Tensor | None) -> Tensor:
    """Base colours (N, 3) of surface points on faces ``face`` (N,) at texture coordinates ``uv`` (N, 2)."""
    material = mesh.face_material[face] if mesh.face_material is not None else torch.zeros_like(face)
    colors = torch.ones(face.shape[0], 3, dtype=mesh.vertices.dtype, device=mesh.vertices.device)
    for k, m in enumerate(mesh.materials):
        sel = material == k
        if not bool(sel.any()):
            continue
        c = m.factor.to(colors).expand(int(sel.sum()), 3)
        if m.texture is not None and uv is not None:
            c = c * sample_texture(m.texture.to(colors), uv[sel], m.wrap)
        colors[sel] = c
    return colors


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
    _, position = Mesh(mesh.vertices, mesh.faces).welded()  # UV seams split vertices: not silhouettes
    for i in range(len(cameras)):
        cam = cameras[i]
        h, w = cam.height, cam.width
        screen, depth = project(mesh.vertices, cam)
        rast = rasterize(screen, depth, mesh.faces, w, h)
        bi, pix, bary = barycentrics(screen, depth, mesh.faces, rast)
        face = rast.tri_id.reshape(rast.tri_id.shape[0], -1)[bi, pix]
        uv = interpolate(mesh.uvs.to(mesh.vertices), mesh.faces, rast, bi, pix, bary) if mesh.uvs is not None else None
        colors = shade(mesh, face, uv)
        image = torch.full((h * w, 4), background, dtype=mesh.vertices.dtype, device=mesh.vertices.device)
        image[:, 3] = 0.0
        image[pix, :3] = colors.clamp(0, 1)
        image[pix, 3] = 1.0
        both = antialias(image.view(1, h, w, 4), rast, screen, mesh.faces, mesh.vertices.shape[0], position)[0]
        rgbs.append(both[..., :3].clamp(0, 1))
        opacities.append(both[..., 3].clamp(0, 1))
        covers.append(rast.tri_id[0] >= 0)
    return TexturedRender(torch.stack(rgbs), torch.stack(opacities), torch.stack(covers))
