"""The product's main job as one call: ``generate(image, out_glb)``.

A thin front over :class:`mpod123.pipeline.runner.Runner` that picks a preset,
points the model ids where they are asked to be (hub ids, local folders, or
the tiny random models of ``tiny=True``) and chooses the work folder.
"""

from __future__ import annotations

from pathlib import Path

from ..config import PipelineConfig, pipeline_preset
from ..runtime.progress import CancelToken, ProgressCallback
from .runner import ModelSources, RunError, RunResult, Runner


def default_workdir(out_glb: str | Path) -> Path:
    """``out/chair.glb`` -> ``out/chair.work``: beside the output, one folder per output."""
    out = Path(out_glb)
    return out.with_name(out.stem + ".work")


def tiny_models_dir() -> Path:
    """Where ``tiny=True`` keeps its generated models (MPOD123_TINY_MODELS overrides)."""
    import os

    env = os.environ.get("MPOD123_TINY_MODELS")
    return Path(env) if env else Path.home() / ".cache" / "mpod123" / "tiny-models"


def configure(
    preset: str = "fast",
    seed: int = 0,
    models: ModelSources | None = None,
    tiny: bool = False,
    config: PipelineConfig | None = None,
) -> PipelineConfig:
    """The run's config: ``config`` or the preset, with the seed and model sources applied."""
    cfg = config if config is not None else pipeline_preset(preset)
    cfg.with_seed(seed)
    if tiny:
        from ..runtime.tiny_models import ensure_tiny_models

        made = ensure_tiny_models(tiny_models_dir())
        cfg.zero123.model, cfg.sd.model = str(made["zero123"]), str(made["sd"])
    if models is not None:
        models.apply(cfg)
    return cfg


def generate(
    image: str | Path | bytes,
    out_glb: str | Path,
    *,
    preset: str = "fast",
    device: str = "auto",
    seed: int = 0,
    models: ModelSources | None = None,
    workdir: str | Path | None = None,
    resume: bool = False,
    callback: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    tiny: bool = False,
    config: PipelineConfig | None = None,
    views: list | tuple = (),
) -> RunResult:
    """One image to a textured GLB at ``out_glb``; see :mod:`mpod123.pipeline.runner`. ``views``: extra
    photos with their angles (:class:`mpod123.pipeline.extra_views.ViewSpec`, see :mod:`mpod123.pipeline.extra_views`)."""
    cfg = configure(preset, seed, models, tiny, config)
    runner = Runner(cfg, workdir or default_workdir(out_glb), device, callback, cancel, resume, views=views)
    return runner.run(image, out_glb)


__all__ = ["ModelSources", "RunError", "RunResult", "configure", "default_workdir", "generate", "tiny_models_dir"]
