"""The main job: preprocessing, the one runner that chains the stages, extra views and text prompts.

``from mpod123.pipeline import generate`` keeps working."""

from .generate import ModelSources, RunError, RunResult, configure, default_workdir, generate, tiny_models_dir

__all__ = ["ModelSources", "RunError", "RunResult", "configure", "default_workdir", "generate", "tiny_models_dir"]
