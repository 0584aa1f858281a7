"""Wavefront OBJ + MTL + PNG writing (reading goes through :mod:`mpod123.export.reader`).

The writer stays ours: OBJ is a few lines of text, and trimesh, Blender and our
reader load it with its texture (tested).
"""

from __future__ import annotations

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
