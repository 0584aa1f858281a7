"""The job functions that ``serve --job`` names: each job goes to its kind by its options.

``options.kind == "texture"``: :mod:`backend.kinds.texture` (a photo and a mesh); ``options.prompt``:
:mod:`backend.kinds.prompt` (text to 3D); otherwise :mod:`backend.kinds.image` (a photo, and any extra
views). Only this module knows every kind, so no kind imports another.
"""

from __future__ import annotations

from ..workers import JobContext
from .image import run_image
from .prompt import run_prompt_job
from .texture import run_texture


def _run(ctx: JobContext, tiny: bool) -> str:
    if ctx.options.get("kind") == "texture":
        return run_texture(ctx, tiny)
    if "prompt" in ctx.options:
        return run_prompt_job(ctx, tiny)
    return run_image(ctx, tiny)


def pipeline_job(ctx: JobContext) -> str:
    """The real pipeline with the server's models (hub ids or local folders)."""
    return _run(ctx, tiny=False)


def tiny_pipeline_job(ctx: JobContext) -> str:
    """The real pipeline with tiny random models: every code path, no weights, noise for a result."""
    return _run(ctx, tiny=True)


__all__ = ["pipeline_job", "tiny_pipeline_job"]
