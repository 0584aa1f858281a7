"""Tiny random models for tests (they live in the package, which ``--tiny`` modes also use)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

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


__all__ = ["save_tiny_clip_tokenizer", "save_tiny_stable_diffusion", "save_tiny_zero123", "tiny_models_env"]
