"""Rendering one mesh that never moves, from cameras that repeat: the geometry pass is cached per camera.

Texturing holds the geometry fixed, and its cameras repeat (the known views of
multi-view supervision, a camera pool, the reference view). Rasterising a
mesh of tens of thousands of faces is most of a render on the CPU, and for a
fixed mesh and camera its result (which face covers which pixel, the
barycentrics, the surface points, depth and normals) never changes. So it is
computed once per camera, kept (up to ``max_views`` cameras, oldest dropped
first), and each render only evaluates the colour field at the cached points,
composites and antialiases. The output equals :class:`MeshRenderer`'s torch
path (tested); gradients reach the colours only, as the geometry is constant.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor

from ..camera import Cameras
from ..geometry.mesh import Mesh
from .mesh_renderer import ColorFn, MeshRenderOutput, pixel_normals
from .rasterizer import Rasterized, antialias, barycentrics, interpolate, project, rasterize


@dataclass
class _ViewRaster:
    rast: Rasterized
    screen: Tensor
    pix: Tensor
    points: Tensor
    depth: Tensor
    normals: Tensor


class FixedMeshRenderer:
    """The cached renderer; ``normals`` is the shading normal kind, as :meth:`MeshRenderer.render`'s:
    ``"vertex"`` interpolates area-weighted vertex normals over each face (Magic123's smooth shading),
    ``"face"`` shades each face flat."""

    def __init__(self, mesh: Mesh, max_views: int = 64, normals: str = "vertex") -> None:
        if normals not in ("face", "vertex"):
            raise ValueError(f"normals must be 'face' or 'vertex', not {normals!r}")
        self.mesh = Mesh(mesh.vertices.detach(), mesh.faces)
        self.max_views = max_views
        self.normals = normals
        self._cache: OrderedDict[tuple, _ViewRaster] = OrderedDict()

    @property
    def cached_views(self) -> int:
        """How many cameras' rasterisations are held (at most ``max_views``)."""
        return len(self._cache)

    @staticmethod
    def _key(camera: Cameras) -> tuple:
        return (camera.c2w.detach().cpu().numpy().tobytes(), camera.fov_y.detach().cpu().numpy().tobytes(),
                camera.width, camera.height)

    @torch.no_grad()
    def _view(self, camera: Cameras) -> _ViewRaster:
        key = self._key(camera)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        verts, faces = self.mesh.vertices, self.mesh.faces
        screen, depth = project(verts, camera)
        rast = rasterize(screen, depth, faces, camera.width, camera.height)
        bi, pix, bary = barycentrics(screen, depth, faces, rast)
        points = interpolate(verts, faces, rast, bi, pix, bary)
        depths = interpolate(depth[..., None], faces, rast, bi, pix, bary)
        normals = pixel_normals(self.normals, self.mesh, rast, bi, pix, bary)
        view = _ViewRaster(rast, screen, pix, points, depths, normals)
        self._cache[key] = view
        if len(self._cache) > self.max_views:
            self._cache.popitem(last=False)
        return view

    def render(self, cameras: Cameras, color_fn: ColorFn | None = None, background: Tensor | None = None,
               with_normals: bool = False) -> MeshRenderOutput:
        """Like :meth:`MeshRenderer.render` for this mesh (background (B, 3) or None for black)."""
        verts = self.mesh.vertices
        h, w = cameras.height, cameras.width
        rgbs, opacities, depths, normals, tri_ids = [], [], [], [], []
        for i in range(len(cameras)):
            view = self._view(cameras[i])
            colors = color_fn(view.points) if color_fn is not None else torch.ones_like(view.points)
            bg = background[i] if background is not None else torch.zeros(3, device=verts.device, dtype=verts.dtype)
            image = bg[None, :].expand(h * w, 3).to(colors.dtype).clone().index_put((view.pix,), colors)
            coverage = torch.zeros(h * w, 1, device=verts.device, dtype=image.dtype)
            coverage[view.pix] = 1.0
            both = antialias(torch.cat([image, coverage], -1).view(1, h, w, 4), view.rast, view.screen,
                             self.mesh.faces, self.mesh.n_vertices)
            rgbs.append(both[..., :3])
            opacities.append(both[..., 3:])
            depth = torch.zeros(h * w, 1, device=verts.device, dtype=verts.dtype)
            depth[view.pix] = view.depth.to(depth.dtype)
            depths.append(depth.view(1, h, w, 1))
            if with_normals:
                n = torch.zeros(h * w, 3, device=verts.device, dtype=verts.dtype)
                n[view.pix] = view.normals
                normals.append(n.view(1, h, w, 3))
            tri_ids.append(view.rast.tri_id)
        return MeshRenderOutput(torch.cat(rgbs), torch.cat(opacities), torch.cat(depths),
                                torch.cat(normals) if with_normals else None, torch.cat(tri_ids))


__all__ = ["FixedMeshRenderer"]
