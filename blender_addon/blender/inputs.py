"""The input image: where it comes from (file, datablock, Image Editor, render) and its bytes as a file.

``input_problem`` is cheap enough for poll(); ``input_image`` reads the bytes and refuses, with the reason, an
image the backend would refuse (empty, not an image, over the limit of its hello reply), so that such an
image never becomes a job.
"""

from __future__ import annotations

import os
import tempfile

import bpy

from ..core.errors import AddonError
from ..core.image_check import file_problem, image_problem
from .importer import object_name_for
from .properties import state

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".exr"}


def editor_images(context) -> list[bpy.types.Image]:
    """The distinct images shown in the Image Editors of the screen (the one in the context first)."""
    found: list[bpy.types.Image] = []
    space = getattr(context, "space_data", None)
    if space is not None and space.type == "IMAGE_EDITOR" and space.image is not None:
        found.append(space.image)
    screen = getattr(context, "screen", None)
    for area in getattr(screen, "areas", ()):
        if area.type == "IMAGE_EDITOR" and area.spaces.active.image is not None:
            if area.spaces.active.image not in found:
                found.append(area.spaces.active.image)
    return found


def editor_image(context) -> bpy.types.Image | None:
    """The Image Editor's image: the one in the context, else the only one shown (None when several differ)."""
    space = getattr(context, "space_data", None)
    if space is not None and space.type == "IMAGE_EDITOR" and space.image is not None:
        return space.image
    images = editor_images(context)
    return images[0] if len(images) == 1 else None


def render_result() -> bpy.types.Image | None:
    return next((im for im in bpy.data.images if im.type == "RENDER_RESULT"), None)


def image_bytes(image: bpy.types.Image) -> bytes:
    """The bytes of an image datablock as an image file (its file, its packed file, or a PNG written now).

    The Render Result and generated or edited images are written with ``save_render``, which takes the
    pixels as Blender shows them whatever their source.
    """
    if image.type != "RENDER_RESULT":
        if image.packed_file is not None:
            return bytes(image.packed_file.data)
        path = bpy.path.abspath(image.filepath) if image.filepath else ""
        if path and os.path.isfile(path) and not image.is_dirty:
            with open(path, "rb") as f:
                return f.read()
    fd, tmp = tempfile.mkstemp(suffix=".png")
    os.close(fd)
    try:
        try:
            image.save_render(tmp)  # writes the pixels as they are shown, whatever the source
        except RuntimeError as exc:
            what = "render an image first (F12)" if image.type == "RENDER_RESULT" else "it has no pixels"
            raise AddonError(f"cannot use the image {image.name!r}: {what} ({exc})") from None
        with open(tmp, "rb") as f:
            data = f.read()
        if not data:
            raise AddonError(f"the image {image.name!r} has no pixels")
        return data
    finally:
        os.unlink(tmp)


def input_problem(context, max_bytes: int | None = None) -> str:
    """Why Generate cannot run now ('' when it can); cheap enough for poll() (a file's size, not its bytes).

    ``max_bytes``: the backend's ``max_image_bytes`` (None: its default until a backend said hello)."""
    st = state(context)
    if st.source == "FILE":
        path = bpy.path.abspath(st.filepath)
        if not st.filepath:
            return "choose an image file in the Input section"
        if not os.path.isfile(path):
            return f"no image file at {path}"
        return file_problem(path, max_bytes)
    if st.source == "DATABLOCK":
        return "" if st.image is not None else "pick an image in the Input section"
    if st.source == "RENDER":
        return "" if render_result() is not None else "render an image first (F12), or choose another input"
    images = editor_images(context)
    if not images:
        return "open an image in an Image Editor, or choose another input"
    if editor_image(context) is None:
        return (f"{len(images)} Image Editors show different images: choose one as Image, or use Generate in "
                "that Image Editor's sidebar")
    return ""


def input_image(context, max_bytes: int | None = None) -> tuple[bytes, str, str]:
    """(image file bytes, object name, where it came from) for the panel's chosen input.

    Raises AddonError with the reason for an input the backend would refuse (nothing is queued then)."""
    st = state(context)
    problem = input_problem(context, max_bytes)
    if problem:
        raise AddonError(f"cannot use this input: {problem}")
    if st.source == "FILE":
        path = bpy.path.abspath(st.filepath)
        with open(path, "rb") as f:
            data, name, label = f.read(), object_name_for(path), path
    else:
        image = {"DATABLOCK": lambda: st.image, "RENDER": render_result}.get(st.source, lambda: editor_image(context))()
        data, name, label = image_bytes(image), object_name_for(image.name), image.name
    problem = image_problem(data, max_bytes, f"the image {os.path.basename(label)!r}")
    if problem:
        raise AddonError(f"cannot use this input: {problem}")
    return data, name, label
