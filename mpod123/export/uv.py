"""UV unwrapping: xatlas in a subprocess, or a per-triangle atlas in torch that always works.

xatlas can crash the whole process (a segfault on very regular meshes has been
seen), so it runs in a child process with a timeout. A crash is retried once
on a copy of the mesh with a tiny jitter; if that fails too, ``auto`` falls
back to the torch atlas with a warning and ``xatlas`` raises
:class:`UnwrapError` saying what to do. The backend process never dies.

The torch atlas pairs triangles into the cells of a square grid, each triangle
in one half of a cell with a margin, so every face gets its own island. It is
wasteful in texels but needs no dependency and cannot fail.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..geometry.mesh import Mesh
from ..runtime.errors import Mpod123Error


class UnwrapError(Mpod123Error, RuntimeError):
    """UV unwrapping failed; the message says what to try instead."""


@dataclass
class UVMesh:
    """A mesh split along UV seams: every vertex has one UV (glTF's model)."""

    vertices: Tensor
    """(V', 3) positions."""
    faces: Tensor
    """(F, 3) int64 indices into ``vertices`` and ``uvs``."""
    uvs: Tensor
    """(V', 2) texture coordinates in [0, 1], origin at the image's top-left (glTF)."""
    source: Tensor
    """(V',) the original mesh vertex each split vertex came from (for welded normals)."""
    backend: str


def triangle_atlas(mesh: Mesh, texture_size: int = 1024, margin_px: float = 2.0) -> UVMesh:
    """One island per triangle: triangles paired into grid cells, each in one half."""
    n_faces = mesh.n_faces
    cells = max(1, math.ceil(n_faces / 2))
    side = math.ceil(math.sqrt(cells))
    cell = 1.0 / side
    m = min(margin_px / texture_size, 0.2 * cell)
    f = torch.arange(n_faces)
    c = f // 2
    upper = (f % 2).bool()
    x0 = (c % side).double() * cell
    y0 = (c // side).double() * cell
    lo, hi = m, cell - m
    # lower-left half: (lo, lo), (hi - m, lo), (lo, hi - m); upper-right mirrors it
    a = torch.stack([x0 + lo, y0 + lo], -1)
    b = torch.stack([x0 + hi - m, y0 + lo], -1)
    d = torch.stack([x0 + lo, y0 + hi - m], -1)
    a2 = torch.stack([x0 + hi, y0 + hi], -1)
    b2 = torch.stack([x0 + lo + m, y0 + hi], -1)
    d2 = torch.stack([x0 + hi, y0 + lo + m], -1)
    corners = torch.where(upper[:, None, None], torch.stack([a2, b2, d2], 1), torch.stack([a, b, d], 1))
    vertices = mesh.vertices.detach()[mesh.faces].reshape(-1, 3)
    uvs = corners.reshape(-1, 2).to(vertices.dtype)
    faces = torch.arange(3 * n_faces).reshape(-1, 3)
    return UVMesh(vertices, faces, uvs, mesh.faces.reshape(-1), "torch")


def _run_xatlas(vertices: np.ndarray, faces: np.ndarray, timeout_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, vertices=vertices.astype(np.float32), faces=faces.astype(np.uint32))
        proc = subprocess.run(
            [sys.executable, "-m", "mpod123.export._xatlas_worker", str(src), str(dst)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if proc.returncode != 0 or not dst.is_file():
            raise UnwrapError(f"xatlas exited with code {proc.returncode}: {proc.stderr.strip()[-500:]}")
        with np.load(dst) as out:
            return out["vmapping"], out["indices"], out["uvs"]


def xatlas_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("xatlas") is not None


def unwrap(mesh: Mesh, backend: str = "auto", texture_size: int = 1024, timeout_s: float = 600.0) -> UVMesh:
    """UV-unwrap ``mesh`` with ``backend`` "auto", "xatlas" or "torch" (see the module docstring)."""
    if backend not in ("auto", "xatlas", "torch"):
        raise ValueError(f"uv backend must be auto, xatlas or torch, not {backend!r}")
    if mesh.n_faces == 0:
        raise UnwrapError("the mesh has no faces: there is nothing to unwrap (did the optimisation lose the object?)")
    if int(mesh.faces.min()) < 0 or int(mesh.faces.max()) >= mesh.n_vertices:
        raise UnwrapError("the mesh's faces index vertices that do not exist; it cannot be exported")
    if backend == "torch":
        return triangle_atlas(mesh, texture_size)
    if not xatlas_available():
        if backend == "xatlas":
            raise UnwrapError("xatlas is not installed: pip install xatlas (or use the torch atlas)")
        warnings.warn("xatlas is not installed; using the per-triangle atlas", stacklevel=2)
        return triangle_atlas(mesh, texture_size)
    verts = mesh.vertices.detach().cpu().double().numpy()
    faces = mesh.faces.cpu().numpy()
    errors = []
    for attempt in range(2):
        v = verts
        if attempt:  # a tiny jitter gets xatlas past the degenerate cases that crash it
            extent = float(np.ptp(verts, axis=0).max()) or 1.0
            v = verts + np.random.default_rng(0).normal(scale=1e-6 * extent, size=verts.shape)
        try:
            vmapping, indices, uvs = _run_xatlas(v, faces, timeout_s)
        except (UnwrapError, subprocess.TimeoutExpired) as exc:
            errors.append(str(exc))
            continue
        source = torch.from_numpy(vmapping.astype(np.int64)).to(mesh.vertices.device)
        return UVMesh(
            mesh.vertices.detach()[source],
            torch.from_numpy(indices.astype(np.int64)).to(mesh.faces.device),
            torch.from_numpy(uvs.astype(np.float32)).to(mesh.vertices.device),
            source,
            "xatlas",
        )
    if backend == "xatlas":
        raise UnwrapError("xatlas failed twice (" + "; ".join(errors) + "); export with uv backend 'torch' instead")
    warnings.warn("xatlas failed (" + "; ".join(errors) + "); using the per-triangle atlas", stacklevel=2)
    return triangle_atlas(mesh, texture_size)
