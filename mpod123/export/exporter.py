"""Export a mesh and its colour field: UV unwrap, texture bake, GLB (and OBJ + MTL + PNG).

Every file is built and validated in memory, written to a temporary name next
to its destination and renamed into place, so a result path never holds a
partial or invalid file, and an existing file is only replaced by a valid one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import ExportConfig
from ..geometry.mesh import Mesh
from ..imaging.images import png_bytes
from .bake import bake_texture
from .decimate import decimate
from .gltf import encode_glb, validate_glb
from .obj import encode_mtl, encode_obj
from .uv import unwrap


@dataclass
class ExportResult:
    glb: Path
    obj: Path | None
    n_vertices: int
    n_faces: int
    uv_backend: str
    texture_size: int
    seconds: dict[str, float] = field(default_factory=dict)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def unit_normals(mesh: Mesh) -> Tensor:
    """Area-weighted vertex normals, each of unit length (glTF requires it of NORMAL).

    Where the faces around a vertex cancel (a fold), the normal of its largest
    face stands in; a vertex whose faces all have zero area gets +Y.
    """
    normals = mesh.vertex_normals().double()
    bad = normals.norm(dim=-1) < 0.5
    if bool(bad.any()):
        face_n = mesh.face_normals(normalize=False).double()
        area = face_n.norm(dim=-1)
        best = torch.zeros(mesh.n_vertices, dtype=area.dtype, device=area.device)
        pick = torch.zeros(mesh.n_vertices, 3, dtype=area.dtype, device=area.device)
        for k in range(3):  # largest face per vertex, in three scatter passes
            v = mesh.faces[:, k]
            best = best.scatter_reduce(0, v, area, reduce="amax")
        for k in range(3):
            v = mesh.faces[:, k]
            hit = area >= best[v]
            pick[v[hit]] = face_n[hit]
        fallback = torch.tensor([0.0, 1.0, 0.0], dtype=area.dtype, device=area.device)
        pick = torch.where(pick.norm(dim=-1, keepdim=True) > 0, pick, fallback)
        normals[bad] = pick[bad] / pick[bad].norm(dim=-1, keepdim=True)
    return normals / normals.norm(dim=-1, keepdim=True)


def export_mesh(
    mesh: Mesh, color_fn: Callable[[Tensor], Tensor], out_glb: str | Path, cfg: ExportConfig | None = None
) -> ExportResult:
    """Unwrap, bake and write ``out_glb`` (plus OBJ/MTL/PNG beside it when ``cfg.obj``)."""
    cfg = cfg or ExportConfig()
    out_glb = Path(out_glb)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    mesh = Mesh(mesh.vertices.detach(), mesh.faces).cleaned()
    if cfg.target_faces is not None:
        mesh = decimate(mesh, cfg.target_faces)
        timings["decimate_s"] = time.perf_counter() - t0
    t_uv = time.perf_counter()
    uv_mesh = unwrap(mesh, cfg.uv_backend, cfg.texture_size, cfg.uv_timeout_s)
    timings["unwrap_s"] = time.perf_counter() - t_uv
    t1 = time.perf_counter()
    texture, _ = bake_texture(uv_mesh, color_fn, cfg.texture_size, cfg.padding)
    timings["bake_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    png = png_bytes(texture.float().cpu().numpy())
    positions = uv_mesh.vertices.float().cpu().numpy()
    normals = unit_normals(mesh)[uv_mesh.source].float().cpu().numpy()  # welded: smooth across seams
    uvs = uv_mesh.uvs.float().cpu().numpy()
    indices = uv_mesh.faces.cpu().numpy().astype(np.uint32)
    name = out_glb.stem
    glb = encode_glb(positions, indices, uvs, normals, png, name=name)
    validate_glb(glb)
    _atomic_write(out_glb, glb)
    obj_path = None
    if cfg.obj:
        obj_path = out_glb.with_suffix(".obj")
        tex_name, mtl_name = f"{name}_basecolor.png", f"{name}.mtl"
        _atomic_write(out_glb.with_name(tex_name), png)
        _atomic_write(out_glb.with_name(mtl_name), encode_mtl(name, tex_name).encode())
        _atomic_write(obj_path, encode_obj(positions, indices.astype(np.int64), uvs, normals, mtl_name, name).encode())
    timings["write_s"] = time.perf_counter() - t2
    return ExportResult(out_glb, obj_path, positions.shape[0], indices.shape[0], uv_mesh.backend, cfg.texture_size, timings)


@torch.no_grad()
def read_mesh(path: str | Path) -> Mesh:
    """World-space positions and faces of any .glb, .gltf or .obj (see :mod:`mpod123.export.reader`)."""
    from .reader import read_mesh_file

    asset = read_mesh_file(path)
    return Mesh(torch.from_numpy(asset.positions), torch.from_numpy(asset.faces))
