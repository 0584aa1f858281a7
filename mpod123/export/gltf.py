"""Binary glTF 2.0 (GLB) writing, by hand, and the writer's own structural self-check.

Why the writer stays ours rather than trimesh's or pygltflib's: the file is one
mesh with four accessors and an embedded PNG, ~100 lines that pass the Khronos
glTF validator with no errors, warnings, infos or hints (tested whenever node
and the gltf-validator package are installed), it is byte-for-byte
deterministic, and it builds the file in memory so the exporter can check it
before the atomic rename. Reading other tools' files is another matter (every
index width, node transforms, several primitives, JPEG, samplers, texture
transforms): that goes through trimesh in :mod:`mpod123.export.reader`.

One mesh, one primitive: POSITION (with min/max, as the spec requires),
NORMAL, TEXCOORD_0 and uint32 indices, and a PBR material whose
baseColorTexture is the embedded PNG (metallic 0, roughness 1). Our world is
glTF's (Y-up, the front facing +Z), so positions are written as they are; a
counter-clockwise winding is the spec's front face.

:func:`validate_glb` reads a file back with the checks a viewer relies on. The
exporter validates in memory before anything reaches the destination path, so
an invalid file is never written as a result.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

from ..runtime.errors import Mpod123Error

GLB_MAGIC = 0x46546C67
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FLOAT, UINT32 = 5126, 5125
ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963


class GLBError(Mpod123Error, ValueError):
    """A GLB that fails validation; the message says which check."""


@dataclass
class GLBMesh:
    positions: np.ndarray
    """(V, 3) float32."""
    normals: np.ndarray | None
    uvs: np.ndarray | None
    """(V, 2) float32, origin at the image's top-left."""
    indices: np.ndarray
    """(F, 3) uint32."""
    texture_png: bytes | None
    base_color_texture: bool
    """Whether the material binds the image as its baseColorTexture."""


def _pad4(data: bytes, fill: bytes = b"\x00") -> bytes:
    return data + fill * (-len(data) % 4)


def encode_glb(
    positions: np.ndarray, indices: np.ndarray, uvs: np.ndarray, normals: np.ndarray, texture_png: bytes, name: str = "mesh"
) -> bytes:
    """The GLB bytes of a textured triangle mesh."""
    positions = np.ascontiguousarray(positions, dtype=np.float32)
    normals = np.ascontiguousarray(normals, dtype=np.float32)
    uvs = np.ascontiguousarray(uvs, dtype=np.float32)
    indices = np.ascontiguousarray(indices, dtype=np.uint32).reshape(-1)
    blobs = [positions.tobytes(), normals.tobytes(), uvs.tobytes(), indices.tobytes(), texture_png]
    views, offset, binary = [], 0, b""
    targets = [ARRAY_BUFFER, ARRAY_BUFFER, ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, None]
    for blob, target in zip(blobs, targets):
        view = {"buffer": 0, "byteOffset": offset, "byteLength": len(blob)}
        if target is not None:
            view["target"] = target
        views.append(view)
        padded = _pad4(blob)
        binary += padded
        offset += len(padded)
    n = positions.shape[0]
    gltf = {
        "asset": {"version": "2.0", "generator": "mpod123"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name}],
        "meshes": [
            {
                "name": name,
                "primitives": [
                    {"attributes": {"POSITION": 0, "NORMAL": 1, "TEXCOORD_0": 2}, "indices": 3, "material": 0, "mode": 4}
                ],
            }
        ],
        "accessors": [
            {
                "bufferView": 0, "componentType": FLOAT, "count": n, "type": "VEC3",
                "min": positions.min(0).tolist(), "max": positions.max(0).tolist(),
            },
            {"bufferView": 1, "componentType": FLOAT, "count": n, "type": "VEC3"},
            {"bufferView": 2, "componentType": FLOAT, "count": n, "type": "VEC2"},
            {"bufferView": 3, "componentType": UINT32, "count": int(indices.size), "type": "SCALAR"},
        ],
        "bufferViews": views,
        "buffers": [{"byteLength": len(binary)}],
        "materials": [
            {
                "name": f"{name}_material",
                "pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "metallicFactor": 0.0, "roughnessFactor": 1.0},
                "doubleSided": False,
            }
        ],
        "textures": [{"source": 0, "sampler": 0}],
        "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}],
        "images": [{"bufferView": 4, "mimeType": "image/png", "name": f"{name}_basecolor"}],
    }
    json_chunk = _pad4(json.dumps(gltf, separators=(",", ":")).encode(), b" ")
    total = 12 + 8 + len(json_chunk) + 8 + len(binary)
    return (
        struct.pack("<III", GLB_MAGIC, 2, total)
        + struct.pack("<II", len(json_chunk), CHUNK_JSON)
        + json_chunk
        + struct.pack("<II", len(binary), CHUNK_BIN)
        + binary
    )


def _accessor(gltf: dict, binary: bytes, index: int, dtype: str, width: int) -> np.ndarray:
    acc = gltf["accessors"][index]
    view = gltf["bufferViews"][acc["bufferView"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    count = acc["count"]
    nbytes = count * width * np.dtype(dtype).itemsize
    if start + nbytes > len(binary) or nbytes > view["byteLength"]:
        raise GLBError(f"accessor {index} runs past its buffer view")
    return np.frombuffer(binary, dtype=dtype, count=count * width, offset=start).reshape(count, width)


def parse_glb(data: bytes) -> GLBMesh:
    """Check and read back a GLB in the layout :func:`encode_glb` writes (one primitive, uint32 indices).

    This is the writer's self-check, not a general reader: use
    :func:`mpod123.export.reader.read_mesh_file` for files from other tools.
    """
    if len(data) < 20:
        raise GLBError("file too short to be a GLB")
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2:
        raise GLBError("not a glTF 2.0 binary (bad magic or version)")
    if length != len(data):
        raise GLBError(f"header length {length} does not match the file size {len(data)}")
    json_len, json_type = struct.unpack_from("<II", data, 12)
    if json_type != CHUNK_JSON:
        raise GLBError("the first chunk is not JSON")
    try:
        gltf = json.loads(data[20 : 20 + json_len])
    except json.JSONDecodeError as exc:
        raise GLBError(f"the JSON chunk does not parse: {exc}") from None
    binary = b""
    if 20 + json_len < len(data):
        bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
        if bin_type != CHUNK_BIN:
            raise GLBError("the second chunk is not BIN")
        binary = data[28 + json_len : 28 + json_len + bin_len]
    if gltf.get("asset", {}).get("version") != "2.0":
        raise GLBError("asset.version must be 2.0")
    try:
        prim = gltf["meshes"][0]["primitives"][0]
        attrs = prim["attributes"]
        positions = _accessor(gltf, binary, attrs["POSITION"], "<f4", 3)
        acc = gltf["accessors"][attrs["POSITION"]]
        if "min" not in acc or "max" not in acc:
            raise GLBError("POSITION needs min and max")
        normals = _accessor(gltf, binary, attrs["NORMAL"], "<f4", 3) if "NORMAL" in attrs else None
        uvs = _accessor(gltf, binary, attrs["TEXCOORD_0"], "<f4", 2) if "TEXCOORD_0" in attrs else None
        idx_acc = gltf["accessors"][prim["indices"]]
        if idx_acc["componentType"] != UINT32:
            raise GLBError("indices must be uint32")
        indices = _accessor(gltf, binary, prim["indices"], "<u4", 1).reshape(-1, 3)
    except (KeyError, IndexError, TypeError) as exc:
        raise GLBError(f"missing mesh data: {exc}") from None
    if indices.size and int(indices.max()) >= positions.shape[0]:
        raise GLBError("an index points past the vertex list")
    if not np.isfinite(positions).all():
        raise GLBError("positions contain NaN or infinity")
    png, bound = None, False
    material = gltf.get("materials", [{}])[prim.get("material", 0)] if gltf.get("materials") else {}
    tex_ref = material.get("pbrMetallicRoughness", {}).get("baseColorTexture")
    if tex_ref is not None:
        image = gltf["images"][gltf["textures"][tex_ref["index"]]["source"]]
        view = gltf["bufferViews"][image["bufferView"]]
        png = binary[view.get("byteOffset", 0) : view.get("byteOffset", 0) + view["byteLength"]]
        if not png.startswith(PNG_SIGNATURE):
            raise GLBError("the base colour image is not a PNG")
        bound = True
    return GLBMesh(positions, normals, uvs, indices, png, bound)


def validate_glb(data: bytes, expect_texture: bool = True) -> GLBMesh:
    """Parse and check a GLB; with ``expect_texture`` it must carry UVs and a baseColorTexture."""
    mesh = parse_glb(data)
    if mesh.indices.shape[0] == 0:
        raise GLBError("the mesh has no faces")
    if expect_texture:
        if mesh.uvs is None or not mesh.base_color_texture:
            raise GLBError("the mesh lacks UVs or a base colour texture")
        if not ((mesh.uvs >= -1e-6) & (mesh.uvs <= 1 + 1e-6)).all():
            raise GLBError("UVs fall outside [0, 1]")
    return mesh
