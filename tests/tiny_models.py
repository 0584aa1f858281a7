"""Tiny random models for tests (they live in the package, which ``--tiny`` modes also use)."""

from mpod123.tiny import save_tiny_clip_tokenizer, save_tiny_stable_diffusion, save_tiny_zero123

__all__ = ["save_tiny_clip_tokenizer", "save_tiny_stable_diffusion", "save_tiny_zero123"]
