"""Typed configuration: the schema with the paper's defaults and presets (:mod:`.schema`), and the
``--set`` / ``--config`` overrides (:mod:`.overrides`). ``from mpod123.config import X`` keeps working."""

from .schema import *  # noqa: F401,F403
