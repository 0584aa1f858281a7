"""Tiny random models for tests (they live in the package, which ``--tiny`` modes also use), and a pipeline
config small enough to run with them in seconds."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from mpod123.config import PipelineConfig, pipeline_preset
from mpod123.runtime.tiny_models import save_tiny_clip_tokenizer, save_tiny_stable_diffusion, save_tiny_zero123


@contextlib.contextmanager
def tiny_models_env(folder: Path) -> Iterator[Path]:
    """``MPOD123_TINY_MODELS`` points at ``folder`` (where ``tiny=True`` makes and finds the tiny
    models, and what a ``serve --tiny`` started meanwhile inherits), restored afterwards."""
    old = os.environ.get("MPOD123_TINY_MODELS")
    os.environ["MPOD123_TINY_MODELS"] = str(folder)
    try:
        yield folder
    finally:
        if old is None:
            os.environ.pop("MPOD123_TINY_MODELS", None)
        else:
            os.environ["MPOD123_TINY_MODELS"] = old


def small_config(steps: int = 6) -> PipelineConfig:
    """The draft preset cut to ``steps`` steps a stage, previews and checkpoints twice a stage, a torch unwrap."""
    cfg = pipeline_preset("draft")
    cfg.outline.steps = cfg.detail.steps = steps
    cfg.inversion.steps = 2
    for stage in (cfg.outline, cfg.detail):
        stage.preview_every = stage.checkpoint_every = max(1, steps // 2)
        stage.mesh_preview.every = max(1, steps // 2)  # a tenth of 6 steps would be every step
    cfg.outline.occupancy.warmup_steps = 2
    cfg.export.uv_backend = "torch"
    cfg.export.texture_size = 64
    return cfg


__all__ = ["save_tiny_clip_tokenizer", "save_tiny_stable_diffusion", "save_tiny_zero123", "small_config", "tiny_models_env"]
