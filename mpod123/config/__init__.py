"""Typed configuration: the schema with the paper's defaults (:mod:`.schema`), the named presets
(:mod:`.presets`), ``run.json`` round trips (:mod:`.serialise`) and the ``--set`` / ``--config``
overrides (:mod:`.overrides`). ``from mpod123.config import X`` keeps working."""

from .presets import PRESETS, detail_preset, outline_preset, pipeline_preset  # noqa: F401
from .schema import *  # noqa: F401,F403
from .serialise import from_dict, to_dict  # noqa: F401
