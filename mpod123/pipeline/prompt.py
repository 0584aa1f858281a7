"""Checking a text prompt (pure Python: the backend's front door uses it without loading torch).

A prompt may come from a remote client, so it is treated like any other input:
text only, stripped, not empty, at most :data:`MAX_PROMPT_CHARS` characters,
and printable (no control, format or private-use characters, no line breaks).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from ..runtime.errors import Mpod123Error

MAX_PROMPT_CHARS = 500
"""CLIP reads 77 tokens; a longer text is almost certainly not a prompt."""


class PromptError(Mpod123Error, ValueError):
    """A prompt that cannot be used; the message says what to write instead."""


def check_prompt(prompt: Any) -> str:
    """The prompt, stripped, or :class:`PromptError` saying what is wrong with it."""
    if not isinstance(prompt, str):
        raise PromptError(f"the prompt must be text, got {type(prompt).__name__}")
    text = prompt.strip()
    if not text:
        raise PromptError("the prompt is empty; describe the object, e.g. \"a red vintage kettle\"")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(f"the prompt is {len(text)} characters, over {MAX_PROMPT_CHARS}; describe just the object")
    bad = [c for c in text if not c.isprintable() or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co")]
    if bad:
        raise PromptError(f"the prompt holds a control or unprintable character ({bad[0]!r}); write it on one line")
    return text


__all__ = ["MAX_PROMPT_CHARS", "PromptError", "check_prompt"]
