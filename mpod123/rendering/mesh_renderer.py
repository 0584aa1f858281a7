"""Render a textured mesh: colour from a field evaluated at the surface, opacity, depth, normals.

The torch path is :mod:`mpod123.rendering.rasterizer`; the nvdiffrast path uses
its CUDA rasterizer (``RasterizeCudaContext``, never OpenGL), ``interpolate``
and ``antialias``. Both return the same :class:`MeshRenderOutput`, and in both
the mask (opacity) passes through the antialiasing step together with the
colour, which is what gives L_nvm and the reference mask loss their gradients
with respect to vertex positions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..camera import Cameras, orbit_cameras
from ..geometry.marching_tets import marching_tets_reference
from ..geometry.mesh import Mesh
from ..geometry.tet_grid import tet_grid
from ..runtime.accelerators import probe, resolve_backend
from ..runtime.selftest import register as register_self_test
from ..runtime.syncs import Compactor, takes_gpu_paths
from .rasterizer import Rasterized, antialias, barycentrics, interpolate, project, rasterize

ColorFn = Callable[[Tensor], Tensor]


@dataclass
class MeshRenderOutput:
    rgb: Tensor
    """(B, H, W, 3) colour over the background, antialiased."""
    opacity: Tensor
    """(B, H, W, 1) antialiased coverage."""
    depth: Tensor
    """(B, H, W, 1) depth along the camera axis, 0 on the background."""
    normals: Tensor | None
    """(B, H, W, 3) world unit normals (face normals, or interpolated vertex normals), zero on
    the background, when asked for."""
    tri_id: Tensor
    """(B, H, W) face index, -1 on the background."""

    @property
    def mask(self) -> Tensor:
        return self.tri_id >= 0


def clip_space(vertices: Tensor, cameras: Cameras, near: float = 0.01, far: float = 100.0) -> tuple[Tensor, Tensor]:
    """OpenGL clip coordinates (B, V, 4) whose perspective divide gives :func:`project`'s screen
    positions, and the depths (B, V).

    Formed without dividing by depth (x_clip = 2 f X / W, z_clip = a d + b, w = d), so a
    vertex at depth 0 gives finite values and nvdiffrast clips it, rather than NaN.
    nvdiffrast's row 0 is the bottom of the image: y points up here, and the renderer
    flips its output back.
    """
    rot = cameras.c2w[:, :3, :3]
    cam = torch.einsum("bji,bvj->bvi", rot, vertices[None] - cameras.c2w[:, None, :3, 3])
    depth = -cam[..., 2]
    f = cameras.focal.to(vertices.dtype)[:, None]
    x_clip = 2.0 * f * cam[..., 0] / cameras.width
    y_clip = 2.0 * f * cam[..., 1] / cameras.height
    z_clip = (far + near) / (far - near) * depth - 2.0 * far * near / (far - near)
    return torch.stack([x_clip, y_clip, z_clip, depth], dim=-1), depth


def pixel_normals(kind: str, mesh: Mesh, rast: Rasterized, bi: Tensor, pix: Tensor, bary: Tensor) -> Tensor:
    """The shading normal (N, 3) at each covered pixel (``bi``, ``pix``): ``"vertex"`` interpolates the
    area-weighted vertex normals across the face and renormalises (Magic123), ``"face"`` is flat."""
    if kind == "vertex":
        return F.normalize(interpolate(mesh.vertex_normals(), mesh.faces, rast, bi, pix, bary), dim=-1, eps=1e-12)
    return mesh.face_normals()[rast.tri_id.reshape(rast.tri_id.shape[0], -1)[bi, pix]]


class MeshRenderer:
    def __init__(self, backend: str = "auto", device: torch.device | str = "cpu") -> None:
        self.backend = resolve_backend(backend, "nvdiffrast", device)
        self._glctx = None
        self.compactor = Compactor()
        """Fixed-size gathers of covered pixels on a GPU (nvdiffrast path); the stage refreshes it."""
        if self.backend == "nvdiffrast":
            self._dr = probe("nvdiffrast")
            self._glctx = self._dr.RasterizeCudaContext(device=device)

    def render(
        self,
        mesh: Mesh,
        cameras: Cameras,
        color_fn: ColorFn | None = None,
        background: Tensor | None = None,
        with_normals: bool = False,
        normals: str = "face",
    ) -> MeshRenderOutput:
        """Render ``mesh`` from ``cameras``; ``color_fn`` maps surface points (N, 3) to RGB (N, 3).

        Without ``color_fn`` the surface is white. ``background`` is (B, 3) or None (black).
        ``normals``: "face" (flat) or "vertex" (the vertex normals interpolated across each face
        and renormalised, Magic123's shading normals), for ``with_normals``.
        """
        if normals not in ("face", "vertex"):
            raise ValueError(f"normals must be 'face' or 'vertex', not {normals!r}")
        if self.backend == "nvdiffrast":
            return self._render_nvdiffrast(mesh, cameras, color_fn, background, with_normals, normals)
        b, h, w = len(cameras), cameras.height, cameras.width
        verts, faces = mesh.vertices, mesh.faces
        screen, depth = project(verts, cameras)
        rast = rasterize(screen.detach(), depth.detach(), faces, w, h)
        bi, pix, bary = barycentrics(screen, depth, faces, rast)
        points = interpolate(verts, faces, rast, bi, pix, bary)
        colors = color_fn(points) if color_fn is not None else torch.ones_like(points)
        bg = background if background is not None else torch.zeros(b, 3, device=verts.device, dtype=verts.dtype)
        image = bg[:, None, :].expand(b, h * w, 3).clone()
        image = image.index_put((bi, pix), colors.to(image.dtype))
        coverage = torch.zeros(b, h * w, 1, device=verts.device, dtype=verts.dtype).index_put(
            (bi, pix), torch.ones(bi.shape[0], 1, device=verts.device, dtype=verts.dtype)
        )
        both = antialias(torch.cat([image, coverage], -1).view(b, h, w, 4), rast, screen, faces, mesh.n_vertices)
        depth_img = torch.zeros(b, h * w, 1, device=verts.device, dtype=verts.dtype).index_put(
            (bi, pix), interpolate(depth[..., None], faces, rast, bi, pix, bary)
        )
        normal_img = None
        if with_normals:
            fn = pixel_normals(normals, mesh, rast, bi, pix, bary)
            normal_img = torch.zeros(b, h * w, 3, device=verts.device, dtype=verts.dtype).index_put((bi, pix), fn)
            normal_img = normal_img.view(b, h, w, 3)
        return MeshRenderOutput(both[..., :3], both[..., 3:], depth_img.view(b, h, w, 1), normal_img, rast.tri_id)

    # ------------------------------------------------------------------ nvdiffrast
    def _render_nvdiffrast(
        self, mesh: Mesh, cameras: Cameras, color_fn: ColorFn | None, background: Tensor | None, with_normals: bool,
        normal_kind: str = "face",
    ) -> MeshRenderOutput:
        dr = self._dr
        b, h, w = len(cameras), cameras.height, cameras.width
        verts, faces = mesh.vertices, mesh.faces.int()
        clip, depth = clip_space(verts, cameras)
        rast, _ = dr.rasterize(self._glctx, clip.float().contiguous(), faces, (h, w))
        points, _ = dr.interpolate(verts[None].expand(b, -1, -1).contiguous(), rast, faces)
        covered = rast[..., 3:] > 0
        bg = background if background is not None else torch.zeros(b, 3, device=verts.device)
        image = bg[:, None, None, :].expand(b, h, w, 3).clone()
        if takes_gpu_paths(verts.device):  # covered pixels gathered at a fixed size: no host sync
            n_pix = b * h * w
            idx, valid = self.compactor.nonzero(covered[..., 0], ("pixels", n_pix))
            flat_pts = points.reshape(n_pix, 3)[idx]
            colors = color_fn(flat_pts) if color_fn is not None else torch.ones_like(flat_pts)
            padded = torch.cat([image.reshape(n_pix, 3), image.new_zeros(1, 3)])  # padding writes to a spare row
            target = torch.where(valid, idx, n_pix)
            image = padded.index_put((target,), colors.to(image.dtype))[:n_pix].view(b, h, w, 3)
        else:
            flat_pts = points[covered[..., 0]]
            colors = color_fn(flat_pts) if color_fn is not None else torch.ones_like(flat_pts)
            image[covered[..., 0]] = colors.to(image.dtype)
        both = dr.antialias(torch.cat([image, covered.float()], -1).contiguous(), rast, clip, faces)
        tri_id = rast[..., 3].long() - 1
        d, _ = dr.interpolate(depth[..., None].contiguous(), rast, faces)
        normals = None
        if with_normals and normal_kind == "vertex":
            vn, _ = dr.interpolate(mesh.vertex_normals()[None].expand(b, -1, -1).contiguous(), rast, faces)
            normals = torch.where(covered, F.normalize(vn, dim=-1, eps=1e-12), torch.zeros_like(image))
        elif with_normals:
            fn = mesh.face_normals()
            normals = torch.where(covered, fn[tri_id.clamp_min(0)], torch.zeros_like(image))
        out = MeshRenderOutput(both[..., :3], both[..., 3:], d * covered, normals, tri_id)
        return MeshRenderOutput(
            *(t.flip(1) if t is not None else None for t in (out.rgb, out.opacity, out.depth, out.normals, out.tri_id))
        )


def nvdiffrast_self_test(device: torch.device) -> None:
    """nvdiffrast's parity self-test (registered below): a sphere's coverage from both rasterizers."""
    g = tet_grid(8)
    sphere = marching_tets_reference(g.vertices, g.vertices.norm(dim=-1) - 0.5, g.tets)
    mesh = Mesh(sphere.vertices.float().to(device), sphere.faces.to(device))
    cams = orbit_cameras([90.0], [30.0], 2.5, 40.0, 32, device=device)
    with torch.no_grad():
        a = MeshRenderer("torch", device).render(mesh, cams)
        b = MeshRenderer("nvdiffrast", device).render(mesh, cams)
    agree = float((a.mask == b.mask).float().mean())
    if agree < 0.98:
        raise AssertionError(f"coverage agrees on only {agree:.3f} of the pixels")


register_self_test("nvdiffrast", nvdiffrast_self_test)
