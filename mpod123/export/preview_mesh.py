"""Live 3D previews: the current shape of a stage as a small, vertex-coloured GLB.

Why: an artist judges a 3D result by orbiting it, and a job runs for minutes.
Every few steps each stage sends its current surface, small enough to stream
(a few thousand faces, about 100 kB) and cheap enough not to slow the
optimisation (timed; docs/benchmarks.md has the figures).

* Stage 1 (:func:`density_surface`): the NeRF density on a coarse lattice,
  masked through the occupancy grid (empty cells count as no density), and its
  ``threshold`` level set extracted by the marching tetrahedra the detail stage
  already uses, on the Freudenthal grid of :mod:`mpod123.geometry.tet_grid`
  (each lattice cube split into 6 tets: marching cubes' job, watertight and
  outward-wound, without a second extraction code path).
* Stage 2: its current DMTet mesh as it is.

Both then go through :func:`preview_glb`: quadric decimation to the face budget
(:func:`mpod123.export.decimate.decimate`), colours from the colour network at
the kept vertices, and a GLB with POSITION, NORMAL, COLOR_0 (unsigned bytes,
normalised, RGBA; linear, as glTF says, from the network's sRGB) and uint16/uint32
indices, and no material (glTF's default: white, rough); a file over ``max_bytes`` is
decimated further until it fits.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..geometry.marching_tets import marching_tets
from ..geometry.mesh import Mesh
from ..geometry.tet_grid import tet_grid
from .decimate import decimate
from .gltf import ARRAY_BUFFER, CHUNK_BIN, CHUNK_JSON, ELEMENT_ARRAY_BUFFER, FLOAT, GLB_MAGIC, UINT32, GLBError, _pad4

UNSIGNED_BYTE, UNSIGNED_SHORT = 5121, 5123
ColorFn = Callable[[Tensor], Tensor]
DensityFn = Callable[[Tensor], Tensor]


@dataclass
class PreviewMesh:
    """A vertex-coloured triangle mesh as numpy arrays (what a preview GLB holds)."""

    vertices: np.ndarray
    """(V, 3) float32, our world (Y-up, glTF's)."""
    faces: np.ndarray
    """(F, 3) int64, counter-clockwise seen from outside."""
    colors: np.ndarray
    """(V, 3) float32 in [0, 1], sRGB (the colour network's own values)."""


@torch.no_grad()
def density_surface(
    density_fn: DensityFn,
    bound: float,
    resolution: int,
    threshold: float,
    occupied_fn: Callable[[Tensor], Tensor] | None = None,
    device: torch.device | str = "cpu",
    chunk: int = 1 << 17,
) -> Mesh:
    """The ``density = threshold`` surface on a ``resolution``^3 lattice over [-bound, bound]^3.

    ``occupied_fn(points) -> bool`` (the occupancy grid's ``query``) zeroes the density of
    points in empty cells, so floaters the grid already skips do not show either.
    Marching tetrahedra puts each vertex at the linear crossing of the density along a
    lattice edge, so a vertex lies within one cell of the true level set.
    """
    grid = tet_grid(resolution, bound)
    points = grid.vertices.to(device)
    if occupied_fn is None:
        density = torch.cat([density_fn(c).reshape(-1).float() for c in points.split(chunk)])
    else:  # the network runs only where the grid is occupied (often a small share of the cube)
        occupied = torch.cat([occupied_fn(c).reshape(-1) for c in points.split(chunk)])
        density = torch.zeros(points.shape[0], device=points.device)
        inside = points[occupied]
        if inside.shape[0]:
            density[occupied] = torch.cat([density_fn(c).reshape(-1).float() for c in inside.split(chunk)])
    sdf = threshold - density  # inside (dense) is negative, as marching tets wants
    sdf = torch.where(sdf == 0, torch.full_like(sdf, 1e-6), sdf)  # no vertex exactly on the surface
    return marching_tets(points, sdf, grid.tets.to(device), backend="torch")


@torch.no_grad()
def colour_mesh(mesh: Mesh, color_fn: ColorFn, chunk: int = 1 << 16) -> PreviewMesh:
    """The mesh with the colour network's output at its vertices."""
    verts = mesh.vertices.detach()
    if verts.shape[0]:
        colors = torch.cat([color_fn(c).reshape(-1, 3).float() for c in verts.split(chunk)])
    else:
        colors = verts.new_zeros(0, 3)
    return PreviewMesh(
        verts.float().cpu().numpy(), mesh.faces.cpu().numpy().astype(np.int64), colors.clamp(0, 1).cpu().numpy()
    )


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB values (what the colour network learns from photos) to linear, as glTF's COLOR_0 holds."""
    c = np.asarray(c, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float32)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(np.maximum(c, 0.0), 1 / 2.4) - 0.055).astype(np.float32)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3); (0, 1, 0) where a vertex has no area around it."""
    v = vertices.astype(np.float64)
    n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    out = np.zeros_like(v)
    for k in range(3):
        np.add.at(out, faces[:, k], n)
    length = np.linalg.norm(out, axis=1, keepdims=True)
    out = np.where(length > 1e-20, out / np.maximum(length, 1e-20), np.array([0.0, 1.0, 0.0]))
    return out.astype(np.float32)


def encode_preview_glb(mesh: PreviewMesh, name: str = "preview") -> bytes:
    """GLB bytes: one primitive with POSITION, NORMAL, COLOR_0 (normalised RGBA bytes) and indices."""
    positions = np.ascontiguousarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(mesh.faces).reshape(-1, 3)
    n = positions.shape[0]
    if n == 0 or faces.shape[0] == 0:
        raise GLBError("a preview needs at least one face")
    normals = vertex_normals(positions, faces)
    rgba = np.empty((n, 4), dtype=np.uint8)
    rgba[:, :3] = np.round(srgb_to_linear(np.clip(mesh.colors, 0.0, 1.0)) * 255.0)
    rgba[:, 3] = 255
    wide = n > 65535
    indices = np.ascontiguousarray(faces, dtype=np.uint32 if wide else np.uint16).reshape(-1)
    blobs = [positions.tobytes(), normals.tobytes(), rgba.tobytes(), indices.tobytes()]
    targets = [ARRAY_BUFFER, ARRAY_BUFFER, ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER]
    views, binary = [], b""
    for blob, target in zip(blobs, targets):
        views.append({"buffer": 0, "byteOffset": len(binary), "byteLength": len(blob), "target": target})
        binary += _pad4(blob)
    gltf = {
        "asset": {"version": "2.0", "generator": "mpod123 preview"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [{"name": name, "primitives": [
            {"attributes": {"POSITION": 0, "NORMAL": 1, "COLOR_0": 2}, "indices": 3, "mode": 4}
        ]}],
        "accessors": [
            {"bufferView": 0, "componentType": FLOAT, "count": n, "type": "VEC3",
             "min": positions.min(0).tolist(), "max": positions.max(0).tolist()},
            {"bufferView": 1, "componentType": FLOAT, "count": n, "type": "VEC3"},
            {"bufferView": 2, "componentType": UNSIGNED_BYTE, "normalized": True, "count": n, "type": "VEC4"},
            {"bufferView": 3, "componentType": UINT32 if wide else UNSIGNED_SHORT, "count": int(indices.size),
             "type": "SCALAR"},
        ],
        "bufferViews": views,
        "buffers": [{"byteLength": len(binary)}],
    }  # no material: glTF's default one (white, rough) times COLOR_0, which every viewer shows
    json_chunk = _pad4(json.dumps(gltf, separators=(",", ":")).encode(), b" ")
    total = 12 + 8 + len(json_chunk) + 8 + len(binary)
    return (
        struct.pack("<III", GLB_MAGIC, 2, total)
        + struct.pack("<II", len(json_chunk), CHUNK_JSON) + json_chunk
        + struct.pack("<II", len(binary), CHUNK_BIN) + binary
    )


def preview_glb(mesh: Mesh, color_fn: ColorFn, max_faces: int, max_bytes: int) -> tuple[bytes, PreviewMesh] | None:
    """Decimate to ``max_faces``, colour and encode; None when the mesh has no faces.

    A GLB over ``max_bytes`` (only possible with a large face budget) is decimated again
    with proportionally fewer faces until it fits."""
    if mesh.n_faces == 0:
        return None
    budget = max(4, int(max_faces))
    geometry = mesh.detach()
    for _ in range(8):
        small = decimate(geometry, budget) if geometry.n_faces > budget else geometry
        coloured = colour_mesh(small, color_fn)
        if coloured.faces.shape[0] == 0:
            return None
        glb = encode_preview_glb(coloured)
        if len(glb) <= max_bytes:
            return glb, coloured
        budget = max(4, int(small.n_faces * max_bytes / len(glb) * 0.9))
        geometry = small
    raise ValueError(f"a mesh preview does not fit in {max_bytes} bytes; raise mesh_preview.max_bytes")


def read_preview_glb(data: bytes) -> PreviewMesh:
    """Read back a preview GLB (the layout :func:`encode_preview_glb` writes), checking every bound."""
    if len(data) < 28:
        raise GLBError("file too short to be a GLB")
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2 or length != len(data):
        raise GLBError("not a glTF 2.0 binary of this length")
    json_len, json_type = struct.unpack_from("<II", data, 12)
    if json_type != CHUNK_JSON or 20 + json_len + 8 > len(data):
        raise GLBError("bad JSON chunk")
    gltf = json.loads(data[20 : 20 + json_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    binary = data[28 + json_len : 28 + json_len + bin_len]
    if bin_type != CHUNK_BIN or len(binary) != bin_len:
        raise GLBError("bad BIN chunk")
    prim = gltf["meshes"][0]["primitives"][0]

    def accessor(index: int, dtype: str, width: int) -> np.ndarray:
        acc = gltf["accessors"][index]
        view = gltf["bufferViews"][acc["bufferView"]]
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        count = acc["count"] * width
        if start + count * np.dtype(dtype).itemsize > len(binary):
            raise GLBError(f"accessor {index} runs past the buffer")
        return np.frombuffer(binary, dtype=dtype, count=count, offset=start).reshape(-1, width)

    attrs = prim["attributes"]
    positions = accessor(attrs["POSITION"], "<f4", 3)
    color_acc = gltf["accessors"][attrs["COLOR_0"]]
    if color_acc["componentType"] != UNSIGNED_BYTE or color_acc["type"] != "VEC4":
        raise GLBError("COLOR_0 must be normalised unsigned-byte RGBA")
    colors = linear_to_srgb(accessor(attrs["COLOR_0"], "u1", 4)[:, :3].astype(np.float32) / 255.0)
    index_type = {UNSIGNED_SHORT: "<u2", UINT32: "<u4"}[gltf["accessors"][prim["indices"]]["componentType"]]
    faces = accessor(prim["indices"], index_type, 1).reshape(-1, 3).astype(np.int64)
    if faces.size and int(faces.max()) >= positions.shape[0]:
        raise GLBError("an index points past the vertex list")
    return PreviewMesh(positions.copy(), faces, colors)


__all__ = ["PreviewMesh", "colour_mesh", "density_surface", "encode_preview_glb", "preview_glb", "read_preview_glb"]
