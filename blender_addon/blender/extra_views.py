"""Extra views: optional more photos of the object, each with the angle it was taken from.

The slots live on the WindowManager (never saved into the .blend, like the rest
of the panel's state): an image datablock, an azimuth and a polar angle each,
in degrees relative to the main input (azimuth 0). Azimuth 90 is a photo from
the object's left (the side on the right of the main photo), 180 from behind,
270 from its right; polar is from straight above, 90 level with the object.

Generate sends them with the main image as extra binary frames, their angles in
the job's options (``views``). They are copied into the add-on's inputs folder
beside the main image's copy, so a job sent again after a reconnect (idempotent
by its id, so byte for byte the same) carries the same views. No network here:
the session's network thread sends them; the operators and the panel are ``ui/views.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import bpy
from bpy.props import CollectionProperty, FloatProperty, PointerProperty

from .inputs import image_bytes

MAX_VIEWS = 8
"""The backend's limit (backend/view_frames.py)."""
SUGGESTED_AZIMUTHS = (180.0, 90.0, 270.0, 45.0, 135.0, 225.0, 315.0, 0.0)


class MPOD123_ExtraView(bpy.types.PropertyGroup):
    image: PointerProperty(name="Image", type=bpy.types.Image, description="A photo of the object from another side")
    azimuth: FloatProperty(
        name="Azimuth", default=180.0, min=-360.0, max=360.0, precision=0,
        description="Degrees around the object from the main photo (0): 90 = from the object's left "
                    "(the side on the right of the main photo), 180 = from behind, 270 = from its right")
    polar: FloatProperty(
        name="Polar", default=90.0, min=1.0, max=179.0, precision=0,
        description="Degrees from straight above: 90 = level with the object, less = looking down on it")


def slots(context=None):
    return (context or bpy.context).window_manager.mpod123_views


def problem(context) -> str:
    """Why the extra views stop Generate ('' when they do not); cheap enough for poll()."""
    views = slots(context)
    if len(views) > MAX_VIEWS:
        return f"at most {MAX_VIEWS} extra views; remove {len(views) - MAX_VIEWS}"
    for i, view in enumerate(views, start=1):
        if view.image is None:
            return f"extra view {i} has no image: pick one or remove the slot"
    return ""


def collect(context) -> tuple[list[bytes], list[dict]]:
    """(image file bytes, angles) of every slot, in order, for the job."""
    frames, angles = [], []
    for view in slots(context):
        frames.append(image_bytes(view.image))
        angles.append({"azimuth": round(float(view.azimuth), 4), "polar": round(float(view.polar), 4)})
    return frames, angles


def store(inputs: Path, job_id: str, frames: list[bytes], angles: list[dict]) -> None:
    """Keep the job's views beside its input copy (written before the job is first sent), as flat files
    named after the job (``<id>.view<i>.img``, ``<id>.views.json``), so the cache limits see them and
    never delete an unfinished job's."""
    for i, data in enumerate(frames):
        (inputs / f"{job_id}.view{i}.img").write_bytes(data)
    (inputs / f"{job_id}.views.json").write_text(json.dumps(angles))


def load(inputs: Path, job_id: str) -> tuple[list[bytes], list[dict]]:
    """The job's stored views ([], [] for a job without any)."""
    index = inputs / f"{job_id}.views.json"
    if not index.is_file():
        return [], []
    angles = json.loads(index.read_text())
    return [(inputs / f"{job_id}.view{i}.img").read_bytes() for i in range(len(angles))], angles


CLASSES = (MPOD123_ExtraView,)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.WindowManager.mpod123_views = CollectionProperty(type=MPOD123_ExtraView)


def unregister() -> None:
    del bpy.types.WindowManager.mpod123_views
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
