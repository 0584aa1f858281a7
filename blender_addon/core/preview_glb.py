"""The preview GLB reader: the one layout the backend writes for live 3D previews. No bpy.

:func:`read_glb` reads POSITION, COLOR_0 (normalised RGBA bytes or floats) and uint16/uint32 indices, and
checks every bound, since the bytes come over the network.
"""

from __future__ import annotations

import json
import struct

import numpy as np

MAX_VERTICES = 1 << 21
MAX_FACES = 1 << 22
GLB_MAGIC, CHUNK_JSON, CHUNK_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942
FLOAT, UNSIGNED_BYTE, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5121, 5123, 5125
_INDEX_TYPES = {UNSIGNED_SHORT: "<u2", UNSIGNED_INT: "<u4"}


class PreviewGLBError(ValueError):
    """A preview GLB this module will not show; the message says which check failed."""


# ------------------------------------------------------------------ reading
def read_glb(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (V, 3) float32 in glTF's Y-up, faces (F, 3) int32, colours (V, 4) float32 (linear).

    Raises PreviewGLBError for anything but a well-formed preview GLB."""
    if len(data) < 28:
        raise PreviewGLBError("too short to be a GLB")
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2 or length != len(data):
        raise PreviewGLBError("not a glTF 2.0 binary of its stated length")
    json_len, json_type = struct.unpack_from("<II", data, 12)
    if json_type != CHUNK_JSON or 28 + json_len > len(data):
        raise PreviewGLBError("bad JSON chunk")
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    binary = memoryview(data)[28 + json_len : 28 + json_len + bin_len]
    if bin_type != CHUNK_BIN or len(binary) != bin_len:
        raise PreviewGLBError("bad BIN chunk")
    try:
        gltf = json.loads(bytes(data[20 : 20 + json_len]))
        prim = gltf["meshes"][0]["primitives"][0]
        attrs = prim["attributes"]
        if prim.get("mode", 4) != 4:
            raise PreviewGLBError("only triangles are shown")
        positions = _accessor(gltf, binary, attrs["POSITION"], {FLOAT: "<f4"}, "VEC3", MAX_VERTICES)
        n = positions.shape[0]
        if "COLOR_0" in attrs:
            colors = _accessor(gltf, binary, attrs["COLOR_0"], {UNSIGNED_BYTE: "u1", FLOAT: "<f4"}, "VEC4", MAX_VERTICES)
            colors = colors.astype(np.float32) / (255.0 if colors.dtype == np.uint8 else 1.0)
        else:
            colors = np.ones((n, 4), dtype=np.float32)
        faces = _accessor(gltf, binary, prim["indices"], _INDEX_TYPES, "SCALAR", 3 * MAX_FACES)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        if isinstance(exc, PreviewGLBError):
            raise
        raise PreviewGLBError(f"not a preview mesh: {type(exc).__name__}: {exc}") from None
    if colors.shape[0] != n or faces.size % 3 or faces.size == 0:
        raise PreviewGLBError("attribute counts disagree, or no faces")
    faces = faces.reshape(-1, 3).astype(np.int32)
    if int(faces.max()) >= n:
        raise PreviewGLBError("an index points past the vertex list")
    if not np.isfinite(positions).all() or not np.isfinite(colors).all():
        raise PreviewGLBError("positions or colours are not finite")
    return positions, faces, np.clip(colors, 0.0, 1.0)


def _accessor(gltf: dict, binary: memoryview, index: int, types: dict, kind: str, max_count: int) -> np.ndarray:
    acc = gltf["accessors"][index]
    dtype = types.get(acc["componentType"])
    if dtype is None or acc["type"] != kind:
        raise PreviewGLBError(f"accessor {index}: unexpected component type or shape")
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[kind]
    count = int(acc["count"])
    if not 0 < count <= max_count:
        raise PreviewGLBError(f"accessor {index}: count {count} out of range")
    view = gltf["bufferViews"][acc["bufferView"]]
    if view.get("byteStride") not in (None, width * np.dtype(dtype).itemsize):
        raise PreviewGLBError(f"accessor {index}: interleaved data is not supported")
    start = int(view.get("byteOffset", 0)) + int(acc.get("byteOffset", 0))
    nbytes = count * width * np.dtype(dtype).itemsize
    if start < 0 or start + nbytes > len(binary) or nbytes > int(view["byteLength"]):
        raise PreviewGLBError(f"accessor {index} runs past its buffer")
    return np.frombuffer(binary, dtype=dtype, count=count * width, offset=start).reshape(count, width)
