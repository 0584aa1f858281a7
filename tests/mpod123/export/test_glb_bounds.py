"""A GLB's declared arrays are bounded by the file's real size before anything is allocated (issue 30, item 5)."""

from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest

from mpod123.export.glb_bounds import GLBBoundsError, check_glb_bounds
from mpod123.export.reader import MeshReadError, read_gltf_bytes


def _glb(gltf: dict, binary: bytes = b"") -> bytes:
    text = json.dumps(gltf).encode()
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<II", len(text), 0x4E4F534A) + text
    if binary:
        binary += b"\0" * (-len(binary) % 4)
        chunks += struct.pack("<II", len(binary), 0x004E4942) + binary
    return struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks


def _triangle(count: int = 3, view: int | None = 0, buffer_len: int | None = None, stride: int | None = None) -> tuple[dict, bytes]:
    pos = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32).tobytes()
    acc = {"componentType": 5126, "type": "VEC3", "count": count, "min": [0, 0, 0], "max": [1, 1, 0]}
    if view is not None:
        acc["bufferView"] = view
    bv = {"buffer": 0, "byteLength": len(pos)}
    if stride:
        bv["byteStride"] = stride
    gltf = {"asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
            "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}], "accessors": [acc],
            "bufferViews": [bv], "buffers": [{"byteLength": buffer_len if buffer_len is not None else len(pos)}]}
    return gltf, pos


def test_a_tiny_glb_that_declares_millions_of_vertices_is_refused_before_any_allocation():
    gltf, _ = _triangle(count=3_000_000, view=None)
    del gltf["bufferViews"], gltf["buffers"]
    data = _glb(gltf)
    assert len(data) < 700
    pytest.importorskip("trimesh")  # imported before measuring: the reader's own import is not the file's cost
    tracemalloc.start()
    try:
        with pytest.raises(MeshReadError, match="3000000 elements"):
            read_gltf_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20, f"{peak >> 20} MiB allocated for a {len(data)}-byte file"


def test_a_well_formed_triangle_still_reads():
    gltf, pos = _triangle()
    mesh = read_gltf_bytes(_glb(gltf, pos))
    assert mesh.positions.shape == (3, 3) and np.allclose(mesh.positions.max(0), [1, 1, 0])


@pytest.mark.parametrize("case, match", [
    (dict(count=4), "4 elements"),  # one vertex more than the 36-byte view
    (dict(buffer_len=4096), "declares 4096 bytes"),  # a buffer larger than the BIN chunk
    (dict(count=2, stride=24), None),  # two strided vertices: 24 + 12 = 36 bytes, fits exactly
    (dict(count=3, stride=24), "3 elements"),  # 24 * 2 + 12 = 60 > 36
])
def test_accessors_and_buffers_are_bounded_by_their_views_and_the_binary_chunk(case, match):
    gltf, pos = _triangle(**case)
    if match is None:
        check_glb_bounds(gltf, pos)
    else:
        with pytest.raises(GLBBoundsError, match=match):
            check_glb_bounds(gltf, pos)


def test_a_view_past_its_buffer_an_outside_file_and_bad_numbers_are_refused():
    gltf, pos = _triangle()
    gltf["bufferViews"][0]["byteOffset"] = 8
    with pytest.raises(GLBBoundsError, match="past its buffer"):
        check_glb_bounds(gltf, pos)
    gltf, pos = _triangle()
    gltf["buffers"][0]["uri"] = "/etc/passwd"
    with pytest.raises(GLBBoundsError, match="outside file"):
        check_glb_bounds(gltf, pos)
    for bad in (-1, 1.5, True, "3", 10**30):
        gltf, pos = _triangle()
        gltf["accessors"][0]["count"] = bad
        with pytest.raises(GLBBoundsError):
            check_glb_bounds(gltf, pos)


def test_a_sparse_accessor_is_bounded_too():
    gltf, pos = _triangle()
    gltf["accessors"][0]["sparse"] = {"count": 1000, "indices": {"bufferView": 0, "componentType": 5125},
                                      "values": {"bufferView": 0}}
    with pytest.raises(GLBBoundsError, match="sparse"):
        check_glb_bounds(gltf, pos)
