"""The image job: one photo (plus any extra views) to a textured GLB, with the server's models or tiny random ones.

A job's options come from a client, possibly a remote one, so only a few are
read and each is checked (:mod:`backend.kinds.common`): ``preset`` (paper,
fast, draft), ``seed`` (int), ``steps`` (an optional cap on every stage's
steps, for quick looks) and ``target_faces``; ``prompt_for_inversion`` (an
image drawn from a prompt: its words join textual inversion's captions) and
``views`` (extra photos as extra frames, :mod:`backend.kinds.view_frames`).

Stage events become job events: progress (with losses and ETA), preview (the
PNG as a binary frame), preview_mesh (a small GLB as a binary frame) and
stage_done. Cancel is checked on every progress event and stops the run within one step; the work folder keeps the stage
checkpoints, so a re-queued job (its worker died) resumes rather than restarts.
"""

from __future__ import annotations

from typing import Any

from ..workers import JobCancelled, JobContext
from .common import JobOptionsError, event_forwarder, parse_options, parse_target_faces, pipeline_config  # noqa: F401  the image job's option checks, importable from here too
from .view_frames import job_views


def inversion_templates(cfg, options: dict[str, Any]) -> None:
    """An image job drawn from a prompt (the artist's pick): the prompt joins textual inversion's captions."""
    text = options.get("prompt_for_inversion")
    if text is not None:
        from mpod123.pipeline.candidates import prompt_templates

        cfg.inversion.templates = tuple(cfg.inversion.templates) + prompt_templates(text)


def run_image(ctx: JobContext, tiny: bool) -> str:
    """The job: the pipeline's Runner in the job's work folder (resumed when re-queued), events forwarded."""
    from mpod123.pipeline.runner import Runner
    from mpod123.runtime.progress import Cancelled, CancelToken

    cfg = pipeline_config(ctx, tiny)
    cancel = CancelToken()
    inversion_templates(cfg, ctx.options)
    image, views = job_views(ctx.image, ctx.options)  # extra views travel as extra frames
    runner = Runner(cfg, ctx.workdir / "run", "auto", event_forwarder(ctx, cancel), cancel, resume=True, views=views)
    try:
        result = runner.run(image, ctx.workdir / "result.glb")
    except Cancelled as exc:
        raise JobCancelled(str(exc) or "cancelled by the client") from None
    return str(result.glb)


__all__ = ["inversion_templates", "run_image"]
