"""The backend's texture job: submit checks (adversarial: missing, oversized, malformed meshes, bad
cameras and options) and a real `mpod123 serve --tiny` texturing a GLB, its own UVs kept."""

from __future__ import annotations

import json
import struct
import uuid

import numpy as np
import pytest
import torch

zmq = pytest.importorskip("zmq")

from backend.client import BackendError, Client  # noqa: E402
from backend.protocol import ProtocolError  # noqa: E402
from backend.kinds.texture import pack_inputs, texture_input, unpack_inputs  # noqa: E402
from tests.addon_backend import ServeProcess, object_png  # noqa: E402


def grid_box_glb() -> tuple[bytes, np.ndarray, np.ndarray]:
    """A box 3 units wide away from the origin, each triangle in its own UV cell: usable UVs."""
    from mpod123.export.gltf import encode_glb
    from mpod123.imaging.images import png_bytes

    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float32) * 1.5 + [4, 1, -2]
    faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    positions = corners[faces].reshape(-1, 3)
    uvs = []
    for f in range(12):
        x0, y0 = (f % 4) / 4 + 0.02, (f // 4) / 4 + 0.02
        uvs += [[x0, y0], [x0 + 0.2, y0], [x0, y0 + 0.2]]
    uvs = np.array(uvs, np.float32)
    normals = np.tile([0.0, 1.0, 0.0], (36, 1)).astype(np.float32)
    glb = encode_glb(positions, np.arange(36).reshape(12, 3), uvs, normals, png_bytes(np.full((4, 4, 3), 0.5, np.float32)))
    return glb, positions, uvs


OK_CAMERA = {"position": [4.0, 1.0, 8.0], "look_at": [4.0, 1.0, -2.0], "fov_y_deg": 35.0}


def test_inputs_pack_and_unpack_exactly():
    photo, mesh = b"\x89PNG" + bytes(range(256)), b"glTF" + bytes(100)
    assert unpack_inputs(pack_inputs(photo, mesh)) == (photo, mesh)
    with pytest.raises(ValueError, match="not a texture job"):
        unpack_inputs(b"\x89PNG plain image")
    with pytest.raises(ValueError, match="truncated"):
        unpack_inputs(pack_inputs(photo, mesh)[:30])


def _glb_with_json(gltf: dict) -> bytes:
    text = json.dumps(gltf).encode()
    text += b" " * (-len(text) % 4)
    return struct.pack("<III", 0x46546C67, 2, 20 + len(text)) + struct.pack("<II", len(text), 0x4E4F534A) + text


@pytest.mark.parametrize("options, buffers, ename", [
    ({"kind": "texture"}, [b"img"], "MissingMesh"),
    ({"kind": "texture"}, [b"img", b"m", b"extra"], "BadMessage"),
    ({"kind": "texture"}, [b"img", b"x" * 2000], "MeshTooLarge"),
    ({"kind": "texture"}, [b"img", b"solid cube\nfacet normal 0 0 1\n"], "BadMesh"),
    ({"kind": "texture"}, [b"img", b"glTF"], "BadMesh"),
    ({"kind": "texture"}, [b"img", struct.pack("<III", 0x46546C67, 1, 20) + bytes(8)], "BadMesh"),
    ({"kind": "texture"}, [b"img", struct.pack("<III", 0x46546C67, 2, 5000) + bytes(8)], "BadMesh"),
    ({"kind": "texture"}, [b"img", struct.pack("<IIIII", 0x46546C67, 2, 28, 8, 0x4E4F534A) + b"{not json"], "BadMesh"),
    ({"kind": "texture"}, [b"img", _glb_with_json({"asset": {"version": "2.0"}})], "BadMesh"),
    ({"kind": "texture", "camera": {"position": [0, 0, 1]}}, [b"img", None], "BadCamera"),
    ({"kind": "texture", "camera": [1, 2, 3]}, [b"img", None], "BadCamera"),
    ({"kind": "texture", "camera": {**OK_CAMERA, "fov_y_deg": 500}}, [b"img", None], "BadCamera"),
    ({"kind": "texture", "refine_geometry": "yes"}, [b"img", None], "BadOptions"),
    ({"kind": "texture", "shell": "rm -rf"}, [b"img", None], "BadOptions"),
])
def test_bad_texture_submits_are_refused_with_what_to_fix(options, buffers, ename):
    good, _, _ = grid_box_glb()
    buffers = [b if b is not None else good for b in buffers]
    with pytest.raises(ProtocolError) as info:
        texture_input(options, buffers, max_mesh_bytes=1000 if ename == "MeshTooLarge" else 10 << 20)
    assert info.value.ename == ename and info.value.evalue


@pytest.mark.slow
def test_serve_tiny_textures_a_glb_keeping_its_uvs_and_refuses_bad_meshes(tmp_path):
    from mpod123.export.reader import read_gltf_bytes

    glb, positions, uvs = grid_box_glb()
    server = ServeProcess(tmp_path / "data").start()
    client = Client(server.endpoint, session="alice", timeout_s=20)
    try:
        photo = object_png(64)
        # malformed inputs get an error reply, and nothing is queued
        for bad, ename in ((glb[:40], "BadMesh"), (b"", "BadMesh")):
            with pytest.raises(BackendError) as info:
                client.request("submit", {"options": {"kind": "texture"}}, [photo, bad], job_id=uuid.uuid4().hex)
            assert info.value.ename == ename
        with pytest.raises(BackendError) as info:
            client.request("submit", {"options": {"kind": "texture", "camera": {"look_at": [0, 0, 0]}}}, [photo, glb],
                           job_id=uuid.uuid4().hex)
        assert info.value.ename == "BadCamera" and "position" in info.value.evalue
        with pytest.raises(BackendError) as info:
            client.request("submit", {"options": {"kind": "texture"}}, [photo], job_id=uuid.uuid4().hex)
        assert info.value.ename == "MissingMesh"
        assert client.list_jobs() == []
        # a good one, with a camera in the mesh's own coordinates
        job = uuid.uuid4().hex
        options = {"kind": "texture", "camera": OK_CAMERA, "steps": 2, "seed": 1}
        client.request("submit", {"options": options}, [photo, glb], job_id=job)
        client.last_seq.setdefault(job, 0)
        events = []
        final = client.wait(job, timeout_s=300, on_event=events.append)
        assert final.content["kind"] == "done", (final.content, server.log()[-3000:])
        kinds = {m.content["kind"] for m in events if m.job_id == job}
        assert {"progress", "preview", "stage_done"} <= kinds
        logs = [m.content for m in events if m.job_id == job and m.content["kind"] == "log" and "uv" in m.content]
        assert logs and logs[0]["uv"] == "kept"
        out = client.fetch(job, tmp_path / "textured.glb")
        textured = read_gltf_bytes(out.read_bytes())
        assert np.abs(textured.positions - positions).max() < 1e-4, "where the input was"
        assert np.abs(textured.uvs - uvs).max() < 1e-6, "with its own UVs"
        assert textured.materials[0].texture is not None
    finally:
        client.close()
        server.stop()
