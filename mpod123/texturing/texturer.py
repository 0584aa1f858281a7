"""Photo + mesh -> textured GLB: the runner of ``mpod123 texture``.

A :class:`~mpod123.pipeline.runner.Runner` whose middle is different: no stage 1
(the geometry is given) and the texturing stage instead of the detail stage.
The work folder, run.json, events, cancel, resume of the stage checkpoint and
textual inversion (``Runner._inversion``) are the runner's own.

Order: read the mesh (any glTF/GLB/OBJ, every object and primitive, in the
file's coordinates) -> normalise it into the unit sphere -> the photo and its
camera (the front camera with ``generate``'s framing, or a camera file) ->
textual inversion -> :class:`~mpod123.stages.texturing.TexturingStage` ->
bake. The bake goes into the mesh's own UVs when they are usable
(:mod:`.uv_usability`), else through the export path's unwrap; every position
written goes back through the normalisation, so the result sits where the input was.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import ExportConfig, PipelineConfig
from ..geometry import Mesh
from ..runtime.progress import Preview, Result, StageDone, emit
from ..pipeline.runner import RunError, Runner
from .camera_file import CameraSpec, fit_to_front, front_camera
from .normalisation import Normalisation
from .uv_usability import UVCheckConfig, UVReport, check_uvs

MAX_FACES = 2_000_000
"""Largest mesh ``texture`` takes (faces, all objects together)."""


@dataclass
class TexturingOptions:
    mesh: str | Path | bytes
    """The mesh file, or a GLB's bytes."""
    camera: CameraSpec | None = None
    """None: the front camera (see :mod:`.camera_file`)."""
    refine_geometry: bool = False
    uv_check: UVCheckConfig = field(default_factory=UVCheckConfig)


@dataclass
class MeshInput:
    """The mesh as read, in the file's coordinates."""

    vertices: torch.Tensor
    faces: torch.Tensor
    uvs: torch.Tensor | None
    objects: int


def read_input_mesh(source: str | Path | bytes) -> MeshInput:
    """Any glTF/GLB/OBJ file (or GLB bytes) flattened to one mesh; MeshReadError with the fix otherwise."""
    from ..export.reader import MeshReadError, read_gltf_bytes, read_mesh_file

    asset = read_gltf_bytes(bytes(source), "glb") if isinstance(source, (bytes, bytearray, memoryview)) else read_mesh_file(source)
    if asset.faces.shape[0] > MAX_FACES:
        raise MeshReadError(f"the mesh has {asset.faces.shape[0]} faces, over the {MAX_FACES} that texture takes: "
                            "decimate it first (Blender: Decimate modifier)")
    objects = int(len(np.unique(asset.face_material))) if asset.face_material.size else 0
    uvs = torch.from_numpy(asset.uvs) if asset.uvs is not None else None
    return MeshInput(torch.from_numpy(asset.positions), torch.from_numpy(asset.faces), uvs, objects)


def welded_index(vertices: torch.Tensor) -> torch.Tensor:
    """For each vertex, the index of its position among the unique positions (glTF splits vertices at UV seams)."""
    return Mesh(vertices, torch.zeros(0, 3, dtype=torch.long)).welded()[1]


def bake_into_own_uvs(vertices: torch.Tensor, faces: torch.Tensor, uvs: torch.Tensor, color_fn, out_glb: Path,
                      texture_size: int, padding: int, restore) -> dict:
    """Bake ``color_fn`` (in the normalised world) through the mesh's own UVs; write positions restored."""
    from ..export.bake import bake_texture
    from ..export.exporter import _atomic_write, unit_normals
    from ..export.gltf import encode_glb, validate_glb
    from ..export.uv import UVMesh
    from ..imaging.images import png_bytes

    source = welded_index(vertices)
    welded = torch.zeros(int(source.max()) + 1, 3, dtype=vertices.dtype)
    welded[source] = vertices
    normals = unit_normals(Mesh(welded, source[faces]))[source]
    uv_mesh = UVMesh(vertices, faces, uvs.clamp(0, 1), source, "kept")
    texture, _ = bake_texture(uv_mesh, color_fn, texture_size, padding)
    png = png_bytes(texture.float().cpu().numpy())
    positions = restore(vertices.double()).float().numpy()
    glb = encode_glb(positions, faces.numpy().astype(np.uint32), uvs.float().numpy(), normals.float().numpy(), png,
                     name=out_glb.stem)
    validate_glb(glb)
    _atomic_write(out_glb, glb)
    return {"faces": int(faces.shape[0]), "vertices": int(vertices.shape[0]), "texture_size": texture_size}


class TextureRunner(Runner):
    """``Runner`` with the texturing order; see the module docstring."""

    def __init__(self, cfg: PipelineConfig, options: TexturingOptions, workdir, device="auto", callback=None,
                 cancel=None, resume=False) -> None:
        super().__init__(cfg, workdir, device, callback, cancel, resume)
        self.options = options

    def _run(self, image, out):
        from ..export.reader import MeshReadError

        t0 = time.perf_counter()
        try:
            mesh = read_input_mesh(self.options.mesh)
        except MeshReadError as exc:
            raise RunError(f"cannot read the mesh: {exc}") from None
        self.cancel.raise_if_cancelled()
        reference, norm = self._reference(image, mesh)
        uv_report = check_uvs(mesh.vertices, mesh.faces, mesh.uvs, self.options.uv_check)
        self.record["texture"] = {
            "faces": int(mesh.faces.shape[0]), "vertices": int(mesh.vertices.shape[0]),
            "normalisation": norm.to_dict(), "camera": self.options.camera.to_dict() if self.options.camera else "front",
            "uv": "kept" if uv_report.usable else "unwrapped", "uv_check": uv_report.reason,
            "refine_geometry": self.options.refine_geometry,
        }
        self._timed("read_mesh", t0)
        models = self._inversion(reference)
        self.cancel.raise_if_cancelled()
        normalised = Mesh(norm.apply(mesh.vertices.double()).float(), mesh.faces)
        stage = self._texture(reference, normalised, models)
        del models
        self.cancel.raise_if_cancelled()
        return self._bake(stage, mesh, norm, uv_report, out)

    # ------------------------------------------------------------ the photo and its camera
    def _reference(self, image, mesh: MeshInput):
        from ..pipeline.preprocess import find_foreground, preprocess, read_image
        from ..stages.base import ReferenceView

        cfg = self.cfg
        norm = Normalisation.into_unit_sphere(mesh.vertices)
        if self.options.camera is None:
            pre = preprocess(image, cfg.preprocess)
            pre.save(self.workdir)
            rgba = pre.rgba
            self.record["input"] = {"method": pre.method, "confidence": round(pre.confidence, 3)}
            camera = front_camera(cfg.detail.camera, rgba.shape[1], rgba.shape[0])
            fill = 1.0 - 2.0 * cfg.preprocess.border_ratio
            norm, camera = fit_to_front(norm, mesh.vertices, camera, fill)
            self.record["front_camera"] = [round(float(x), 6) for x in camera.position[0]]
        else:
            pixels, _ = read_image(image, cfg.preprocess)
            matte = find_foreground(pixels, cfg.preprocess)
            rgba = np.concatenate([pixels[..., :3], matte.alpha[..., None]], -1).astype(np.float32)
            rgba = _fit_size(rgba, cfg.preprocess.size)
            self.record["input"] = {"method": matte.method, "confidence": round(matte.confidence, 3)}
            camera = self.options.camera.cameras(rgba.shape[1], rgba.shape[0], norm)
        from ..imaging.images import png_bytes

        self._on_event(Preview("matte", 0, png_bytes(rgba), rgba.shape[1], rgba.shape[0]))
        return ReferenceView(torch.from_numpy(np.ascontiguousarray(rgba)), camera), norm

    # ------------------------------------------------------------ the stage
    def _texture(self, reference, mesh: Mesh, models):
        from ..guidance.stable_diffusion import StableDiffusionGuidance
        from ..stages.texturing import TexturingStage

        t0 = time.perf_counter()
        guidance = StableDiffusionGuidance(self.cfg.sd, models)
        try:
            stage = TexturingStage(self.cfg.detail, reference, guidance, mesh, self.cfg.outline.nerf,
                                   self.options.refine_geometry, self.device, self._on_event, self.cancel)
            self._train_or_load(stage)
        finally:
            guidance.close()
        stage.guidance = None
        self._free()
        self._record_stage_health(stage)
        self.record["texture_steps"] = stage.step
        self._timed("texture", t0)
        return stage

    # ------------------------------------------------------------ the bake
    def _bake(self, stage, mesh: MeshInput, norm: Normalisation, uv_report: UVReport, out: Path | None) -> Path:
        t0 = time.perf_counter()
        target = self.workdir / "result.glb"
        final = textured_export(stage, mesh, norm, uv_report, target, self.cfg.export)
        self.record["mesh"] = final
        path = target
        if out is not None:
            tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
            tmp.write_bytes(target.read_bytes())
            os.replace(tmp, out)
            path = out
        emit(self.callback, StageDone("export", 1, time.perf_counter() - t0, None))
        self._timed("export", t0)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        self.record["sha256"] = digest
        emit(self.callback, Result(str(path), digest, {"faces": final["faces"], "vertices": final["vertices"],
                                                       "uv": self.record["texture"]["uv"]}))
        return path


def textured_export(stage, mesh: MeshInput, norm: Normalisation, uv_report: UVReport, out_glb: Path,
                    export_cfg: ExportConfig) -> dict:
    """Bake the stage's texture into the mesh's own UVs when usable, else unwrap; positions restored."""
    from ..export import export_mesh

    field = stage.texture.eval()
    geometry = stage.split_vertices().detach().cpu()  # normalised (moved a little with --refine-geometry), per vertex as read
    restore = norm.restore
    if uv_report.usable:
        with torch.no_grad():
            info = bake_into_own_uvs(geometry, mesh.faces, mesh.uvs, field.color, out_glb, export_cfg.texture_size,
                                     export_cfg.padding, restore)
        info["uv_backend"] = "kept"
        return info
    export_cfg = dataclasses.replace(export_cfg, target_faces=None, obj=False)  # the artist's faces, all of them
    original = Mesh(restore(geometry.double()).float(), mesh.faces)
    result = export_mesh(original, lambda p: field.color(norm.apply(p.float())), out_glb, export_cfg)
    return {"faces": result.n_faces, "vertices": result.n_vertices, "texture_size": result.texture_size,
            "uv_backend": result.uv_backend}


def _fit_size(rgba: np.ndarray, side: int) -> np.ndarray:
    """The photo with its long side at most ``side`` pixels (area resampling, premultiplied)."""
    h, w = rgba.shape[:2]
    if max(h, w) <= side:
        return rgba
    from PIL import Image

    s = side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    premul = rgba.copy()
    premul[..., :3] *= premul[..., 3:]
    ch = [np.asarray(Image.fromarray(premul[..., c]).resize(size, Image.Resampling.BOX), np.float32) for c in range(4)]
    small = np.clip(np.stack(ch, -1), 0, 1)
    small[..., :3] = np.where(small[..., 3:] > 1e-4, small[..., :3] / np.maximum(small[..., 3:], 1e-4), 1.0)
    return small


def texture(mesh: str | Path | bytes, image: str | Path | bytes, out_glb: str | Path, *, camera: CameraSpec | None = None,
            refine_geometry: bool = False, preset: str = "fast", device: str = "auto", seed: int = 0, models=None,
            workdir=None, resume: bool = False, callback=None, cancel=None, tiny: bool = False,
            config: PipelineConfig | None = None):
    """Texture ``mesh`` from ``image``; the main job of ``mpod123 texture`` as one call."""
    from ..pipeline.generate import configure, default_workdir

    cfg = configure(preset, seed, models, tiny, config)
    options = TexturingOptions(mesh, camera, refine_geometry)
    runner = TextureRunner(cfg, options, workdir or default_workdir(out_glb), device, callback, cancel, resume)
    return runner.run(image, out_glb)


__all__ = ["MAX_FACES", "MeshInput", "TextureRunner", "TexturingOptions", "bake_into_own_uvs", "read_input_mesh",
           "texture", "textured_export", "welded_index"]
