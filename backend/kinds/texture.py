"""The texture job: a photo and a mesh (GLB) in, the mesh textured out (``mpod123 texture`` on the backend).

A client submits ``options = {"kind": "texture", "camera": {...} (optional), "preset", "seed", "steps",
"refine_geometry"}`` with two binary frames: the photo, then the mesh as GLB. Everything is checked at
submit, before anything is stored (the reply is an error saying what to fix):

* the mesh frame is there, at most ``max_mesh_bytes`` (the server's image limit), and is a GLB whose
  header and JSON chunk parse (glTF 2.0); deeper damage surfaces as the job's failure, with the reader's
  message;
* ``camera``, when given, follows the camera schema of :mod:`mpod123.texturing.camera_file`;
* ``refine_geometry`` is a boolean; no option the job does not know is accepted.

The store keeps one input per job, so the two frames are stored together in one blob
(``MAGIC``, the photo's length, the photo, the mesh): the input's sha256, idempotent
submits and the work folder's stamp then cover both.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from ..protocol import ProtocolError
from ..workers import JobCancelled, JobContext
from .common import ENV_MODELS, TINY_DEFAULT_STEPS, event_forwarder, fetch_weights, parse_options

MAGIC = b"MPOD123-TEXTURE\x00"
GLB_MAGIC = 0x46546C67
OPTIONS = {"kind", "camera", "preset", "seed", "steps", "refine_geometry"}


def pack_inputs(photo: bytes, mesh: bytes) -> bytes:
    return MAGIC + struct.pack("<Q", len(photo)) + photo + mesh


def unpack_inputs(blob: bytes) -> tuple[bytes, bytes]:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 8:
        raise ValueError("this job's input is not a texture job's (photo + mesh)")
    (n,) = struct.unpack_from("<Q", blob, len(MAGIC))
    start = len(MAGIC) + 8
    if start + n > len(blob):
        raise ValueError("this texture job's input is truncated")
    return blob[start : start + n], blob[start + n :]


def check_glb(mesh: bytes) -> None:
    """The GLB's header and JSON chunk, with the standard library only (the server never imports torch)."""
    hint = "export the mesh as glTF Binary (.glb), e.g. Blender: File > Export > glTF 2.0, format GLB"
    if len(mesh) < 20:
        raise ProtocolError("BadMesh", "the mesh frame is too short to be a GLB", hint)
    magic, version, length = struct.unpack_from("<III", mesh, 0)
    if magic != GLB_MAGIC:
        raise ProtocolError("BadMesh", "the mesh frame is not a GLB (bad magic)", hint)
    if version != 2:
        raise ProtocolError("BadMesh", f"the mesh is glTF {version}; only glTF 2.0 is read", hint)
    if length > len(mesh):
        raise ProtocolError("BadMesh", f"the GLB is truncated ({len(mesh)} of {length} bytes)", hint)
    json_len, json_type = struct.unpack_from("<II", mesh, 12)
    if json_type != 0x4E4F534A or 20 + json_len > length:
        raise ProtocolError("BadMesh", "the GLB's first chunk is not a complete JSON chunk", hint)
    try:
        gltf = json.loads(mesh[20 : 20 + json_len])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("BadMesh", f"the GLB's JSON does not parse: {exc}", hint) from None
    if not isinstance(gltf, dict) or not gltf.get("meshes"):
        raise ProtocolError("BadMesh", "the GLB holds no mesh", "select a mesh object before exporting")


def check_options(options: dict[str, Any]) -> None:
    from mpod123.texturing.camera_file import CameraFileError, parse_camera

    unknown = set(options) - OPTIONS
    if unknown:
        raise ProtocolError("BadOptions", f"unknown texture option(s) {', '.join(sorted(map(str, unknown)))}",
                            f"the options are {', '.join(sorted(OPTIONS))}")
    if "camera" in options and options["camera"] is not None:
        try:
            parse_camera(options["camera"])
        except CameraFileError as exc:
            raise ProtocolError("BadCamera", str(exc), "send position, look_at and fov_y_deg, or no camera for the front view") from None
    if not isinstance(options.get("refine_geometry", False), bool):
        raise ProtocolError("BadOptions", "refine_geometry must be true or false")


def texture_input(options: dict[str, Any], buffers: list[bytes], max_mesh_bytes: int) -> bytes:
    """The blob to store for a texture submit (photo + mesh), or a ProtocolError saying what to fix."""
    if len(buffers) < 2:
        raise ProtocolError("MissingMesh", "a texture job needs the mesh as a second binary frame",
                            "send the photo, then the mesh's GLB bytes")
    if len(buffers) > 2:
        raise ProtocolError("BadMessage", f"a texture job takes two binary frames, not {len(buffers)}")
    mesh = buffers[1]
    if len(mesh) > max_mesh_bytes:
        raise ProtocolError("MeshTooLarge", f"the mesh is {len(mesh)} bytes, over {max_mesh_bytes}",
                            "decimate it or export without textures")
    check_options(options)
    check_glb(mesh)
    return pack_inputs(buffers[0], mesh)


def run_texture(ctx: JobContext, tiny: bool) -> str:
    """The job: TextureRunner in the job's work folder (resumed when re-queued), events forwarded."""
    from mpod123.config import pipeline_preset
    from mpod123.pipeline.generate import ModelSources, configure
    from mpod123.runtime.progress import Cancelled, CancelToken
    from mpod123.texturing.camera_file import parse_camera
    from mpod123.texturing.texturer import TextureRunner, TexturingOptions

    if not tiny:
        fetch_weights(ctx, None, os.environ.get(ENV_MODELS["sd"]))
    photo, mesh = unpack_inputs(ctx.image)
    check_options(ctx.options)
    preset, seed, steps = parse_options(ctx.options, "draft" if tiny else "fast")
    steps = TINY_DEFAULT_STEPS if tiny and steps is None else steps
    cfg = pipeline_preset(preset)
    if steps is not None:
        cfg.detail.steps = min(cfg.detail.steps, steps)
        cfg.inversion.steps = min(cfg.inversion.steps, steps)
        cfg.detail.preview_every = cfg.detail.checkpoint_every = max(1, cfg.detail.steps // 2)
    models = ModelSources(None, os.environ.get(ENV_MODELS["sd"]) or None, os.environ.get(ENV_MODELS["embedding"]) or None)
    cfg = configure(preset, seed, models, tiny, cfg)
    camera = ctx.options.get("camera")
    options = TexturingOptions(mesh, parse_camera(camera) if camera is not None else None,
                               bool(ctx.options.get("refine_geometry", False)))
    cancel = CancelToken()
    forward = event_forwarder(ctx, cancel, mesh_previews=False)
    runner = TextureRunner(cfg, options, ctx.workdir / "run", "auto", forward, cancel, resume=True)
    try:
        result = runner.run(photo, ctx.workdir / "result.glb")
    except Cancelled as exc:
        raise JobCancelled(str(exc) or "cancelled by the client") from None
    uv = result.record["texture"]["uv"]
    where = "the mesh's own UVs" if uv == "kept" else "new UVs (the mesh's were not usable)"
    ctx.emit("log", {"text": f"texture baked into {where}", "uv": uv})
    return str(result.glb)


__all__ = ["check_glb", "check_options", "pack_inputs", "run_texture", "texture_input", "unpack_inputs"]
