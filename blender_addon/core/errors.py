"""The add-on's errors: each message says what the user has to do."""

from __future__ import annotations


class AddonError(RuntimeError):
    """Something the user has to fix; the message says what."""


class EnvError(RuntimeError):
    """Something about the managed environment the user has to fix; the message says what."""

