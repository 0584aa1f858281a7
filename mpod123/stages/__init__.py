"""The stages of MPOD123. Stage 1 (outline) is :class:`OutlineStage`."""

from .outline import CheckpointError, OutlineStage, ReferenceView, is_reference_step

__all__ = ["CheckpointError", "OutlineStage", "ReferenceView", "is_reference_step"]
