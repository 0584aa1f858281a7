"""The Text input mode's operators and drawing: Make Candidates, Generate from Candidate, the pick list."""

from __future__ import annotations

import os

import bpy

from ..blender.candidates import candidate_path, picked, text_state
from ..blender.properties import state
from ..core.errors import AddonError
from ..core.prompt import name_for, prompt_problem
from .common import AddonOperator, address_problem, poll_reason, run_options, submit_at_cursor

# ------------------------------------------------------------------ operators
class MPOD123_OT_make_candidates(AddonOperator):
    """Send the prompt: the backend draws candidate images of the object to pick from (no 3D yet)"""

    bl_idname = "mpod123.make_candidates"
    bl_label = "Make Candidates"

    @classmethod
    def poll(cls, context):
        ts = text_state(context)
        return poll_reason(cls, ("switch the input to Text" if ts.mode != "TEXT" else "") or prompt_problem(ts.prompt)
                     or address_problem(context))

    def run(self, context):
        ts = text_state(context)
        prompt = ts.prompt.strip()
        options = {"prompt": prompt, "candidates": int(ts.count), "candidates_only": True, "seed": int(state(context).seed),
                   "preset": state(context).preset}
        job_id = submit_at_cursor(context, b"", name_for(prompt), options, f"prompt: {prompt}"[:200])
        ts.candidates.clear()
        ts.job_id, ts.job_prompt, ts.picked = job_id, prompt, 0
        self.report({"INFO"}, f"drawing {ts.count} candidates for {prompt!r} (job {job_id[:8]})")


class MPOD123_OT_generate_from_candidate(AddonOperator):
    """Send the picked candidate as the input image and build a textured mesh from it, at the 3D cursor"""

    bl_idname = "mpod123.generate_from_candidate"
    bl_label = "Generate from Candidate"

    @classmethod
    def poll(cls, context):
        row = picked(context)
        if row is None:
            return poll_reason(cls, "make candidates first, then pick one")
        if not os.path.isfile(candidate_path(context, row)):
            return poll_reason(cls, f"candidate {row.index} has not arrived yet")
        if not row.usable and row.verdict not in ("", "drawn"):  # the backend's matting rejected it
            return poll_reason(cls, f"candidate {row.index} was rejected ({row.verdict}): pick a clean one")
        return poll_reason(cls, address_problem(context))

    def run(self, context):
        ts = text_state(context)
        row = picked(context)
        try:
            with open(candidate_path(context, row), "rb") as f:
                data = f.read()
        except OSError as exc:
            raise AddonError(f"cannot read candidate {row.index} ({exc}): make the candidates again") from None
        options = run_options(context, prompt_for_inversion=ts.job_prompt)
        job_id = submit_at_cursor(context, data, name_for(ts.job_prompt), options,
                                  f"candidate {row.index} of {ts.job_prompt}"[:200])
        self.report({"INFO"}, f"sending candidate {row.index} as job {job_id[:8]}")


# ------------------------------------------------------------------ drawing
class MPOD123_UL_candidates(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        image = bpy.data.images.get(item.image_name)
        icon_value = layout.icon(image) if image is not None else 0
        row = layout.row()
        row.label(text=f"{item.index}", icon_value=icon_value) if icon_value else row.label(text=f"{item.index}")
        row.label(text=item.verdict or "waiting", icon="CHECKMARK" if item.usable else "BLANK1")


def draw_input(layout, context) -> bool:
    """The Text mode's part of the Input panel (True when it drew the panel, so the image inputs are skipped)."""
    ts = text_state(context)
    layout.prop(ts, "mode", expand=True)
    if ts.mode != "TEXT":
        return False
    layout.prop(ts, "prompt", text="")
    row = layout.row(align=True)
    row.prop(ts, "count")
    row.operator("mpod123.make_candidates", icon="IMAGE_DATA")
    if ts.candidates:
        layout.label(text=f"Candidates for \"{ts.job_prompt[:40]}\":")
        layout.template_list("MPOD123_UL_candidates", "", ts, "candidates", ts, "picked", rows=3)
        row = picked(context)
        image = bpy.data.images.get(row.image_name) if row is not None else None
        if image is not None and image.preview is not None:
            layout.template_icon(icon_value=image.preview.icon_id, scale=8.0)
        big = layout.row()
        big.scale_y = 1.5
        big.operator("mpod123.generate_from_candidate", icon="MESH_MONKEY")
    problem = prompt_problem(ts.prompt)
    if problem:
        layout.label(text=problem[:60], icon="INFO")
    return True


CLASSES = (MPOD123_OT_make_candidates, MPOD123_OT_generate_from_candidate,
           MPOD123_UL_candidates)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
