"""Prompt rules (Text input): the backend's own limits, checked before sending so poll() can say why. No bpy."""

from __future__ import annotations

import re
import unicodedata

MAX_PROMPT_CHARS = 500
"""The backend's limit (mpod123.prompt); checked here too so that poll() can say so before sending."""
MAX_CANDIDATES = 16
KIND_CANDIDATES = "candidates"
CANDIDATE_STAGE = re.compile(r"candidate_(\d{1,2})")


def prompt_problem(prompt: str) -> str:
    """Why ``prompt`` cannot be sent ('' when it can): the backend's own rules, for poll()."""
    text = (prompt or "").strip()
    if not text:
        return "describe the object in the Prompt field, e.g. \"a red vintage kettle\""
    if len(text) > MAX_PROMPT_CHARS:
        return f"the prompt is {len(text)} characters, over {MAX_PROMPT_CHARS}: describe just the object"
    if any(not c.isprintable() or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co") for c in text):
        return "the prompt holds a control or unprintable character"
    return ""


def name_for(prompt: str) -> str:
    """An object name from the prompt's first words."""
    words = re.sub(r"[^\w\- ]+", " ", prompt).split()
    return "_".join(words[:4])[:60] or "Prompt"
