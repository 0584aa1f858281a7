"""Preview images: the backend's stage previews and text candidates as Blender images, read from their files."""

from __future__ import annotations

import os

import bpy

from .paths import preview_path

PREVIEW_STAGES = {"matte": "preview_matte", "outline": "preview_outline", "detail": "preview_detail"}
"""Preview stages in events -> the job field holding the Blender image's name. The matte comes first."""


def preview_image(job_id: str, stage: str, png: bytes | None = None) -> bpy.types.Image:
    """The Blender image for (job, stage), reading the preview file (written now when ``png`` is given)."""
    path = preview_path(job_id, stage)
    if png is not None:
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(png)
        os.replace(tmp, path)
    name = f"MPOD123 {stage} {job_id[:8]}"
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.load(path)
        image.name = name
    else:
        if bpy.path.abspath(image.filepath) != path:
            image.filepath = path
        image.reload()  # cheap: the pixels are read again when the image is next drawn
    return image


def later_previews(batch) -> set[int]:
    """Indices of preview events that a later preview of the same job and stage in ``batch`` replaces."""
    seen, skip = set(), set()
    for i in range(len(batch) - 1, -1, -1):
        c = batch[i].content
        if c.get("kind") == "preview":
            key = (batch[i].job_id, c.get("stage"))
            if key in seen:
                skip.add(i)
            seen.add(key)
    return skip
