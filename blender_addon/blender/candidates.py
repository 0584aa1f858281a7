"""The Text input mode: a prompt becomes candidate images to pick from, and the pick a normal job.

Two steps, so that the artist chooses before the 3D stages start:

1. **Make Candidates** sends a prompt job with ``candidates_only`` (no image). The
   backend draws the candidates with Stable Diffusion; each arrives as a preview
   event of stage ``candidate_<i>`` and lands as a Blender image in the pick list,
   marked with what the backend's matting made of it (one clean object or why not).
2. **Generate from Candidate** sends the picked image as an ordinary image job, with
   ``prompt_for_inversion`` so that the prompt joins textual inversion's captions.

Both operators (``ui/text_ops.py``) return at once: the network thread sends, the
session's tick applies the events. The candidates job sits in the job list like any other
(progress, cancel, the job file) but has images, not a mesh: it is never imported.

The hooks the session calls (``fill_job``, ``job_options``, ``record``, ``fill``,
``on_preview``, ``on_log``, ``is_candidates``) are small and tolerate jobs that are
not prompt jobs, so the image path is unchanged.
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, CollectionProperty, EnumProperty, IntProperty, PointerProperty, StringProperty

from ..core.prompt import CANDIDATE_STAGE, KIND_CANDIDATES, MAX_CANDIDATES
from .paths import preview_path
from .previews import preview_image
from .properties import row_for

MODES = (
    ("IMAGE", "Image", "Generate from an input image (file, datablock, Image Editor or render)"),
    ("TEXT", "Text", "Describe the object: Stable Diffusion draws candidates, you pick one, it becomes the input"),
)


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


def candidate_row(ts, index: int) -> MPOD123_Candidate:
    return row_for(ts.candidates, "index", index)


def on_preview(context, job, stage: str, png: bytes, apply: bool) -> bool:
    """A candidate image of the listed candidates job: into a Blender image and the pick list."""
    match = CANDIDATE_STAGE.fullmatch(stage)
    if not apply or match is None or not is_candidates(job) or int(match.group(1)) >= MAX_CANDIDATES:
        return False
    ts = text_state(context)
    if ts.job_id != job.job_id:
        return False  # an older candidates job: its images stay with it, the list shows the newest
    image = preview_image(job.job_id, stage, png)
    row = candidate_row(ts, int(match.group(1)))
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
            row = candidate_row(ts, v["index"])
            row.usable = bool(v.get("usable"))
            row.verdict = "one clean object" if row.usable else str(v.get("reason") or "not clean")[:200]
    current = ts.candidates[ts.picked] if ts.picked < len(ts.candidates) else None
    clean = [i for i, r in enumerate(ts.candidates) if r.usable]
    if (current is None or not current.usable) and clean:
        ts.picked = clean[0]  # preselect the first clean one; the artist may still pick any


def picked(context) -> MPOD123_Candidate | None:
    ts = text_state(context)
    if not ts.candidates or ts.picked >= len(ts.candidates):
        return None
    return ts.candidates[ts.picked]


def candidate_path(context, row) -> str:
    return preview_path(text_state(context).job_id, f"candidate_{row.index}")


CLASSES = (MPOD123_Candidate, MPOD123_TextInput)


def register() -> None:
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.WindowManager.mpod123_text = PointerProperty(type=MPOD123_TextInput)


def unregister() -> None:
    del bpy.types.WindowManager.mpod123_text
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
