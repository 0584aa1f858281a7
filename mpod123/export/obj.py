"""Wavefront OBJ + MTL + PNG writing, and a small OBJ reader (positions and triangles)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def encode_obj(positions: np.ndarray, indices: np.ndarray, uvs: np.ndarray, normals: np.ndarray, mtl_name: str, material: str) -> str:
    """OBJ text; OBJ's texture origin is the bottom-left, so v is flipped from glTF's."""
    lines = [f"mtllib {mtl_name}", f"usemtl {material}"]
    lines += [f"v {x:.7g} {y:.7g} {z:.7g}" for x, y, z in positions]
    lines += [f"vt {u:.7g} {1.0 - v:.7g}" for u, v in uvs]
    lines += [f"vn {x:.6g} {y:.6g} {z:.6g}" for x, y, z in normals]
    lines += [f"f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}" for a, b, c in (indices + 1)]
    return "\n".join(lines) + "\n"


def encode_mtl(material: str, texture_name: str) -> str:
    return f"newmtl {material}\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {texture_name}\n"


def read_obj(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Positions (V, 3) and triangles (F, 3) of an OBJ; polygons are fanned into triangles."""
    verts, faces = [], []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            verts.append([float(p) for p in parts[1:4]])
        elif parts[0] == "f":
            idx = [int(p.split("/")[0]) for p in parts[1:]]
            idx = [i - 1 if i > 0 else len(verts) + i for i in idx]
            faces += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
    return np.asarray(verts, dtype=np.float32).reshape(-1, 3), np.asarray(faces, dtype=np.int64).reshape(-1, 3)
