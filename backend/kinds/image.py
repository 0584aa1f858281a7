"""The backend's job functions: the real pipeline, and the same with tiny random models.

A job's options come from a client, possibly a remote one, so only a few are
read and each is checked: ``preset`` (paper, fast, draft), ``seed`` (int) and
``steps`` (an optional cap on every stage's steps, for quick looks). Model
locations are the server's business, never the client's: ``serve --zero123 /
--sd / --embedding`` put them in the environment of the workers
(``MPOD123_ZERO123``, ``MPOD123_SD``, ``MPOD123_EMBEDDING``).

Stage events become job events: progress (with losses and ETA), preview (the
PNG as a binary frame), preview_mesh (a small GLB as a binary frame) and
stage_done. Cancel is checked on every progress event and stops the run within one step; the work folder keeps the stage
checkpoints, so a re-queued job (its worker died) resumes rather than restarts.
"""

from __future__ import annotations

import os
from typing import Any

from ..workers import JobCancelled, JobContext

ENV_MODELS = {"zero123": "MPOD123_ZERO123", "sd": "MPOD123_SD", "embedding": "MPOD123_EMBEDDING"}
TINY_DEFAULT_STEPS = 30


class JobOptionsError(ValueError):
    """A job option the backend will not run with."""


def parse_options(options: dict[str, Any], default_preset: str) -> tuple[str, int, int | None]:
    from mpod123.config import PRESETS

    preset = options.get("preset", default_preset)
    if preset not in PRESETS:
        raise JobOptionsError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    try:
        seed = int(options.get("seed", 0))
        steps = options.get("steps")
        steps = None if steps is None else int(steps)
    except (TypeError, ValueError):
        raise JobOptionsError("seed and steps must be integers") from None
    if steps is not None and steps < 1:
        raise JobOptionsError("steps must be at least 1")
    return preset, seed, steps


MAX_TARGET_FACES = 10_000_000


def parse_target_faces(options: dict[str, Any]) -> int | None:
    """``target_faces``: simplify the exported mesh to at most this many faces (None: the preset's own budget)."""
    value = options.get("target_faces")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise JobOptionsError("target_faces must be an integer")
    try:
        faces = int(value)
    except ValueError:
        raise JobOptionsError("target_faces must be an integer") from None
    if not 4 <= faces <= MAX_TARGET_FACES:
        raise JobOptionsError(f"target_faces must be between 4 and {MAX_TARGET_FACES}, got {faces}")
    return faces


def _quiet_libraries() -> None:
    """No download or loading bars from the model libraries in a worker: its output is a server log."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers.utils.logging as diffusers_logging
    import transformers

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()


def _run(ctx: JobContext, tiny: bool) -> str:
    if ctx.options.get("kind") == "texture":  # a mesh to texture (backend/texture_job.py)
        from .texture import run_texture

        return run_texture(ctx, tiny)
    if not tiny:  # before the model libraries load: missing weights and no network fail in a second
        fetch_weights(ctx, os.environ.get(ENV_MODELS["zero123"]), os.environ.get(ENV_MODELS["sd"]))
    _quiet_libraries()
    from mpod123.config import pipeline_preset
    from mpod123.pipeline.generate import ModelSources, configure
    from mpod123.runtime.progress import Cancelled, CancelToken, MeshPreview, Preview, Progress, StageDone, to_dict
    from mpod123.pipeline.runner import Runner

    preset, seed, steps = parse_options(ctx.options, "draft" if tiny else "fast")
    if tiny and steps is None:
        steps = TINY_DEFAULT_STEPS
    target_faces = parse_target_faces(ctx.options)
    cfg = pipeline_preset(preset)
    if target_faces is not None:  # none asked for: the preset's budget (draft 5,000, fast 20,000) stays
        cfg.export.target_faces = target_faces
    if steps is not None:
        cfg.outline.steps = min(cfg.outline.steps, steps)
        cfg.detail.steps = min(cfg.detail.steps, steps)
        cfg.inversion.steps = min(cfg.inversion.steps, steps)
        for stage in (cfg.outline, cfg.detail):
            stage.preview_every = max(1, stage.steps // 2)
            stage.mesh_preview.every = max(1, stage.steps // 2)
            stage.checkpoint_every = max(1, stage.steps // 2)
    models = ModelSources(**{k: os.environ.get(v) or None for k, v in ENV_MODELS.items()})
    cfg = configure(preset, seed, models, tiny, cfg)
    cancel = CancelToken()

    def content(event) -> dict[str, Any]:
        data = to_dict(event)
        data.pop("kind", None)  # the event's kind travels as the job event's own kind
        data.pop("checkpoint", None)  # a server path is none of the client's business
        return data

    def on_event(event) -> None:
        if isinstance(event, Progress):
            ctx.emit("progress", content(event))
            try:
                ctx.check_cancel()
            except JobCancelled as exc:
                cancel.cancel(str(exc))
        elif isinstance(event, Preview):
            ctx.emit("preview", content(event), event.png)
        elif isinstance(event, MeshPreview):
            ctx.emit("preview_mesh", content(event), event.glb)
        elif isinstance(event, StageDone):
            ctx.emit("stage_done", content(event))

    from .prompt import inversion_templates, run_prompt_job
    from .view_frames import job_views

    inversion_templates(cfg, ctx.options)  # an image drawn from a prompt: its words join the captions
    image, views = job_views(ctx.image, ctx.options)  # extra views travel as extra frames
    runner = Runner(cfg, ctx.workdir / "run", "auto", on_event, cancel, resume=True, views=views)
    try:
        if "prompt" in ctx.options:  # text to 3D: candidates, or the whole run from the prompt
            return run_prompt_job(ctx, cfg, on_event, cancel, tiny)
        result = runner.run(image, ctx.workdir / "result.glb")
    except Cancelled as exc:
        raise JobCancelled(str(exc) or "cancelled by the client") from None
    return str(result.glb)


def fetch_weights(ctx: JobContext, zero123: str | None, sd: str | None) -> None:
    """Missing weights are a visible step: progress events (stage ``weights``, in MB) while they download.

    Every event also feeds the watchdog. With no weights and no way to get them
    (no network, no mirror) this raises ModelNotFound at once, with the fix.
    """
    from mpod123.runtime import weights as models

    def on_progress(p) -> None:
        ctx.emit("progress", {"stage": "weights", "step": p.done_bytes >> 20, "total": max(1, p.total_bytes >> 20),
                              "message": p.text(), "model": p.name})
        ctx.check_cancel()

    for spec in models.pipeline_models(zero123, sd):
        if not models.status(spec).ready:
            ctx.emit("log", {"text": f"{spec.what} weights ({spec.source}) are not here yet: getting them"})
            models.ensure(spec, models.throttled(on_progress, 1.0))


def pipeline_job(ctx: JobContext) -> str:
    """The real pipeline with the server's models (hub ids or local folders)."""
    return _run(ctx, tiny=False)


def tiny_pipeline_job(ctx: JobContext) -> str:
    """The real pipeline with tiny random models: every code path, no weights, noise for a result."""
    return _run(ctx, tiny=True)
