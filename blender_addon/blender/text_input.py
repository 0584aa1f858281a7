"""The Text input mode: a prompt becomes candidate images to pick from, and the pick a normal job.

Two steps, so that the artist chooses before the 3D stages start:

1. **Make Candidates** sends a prompt job with ``candidates_only`` (no image). The
   backend draws the candidates with Stable Diffusion; each arrives as a preview
   event of stage ``candidate_<i>`` and lands as a Blender image in the pick list,
   marked with what the backend's matting made of it (one clean object or why not).
2. **Generate from Candidate** sends the picked image as an ordinary image job, with
   ``prompt_for_inversion`` so that the prompt joins textual inversion's captions.

Both operators return at once: the network thread sends, the bridge's tick applies
the events (see ``bridge``). The candidates job sits in the job list like any other
(progress, cancel, the job file) but has images, not a mesh: it is never imported.

The hooks the bridge calls (``fill_job``, ``job_options``, ``record``, ``fill``,
``on_preview``, ``on_log``, ``is_candidates``) are small and tolerate jobs that are
not prompt jobs, so the image path is unchanged.
"""

from __future__ import annotations

import os
import re
import unicodedata

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, IntProperty, PointerProperty, StringProperty

MAX_PROMPT_CHARS = 500
"""The backend's limit (mpod123.prompt); checked here too so that poll() can say so before sending."""
MAX_CANDIDATES = 16
KIND_CANDIDATES = "candidates"
_CANDIDATE_STAGE = re.compile(r"candidate_(\d{1,2})")

MODES = (
    ("IMAGE", "Image", "Generate from an input image (file, datablock, Image Editor or render)"),
    ("TEXT", "Text", "Describe the object: Stable Diffusion draws candidates, you pick one, it becomes the input"),
)


def prompt_problem(prompt: str) -> str:
    """Why ``prompt`` cannot be sent ('' when it can): the backend's own rules, for poll()."""
    text = (prompt or "").strip()
    if not text:
        return "describe the object in the Prompt field, e.g. \"a red vintage kettle\""
    if len(text) > MAX_PROMPT_CHARS:
        return f"the prompt is {len(text)} characters, over {MAX_PROMPT_CHARS}: describe just the object"
    if any(not c.isprintable() or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co") for c in text):
        return "the prompt holds a control or unprintable character"
    return ""


def name_for(prompt: str) -> str:
    """An object name from the prompt's first words."""
    words = re.sub(r"[^\w\- ]+", " ", prompt).split()
    return "_".join(words[:4])[:60] or "Prompt"


# ------------------------------------------------------------------ properties
class MPOD123_Candidate(bpy.types.PropertyGroup):
    index: IntProperty(name="Index", min=0)
    image_name: StringProperty(name="Image", description="The Blender image of this candidate")
    usable: BoolProperty(name="Clean", description="The backend's matting found one clean object")
    verdict: StringProperty(name="Verdict", description="What the backend's matting made of this candidate")


class MPOD123_TextInput(bpy.types.PropertyGroup):
    mode: EnumProperty(name="Input", items=MODES, default="IMAGE", description="Generate from an image or from text")
    prompt: StringProperty(name="Prompt", description="What to make, e.g. \"a red vintage kettle\" (the object alone)")
    count: IntProperty(name="Candidates", default=4, min=1, max=MAX_CANDIDATES,
                       description="How many images to draw to choose from")
    candidates: CollectionProperty(type=MPOD123_Candidate)
    picked: IntProperty(name="Picked", default=0, min=0, description="The candidate to generate from")
    job_id: StringProperty(name="Candidates job", description="The job whose candidates are listed")
    job_prompt: StringProperty(name="Candidates prompt", description="The prompt the listed candidates were drawn for")


def text_state(context=None) -> MPOD123_TextInput:
    return (context or bpy.context).window_manager.mpod123_text


# ------------------------------------------------------------------ bridge hooks
def fill_job(job, options: dict) -> None:
    """At submit: remember a job's prompt, kind and candidate count (to send it again after a reconnect)."""
    prompt = options.get("prompt", options.get("prompt_for_inversion", ""))
    job.prompt = str(prompt or "")
    job.kind = KIND_CANDIDATES if options.get("candidates_only") else ""
    job.candidates = int(options.get("candidates", 0) or 0)


def job_options(job) -> dict:
    """The prompt options of a job as the backend wants them (none for a plain image job)."""
    if not getattr(job, "prompt", ""):
        return {}
    if job.kind == KIND_CANDIDATES:
        return {"prompt": job.prompt, "candidates": int(job.candidates or 4), "candidates_only": True}
    return {"prompt_for_inversion": job.prompt}


def record(job) -> dict:
    return {"prompt": job.prompt, "kind": job.kind, "candidates": int(job.candidates)} if job.prompt else {}


def fill(job, rec: dict) -> None:
    job.prompt, job.kind = str(rec.get("prompt", "") or ""), str(rec.get("kind", "") or "")
    try:
        job.candidates = int(rec.get("candidates", 0) or 0)
    except (TypeError, ValueError):
        job.candidates = 0


def is_candidates(job) -> bool:
    return getattr(job, "kind", "") == KIND_CANDIDATES


def _row(ts, index: int) -> MPOD123_Candidate:
    for row in ts.candidates:
        if row.index == index:
            return row
    row = ts.candidates.add()
    row.index = index
    return row


def on_preview(context, job, stage: str, png: bytes, apply: bool) -> bool:
    """A candidate image of the listed candidates job: into a Blender image and the pick list."""
    from ..session import bridge

    match = _CANDIDATE_STAGE.fullmatch(stage)
    if not apply or match is None or not is_candidates(job) or int(match.group(1)) >= MAX_CANDIDATES:
        return False
    ts = text_state(context)
    if ts.job_id != job.job_id:
        return False  # an older candidates job: its images stay with it, the list shows the newest
    image = bridge.preview_image(job.job_id, stage, png)
    row = _row(ts, int(match.group(1)))
    row.image_name, row.verdict = image.name, row.verdict or "drawn"
    return True


def on_log(context, job, content: dict) -> None:
    """The matting's verdicts for the listed candidates (the backend's log event after drawing)."""
    verdicts = content.get("verdicts")
    if not is_candidates(job) or not isinstance(verdicts, list) or text_state(context).job_id != job.job_id:
        return
    ts = text_state(context)
    for v in verdicts[:MAX_CANDIDATES]:
        if isinstance(v, dict) and isinstance(v.get("index"), int) and 0 <= v["index"] < MAX_CANDIDATES:
            row = _row(ts, v["index"])
            row.usable = bool(v.get("usable"))
            row.verdict = "one clean object" if row.usable else str(v.get("reason") or "not clean")[:200]
    current = ts.candidates[ts.picked] if ts.picked < len(ts.candidates) else None
    clean = [i for i, r in enumerate(ts.candidates) if r.usable]
    if (current is None or not current.usable) and clean:
        ts.picked = clean[0]  # preselect the first clean one; the artist may still pick any


# ------------------------------------------------------------------ operators
def _picked(context) -> MPOD123_Candidate | None:
    ts = text_state(context)
    if not ts.candidates or ts.picked >= len(ts.candidates):
        return None
    return ts.candidates[ts.picked]


def _candidate_path(context, row) -> str:
    from ..session import bridge

    return bridge._preview_path(text_state(context).job_id, f"candidate_{row.index}")


class MPOD123_OT_make_candidates(bpy.types.Operator):
    """Send the prompt: the backend draws candidate images of the object to pick from (no 3D yet)"""

    bl_idname = "mpod123.make_candidates"
    bl_label = "Make Candidates"

    @classmethod
    def poll(cls, context):
        from ..ui.operators import _address_problem, _poll

        ts = text_state(context)
        return _poll(cls, ("switch the input to Text" if ts.mode != "TEXT" else "") or prompt_problem(ts.prompt)
                     or _address_problem(context))

    def execute(self, context):
        from ..session import bridge
        from ..ui.operators import _job_import_options
        from .properties import state

        ts, st = text_state(context), state(context)
        prompt = ts.prompt.strip()
        options = {"prompt": prompt, "candidates": int(ts.count), "candidates_only": True, "seed": int(st.seed),
                   "preset": st.preset}
        try:
            job_id = bridge.submit(context, b"", name_for(prompt), options, tuple(context.scene.cursor.location),
                                   collection=st.collection, import_options=_job_import_options(context),
                                   input_label=f"prompt: {prompt}"[:200])
        except bridge.BridgeError as exc:
            st.last_error = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        ts.candidates.clear()
        ts.job_id, ts.job_prompt, ts.picked = job_id, prompt, 0
        st.last_error = ""
        self.report({"INFO"}, f"drawing {ts.count} candidates for {prompt!r} (job {job_id[:8]})")
        return {"FINISHED"}


class MPOD123_OT_generate_from_candidate(bpy.types.Operator):
    """Send the picked candidate as the input image and build a textured mesh from it, at the 3D cursor"""

    bl_idname = "mpod123.generate_from_candidate"
    bl_label = "Generate from Candidate"

    @classmethod
    def poll(cls, context):
        from ..ui.operators import _address_problem, _poll

        row = _picked(context)
        if row is None:
            return _poll(cls, "make candidates first, then pick one")
        if not os.path.isfile(_candidate_path(context, row)):
            return _poll(cls, f"candidate {row.index} has not arrived yet")
        return _poll(cls, _address_problem(context))

    def execute(self, context):
        from ..session import bridge
        from ..ui.operators import _job_import_options
        from .properties import state

        ts, st = text_state(context), state(context)
        row = _picked(context)
        with open(_candidate_path(context, row), "rb") as f:
            data = f.read()
        options = {"preset": st.preset, "seed": int(st.seed), "prompt_for_inversion": ts.job_prompt}
        if st.steps > 0:
            options["steps"] = int(st.steps)
        try:
            job_id = bridge.submit(context, data, name_for(ts.job_prompt), options, tuple(context.scene.cursor.location),
                                   collection=st.collection, import_options=_job_import_options(context),
                                   input_label=f"candidate {row.index} of {ts.job_prompt}"[:200])
        except bridge.BridgeError as exc:
            st.last_error = str(exc)
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        st.last_error = ""
        self.report({"INFO"}, f"sending candidate {row.index} as job {job_id[:8]}")
        return {"FINISHED"}


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
        row = _picked(context)
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


CLASSES = (MPOD123_Candidate, MPOD123_TextInput, MPOD123_OT_make_candidates, MPOD123_OT_generate_from_candidate,
           MPOD123_UL_candidates)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.WindowManager.mpod123_text = PointerProperty(type=MPOD123_TextInput)


def unregister() -> None:
    del bpy.types.WindowManager.mpod123_text
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
