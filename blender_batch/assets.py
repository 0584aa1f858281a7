"""Turn one generated GLB into a .blend asset file, with the ``bpy`` module, headless.

Each asset starts from an empty factory scene, so nothing leaks from one
asset into the next. The object comes in through the add-on's importer
(``blender_addon.blender.importer.import_glb``, the same path as the Generate
button), is marked as an asset with a catalog, tags, a description and an
author, gets a rendered preview, has its textures packed and is saved
compressed. The file is written under a temporary name and renamed, so an
interrupted batch never leaves a half-written .blend under the final name.

Preview: Cycles on the CPU (16 samples, no denoiser: about half a second at
256 px), lit by a white world and a sun, on a transparent film, from the
front-right and above (Blender's front is -Y). Eevee is not used: it needs
about 20 s per frame without a GPU. If Cycles is unavailable the Workbench
engine renders the texture colours with studio light instead. The PNG is
loaded as the asset's preview with ``ed.lib_id_load_custom_preview``; the
pixels are written straight into ``preview_ensure()`` if that operator fails.

``bpy.app.timers`` never fire in background mode, and nothing here needs them.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import bpy
import mathutils

PREVIEW_ENGINES = {"cycles": "CYCLES", "workbench": "BLENDER_WORKBENCH"}
AUTHOR = "MPOD123 batch"


class AssetBuildError(RuntimeError):
    """The GLB could not be turned into an asset file; the message says why."""


@dataclass
class AssetSpec:
    glb: Path
    out: Path
    name: str
    catalog_id: str = ""
    tags: list[str] = field(default_factory=list)
    description: str = ""
    preview_size: int = 256
    preview_engine: str = "cycles"
    preview_png: Path | None = None
    """Where the rendered preview is kept (default: beside the output, hidden)."""


def _importer():
    try:
        from blender_addon.blender.importer import import_glb
    except ImportError as exc:
        raise AssetBuildError(f"the add-on's importer (blender_addon.blender.importer) is not available: {exc}") from None
    return import_glb


def clean_scene() -> None:
    """An empty factory scene (no objects, factory preferences, no .blend1 backups on save)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.preferences.filepaths.save_version = 0


@contextmanager
def blender_output_to(log: Path | None) -> Iterator[None]:
    """Send what Blender prints (render progress, importer and save messages) to ``log`` instead of the
    terminal, where it would break the progress display; ``None`` leaves the output alone."""
    if log is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    with open(log, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        try:
            import ctypes

            ctypes.CDLL(None).fflush(None)  # Blender's buffered C output belongs to the log too
        except (OSError, AttributeError):
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _bounds(obj: bpy.types.Object) -> tuple[mathutils.Vector, float]:
    corners = [obj.matrix_world @ mathutils.Vector(c) for c in obj.bound_box]
    centre = sum(corners, mathutils.Vector()) / len(corners)
    radius = max((c - centre).length for c in corners)
    return centre, radius if radius > 1e-6 else 1.0


def _world_white(scene: bpy.types.Scene) -> bpy.types.World:
    world = bpy.data.worlds.new("mpod123_preview_world")
    world.color = (1.0, 1.0, 1.0)
    if world.node_tree is None:  # Blender before 5.0 makes worlds without nodes
        world.use_nodes = True
    tree = world.node_tree
    if tree is not None:
        bg = next((n for n in tree.nodes if n.type == "BACKGROUND"), None)
        if bg is None:
            bg = tree.nodes.new("ShaderNodeBackground")
            out = next((n for n in tree.nodes if n.type == "OUTPUT_WORLD"), None) or tree.nodes.new("ShaderNodeOutputWorld")
            tree.links.new(bg.outputs["Background"], out.inputs["Surface"])
        bg.inputs["Color"].default_value = (1.0, 1.0, 1.0, 1.0)
        bg.inputs["Strength"].default_value = 1.0
    scene.world = world
    return world


def _setup_render(scene: bpy.types.Scene, engine: str, size: int) -> None:
    scene.render.engine = engine
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_mode = "RGBA"
    try:
        scene.view_settings.view_transform = "Standard"
    except TypeError:
        pass
    if engine == "CYCLES":
        scene.cycles.device = "CPU"
        scene.cycles.samples = 16
        scene.cycles.use_denoising = False
        scene.cycles.use_adaptive_sampling = False
        scene.cycles.max_bounces = 2
    else:
        shading = scene.display.shading
        shading.light = "STUDIO"
        shading.color_type = "TEXTURE"


def render_preview(obj: bpy.types.Object, png: Path, size: int = 256, engine: str = "cycles") -> str:
    """Render ``obj`` alone to ``png``; returns the engine that rendered it. Removes what it added."""
    scene = bpy.context.scene
    centre, radius = _bounds(obj)
    cam_data = bpy.data.cameras.new("mpod123_preview_camera")
    cam_data.angle = math.radians(40.0)
    direction = mathutils.Vector((0.55, -1.0, 0.45)).normalized()
    dist = radius / math.sin(cam_data.angle / 2) * 1.05
    cam_data.clip_start = max(1e-3, (dist - radius) * 0.5)
    cam_data.clip_end = dist + radius * 4
    cam = bpy.data.objects.new("mpod123_preview_camera", cam_data)
    cam.location = centre + direction * dist
    cam.rotation_euler = (centre - cam.location).to_track_quat("-Z", "Y").to_euler()
    sun_data = bpy.data.lights.new("mpod123_preview_sun", type="SUN")
    sun_data.energy = 3.0
    sun = bpy.data.objects.new("mpod123_preview_sun", sun_data)
    sun.rotation_euler = (centre - (centre + mathutils.Vector((0.3, -0.6, 1.0)))).to_track_quat("-Z", "Y").to_euler()
    for o in (cam, sun):
        scene.collection.objects.link(o)
    old_world, old_camera = scene.world, scene.camera
    world = _world_white(scene)
    scene.camera = cam
    scene.render.filepath = str(png)
    engines = [PREVIEW_ENGINES[engine]] + [e for e in PREVIEW_ENGINES.values() if e != PREVIEW_ENGINES[engine]]
    used, errors = None, []
    try:
        for eng in engines:
            try:
                _setup_render(scene, eng, size)
                bpy.ops.render.render(write_still=True)
            except (RuntimeError, TypeError, AttributeError) as exc:
                errors.append(f"{eng}: {exc}")
                continue
            if png.is_file():
                used = eng
                break
            errors.append(f"{eng}: no image written")
    finally:
        scene.camera, scene.world = old_camera, old_world
        bpy.data.objects.remove(cam, do_unlink=True)
        bpy.data.objects.remove(sun, do_unlink=True)
        bpy.data.cameras.remove(cam_data)
        bpy.data.lights.remove(sun_data)
        bpy.data.worlds.remove(world)
        result = bpy.data.images.get("Render Result")
        if result is not None:
            bpy.data.images.remove(result)
    if used is None:
        raise AssetBuildError("could not render a preview: " + "; ".join(errors))
    return used


def set_preview(id_block: bpy.types.ID, png: Path) -> None:
    """Load ``png`` as the custom preview of ``id_block`` (the asset browser's thumbnail)."""
    try:
        with bpy.context.temp_override(id=id_block):
            result = bpy.ops.ed.lib_id_load_custom_preview(filepath=str(png))
        if "FINISHED" in result and id_block.preview is not None and id_block.preview.image_size[0] > 0:
            return
    except (RuntimeError, TypeError):
        pass
    import numpy as np

    image = bpy.data.images.load(str(png))
    try:
        w, h = image.size
        pixels = np.empty(w * h * 4, dtype=np.float32)
        image.pixels.foreach_get(pixels)
        preview = id_block.preview_ensure()
        preview.image_size = (w, h)
        preview.image_pixels_float.foreach_set(pixels)
    finally:
        bpy.data.images.remove(image)


def save_blend(out: Path) -> None:
    """Pack everything and save compressed, under a temporary name first."""
    out = Path(out)
    tmp = out.with_name(f".{out.stem}.partial.blend")
    bpy.ops.file.pack_all()
    try:
        result = bpy.ops.wm.save_as_mainfile(filepath=str(tmp), compress=True, check_existing=False)
    except RuntimeError as exc:
        raise AssetBuildError(f"could not save {out}: {exc}") from None
    if "FINISHED" not in result or not tmp.is_file():
        raise AssetBuildError(f"could not save {out}")
    os.replace(tmp, out)


def build_asset(spec: AssetSpec) -> dict[str, float]:
    """Write ``spec.out``: one object from ``spec.glb``, marked as an asset. Returns timings in seconds."""
    import_glb = _importer()
    t0 = time.perf_counter()
    clean_scene()
    try:
        obj = import_glb(str(spec.glb), spec.name, location=(0.0, 0.0, 0.0), collection_name="Generated")
    except Exception as exc:  # noqa: BLE001 - the importer's and Blender's errors alike
        raise AssetBuildError(f"import of {Path(spec.glb).name} failed: {exc}") from None
    obj.asset_mark()
    meta = obj.asset_data
    if spec.catalog_id:
        meta.catalog_id = spec.catalog_id
    meta.description = spec.description
    meta.author = AUTHOR
    for tag in spec.tags:
        meta.tags.new(tag, skip_if_exists=True)
    t1 = time.perf_counter()
    png = Path(spec.preview_png or Path(spec.out).with_name(f".{Path(spec.out).stem}.preview.png"))
    png.parent.mkdir(parents=True, exist_ok=True)
    engine = render_preview(obj, png, spec.preview_size, spec.preview_engine)
    set_preview(obj, png)
    t2 = time.perf_counter()
    save_blend(Path(spec.out))
    t3 = time.perf_counter()
    return {"import_s": t1 - t0, "preview_s": t2 - t1, "save_s": t3 - t2, "total_s": t3 - t0,
            "faces": float(len(obj.data.polygons)), "engine": engine}  # type: ignore[dict-item]


def build_library(assets: list[tuple[Path, str]], out: Path) -> int:
    """Write ``out``: a .blend that links the object ``name`` from each ``(blend, name)``; returns how many.

    Library paths are relative, so the folder can be moved as a whole.
    """
    out = Path(out)
    tmp = out.with_name(f".{out.stem}.partial.blend")
    clean_scene()
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp), check_existing=False)  # relative paths need a saved file
    coll = bpy.data.collections.new("MPOD123 assets")
    bpy.context.scene.collection.children.link(coll)
    linked = 0
    for blend, name in assets:
        with bpy.data.libraries.load(str(blend), link=True, relative=True) as (src, dst):
            dst.objects = [n for n in src.objects if n == name]
        for obj in dst.objects:
            if obj is not None:
                coll.objects.link(obj)
                linked += 1
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp), compress=True, check_existing=False)
    os.replace(tmp, out)
    return linked
