"""Texture Selected Mesh: the operator (the export, the camera and applying the result are
``blender/texture_target.py``). It keeps the artist's mode: the export steps out of Edit or Sculpt mode and
back, and the result is applied in a tick of its own that gives the mode back too."""

from __future__ import annotations

import bpy

from .. import session
from ..blender.inputs import input_image, input_problem
from ..blender.texture_target import camera_relative, export_object_glb, target_problem
from ..core.errors import AddonError
from ..core.image_check import DEFAULT_MAX_IMAGE_BYTES
from .common import AddonOperator, address_problem, max_image_bytes, poll_reason, run_options


def submit(context, obj, image: bytes, name: str, options: dict, label: str) -> str:
    """Queue a texture job for ``obj`` (returns at once; the upload runs on the network thread).

    The mesh and the photo travel in one message, which the backend drops when it is over its limit (the
    hello reply's ``max_image_bytes``): such a mesh is refused here, with what to do, and never sent."""
    mesh = export_object_glb(context, obj)
    limit = max_image_bytes() or DEFAULT_MAX_IMAGE_BYTES
    if len(mesh) + len(image) > limit:
        raise AddonError(f"{obj.name} is {len(mesh) / 1e6:.1f} MB as GLB ({len(obj.data.polygons):,} faces), with the "
                         f"photo over the backend's limit of {limit / 1e6:.1f} MB: decimate it (a Decimate modifier, "
                         "applied) or texture a lighter copy")
    camera = camera_relative(context.scene, obj, context.scene.camera)
    return session.submit(context, image, name, options, tuple(obj.location), input_label=label,
                          texture=(obj.name, mesh, camera))


class MPOD123_OT_texture_selected(AddonOperator):
    """Texture the selected mesh from the input image, seen from the scene camera (or from the front)"""

    bl_idname = "mpod123.texture_selected"
    bl_label = "Texture Selected Mesh"

    @classmethod
    def poll(cls, context):
        return poll_reason(cls, target_problem(context) or input_problem(context, max_image_bytes()) or address_problem(context))

    def run(self, context):
        obj = context.active_object
        data, _, label = input_image(context, max_image_bytes())
        job_id = submit(context, obj, data, obj.name, run_options(context), label)
        where = "the scene camera" if context.scene.camera is not None else "the front (no scene camera)"
        self.report({"INFO"}, f"texturing {obj.name} as seen from {where}: job {job_id[:8]}")


CLASSES = (MPOD123_OT_texture_selected,)
register, unregister = bpy.utils.register_classes_factory(CLASSES)
