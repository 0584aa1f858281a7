"""What the job kinds share, so that no kind imports another: the option checks every pipeline job reads
(``preset``, ``seed``, ``steps``, ``target_faces``), the weights step, the model libraries kept quiet, and
stage events forwarded as job events with cancel checked on each.

Model locations are the server's business, never the client's: ``serve --zero123 / --sd / --embedding``
put them in the environment of the workers (``ENV_MODELS``). Standard library at the top: mpod123 is
imported inside the functions that run in a worker, so the server (which imports the kinds' front-door
checks) never loads torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..workers import JobCancelled, JobContext

ENV_MODELS = {"zero123": "MPOD123_ZERO123", "sd": "MPOD123_SD", "embedding": "MPOD123_EMBEDDING"}
TINY_DEFAULT_STEPS = 30
MAX_TARGET_FACES = 10_000_000


class JobOptionsError(ValueError):
    """A job option the backend will not run with."""


def parse_options(options: dict[str, Any], default_preset: str) -> tuple[str, int, int | None]:
    """``preset`` (one of mpod123's presets), ``seed`` (int) and ``steps`` (an optional cap on every stage)."""
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


def quiet_libraries() -> None:
    """No download or loading bars from the model libraries in a worker: its output is a server log."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers.utils.logging as diffusers_logging
    import transformers

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()


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


def pipeline_config(ctx: JobContext, tiny: bool) -> Any:
    """The run's PipelineConfig from the job's checked options and the server's models (the image job's,
    and the prompt job's, which runs the same pipeline behind its candidates). Missing weights are
    fetched first, as ``weights`` progress events."""
    from mpod123.config import pipeline_preset
    from mpod123.pipeline.generate import ModelSources, configure

    if not tiny:  # before the model libraries load: missing weights and no network fail in a second
        fetch_weights(ctx, os.environ.get(ENV_MODELS["zero123"]), os.environ.get(ENV_MODELS["sd"]))
    quiet_libraries()
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
    return configure(preset, seed, models, tiny, cfg)


def event_forwarder(ctx: JobContext, cancel: Any, mesh_previews: bool = True) -> Callable[[Any], None]:
    """A stage-event callback that sends each event as a job event: progress (cancel checked on each, so a
    run stops within one step), preview (the PNG as its binary frame), preview_mesh (the GLB, unless
    ``mesh_previews`` is off) and stage_done. The event's kind travels as the job event's own kind, and
    a checkpoint's server path is none of the client's business."""
    from mpod123.runtime.progress import MeshPreview, Preview, Progress, StageDone, to_dict

    kinds: dict[type, str] = {Progress: "progress", Preview: "preview", StageDone: "stage_done"}
    if mesh_previews:
        kinds[MeshPreview] = "preview_mesh"

    def forward(event: Any) -> None:
        kind = kinds.get(type(event))
        if kind is None:
            return
        body = {k: v for k, v in to_dict(event).items() if k not in ("kind", "checkpoint")}
        blob = event.png if kind == "preview" else event.glb if kind == "preview_mesh" else None
        ctx.emit(kind, body, blob)
        if kind == "progress":
            try:
                ctx.check_cancel()
            except JobCancelled as exc:
                cancel.cancel(str(exc))

    return forward


__all__ = ["ENV_MODELS", "MAX_TARGET_FACES", "TINY_DEFAULT_STEPS", "JobOptionsError", "event_forwarder",
           "fetch_weights", "parse_options", "parse_target_faces", "pipeline_config", "quiet_libraries"]
